"""Celery tasks: thin wrappers over engine operations in ``memory_engine``.

Arguments carry memory ids and resource ids, never message content (worker logs and Flower show
task arguments). Loaded by the worker app only.
"""

from tasks.crypto import reencrypt
from tasks.flush import evict, flush, summarize
from tasks.maintenance import cleanup, reconcile, sweep_markers

__all__ = ["cleanup", "evict", "flush", "reconcile", "reencrypt", "summarize", "sweep_markers"]
