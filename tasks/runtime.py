"""Per-process resources for tasks: one MemoryClient per worker process (rebuilt after fork)."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import Task

from memory_engine.client import MemoryClient
from memory_engine.errors import TransientError
from memory_engine.settings import load_settings

__all__ = ["EngineTask", "engine_client", "reset_engine_client", "warm_up"]

RETRY_BACKOFF_MAX_S = 120
MAX_RETRIES = 6

log = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict[str, Any] = {"pid": None, "client": None}


def engine_client() -> MemoryClient:
    """The process's client, built from ``MEMORY_*`` settings on first use in each process."""
    with _lock:
        if _state["pid"] != os.getpid() or _state["client"] is None:
            _state["client"] = MemoryClient(load_settings())
            _state["pid"] = os.getpid()
        client: MemoryClient = _state["client"]
        return client


def reset_engine_client(client: MemoryClient | None = None) -> None:
    """Replace the process's client (tests inject one bound to their private Redis)."""
    with _lock:
        _state["client"] = client
        _state["pid"] = os.getpid() if client is not None else None


def warm_up(**_: Any) -> None:
    """Build the process's client and load the tokenizers of every resource before the first
    task: otherwise the first burst of flushes waits ~0.5 s for tiktoken's encoding to load."""
    try:
        client = engine_client()
        for resource in client.registry:
            client.counter_for(resource).count_text("warm up")
    except Exception:  # a failed warm-up must not stop the worker; tasks report real errors
        log.warning("worker warm-up failed", exc_info=True)


class EngineTask(Task):  # type: ignore[misc]
    """Base of every engine task: retries transient errors (Redis down, timeouts) with
    exponential backoff and jitter; configuration and validation errors fail at once."""

    autoretry_for = (TransientError,)
    retry_backoff = True
    retry_backoff_max = RETRY_BACKOFF_MAX_S
    retry_jitter = True
    max_retries = MAX_RETRIES
    acks_late = True
