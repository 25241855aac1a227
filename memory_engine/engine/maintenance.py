"""Periodic maintenance: cleanup of expired memories, reconciliation, and stale flush markers.

Every sweep finds its work through the global indexes (sorted sets), in batches:
O(log n + found) per batch, never ``KEYS`` or a full ``SCAN``. All of it is idempotent: running a
sweep twice, or two sweeps at once, changes nothing the first did not.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memory_engine.errors import ConfigError, KeyTemplateError, MemoryEngineError
from memory_engine.store import FLUSH_MARKER_UNPUBLISHED

if TYPE_CHECKING:
    from memory_engine.engine.handle import EngineClient

__all__ = [
    "CleanupReport",
    "ReconcileReport",
    "SweepReport",
    "cleanup",
    "reconcile",
    "sweep_markers",
]

log = logging.getLogger(__name__)

CLEANUP_BATCH = 1000
RECONCILE_BATCH = 200
SWEEP_BATCH = 500


@dataclass
class CleanupReport:
    expired_removed: int = 0
    keys_unlinked: int = 0
    reindexed: int = 0
    dry_run: bool = False
    removed_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "expired_removed": self.expired_removed,
            "keys_unlinked": self.keys_unlinked,
            "reindexed": self.reindexed,
            "dry_run": self.dry_run,
        }


def cleanup(
    client: EngineClient,
    *,
    now: float | None = None,
    batch: int = CLEANUP_BATCH,
    max_batches: int = 100,
    dry_run: bool = False,
) -> CleanupReport:
    """Remove the leftovers of memories whose TTL passed: every key of the memory (a summary or a
    use set may outlive the list), and their index entries. A memory whose TTL was extended since
    it was indexed (replace keeps the TTL) is re-indexed, not removed."""
    now = time.time() if now is None else now
    indexes = client.store.indexes
    report = CleanupReport(dry_run=dry_run)
    start = "-inf"
    for _ in range(max_batches):
        ids = indexes.expired(start, now, batch)
        if not ids:
            break
        ttls = indexes.remaining_ttls_ms(ids)
        gone = [mid for mid, ttl in zip(ids, ttls, strict=True) if ttl == -2]
        alive = [(mid, ttl) for mid, ttl in zip(ids, ttls, strict=True) if ttl != -2]
        report.expired_removed += len(gone)
        report.removed_ids.extend(gone)
        if dry_run:
            if len(ids) < batch:
                break
            # Without writes the same ids come back; move the window past them.
            start = f"({indexes.expiry_score(ids[-1])}"
            continue
        report.keys_unlinked += indexes.remove_expired(gone, alive, now)
        report.reindexed += len(alive)
        if len(ids) < batch:
            break
    if report.expired_removed:
        log.info(
            "cleanup removed %d expired memories (%d keys)",
            report.expired_removed,
            report.keys_unlinked,
        )
    return report


@dataclass
class ReconcileReport:
    checked: int = 0
    fixed_memories: int = 0
    fixed_fields: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "checked": self.checked,
            "fixed_memories": self.fixed_memories,
            "fixed_fields": self.fixed_fields,
        }


def reconcile(
    client: EngineClient,
    *,
    since_s: float,
    now: float | None = None,
    batch: int = RECONCILE_BATCH,
    max_memories: int = 10_000,
) -> ReconcileReport:
    """Recompute the counters of memories written in the last ``since_s`` seconds (through the
    access index) and fix any that drifted from their list."""
    now = time.time() if now is None else now
    ks = client.keyspace
    report = ReconcileReport()
    offset = 0
    while report.checked < max_memories:
        ids = client.store.indexes.accessed_since(now - since_s, offset, batch)
        if not ids:
            break
        for mid in ids:
            fixed = client.store.reconcile(ks.memory(mid), now)
            report.checked += 1
            if fixed:
                report.fixed_memories += 1
                report.fixed_fields += fixed
                log.warning("reconcile fixed %d counters of memory %s", fixed, mid)
        offset += len(ids)
    return report


@dataclass
class SweepReport:
    checked: int = 0
    released: int = 0
    reflushed: int = 0
    republished: int = 0
    evictions: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "released": self.released,
            "reflushed": self.reflushed,
            "republished": self.republished,
            "evictions": len(self.evictions),
        }


def sweep_markers(
    client: EngineClient,
    *,
    stale_after_s: float,
    now: float | None = None,
    batch: int = SWEEP_BATCH,
) -> SweepReport:
    """Look at flushes requested more than ``stale_after_s`` ago (the pending index).

    - marker gone (the flush finished, or its worker died and the marker expired): drop the index
      entry, and if the memory is still at its threshold request a new flush (a lost task heals);
    - marker flagged unpublished (the broker failed, or its breaker was open, when the flush was
      requested; such entries are due at once): publish the flush now, through the broker
      breaker (while it is open the entry waits for the next sweep);
    - marker still set and the memory above a hard limit: the flush cannot keep up (summarizer
      down, no worker on its queue), so the memory is listed for ``memory.evict``.
    """
    from memory_engine.engine.flush import over_hard_limit

    now = time.time() if now is None else now
    ks = client.keyspace
    indexes = client.store.indexes
    report = SweepReport()
    for mid, marker, resource_id in indexes.pending_before(now - stale_after_s, batch):
        report.checked += 1
        if not resource_id:  # the memory is gone
            client.store.clear_flush_marker(ks.memory(mid))
            report.released += 1
            continue
        try:
            memory = client.memory_by_id(mid, resource_id)
        except KeyTemplateError:  # an id older rules let in: skip it, the sweep goes on
            log.warning("pending flush of %a has an invalid memory id; skipped", mid)
            continue
        except ConfigError:
            log.warning("pending flush of %s names unknown resource %s", mid, resource_id)
            continue
        try:
            if not marker:
                indexes.drop_pending(mid)
                report.released += 1
                if _at_threshold(memory) and memory.request_flush():
                    report.reflushed += 1
            elif marker == FLUSH_MARKER_UNPUBLISHED:
                if memory.publish_unpublished_flush():
                    report.republished += 1
            elif over_hard_limit(memory):
                report.evictions.append((mid, resource_id))
        except MemoryEngineError as exc:
            log.warning("sweep of %s failed: %s", mid, exc)
    return report


def _at_threshold(memory: Any) -> bool:
    token_thr, msg_thr = memory.resource.trigger_thresholds()
    stats = memory.stats()
    return bool(
        (token_thr and stats.token_count + stats.summary_tokens >= token_thr)
        or (msg_thr and stats.message_count >= msg_thr)
    )
