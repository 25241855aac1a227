"""Engine operations that shrink a memory: flush (by strategy) and evict (by policy).

Both follow one shape (DESIGN §4, invariant 2): take the memory's lock (fail fast), read a
consistent snapshot, plan in Python, do slow work (the summarizer) outside any Redis transaction,
then commit with one short script that removes exactly the planned seqs, keeps everything appended
since the snapshot, and refuses if the epoch moved or the lock was lost. The Celery tasks in
``tasks/`` are thin wrappers over these functions, so ``Memory.flush()`` runs the same code inline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from memory_engine import metrics
from memory_engine.core.append import archive_argument
from memory_engine.core.columns import messages_with_seqs
from memory_engine.core.plans import FlushPlan, FlushResult, FlushStatus, Snapshot, Summary
from memory_engine.engine.eviction import select_evictions
from memory_engine.errors import FlushAlreadyRunning, FlushConflict
from memory_engine.messages import Message, Role
from memory_engine.resources import FlushingType
from memory_engine.store.locks import MemoryLock
from memory_engine.strategies import get_strategy

if TYPE_CHECKING:
    from memory_engine.engine.handle import MemoryHandle
    from memory_engine.summarizers import Summarizer

__all__ = [
    "FlushResult",
    "FlushStatus",
    "evict_memory",
    "flush_memory",
    "over_hard_limit",
    "send_removal_hook",
]

log = logging.getLogger(__name__)

COMMIT_ATTEMPTS = 3
_USES_LRU = {FlushingType.LRU.value, FlushingType.TOKEN_AWARE_LRU.value}


BeforeCommit = Callable[[FlushPlan], None]
HandOff = Callable[[FlushPlan], None]


def over_hard_limit(memory: MemoryHandle) -> bool:
    """True when the memory is above ``max_tokens`` (list + summary) or ``max_messages``."""
    stats = memory.stats()
    return _over_limits(memory, stats.message_count, stats.token_count + stats.summary_tokens)


def _over_limits(memory: MemoryHandle, message_count: int, tokens_with_summary: int) -> bool:
    max_tokens, max_messages = memory.resource.effective_max_tokens, memory.resource.max_messages
    if max_tokens and tokens_with_summary > max_tokens:
        return True
    return bool(max_messages and message_count > max_messages)


def _clear_marker(memory: MemoryHandle) -> Callable[[Any], None]:
    """The commands of ``MemoryStore.clear_flush_marker`` (marker and pending-index entry), to
    ride in the pipeline that releases the lock: a flush ends in one round trip."""
    keys, pending_index = memory.keys, memory.client.keyspace.pending_index

    def add(pipe: Any) -> None:
        pipe.delete(keys.flush)
        pipe.zrem(pending_index, keys.memory_id)

    return add


@metrics.instrument_flush("flush")
def flush_memory(
    memory: MemoryHandle,
    *,
    strategy: str | None = None,
    dry_run: bool = False,
    summarizer: Summarizer | None = None,
    hand_off: HandOff | None = None,
    before_commit: BeforeCommit | None = None,
    enforce_hard_limits: bool = True,
) -> FlushResult:
    """Flush ``memory`` by ``strategy`` (default: the resource's ``flushing.type``).

    ``dry_run`` plans on a snapshot and changes nothing (no summarizer call either).
    ``hand_off``, when given, is called instead of summarizing in-process (the ``memory.flush``
    task passes one that enqueues ``memory.summarize``); the flush marker then stays set until the
    summarize task commits. A concurrent flush of the same memory returns ``ALREADY_RUNNING``.

    Round trips of a flush that needs no eviction: the lock's SET, the snapshot (one MULTI), the
    commit script, and one pipeline that clears the flush marker and releases the lock.
    """
    name = str(strategy or memory.resource.flushing.type)
    planner = get_strategy(name)
    store = memory.client.store
    if dry_run:
        snap, _meta = store.snapshot(memory.keys, with_usage=name in _USES_LRU)
        plan = planner.plan(snap, memory.resource)
        return _result(memory, name, FlushStatus.DRY_RUN, plan, snap, dry_run=True)

    lock = memory.client.store.lock(memory.keys, memory.resource.locking.flush_ttl_s)
    try:
        lock.acquire()
    except FlushAlreadyRunning:
        log.info("flush of %s skipped: already running", memory.key)
        return FlushResult(memory_id=memory.key, strategy=name, status=FlushStatus.ALREADY_RUNNING)
    finished = False  # True once nothing more will change: the marker goes with the lock
    try:
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            snap, meta = store.snapshot(memory.keys, with_usage=name in _USES_LRU)
            if not meta:
                finished = True
                return FlushResult(
                    memory_id=memory.key, strategy=name, status=FlushStatus.NOOP, reason="gone"
                )
            plan = planner.plan(snap, memory.resource)
            if plan.is_noop:
                result = _result(memory, name, FlushStatus.NOOP, plan, snap)
                count, tokens = len(snap.messages), snap.token_count + _summary_tokens(snap)
                break
            summary = None
            if plan.summarize:
                if hand_off is not None:
                    # Release before handing off: the summarize task may start on another
                    # worker at once, and finding the lock still held it would skip, leaving
                    # the marker set (no flush of this memory) until the marker's TTL.
                    lock.release()
                    hand_off(plan)
                    return _result(memory, name, FlushStatus.HANDED_OFF, plan, snap)
                summary = build_summary(memory, snap, plan, summarizer or memory.client.summarizer)
            if before_commit is not None:
                before_commit(plan)
            lock.check()
            try:
                committed = store.commit(
                    memory.keys,
                    snap,
                    drop=sorted(plan.drop),
                    summarize=list(plan.summarize),
                    summary=summary,
                    lock_token=lock.token,
                    counter_field="flushed",
                    clear_marker=False,  # cleared with the lock, once hard limits are enforced
                    created_at=meta["created_at"],
                    archive=archive_argument(memory.resource),
                )
            except FlushConflict:
                log.info("flush of %s conflicted (attempt %d); replanning", memory.key, attempt)
                if attempt == COMMIT_ATTEMPTS:
                    raise
                continue
            metrics.record_flush_commit(memory.resource.id, committed, snap, summary)
            if committed.dropped + committed.summarized:
                send_removal_hook(memory, plan.removed, "flushed")
            summary_tokens = summary.token_count if summary else _summary_tokens(snap)
            # The counts right after the commit (what Memory.stats() would read): the hard-limit
            # check below needs no round trip of its own.
            count, tokens = committed.message_count, committed.token_count + summary_tokens
            result = FlushResult(
                memory_id=memory.key,
                strategy=name,
                status=FlushStatus.COMMITTED,
                removed=committed.dropped + committed.summarized,
                dropped=committed.dropped,
                summarized=committed.summarized,
                message_count=committed.message_count,
                token_count=committed.token_count,
                tokens_before=snap.token_count,
                tokens_removed=committed.tokens_removed,
                summary_point=summary.summary_point if summary else _point(snap),
                summary_tokens=summary_tokens,
                summary_source=summary.source if summary else None,
                reason=plan.reason,
            )
            log.info(
                "flushed %s with %s: dropped %d, summarized %d, %d messages / %d tokens left",
                memory.key,
                name,
                committed.dropped,
                committed.summarized,
                committed.message_count,
                committed.token_count,
            )
            break
        if enforce_hard_limits and _over_limits(memory, count, tokens):
            evicted = _evict_locked(memory, lock)
            if evicted.evicted:
                result = result.model_copy(
                    update={
                        "evicted": evicted.evicted,
                        "removed": result.removed + evicted.evicted,
                        "message_count": evicted.message_count,
                        "token_count": evicted.token_count,
                    }
                )
        # Only now is the flush done: "flush pending" stays true until nothing more will change.
        finished = True
        return result
    finally:
        # The marker (and its pending-index entry) is cleared in the release's round trip.
        lock.release(also=_clear_marker(memory) if finished else None)


def build_summary(
    memory: MemoryHandle, snap: Snapshot, plan: FlushPlan, summarizer: Summarizer
) -> Summary:
    """Progressive summary: the previous summary plus the newly folded messages only."""
    folded = messages_with_seqs(snap.messages, plan.summarize)  # decodes only these
    previous = snap.summary.text if snap.summary else None
    cap = memory.resource.flushing.summary_tokens or 0
    counter = memory.client.counter_for(memory.resource)
    produced = summarizer.summarize(previous, folded, max_tokens=cap, counter=counter)
    # Stored token count follows the one per-message convention: the summary enters a prompt
    # as a system message, and context() budgets it exactly so.
    tokens = counter.count_message(Message(role=Role.SYSTEM, content=produced.text))
    return Summary(
        text=produced.text,
        token_count=tokens,
        summary_point=max(max(plan.summarize), _point(snap)),
        covered_count=(snap.summary.covered_count if snap.summary else 0) + len(folded),
        source=produced.source,
        updated_at=time.time(),
    )


@metrics.instrument_flush("evict")
def evict_memory(memory: MemoryHandle, *, policy: str | None = None) -> FlushResult:
    """Enforce hard limits by the resource's eviction policy (or ``policy``)."""
    lock = memory.client.store.lock(memory.keys, memory.resource.locking.flush_ttl_s, what="evict")
    try:
        lock.acquire()
    except FlushAlreadyRunning:
        return FlushResult(
            memory_id=memory.key,
            strategy=f"evict:{policy or memory.resource.eviction.policy}",
            status=FlushStatus.ALREADY_RUNNING,
        )
    try:
        return _evict_locked(memory, lock, policy=policy)
    finally:
        lock.release()


def _evict_locked(
    memory: MemoryHandle, lock: MemoryLock, *, policy: str | None = None
) -> FlushResult:
    resource = memory.resource
    name = str(policy or resource.eviction.policy)
    store = memory.client.store
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        snap, meta = store.snapshot(memory.keys, with_usage=name == "lru")
        if not meta:
            return FlushResult(
                memory_id=memory.key, strategy=f"evict:{name}", status=FlushStatus.NOOP
            )
        summary_tokens = _summary_tokens(snap)
        max_tokens = resource.effective_max_tokens
        seqs = select_evictions(
            snap.messages,
            policy=name,
            max_tokens=max(0, max_tokens - summary_tokens) if max_tokens else None,
            max_messages=resource.max_messages,
            last_used=snap.last_used,
            priority_keywords=resource.eviction.priority_keywords,
        )
        if not seqs:
            return FlushResult(
                memory_id=memory.key,
                strategy=f"evict:{name}",
                status=FlushStatus.NOOP,
                message_count=len(snap.messages),
                token_count=snap.token_count,
            )
        lock.check()
        try:
            committed = store.commit(
                memory.keys,
                snap,
                drop=sorted(seqs),
                summarize=[],
                summary=None,
                lock_token=lock.token,
                counter_field="evicted",
                clear_marker=False,
                created_at=meta["created_at"],
                archive=archive_argument(resource),
            )
        except FlushConflict:
            if attempt == COMMIT_ATTEMPTS:
                raise
            continue
        metrics.record_evict_commit(resource.id, committed)
        if committed.dropped:
            send_removal_hook(memory, seqs, "evicted")
        log.warning(
            "evicted %d messages from %s by policy %s (hard limit)",
            committed.dropped,
            memory.key,
            name,
        )
        return FlushResult(
            memory_id=memory.key,
            strategy=f"evict:{name}",
            status=FlushStatus.COMMITTED,
            removed=committed.dropped,
            evicted=committed.dropped,
            message_count=committed.message_count,
            token_count=committed.token_count,
            tokens_before=snap.token_count,
            tokens_removed=committed.tokens_removed,
        )
    raise AssertionError("unreachable")  # pragma: no cover


def send_removal_hook(memory: MemoryHandle, seqs: Iterable[int], reason: str) -> bool:
    """Send the resource's ``archive.on_remove_task`` (by name, through the client's producer)
    once for a committed flush or eviction: ``{"memory_id", "first_seq", "last_seq",
    "reason"}``, the range of seqs the commit named (ids, never content; the messages are in
    the archive when it is enabled). A failed send is logged, never raised: the commit stands.
    True when a task was sent."""
    archive = memory.resource.archive
    task = archive.on_remove_task
    named = list(seqs)
    if task is None or not named:
        return False
    payload = {
        "memory_id": memory.key,
        "first_seq": min(named),
        "last_seq": max(named),
        "reason": reason,
    }
    try:
        memory.client.producer.send(task, payload, queue=archive.on_remove_queue or "celery")
    except Exception as exc:  # BrokerUnavailable and friends: the removal is committed
        log.warning(
            "pre-removal hook %s for memory %s (seqs %d..%d) not sent: %s",
            task,
            memory.key,
            payload["first_seq"],
            payload["last_seq"],
            exc,
        )
        return False
    return True


def _point(snap: Snapshot) -> int:
    return snap.summary.summary_point if snap.summary else 0


def _summary_tokens(snap: Snapshot) -> int:
    return snap.summary.token_count if snap.summary else 0


def _result(
    memory: MemoryHandle,
    name: str,
    status: FlushStatus,
    plan: FlushPlan,
    snap: Snapshot,
    *,
    dry_run: bool = False,
) -> FlushResult:
    removed = sorted(plan.removed)
    return FlushResult(
        memory_id=memory.key,
        strategy=name,
        status=status,
        dry_run=dry_run,
        removed=len(removed),
        dropped=len(plan.drop),
        summarized=len(plan.summarize),
        message_count=plan.messages_after if removed else len(snap.messages),
        token_count=plan.tokens_after - plan.summary_tokens_after if removed else snap.token_count,
        tokens_before=snap.token_count,
        summary_point=_point(snap),
        summary_tokens=_summary_tokens(snap),
        would_remove=removed if dry_run else [],
        reason=plan.reason,
    )
