"""Task and queue names: the contract between the thin client (which enqueues by name) and the
Celery service processes (which register and route these names). Declared once, here."""

from __future__ import annotations

__all__ = [
    "QUEUE_FLUSH",
    "QUEUE_MAINTENANCE",
    "QUEUE_SUMMARIZE",
    "QUEUES",
    "TASK_CLEANUP",
    "TASK_EVICT",
    "TASK_FLUSH",
    "TASK_RECONCILE",
    "TASK_REENCRYPT",
    "TASK_SUMMARIZE",
    "TASK_SWEEP_MARKERS",
    "TASK_ROUTES",
]

TASK_FLUSH = "memory.flush"
TASK_SUMMARIZE = "memory.summarize"
TASK_EVICT = "memory.evict"
TASK_CLEANUP = "memory.cleanup"
TASK_RECONCILE = "memory.reconcile"
TASK_SWEEP_MARKERS = "memory.sweep_markers"
TASK_REENCRYPT = "memory.reencrypt"
"""Key rotation (``memory-engine keys rotate``, docs/encryption.md): on demand, never scheduled."""

QUEUE_FLUSH = "memory.flush"
QUEUE_SUMMARIZE = "memory.summarize"
QUEUE_MAINTENANCE = "memory.maintenance"
QUEUES = (QUEUE_FLUSH, QUEUE_SUMMARIZE, QUEUE_MAINTENANCE)

TASK_ROUTES: dict[str, dict[str, str]] = {
    TASK_FLUSH: {"queue": QUEUE_FLUSH},
    TASK_SUMMARIZE: {"queue": QUEUE_SUMMARIZE},
    TASK_EVICT: {"queue": QUEUE_FLUSH},
    TASK_CLEANUP: {"queue": QUEUE_MAINTENANCE},
    TASK_RECONCILE: {"queue": QUEUE_MAINTENANCE},
    TASK_SWEEP_MARKERS: {"queue": QUEUE_MAINTENANCE},
    TASK_REENCRYPT: {"queue": QUEUE_MAINTENANCE},
}
