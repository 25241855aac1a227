"""The read side of :class:`~memory_engine.store.memory.MemoryStore`: messages, pages, the
archive, the context window's read-only script, snapshots for flushes, metadata and the summary.
Every read decodes through :mod:`memory_engine.core.commands` (and opens encrypted elements with
the store's key ring)."""

from __future__ import annotations

import time
from typing import Any

from memory_engine.core.columns import StoredMessages
from memory_engine.core.commands import (
    context_call,
    decode_archive,
    decode_context_reply,
    decode_hash,
    decode_messages,
    summary_from_hash,
)
from memory_engine.core.context import ContextWindow
from memory_engine.core.plans import Snapshot, Summary
from memory_engine.crypto import KeyRing
from memory_engine.keys import KeySpace, MemoryKeys
from memory_engine.messages import Message
from memory_engine.store.plumbing import ScriptRunner, translate_errors

__all__ = ["MemoryReads"]


class MemoryReads(ScriptRunner):
    """Reads of one memory's keys; writes are in the subclass."""

    keyspace: KeySpace
    keyring: KeyRing | None

    def read(self, keys: MemoryKeys) -> list[Message]:
        with translate_errors("read"):
            raw = self.redis.lrange(keys.msgs, 0, -1)
        return decode_messages(raw, keys.memory_id, self.keyring)

    def read_page(self, keys: MemoryKeys, offset: int, limit: int) -> tuple[list[Message], int]:
        def build(pipe: Any) -> None:
            pipe.llen(keys.msgs)
            pipe.lrange(keys.msgs, offset, offset + limit - 1)

        total, raw = self._run_pipeline("read page", build, transaction=True)
        return decode_messages(raw, keys.memory_id, self.keyring), int(total)

    def read_archive(self, keys: MemoryKeys, offset: int, limit: int) -> tuple[list[Message], int]:
        """A page of the memory's archive (oldest first) and its length, in one MULTI."""

        def build(pipe: Any) -> None:
            pipe.llen(keys.archive)
            pipe.lrange(keys.archive, offset, offset + limit - 1)

        total, raw = self._run_pipeline("read archive", build, transaction=True)
        return decode_archive(raw, keys.memory_id), int(total)

    def read_tail(self, keys: MemoryKeys, count: int) -> list[Message]:
        with translate_errors("read tail"):
            raw = self.redis.lrange(keys.msgs, -count, -1)
        return decode_messages(raw, keys.memory_id, self.keyring)

    def context_window(self, keys: MemoryKeys, budget: int | None) -> ContextWindow:
        """What ``Memory.context()`` reads, in one round trip (``lua/context.lua``): the summary,
        the shortest tail whose non-system messages exceed ``budget`` tokens (``None``: the whole
        list), and the system messages before that tail."""
        reply = self._call_script("context", "context", *context_call(keys, budget))
        return decode_context_reply(reply, keys.memory_id, self.keyring)

    def snapshot(
        self, keys: MemoryKeys, *, with_usage: bool = False
    ) -> tuple[Snapshot, dict[str, str]]:
        """A consistent view (MULTI/EXEC): messages, metadata, summary and LRU use times."""

        def build(pipe: Any) -> None:
            pipe.lrange(keys.msgs, 0, -1)
            pipe.hgetall(keys.meta)
            pipe.hgetall(keys.summary)
            if with_usage:
                pipe.zrange(keys.used, 0, -1, withscores=True)

        replies = self._run_pipeline("snapshot", build, transaction=True)
        raw, meta_raw, summary_raw = replies[0], replies[1], replies[2]
        meta = decode_hash(meta_raw)
        summary = summary_from_hash(decode_hash(summary_raw), keys.memory_id, self.keyring)
        used: dict[int, float] = {}
        if with_usage:
            used = {int(m): float(score) for m, score in replies[3]}
        snap = Snapshot(
            key=keys.memory_id,
            # Decoded on access: planners read seqs and token counts from the element headers.
            messages=StoredMessages(raw, memory_id=keys.memory_id, keyring=self.keyring),
            epoch=int(meta.get("epoch", 0)),
            last_seq=int(meta.get("seq", 0)),
            token_count=int(meta.get("token_count", 0)),
            summary=summary,
            last_used=used,
            taken_at=time.time(),
        )
        return snap, meta

    def metadata(self, keys: MemoryKeys) -> tuple[dict[str, str], int, bool, dict[str, str]]:
        """(meta hash, ttl in seconds as Redis reports it, flush pending, summary hash)."""

        def build(pipe: Any) -> None:
            pipe.hgetall(keys.meta)
            pipe.ttl(keys.meta)
            pipe.exists(keys.flush)
            pipe.hgetall(keys.summary)

        meta, ttl, pending, summary = self._run_pipeline("stats", build, transaction=True)
        return decode_hash(meta), int(ttl), bool(pending), decode_hash(summary)

    def summary(self, keys: MemoryKeys) -> Summary | None:
        with translate_errors("read summary"):
            raw = decode_hash(self.redis.hgetall(keys.summary))
        return summary_from_hash(raw, keys.memory_id, self.keyring)
