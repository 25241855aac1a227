"""Reads and deletions of a data subject's memories (``MemoryClient.export_subject`` and
``erase_subject``; ``docs/data-protection.md``). The subject's SET of memory ids lives in its
own slot; each memory is read in one MULTI and erased by ``lua/erase.lua`` in its own slot, so
nothing here spans slots in one command."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memory_engine.core.commands import decode_hash, erase_call
from memory_engine.core.subjects import MemoryDump, live_ids
from memory_engine.keys import KeySpace
from memory_engine.store.indexes import unindex_commands
from memory_engine.store.plumbing import ScriptRunner, translate_errors

__all__ = ["SubjectStore"]

_BATCH = 100


class SubjectStore(ScriptRunner):
    """The subject operations over one redis-py client (thread-safe as the client is)."""

    def __init__(self, client: Any, keyspace: KeySpace) -> None:
        super().__init__(client, ("erase",))
        self.keyspace = keyspace

    def members(self, subject_index: str, project_id: str) -> list[str]:
        """The memory ids listed under the subject (sorted), of ``project_id`` only."""
        with translate_errors("read subject index"):
            return live_ids(self.redis.smembers(subject_index), project_id)

    def dump(self, memory_id: str) -> MemoryDump:
        """Messages, metadata, summary, archive, TTL and flush marker of one memory (MULTI)."""
        keys = self.keyspace.memory(memory_id)

        def build(pipe: Any) -> None:
            pipe.lrange(keys.msgs, 0, -1)
            pipe.hgetall(keys.meta)
            pipe.hgetall(keys.summary)
            pipe.lrange(keys.archive, 0, -1)
            pipe.ttl(keys.meta)
            pipe.exists(keys.flush)

        msgs, meta, summary, archive, ttl, pending = self._run_pipeline(
            "export subject", build, transaction=True
        )
        return MemoryDump(
            memory_id=memory_id,
            messages=list(msgs),
            meta=decode_hash(meta),
            summary=decode_hash(summary),
            archive=list(archive),
            ttl_s=int(ttl),
            flush_pending=bool(pending),
        )

    def erase(self, memory_ids: Sequence[str], now: float, tombstone_ttl_s: int) -> list[int]:
        """Erase each memory (``lua/erase.lua``: every key deleted, a tombstone left) and take it
        out of the global indexes; keys deleted per memory."""
        # One script per memory (its own slot), then its index entries as hints: the write/hint
        # plumbing reloads scripts on NOSCRIPT and is cluster-safe. Erasures are rare; a round
        # trip per memory is their cost.
        return [self._erase_alone(mid, now, tombstone_ttl_s) for mid in memory_ids]

    def _erase_alone(self, memory_id: str, now: float, tombstone_ttl_s: int) -> int:
        def unindex(pipe: Any) -> None:
            unindex_commands(self.keyspace, pipe, memory_id, None)

        script_keys, args = erase_call(self.keyspace.memory(memory_id), now, tombstone_ttl_s)
        write = self.evalsha_command("erase", script_keys, args)
        return int(self._run_with_hints("erase subject", memory_id, write, unindex))

    def forget(self, subject_index: str, memory_ids: Sequence[str]) -> bool:
        """Remove the erased ids from the subject's SET (ids added since stay: their memories
        are found by the next erasure). True when the SET is gone."""
        with translate_errors("erase subject"):
            pipe = self.redis.pipeline(transaction=False)
            for start in range(0, len(memory_ids), _BATCH * 10):
                pipe.srem(subject_index, *memory_ids[start : start + _BATCH * 10])
            pipe.exists(subject_index)
            replies = pipe.execute()
        return not replies[-1]

    def record_erasure(self, record: str, max_entries: int) -> None:
        """Push an erasure record to the capped audit LIST (newest first)."""
        log_key = self.keyspace.erasure_log
        with translate_errors("record erasure"):
            pipe = self.redis.pipeline(transaction=True)
            pipe.lpush(log_key, record)
            pipe.ltrim(log_key, 0, max_entries - 1)
            pipe.execute()

    def erasures(self, limit: int) -> list[str]:
        """The newest ``limit`` erasure records."""
        with translate_errors("read erasures"):
            raw = self.redis.lrange(self.keyspace.erasure_log, 0, limit - 1)
        return [r.decode() if isinstance(r, bytes) else str(r) for r in raw]
