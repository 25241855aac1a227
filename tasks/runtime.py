"""Per-process resources for tasks: one MemoryClient per worker process (rebuilt after fork)."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import Task
from celery.exceptions import Reject

from memory_engine.client import Memory, MemoryClient
from memory_engine.errors import KeyTemplateError, ResourceMismatch, TransientError
from memory_engine.settings import load_settings

__all__ = ["EngineTask", "engine_client", "reset_engine_client", "task_memory", "warm_up"]

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


def task_memory(task: Any, memory_id: object, resource_id: object) -> Memory:
    """The memory a task payload names, under its own resource only.

    A payload is only as trusted as the broker: an invalid memory id (the rules of rendered keys)
    or a resource that is not the memory's own is refused: logged with the id escaped, the
    message rejected without requeue (no retry; the result backend records a failure) and
    nothing changed, the flush marker included.
    """
    client = engine_client()
    try:
        return client.memory_by_id(memory_id, resource_id, verify_resource=True)  # type: ignore[arg-type]
    except (KeyTemplateError, ResourceMismatch) as exc:
        # The messages show ids through ascii(): no raw newline reaches a log line.
        log.warning("refused %s task %s: %s", task.name, task.request.id, exc)
        raise Reject(str(exc), requeue=False) from None


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
