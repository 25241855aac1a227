"""Enqueues Celery tasks by name, so workflow code never imports task code.

A minimal Celery app (no tasks, JSON only) is built on first use: a memory that never crosses its
threshold never touches the broker.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from memory_engine.errors import StoreUnavailable
from memory_engine.settings import Settings
from memory_engine.task_contract import TASK_ROUTES

__all__ = ["SHOWN_TASK_ARGUMENTS", "TaskProducer", "task_kwargsrepr"]

log = logging.getLogger(__name__)

PUBLISH_MAX_RETRIES = 2
PUBLISH_RETRY_INTERVAL_S = 0.2

SHOWN_TASK_ARGUMENTS = frozenset(
    {"memory_id", "resource_id", "strategy", "reason", "policy", "dry_run"}
)
"""Task arguments that Flower, task events and worker logs may show; any other is masked."""


def task_kwargsrepr(kwargs: dict[str, Any]) -> str:
    """The ``kwargsrepr`` sent with a task (what Flower shows as its arguments): ids and options
    only. Tasks never carry message content; masking every other name keeps it so if one ever
    gains an argument that could."""
    return repr({k: v if k in SHOWN_TASK_ARGUMENTS else "<hidden>" for k, v in kwargs.items()})


class TaskProducer:
    """Thread-safe publisher of engine tasks."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._app: Any = None
        self._lock = threading.Lock()

    @property
    def app(self) -> Any:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    from celery import Celery  # deferred: appends below threshold never need it

                    app = Celery("memory-engine-client", set_as_current=False)
                    app.conf.update(
                        broker_url=self._settings.celery_broker_url(),
                        task_serializer="json",
                        accept_content=["json"],
                        result_serializer="json",
                        task_routes=TASK_ROUTES,
                        task_send_sent_event=True,
                        broker_connection_timeout=self._settings.socket_connect_timeout_s,
                        broker_connection_retry_on_startup=True,
                        broker_transport_options={
                            "visibility_timeout": self._settings.visibility_timeout_s,
                            "socket_timeout": self._settings.socket_timeout_s,
                            "socket_connect_timeout": self._settings.socket_connect_timeout_s,
                        },
                    )
                    self._app = app
        return self._app

    def send(self, name: str, kwargs: dict[str, Any], *, task_id: str | None = None) -> str:
        """Publish ``name`` with ``kwargs`` (ids only, never content) to its routed queue."""
        try:
            result = self.app.send_task(
                name,
                kwargs=kwargs,
                argsrepr="()",
                kwargsrepr=task_kwargsrepr(kwargs),
                task_id=task_id,
                retry=True,
                retry_policy={
                    "max_retries": PUBLISH_MAX_RETRIES,
                    "interval_start": 0,
                    "interval_step": PUBLISH_RETRY_INTERVAL_S,
                    "interval_max": PUBLISH_RETRY_INTERVAL_S,
                },
            )
        except Exception as exc:  # kombu raises OperationalError and friends
            raise StoreUnavailable(f"could not publish {name}: {exc}") from exc
        return str(result.id)

    def close(self) -> None:
        if self._app is not None:
            self._app.close()
            self._app = None
