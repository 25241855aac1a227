"""``memory.flush``, ``memory.summarize`` and ``memory.evict``."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from memory_engine.core.plans import FlushPlan
from memory_engine.engine.flush import FlushResult, FlushStatus, evict_memory, flush_memory
from memory_engine.errors import KeyTemplateError
from memory_engine.keys import validate_memory_id
from memory_engine.task_contract import TASK_EVICT, TASK_FLUSH, TASK_SUMMARIZE
from tasks.runtime import EngineTask, engine_client, task_memory

log = logging.getLogger(__name__)

LOCKED_RETRY_S = 1.0  # first retry of a flush that found the memory's lock held; grows linearly


def _retry_if_locked(task: Any, result: FlushResult) -> None:
    """A flush that found the lock held must not just end: the holder may already have cleared
    the flush marker that requested this run, and the marker would then block every flush of the
    memory until its TTL. Retrying is safe: a flush with nothing left to do is a no-op."""
    if result.status is FlushStatus.ALREADY_RUNNING:
        raise task.retry(countdown=LOCKED_RETRY_S * (task.request.retries + 1))


class FlushTask(EngineTask):
    """Releases the flush marker when a flush finally fails (retries exhausted or a permanent
    error), so the next append can request a new one. A worker killed outright cannot run this:
    the marker's TTL bounds that case."""

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        memory_id = (kwargs or {}).get("memory_id")
        if memory_id:
            try:
                # Never build keys (or a log line) from an id that is not one.
                memory_id = validate_memory_id(memory_id)
            except KeyTemplateError:
                return
            try:
                client = engine_client()
                client.store.clear_flush_marker(client.keyspace.memory(memory_id))
                # %a: an exception's text may carry newlines that would forge log lines.
                log.error("flush of %s failed for good (%a); marker released", memory_id, exc)
            except Exception:
                log.exception("could not release flush marker of %s", memory_id)


# No result backend writes for this task: a flush runs for milliseconds, is requested by appends
# that never wait for it, and reports through task events (what Flower shows: received, started,
# succeeded with its result, or failed), metrics and the memory's own stats. Writing its STARTED
# state and its result cost the worker ~1.6 ms per flush (of ~4.7; one worker process,
# 1,000-message FIFO flushes, bench/flush.py). A failure is still stored
# (store_errors_even_if_ignored), so `AsyncResult(id).state` tells FAILURE from "not stored".
# memory.summarize keeps its states (SUMMARIZING) and results.
@shared_task(
    name=TASK_FLUSH,
    base=FlushTask,
    bind=True,
    track_started=False,
    ignore_result=True,
    store_errors_even_if_ignored=True,
)
def flush(
    self: Any,
    memory_id: str,
    resource_id: str,
    strategy: str | None = None,
    reason: str = "threshold",
) -> dict[str, Any]:
    """Flush one memory by its strategy. A plan that needs a summary is handed to
    ``memory.summarize`` (its own queue: slow LLM calls never block flushes)."""
    client = engine_client()
    memory = task_memory(self, memory_id, resource_id)

    def hand_off(plan: FlushPlan) -> None:
        client.producer.send(
            TASK_SUMMARIZE,
            {"memory_id": memory_id, "resource_id": resource_id, "strategy": strategy},
        )

    result: FlushResult = flush_memory(memory, strategy=strategy, hand_off=hand_off)
    _retry_if_locked(self, result)
    return result.model_dump(mode="json", exclude={"would_remove"})


@shared_task(name=TASK_SUMMARIZE, base=FlushTask, bind=True)
def summarize(
    self: Any, memory_id: str, resource_id: str, strategy: str | None = None
) -> dict[str, Any]:
    """Run a summarizing flush: plan again on a fresh snapshot, call the summarizer (outside any
    Redis transaction), commit with the epoch and lock checks."""
    memory = task_memory(self, memory_id, resource_id)
    # Progress: the result backend holds the custom state (AsyncResult, the CLI); Flower builds
    # its views from task events, so the same state goes out as a ``task-summarizing`` event.
    progress = {"memory_id": memory_id, "resource_id": resource_id}
    self.update_state(state="SUMMARIZING", meta=progress)
    self.send_event("task-summarizing", **progress)
    result = flush_memory(memory, strategy=strategy)
    _retry_if_locked(self, result)
    return result.model_dump(mode="json", exclude={"would_remove"})


@shared_task(name=TASK_EVICT, base=EngineTask, bind=True)
def evict(self: Any, memory_id: str, resource_id: str, policy: str | None = None) -> dict[str, Any]:
    """Enforce the hard limits of one memory by its eviction policy."""
    result = evict_memory(task_memory(self, memory_id, resource_id), policy=policy)
    return result.model_dump(mode="json", exclude={"would_remove"})
