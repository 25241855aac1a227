"""The one periodic schedule (Celery Beat). Every entry names a registered task routed to an
existing queue; ``tests/unit/test_beat_schedule.py`` checks that against the worker app.

Intervals come from settings (``MEMORY_CLEANUP_INTERVAL_S``, ``MEMORY_RECONCILE_INTERVAL_S``,
``MEMORY_MARKER_SWEEP_INTERVAL_S``). Each send expires after its interval, so a backlog built while
workers were down does not pile up. Nothing is built at import: the worker app calls
:func:`build_beat_schedule` with its settings.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from memory_engine.settings import Settings
from memory_engine.task_contract import (
    QUEUE_MAINTENANCE,
    TASK_CLEANUP,
    TASK_RECONCILE,
    TASK_SWEEP_MARKERS,
)

__all__ = ["build_beat_schedule"]


def build_beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    def entry(task: str, every_s: float) -> dict[str, Any]:
        return {
            "task": task,
            "schedule": timedelta(seconds=every_s),
            "options": {"queue": QUEUE_MAINTENANCE, "expires": every_s},
        }

    return {
        "memory-cleanup": entry(TASK_CLEANUP, settings.cleanup_interval_s),
        "memory-reconcile": entry(TASK_RECONCILE, settings.reconcile_interval_s),
        "memory-sweep-markers": entry(TASK_SWEEP_MARKERS, settings.marker_sweep_interval_s),
    }
