"""The global indexes (sorted sets by expiry, last access and pending flush) as the maintenance
tasks read and repair them. Scores are hints (``store/memory.py`` docstring): these commands find
work in O(log n + found), never with ``KEYS`` or ``SCAN``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from memory_engine.core.commands import subject_index_ttl_s
from memory_engine.keys import KeySpace
from memory_engine.store.plumbing import translate_errors

__all__ = ["IndexStore", "PendingEntry", "add_subject_commands", "unindex_commands"]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def add_subject_commands(pipe: Any, subject_index: str, memory_id: str, ttl_s: int) -> None:
    """Three commands that list the memory under its data subject: ``SADD``, then the SET's TTL
    extended (never shortened) to outlive the memory (``core.commands.subject_index_ttl_s``)."""
    pipe.sadd(subject_index, memory_id)
    ttl = subject_index_ttl_s(ttl_s)
    if ttl is None:
        pipe.persist(subject_index)
        pipe.persist(subject_index)
    else:
        pipe.expire(subject_index, ttl, nx=True)
        pipe.expire(subject_index, ttl, gt=True)


def unindex_commands(
    keyspace: KeySpace, pipe: Any, memory_id: str, subject_index: str | None
) -> None:
    """Take a memory out of the global indexes (and its subject's SET)."""
    if subject_index is not None:
        pipe.srem(subject_index, memory_id)
    for index in (keyspace.expiry_index, keyspace.access_index, keyspace.pending_index):
        pipe.zrem(index, memory_id)


class PendingEntry(NamedTuple):
    """A memory of the pending-flush index: its marker's value (``None``: gone) and resource."""

    memory_id: str
    marker: str | None
    resource_id: str | None


class IndexStore:
    """Reads and repairs of the global indexes for cleanup, reconcile and the marker sweep."""

    def __init__(self, client: Any, keyspace: KeySpace) -> None:
        self.redis = client
        self.keyspace = keyspace

    def expired(self, start: str, now: float, batch: int) -> list[str]:
        """Ids whose expiry score is in ``[start, now]``, oldest first, at most ``batch``."""
        with translate_errors("cleanup"):
            found = self.redis.zrangebyscore(
                self.keyspace.expiry_index, start, now, start=0, num=batch
            )
        return [_text(m) for m in found]

    def expiry_score(self, memory_id: str) -> float | None:
        with translate_errors("cleanup"):
            score = self.redis.zscore(self.keyspace.expiry_index, memory_id)
        return float(score) if score is not None else None

    def remaining_ttls_ms(self, memory_ids: Sequence[str]) -> list[int]:
        """``PTTL`` of each memory's metadata (-2: gone, -1: no TTL), one round trip."""
        with translate_errors("cleanup"):
            pipe = self.redis.pipeline(transaction=False)
            for mid in memory_ids:
                pipe.pttl(self.keyspace.memory(mid).meta)
            return [int(x) for x in pipe.execute()]

    def remove_expired(
        self, gone: Sequence[str], alive: Sequence[tuple[str, int]], now: float
    ) -> int:
        """Unlink every key of the ``gone`` memories and their index entries; re-index the
        ``alive`` ones with their real TTL (ms; -1: none, so no expiry entry). Returns the
        number of keys unlinked."""
        ks = self.keyspace
        with translate_errors("cleanup"):
            pipe = self.redis.pipeline(transaction=False)
            for mid in gone:
                k = ks.memory(mid)
                # As a raw command: redis-py's cluster pipeline refuses a multi-key unlink()
                # even when, as here, every key is in one slot.
                pipe.execute_command(
                    "UNLINK", k.msgs, k.meta, k.summary, k.used, k.flush, k.lock, k.archive
                )
            if gone:
                pipe.zrem(ks.expiry_index, *gone)
                pipe.zrem(ks.access_index, *gone)
                pipe.zrem(ks.pending_index, *gone)
            for mid, ttl in alive:
                if ttl == -1:
                    pipe.zrem(ks.expiry_index, mid)
                else:
                    pipe.zadd(ks.expiry_index, {mid: now + ttl / 1000})
            replies = pipe.execute()
        return sum(int(x) for x in replies[: len(gone)])

    def accessed_since(self, since: float, offset: int, batch: int) -> list[str]:
        """Ids written since ``since`` (the access index), from ``offset``, at most ``batch``."""
        with translate_errors("reconcile"):
            found = self.redis.zrangebyscore(
                self.keyspace.access_index, since, "+inf", start=offset, num=batch
            )
        return [_text(m) for m in found]

    def scan_memories(self, cursor: int, batch: int) -> tuple[int, list[str]]:
        """One ``ZSCAN`` step over the access index (every memory an append indexed): the next
        cursor (0: done) and the ids found. ZSCAN returns every member present for the whole
        scan at least once, whatever is added or removed meanwhile (key rotation)."""
        with translate_errors("scan memories"):
            next_cursor, found = self.redis.zscan(self.keyspace.access_index, cursor, count=batch)
        return int(next_cursor), [_text(member) for member, _score in found]

    def pending_before(self, before: float, batch: int) -> list[PendingEntry]:
        """Memories whose flush was requested before ``before``, with their marker and
        resource, in two round trips at most."""
        ks = self.keyspace
        with translate_errors("sweep markers"):
            ids = [
                _text(m)
                for m in self.redis.zrangebyscore(
                    ks.pending_index, "-inf", before, start=0, num=batch
                )
            ]
            if not ids:
                return []
            pipe = self.redis.pipeline(transaction=False)
            for mid in ids:
                k = ks.memory(mid)
                pipe.get(k.flush)
                pipe.hget(k.meta, "resource_id")
            replies = pipe.execute()
        return [
            PendingEntry(
                mid,
                _text(replies[2 * i]) if replies[2 * i] is not None else None,
                _text(replies[2 * i + 1]) if replies[2 * i + 1] else None,
            )
            for i, mid in enumerate(ids)
        ]

    def drop_pending(self, memory_id: str) -> None:
        with translate_errors("sweep markers"):
            self.redis.zrem(self.keyspace.pending_index, memory_id)
