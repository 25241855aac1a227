"""Logging for the service processes: one line per record, optionally JSON, with the Celery task
id and name on every line a task emits. Engine loggers name the memory key in their messages.

Selected by the settings ``MEMORY_LOG_FORMAT`` (``text`` | ``json``) and ``MEMORY_LOG_LEVEL``.
Connected to Celery's ``setup_logging`` signal by ``worker/app.py``, which replaces Celery's own
logging setup in every process it starts (worker, Beat).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from memory_engine.settings import Settings

__all__ = ["JsonFormatter", "TaskContextFilter", "configure_logging"]

TEXT_FORMAT = (
    "%(asctime)s %(levelname)s %(processName)s %(name)s [%(task_name)s %(task_id)s] %(message)s"
)
_STANDARD = frozenset(vars(logging.makeLogRecord({})))


class TaskContextFilter(logging.Filter):
    """Adds ``task_id`` and ``task_name`` of the running Celery task ("-" outside tasks)."""

    def filter(self, record: logging.LogRecord) -> bool:
        task_id = task_name = "-"
        try:
            from celery._state import get_current_task

            task = get_current_task()
            if task is not None and task.request.id:
                task_id, task_name = str(task.request.id), str(task.name)
        except Exception:  # logging must never fail
            pass
        record.task_id = task_id
        record.task_name = task_name
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, process, task, message, extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                plain = isinstance(value, (str, int, float, bool, type(None)))
                out[key] = value if plain else repr(value)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(settings: Settings, **_: Any) -> None:
    """Root handler on stderr with the task filter, in the configured format and level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TaskContextFilter())
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
