"""The Redis store: every read and write of memory data, one round trip each where possible.

Writes that touch several keys of one memory are Lua scripts (``store/lua/*.lua``), loaded once
per store and called by SHA. The global index updates (expiry, last access) ride in the same
pipeline as separate commands, so they stay out of the per-memory script (Redis Cluster: other
slots) while still costing no extra round trip on a single node; on a Redis Cluster they follow
the script as their own pipeline (``ScriptRunner._run_with_hints``). redis-py errors become
:class:`StoreUnavailable` / :class:`StoreError` here, at the edge.

An error raised by a write means the write did not happen (or, for :class:`StoreUnavailable`, that
the reply was lost: see there). Index commands are hints (cleanup and reconcile repair them, and
an append refreshes them within ``INDEX_REFRESH_MAX_S``), so a failed index command after a
per-memory write that succeeded is logged, never raised: raising would tell the caller that an
applied write failed, and an append retried on that error would be stored twice.

Index scores may lag (the append hot path): an append writes the two index entries of a memory
only when this store has not written them within ``min(INDEX_REFRESH_MAX_S, ttl / 10)``; the
appends in between are a lone ``EVALSHA`` sent on the lean path of :mod:`memory_engine.store.lane`
(cheaper for the client than a redis-py pipeline carrying the two ``ZADD`` s). So an
entry's score can be up to 60 s older than the memory's last append, and that is harmless:

- expiry index: a stale score is earlier than the real expiry, and cleanup
  (:func:`~memory_engine.engine.maintenance.cleanup`) treats scores as hints: it removes a memory
  only
  when its metadata is gone (``PTTL`` -2) and re-indexes a live one with its real TTL. So a memory
  is never removed early; the keys themselves expire on time in Redis (every key carries the TTL);
- access index: read only by reconcile (a window of twice its interval, 30 min by default) and
  by statistics, for which a minute does not matter;
- a memory created by an append (new, or deleted elsewhere and written again) is always indexed
  at once, whatever this store remembers: the script reports that it created the metadata.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, Unpack

from redis import exceptions as redis_errors

from memory_engine.core.append import (
    AppendOptions,
    AppendOutcome,
    PendingMessage,
    decode_reply,
    script_arguments,
)
from memory_engine.core.columns import columns_of, position_of_seq, seq_runs
from memory_engine.core.commands import (
    FLUSH_MARKER_UNPUBLISHED,
    INDEX_MEMO_MAX_ENTRIES,
    INDEX_REFRESH_MAX_S,
    IndexMemo,
    clear_call,
    decode_flush_marker,
    decode_pop_reply,
    decode_replace_reply,
    flush_marker_call,
    memory_key_names,
    pop_call,
    record_use_call,
    replace_call,
    rewrap_calls,
    seal_summary_text,
    summary_from_hash,
)
from memory_engine.core.context import ContextWindow
from memory_engine.core.plans import Snapshot, Summary
from memory_engine.crypto import KeyRing
from memory_engine.errors import FlushConflict, LockLost, MemoryErased
from memory_engine.keys import KeySpace, MemoryKeys
from memory_engine.messages import Message
from memory_engine.store.connections import RedisClient
from memory_engine.store.indexes import IndexStore, add_subject_commands, unindex_commands
from memory_engine.store.lane import command_head, lane_for
from memory_engine.store.locks import MemoryLock
from memory_engine.store.plumbing import (
    forget_hints,
    index_hints,
    pending_hint,
    translate_errors,
)
from memory_engine.store.reads import MemoryReads

__all__ = [
    "FLUSH_MARKER_UNPUBLISHED",
    "INDEX_MEMO_MAX_ENTRIES",
    "INDEX_REFRESH_MAX_S",
    "CommitResult",
    "ContextWindow",
    "MemoryStore",
    "RewrapCounts",
    "PendingMessage",
    "summary_from_hash",
    "translate_errors",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
_SCRIPT_NAMES = (
    "append",
    "replace",
    "clear",
    "commit",
    "reconcile",
    "context",
    "flush_marker",
    "record_use",
    "pop",
    "reencrypt",
)


REWRAP_CHUNK = 200
"""Elements re-encrypted per ``reencrypt.lua`` call: bounds how long one call holds Redis."""
REWRAP_MAX_ROUNDS = 5
"""Reads of one memory by ``reencrypt`` before it reports the elements that kept moving."""


@dataclass(frozen=True, slots=True)
class RewrapCounts:
    """What re-encrypting one memory did: fields swapped in (messages and the summary), fields
    still not under the target key because they kept moving (0 = done), reads it took."""

    rewrapped: int
    missed: int
    rounds: int


@dataclass(frozen=True, slots=True)
class CommitResult:
    dropped: int
    summarized: int
    tokens_removed: int
    message_count: int
    token_count: int
    epoch: int


class MemoryStore(MemoryReads):
    """Data access for memories. Thread-safe: redis-py's pool hands each call its connection."""

    def __init__(
        self, client: RedisClient, keyspace: KeySpace, *, keyring: KeyRing | None = None
    ) -> None:
        super().__init__(client, _SCRIPT_NAMES)
        self.keyspace = keyspace
        # Encryption at rest (docs/encryption.md): reads open envelopes with it, the commit
        # seals the summary; None: everything is written in clear.
        self.keyring = keyring
        # When an append carries its memory's index writes (module docstring).
        self._index_memo = IndexMemo()
        # The lean single-command path (memory_engine/resp.py) and the memoised leading
        # arguments of the append script per (keys, resource arguments).
        self._lane = lane_for(client)
        self.indexes = IndexStore(client, keyspace)
        self._append_heads: dict[tuple[tuple[str, ...], tuple[Any, ...]], bytes] = {}

    def lock(self, keys: MemoryKeys, ttl_s: float, *, what: str = "flush") -> MemoryLock:
        """The memory's lock (not yet acquired): owner token, renewal, fencing."""
        return MemoryLock(self.redis, keys.lock, ttl_s, what=what)

    def close(self) -> None:
        """Give the connections the append path keeps back to the client's pool."""
        if self._lane is not None:
            self._lane.close()

    # ---- writes ----------------------------------------------------------------------

    def append(
        self,
        keys: MemoryKeys,
        messages: Sequence[PendingMessage],
        *,
        now: float | None = None,
        subject_index: str | None = None,
        **options: Unpack[AppendOptions],
    ) -> AppendOutcome:
        """Append atomically (all or none) in one round trip; index the memory when due.

        ``archive``: the resource's archive argument (``core.commands.archive_argument``).
        ``subject_index``: the data subject's SET of memory ids; when the index writes are due,
        its ``SADD`` goes *before* the script in the same pipeline, so an erasure that could
        miss the memory also finds its tombstone refusing the script (docs/data-protection.md).

        ``tracks_use``: the resource records message uses (LRU strategies), so the script keeps
        the TTL of the memory's use set sliding too.

        ``token_ceiling`` / ``message_ceiling`` (0 = none): the hard ceiling. Beyond it the
        script evicts the oldest messages (``AppendOutcome.evicted``), or, with
        ``refuse_over_ceiling``, writes nothing and this raises :class:`MemoryFull`.

        One socket write: the script alone, or, when the memory's index entries are due (module
        docstring), the script and the two ``ZADD`` s in one pipeline. Only when the script
        reports that it created the memory although its index entries were not due (it was
        deleted and written again within the refresh interval) does a second round trip follow.
        """
        now = time.time() if now is None else now
        arguments = script_arguments(keys, messages, now=now, **options)
        ttl_s = options["ttl_s"]
        script_keys, static, dynamic = arguments.keys, arguments.static, arguments.dynamic
        memory_id = keys.memory_id
        index_due = self._index_memo.due(memory_id, now, ttl_s)
        if index_due:

            def hints(pipe: Any) -> None:
                self._add_index_commands(pipe, memory_id, now, ttl_s)

            def subject_first(pipe: Any) -> None:
                assert subject_index is not None
                add_subject_commands(pipe, subject_index, memory_id, ttl_s)

            write = self.evalsha_command("append", script_keys, (*static, *dynamic))
            before = subject_first if subject_index is not None else None
            reply = self._run_with_hints("append", memory_id, write, hints, before)
        else:
            reply = self._send_append(script_keys, static, dynamic)
        try:
            outcome, created = decode_reply(reply, memory_id, arguments)
        except MemoryErased:
            self._index_memo.forget(memory_id)
            if index_due:  # take back the index writes that rode with the refused script
                self._write_hints(
                    "unindex erased memory",
                    memory_id,
                    lambda pipe: unindex_commands(self.keyspace, pipe, memory_id, subject_index),
                )
            raise
        if created and not index_due:
            self._write_index(memory_id, now, ttl_s, subject_index)
        if index_due or created:
            self._index_memo.remember(memory_id, now)
        return outcome

    def _send_append(
        self, script_keys: tuple[str, ...], static: tuple[Any, ...], dynamic: list[bytes]
    ) -> Any:
        """The append script alone, on the lean path of :mod:`~memory_engine.store.lane` when the
        client
        allows it. Its leading arguments (sha, keys, the resource's ARGV) are packed once per
        memory and resource and memoised."""
        lane = self._lane
        if lane is None:
            return self._call_script("append", "append", script_keys, (*static, *dynamic))
        memo_key = (script_keys, static)
        head = self._append_heads.get(memo_key)
        if head is None:
            head = command_head(
                "EVALSHA",
                self._shas["append"],
                str(len(script_keys)),
                *script_keys,
                *map(str, static),
            )
            if len(self._append_heads) >= INDEX_MEMO_MAX_ENTRIES:
                self._append_heads.clear()
            self._append_heads[memo_key] = head
        head_count = 3 + len(script_keys) + len(static)
        with translate_errors("append"):
            try:
                return lane.send(head, head_count, dynamic)
            except redis_errors.NoScriptError:
                # The script did not run (Redis restarted or SCRIPT FLUSH): load and send again.
                self._load_scripts()
                return lane.send(head, head_count, dynamic)

    # ---- index hints (the append hot path) -----------------------------------------------

    def _add_index_commands(self, pipe: Any, memory_id: str, now: float, ttl_s: int) -> None:
        index_hints(self.keyspace, memory_id, now, ttl_s)(pipe)

    def _write_index(
        self, memory_id: str, now: float, ttl_s: int, subject_index: str | None = None
    ) -> None:
        def build(pipe: Any) -> None:
            if subject_index is not None:
                add_subject_commands(pipe, subject_index, memory_id, ttl_s)
            self._add_index_commands(pipe, memory_id, now, ttl_s)

        self._write_hints("index memory", memory_id, build)

    def replace(
        self,
        keys: MemoryKeys,
        messages: Sequence[PendingMessage],
        *,
        resource_id: str,
        ttl_s: int,
        now: float | None = None,
        archive: str = "",
    ) -> tuple[int, int, int]:
        """Replace all messages; keep the TTL, bump the epoch. -> (count, tokens, epoch)."""
        now = time.time() if now is None else now
        script_keys, args = replace_call(
            keys, messages, resource_id=resource_id, ttl_s=ttl_s, now=now, archive=archive
        )

        def hints(pipe: Any) -> None:
            pipe.zadd(self.keyspace.access_index, {keys.memory_id: now})

        write = self.evalsha_command("replace", script_keys, args)
        reply = self._run_with_hints("replace", keys.memory_id, write, hints)
        try:
            return decode_replace_reply(reply, keys.memory_id)
        except MemoryErased:  # take back the access-index entry that rode with the script
            self._write_hints(
                "unindex erased memory",
                keys.memory_id,
                lambda pipe: unindex_commands(self.keyspace, pipe, keys.memory_id, None),
            )
            raise

    def clear(self, keys: MemoryKeys, now: float | None = None, archive: str = "") -> int:
        """Remove all messages and the summary; keep metadata. Returns how many were cleared."""
        now = time.time() if now is None else now
        cleared, _epoch = self._call_script("clear", "clear", *clear_call(keys, now, archive))
        return int(cleared)

    def pop(self, keys: MemoryKeys, now: float | None = None) -> Message | None:
        """Remove and return the newest message (``lua/pop.lua``: counted as cleared, the epoch
        moves); ``None`` when there is none."""
        call = pop_call(keys, time.time() if now is None else now)
        return decode_pop_reply(self._call_script("pop", "pop", *call), keys.memory_id)

    def delete(self, keys: MemoryKeys) -> bool:
        """Remove every key of the memory and its index entries. True if it existed.

        One round trip (two on a cluster): the ``DEL`` of the memory's keys (one slot), then its
        index entries (hints: their failure is logged; cleanup drops entries whose memory is
        gone)."""

        def write(target: Any) -> Any:
            return target.delete(*memory_key_names(keys))

        hints = forget_hints(self.keyspace, keys.memory_id)
        return bool(self._run_with_hints("delete", keys.memory_id, write, hints))

    def commit(
        self,
        keys: MemoryKeys,
        snapshot: Snapshot,
        *,
        drop: Sequence[int],
        summarize: Sequence[int],
        summary: Summary | None,
        lock_token: str | None,
        counter_field: str,
        clear_marker: bool,
        created_at: str,
        now: float | None = None,
        archive: str = "",
    ) -> CommitResult:
        """Apply a plan atomically; raise :class:`FlushConflict` or :class:`LockLost` if fenced.

        The script reads only the head of the list up to the last removed seq (its position in
        ``snapshot``), not the whole list: see ``lua/commit.lua``.
        """
        now = time.time() if now is None else now
        # Where the removed seqs sit in the snapshot (lua/commit.lua): the window (1 + the
        # position of the last one; 0 = unknown) and, when they form one run, its position and
        # token total, which let the script cut them without reading them.
        drop_runs, summarize_runs = seq_runs(drop), seq_runs(summarize)
        columns = columns_of(snapshot.messages)
        last = max(max(drop, default=0), max(summarize, default=0))
        position = position_of_seq(columns, last) if last else None
        run_at, run_tokens = -1, 0
        if len(drop_runs) + len(summarize_runs) == 1:
            first, last = (drop_runs or summarize_runs)[0]
            start = position_of_seq(columns, first)
            if start is not None and position == start + last - first:
                run_at, run_tokens = start, sum(columns.tokens[start : position + 1])
        args: list[Any] = [
            snapshot.epoch,
            created_at,
            lock_token or "",
            repr(now),
            counter_field,
            "1" if clear_marker else "0",
            "1" if summary is not None else "0",
            seal_summary_text(summary.text, keys.memory_id, self.keyring) if summary else "",
            summary.token_count if summary else 0,
            summary.summary_point if summary else 0,
            summary.source if summary else "",
            ",".join(f"{a}:{b}" for a, b in drop_runs),
            ",".join(f"{a}:{b}" for a, b in summarize_runs),
            0 if position is None else position + 1,
            run_at,
            run_tokens,
            archive,
        ]
        script_keys = (
            keys.msgs,
            keys.meta,
            keys.summary,
            keys.used,
            keys.lock,
            keys.flush,
            keys.archive,
        )
        status, dropped, summarized, tokens, count, total, epoch = self._call_script(
            "commit", "commit", script_keys, args
        )
        if status == -1:
            raise FlushConflict(
                f"memory {keys.memory_id} changed during the flush "
                f"(epoch {snapshot.epoch} -> {epoch})"
            )
        if status == -2:
            raise LockLost(f"lock of memory {keys.memory_id} was lost before the commit")
        return CommitResult(
            int(dropped), int(summarized), int(tokens), int(count), int(total), int(epoch)
        )

    def set_flush_marker(
        self, keys: MemoryKeys, ttl_s: int, now: float | None = None
    ) -> bool | None:
        """SET NX the flush marker of an existing memory, then index it (``lua/flush_marker.lua``).

        True if this call set it, False if a flush was already pending, None if the memory does
        not exist (nothing written: a deleted memory leaves no marker nor pending entry)."""
        now = time.time() if now is None else now
        call = flush_marker_call(keys, ttl_s, now)
        was_set = decode_flush_marker(self._call_script("set flush marker", "flush_marker", *call))
        if was_set:
            self.index_pending(keys, now)
        return was_set

    def index_pending(self, keys: MemoryKeys, now: float) -> None:
        """Add the memory to the pending-flush index (a hint for the marker sweep; a failure is
        logged)."""
        build = pending_hint(self.keyspace, keys.memory_id, now)
        self._write_hints("index pending flush", keys.memory_id, build)

    def release_flush_marker(self, keys: MemoryKeys) -> None:
        """Drop the marker but keep the pending-index entry, so the sweep retries the flush."""
        with translate_errors("release flush marker"):
            self.redis.delete(keys.flush)

    def mark_flush_unpublished(self, keys: MemoryKeys) -> None:
        """Keep the flush marker (so appends do not publish again) but flag its task as never
        published, and make its pending-index entry due (score 0) for the next marker sweep."""

        def build(pipe: Any) -> None:
            pipe.set(keys.flush, FLUSH_MARKER_UNPUBLISHED, xx=True, keepttl=True)
            pipe.zadd(self.keyspace.pending_index, {keys.memory_id: 0})

        self._run_pipeline("mark flush unpublished", build)

    def claim_unpublished_flush(self, keys: MemoryKeys, now: float | None = None) -> bool:
        """True if the marker was flagged unpublished and this call claimed it (one atomic
        ``SET ... XX KEEPTTL GET``: of concurrent sweeps, one claims it); the caller publishes."""
        now = time.time() if now is None else now
        with translate_errors("claim unpublished flush"):
            old = self.redis.set(keys.flush, repr(now), xx=True, keepttl=True, get=True)
        old_text = old.decode() if isinstance(old, bytes) else old
        if old_text != FLUSH_MARKER_UNPUBLISHED:
            # No marker (nothing written), or a live one whose informational timestamp we
            # replaced by another: nothing to publish.
            return False
        with translate_errors("claim unpublished flush"):
            self.redis.zadd(self.keyspace.pending_index, {keys.memory_id: now}, xx=True)
        return True

    def clear_flush_marker(self, keys: MemoryKeys) -> None:
        def write(target: Any) -> Any:
            return target.delete(keys.flush)

        def hints(pipe: Any) -> None:
            pipe.zrem(self.keyspace.pending_index, keys.memory_id)

        self._run_with_hints("clear flush marker", keys.memory_id, write, hints)

    def record_use(
        self, keys: MemoryKeys, seqs: Sequence[int], ttl_s: int, now: float | None = None
    ) -> None:
        """LRU bookkeeping: ZADD the returned seqs (O(k log n)) with the memory's TTL, only if the
        memory still exists (``lua/record_use.lua``: a read that returns after a ``delete()``
        must not leave a use set that a memory recreated under the same key would inherit)."""
        call = record_use_call(keys, seqs, ttl_s, time.time() if now is None else now)
        if call is not None:
            self._call_script("record use", "record_use", *call)

    def reconcile(self, keys: MemoryKeys, now: float | None = None) -> int:
        """Recompute counters from the list; returns how many fields were corrected."""
        now = time.time() if now is None else now
        fixed, _count, _tokens = self._call_script(
            "reconcile", "reconcile", (keys.msgs, keys.meta), (repr(now),)
        )
        return int(fixed)

    # ---- encryption at rest ---------------------------------------------------------------

    def reencrypt(
        self,
        keys: MemoryKeys,
        keyring: KeyRing,
        *,
        chunk: int = REWRAP_CHUNK,
        max_rounds: int = REWRAP_MAX_ROUNDS,
    ) -> RewrapCounts:
        """Re-encrypt one memory's messages and summary under the key ``keyring`` chooses for
        it now (key rotation; elements stored in clear get encrypted too).

        Reads the list and the summary text, re-encrypts in Python what is not under the target
        key (:func:`~memory_engine.core.commands.rewrap_calls`), then swaps them in with
        ``lua/reencrypt.lua``, ``chunk`` elements per call: each element is replaced only if
        its position still holds the very bytes that were read (compare-and-swap). Appends
        (the tail), flushes and clears (which move or remove elements and bump the epoch) are
        never undone: an element that moved is missed, and the memory is read again, up to
        ``max_rounds`` times. Raises :class:`DecryptionError` when an element cannot be opened
        with ``keyring`` (a shredded project's memory)."""
        rewrapped = missed = 0
        for round_ in range(max_rounds):

            def build(pipe: Any) -> None:
                pipe.lrange(keys.msgs, 0, -1)
                pipe.hget(keys.summary, "text")

            raw, summary_text = self._run_pipeline("reencrypt read", build, transaction=True)
            calls = rewrap_calls(raw, summary_text, keys.memory_id, keyring, chunk=chunk)
            if not calls:
                return RewrapCounts(rewrapped, 0, round_)
            missed = 0
            for argv in calls:
                swapped, miss = self._call_script(
                    "reencrypt", "reencrypt", (keys.msgs, keys.summary), argv
                )
                rewrapped += int(swapped)
                missed += int(miss)
            if not missed:
                return RewrapCounts(rewrapped, 0, round_ + 1)
        return RewrapCounts(rewrapped, missed, max_rounds)
