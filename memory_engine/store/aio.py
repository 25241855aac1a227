"""The store over ``redis.asyncio``: what :class:`~memory_engine.aio.AsyncMemory` sends to Redis.

The same Lua scripts (``store/scripts.py``), the same keys, arguments and reply decoding
(:mod:`memory_engine.core.append`, :mod:`memory_engine.core.commands`) as the sync
:class:`~memory_engine.store.memory.MemoryStore`: only the I/O differs. A memory written through
one is read identically through the other, and both may write it at once (every write is one
script or one MULTI in Redis).

Like the sync store, and through the same helpers (``store/plumbing.py``): a per-memory write
and its index commands (hints: their errors are logged, never raised) share one pipeline on a
standalone Redis; on a Redis Cluster (:func:`~memory_engine.store.plumbing.is_cluster`, with
:class:`~memory_engine.store.connections.AsyncEngineCluster`) the write is sent alone and the
hints follow as their own pipeline, since the index keys live in other slots and the cluster
pipeline refuses ``EVALSHA``. ``EVALSHA`` reloads the scripts on NOSCRIPT (the script did not
run), redis-py errors become :class:`StoreUnavailable` / :class:`StoreError`, and nothing that may
have run is retried (a write whose reply was lost may have run). Unlike it, there is no lean
path: calls go through ``redis.asyncio``'s own connection pool (``store/connections.py``
:func:`~memory_engine.store.connections.async_redis_from_settings`).

Cancellation: a task cancelled while its command is in flight leaves the command applied once or
not at all (one script, never retried), and ``redis.asyncio`` disconnects the connection it was
reading from, so no later call reads its reply.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Unpack

from redis import exceptions as redis_errors

from memory_engine.core.append import (
    AppendOptions,
    AppendOutcome,
    PendingMessage,
    decode_reply,
    script_arguments,
)
from memory_engine.core.commands import (
    IndexMemo,
    clear_call,
    context_call,
    decode_archive,
    decode_context_reply,
    decode_flush_marker,
    decode_hash,
    decode_messages,
    decode_pop_reply,
    decode_replace_reply,
    flush_marker_call,
    memory_key_names,
    pop_call,
    record_use_call,
    replace_call,
)
from memory_engine.core.context import ContextWindow
from memory_engine.crypto import KeyRing
from memory_engine.errors import MemoryErased
from memory_engine.keys import KeySpace, MemoryKeys
from memory_engine.messages import Message
from memory_engine.store.connections import AsyncRedisClient
from memory_engine.store.indexes import add_subject_commands, unindex_commands
from memory_engine.store.plumbing import (
    forget_hints,
    index_hints,
    is_cluster,
    log_hint_errors,
    pending_hint,
    translate_errors,
    write_reply,
)
from memory_engine.store.scripts import script_sha, script_source

__all__ = ["AsyncMemoryStore"]

_SCRIPT_NAMES = ("append", "replace", "clear", "context", "flush_marker", "record_use", "pop")


class AsyncMemoryStore:
    """Data access for memories over one ``redis.asyncio`` client. Use it from one event loop
    (the loop its client's connections belong to)."""

    def __init__(
        self, client: AsyncRedisClient, keyspace: KeySpace, *, keyring: KeyRing | None = None
    ) -> None:
        self.redis: Any = client
        # Redis Cluster: no EVALSHA in pipelines, no MULTI across slots (``_run_with_hints``).
        self.cluster = is_cluster(client)
        self.keyspace = keyspace
        self.keyring = keyring  # encryption at rest: reads open envelopes with it
        self._shas = {name: script_sha(name) for name in _SCRIPT_NAMES}
        self._index_memo = IndexMemo()

    # ---- plumbing ----------------------------------------------------------------------

    async def ping(self) -> bool:
        """One ``PING`` (readiness checks); redis-py's error when Redis does not answer."""
        return bool(await self.redis.ping())

    async def _load_scripts(self) -> None:
        for name in _SCRIPT_NAMES:
            self._shas[name] = str(await self.redis.script_load(script_source(name)))

    async def _call_script(
        self, what: str, name: str, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """One ``EVALSHA``; on NOSCRIPT (it did not run) load the scripts and send it again."""
        with translate_errors(what):
            try:
                return await self.redis.evalsha(self._shas[name], len(keys), *keys, *args)
            except redis_errors.NoScriptError:
                await self._load_scripts()
                return await self.redis.evalsha(self._shas[name], len(keys), *keys, *args)

    async def _run_pipeline(
        self, what: str, build: Callable[[Any], None], *, transaction: bool
    ) -> list[Any]:
        with translate_errors(what):
            pipe = self.redis.pipeline(transaction=transaction)
            build(pipe)
            return list(await pipe.execute())

    async def _run_with_hints(
        self,
        what: str,
        memory_id: str,
        write: Callable[[Any], Any],
        hints: Callable[[Any], None],
        before: Callable[[Any], None] | None = None,
    ) -> Any:
        """A per-memory write (one command, ``write(target)``), then index commands (hints,
        ``hints(pipe)``): the sync ``ScriptRunner._run_with_hints``, awaited. Returns the write's
        reply and raises its error (then nothing changed); errors of the hints are logged.

        Standalone: one pipeline, one round trip. Redis Cluster: the write alone, then the hints
        as their own pipeline (two round trips; the indexes may lag the write, as allowed).
        NOSCRIPT: load the scripts and send again (the script did not run). ``before(pipe)``:
        index commands that must reach Redis before the write (``ScriptRunner._run_with_hints``)."""
        if self.cluster:
            if before is not None:
                await self._write_hints(what, memory_id, before)
            with translate_errors(what):
                try:
                    reply = await write(self.redis)
                except redis_errors.NoScriptError:
                    await self._load_scripts()
                    reply = await write(self.redis)
            await self._write_hints(what, memory_id, hints)
            return reply

        before_count = 0

        async def send() -> list[Any]:
            nonlocal before_count
            pipe = self.redis.pipeline(transaction=False)
            if before is not None:
                before(pipe)
                before_count = len(pipe.command_stack)
            write(pipe)
            hints(pipe)
            return list(await pipe.execute(raise_on_error=False))

        with translate_errors(what):
            try:
                return write_reply(what, memory_id, await send(), before_count)
            except redis_errors.NoScriptError:
                await self._load_scripts()
                return write_reply(what, memory_id, await send(), before_count)

    async def _write_hints(self, what: str, memory_id: str, build: Callable[[Any], None]) -> None:
        """Index commands alone, after the memory's write succeeded: failures are logged."""
        try:
            with translate_errors(what):
                pipe = self.redis.pipeline(transaction=False)
                build(pipe)
                replies: list[Any] = list(await pipe.execute(raise_on_error=False))
        except Exception as exc:  # a hint: the write it follows has happened
            replies = [exc]
        log_hint_errors(what, memory_id, replies)

    def _evalsha(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Callable[[Any], Any]:
        """``write`` for :meth:`_run_with_hints`: the named script on a client or a pipeline
        (the SHA read when sent: a reload on NOSCRIPT may change it)."""

        def write(target: Any) -> Any:
            return target.evalsha(self._shas[name], len(keys), *keys, *args)

        return write

    def _add_index_commands(self, pipe: Any, memory_id: str, now: float, ttl_s: int) -> None:
        index_hints(self.keyspace, memory_id, now, ttl_s)(pipe)

    # ---- writes ------------------------------------------------------------------------

    async def append(
        self,
        keys: MemoryKeys,
        messages: Sequence[PendingMessage],
        *,
        now: float | None = None,
        subject_index: str | None = None,
        **options: Unpack[AppendOptions],
    ) -> AppendOutcome:
        """Append atomically in one round trip (``MemoryStore.append`` documents the rest)."""
        now = time.time() if now is None else now
        arguments = script_arguments(keys, messages, now=now, **options)
        ttl_s = options["ttl_s"]
        script_keys, static, dynamic = arguments.keys, arguments.static, arguments.dynamic
        memory_id = keys.memory_id
        index_due = self._index_memo.due(memory_id, now, ttl_s)

        def add_subject(pipe: Any) -> None:
            if subject_index is not None:
                add_subject_commands(pipe, subject_index, memory_id, ttl_s)

        if index_due:
            write = self._evalsha("append", script_keys, (*static, *dynamic))
            hints = index_hints(self.keyspace, memory_id, now, ttl_s)
            before = add_subject if subject_index is not None else None
            reply = await self._run_with_hints("append", memory_id, write, hints, before)
        else:
            reply = await self._call_script("append", "append", script_keys, (*static, *dynamic))
        try:
            outcome, created = decode_reply(reply, memory_id, arguments)
        except MemoryErased:
            self._index_memo.forget(memory_id)
            if index_due:
                await self._write_hints(
                    "unindex erased memory",
                    memory_id,
                    lambda pipe: unindex_commands(self.keyspace, pipe, memory_id, subject_index),
                )
            raise
        if created and not index_due:
            index = index_hints(self.keyspace, memory_id, now, ttl_s)

            def build_index(pipe: Any) -> None:
                add_subject(pipe)
                index(pipe)

            await self._write_hints("index memory", memory_id, build_index)
        if index_due or created:
            self._index_memo.remember(memory_id, now)
        return outcome

    async def replace(
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

        write = self._evalsha("replace", script_keys, args)
        reply = await self._run_with_hints("replace", keys.memory_id, write, hints)
        try:
            return decode_replace_reply(reply, keys.memory_id)
        except MemoryErased:  # take back the access-index entry that rode with the script
            await self._write_hints(
                "unindex erased memory",
                keys.memory_id,
                lambda pipe: unindex_commands(self.keyspace, pipe, keys.memory_id, None),
            )
            raise

    async def clear(self, keys: MemoryKeys, now: float | None = None, archive: str = "") -> int:
        """Remove all messages and the summary; keep metadata. Returns how many were cleared."""
        call = clear_call(keys, time.time() if now is None else now, archive)
        cleared, _epoch = await self._call_script("clear", "clear", *call)
        return int(cleared)

    async def pop(self, keys: MemoryKeys, now: float | None = None) -> Message | None:
        """Remove and return the newest message (``lua/pop.lua``); ``None`` when there is none."""
        call = pop_call(keys, time.time() if now is None else now)
        return decode_pop_reply(await self._call_script("pop", "pop", *call), keys.memory_id)

    async def delete(self, keys: MemoryKeys) -> bool:
        """Remove every key of the memory and its index entries (hints). True if it existed.
        One round trip (two on a cluster: the ``DEL``, one slot, then the hints)."""

        def write(target: Any) -> Any:
            return target.delete(*memory_key_names(keys))

        hints = forget_hints(self.keyspace, keys.memory_id)
        return bool(await self._run_with_hints("delete", keys.memory_id, write, hints))

    async def set_flush_marker(
        self, keys: MemoryKeys, ttl_s: int, now: float | None = None
    ) -> bool | None:
        """SET NX the flush marker of an existing memory, then index it. True: set by this call;
        False: a flush was already pending; None: no such memory (nothing written)."""
        now = time.time() if now is None else now
        call = flush_marker_call(keys, ttl_s, now)
        was_set = decode_flush_marker(
            await self._call_script("set flush marker", "flush_marker", *call)
        )
        if was_set:
            await self._write_hints(
                "index pending flush",
                keys.memory_id,
                pending_hint(self.keyspace, keys.memory_id, now),
            )
        return was_set

    async def record_use(
        self, keys: MemoryKeys, seqs: Sequence[int], ttl_s: int, now: float | None = None
    ) -> None:
        """LRU bookkeeping (``lua/record_use.lua``), only while the memory exists."""
        call = record_use_call(keys, seqs, ttl_s, time.time() if now is None else now)
        if call is not None:
            await self._call_script("record use", "record_use", *call)

    # ---- reads -----------------------------------------------------------------------

    async def read(self, keys: MemoryKeys) -> list[Message]:
        with translate_errors("read"):
            raw = await self.redis.lrange(keys.msgs, 0, -1)
        return decode_messages(raw, keys.memory_id, self.keyring)

    async def read_tail(self, keys: MemoryKeys, count: int) -> list[Message]:
        """The newest ``count`` messages, oldest first (one ``LRANGE``)."""
        with translate_errors("read tail"):
            raw = await self.redis.lrange(keys.msgs, -count, -1)
        return decode_messages(raw, keys.memory_id)

    async def read_page(
        self, keys: MemoryKeys, offset: int, limit: int
    ) -> tuple[list[Message], int]:
        def build(pipe: Any) -> None:
            pipe.llen(keys.msgs)
            pipe.lrange(keys.msgs, offset, offset + limit - 1)

        total, raw = await self._run_pipeline("read page", build, transaction=True)
        return decode_messages(raw, keys.memory_id, self.keyring), int(total)

    async def read_archive(
        self, keys: MemoryKeys, offset: int, limit: int
    ) -> tuple[list[Message], int]:
        """A page of the memory's archive (oldest first) and its length, in one MULTI."""

        def build(pipe: Any) -> None:
            pipe.llen(keys.archive)
            pipe.lrange(keys.archive, offset, offset + limit - 1)

        total, raw = await self._run_pipeline("read archive", build, transaction=True)
        return decode_archive(raw, keys.memory_id), int(total)

    async def context_window(self, keys: MemoryKeys, budget: int | None) -> ContextWindow:
        """What ``context()`` reads, in one round trip (``lua/context.lua``)."""
        reply = await self._call_script("context", "context", *context_call(keys, budget))
        return decode_context_reply(reply, keys.memory_id, self.keyring)

    async def metadata(self, keys: MemoryKeys) -> tuple[dict[str, str], int, bool, dict[str, str]]:
        """(meta hash, ttl in seconds as Redis reports it, flush pending, summary hash)."""

        def build(pipe: Any) -> None:
            pipe.hgetall(keys.meta)
            pipe.ttl(keys.meta)
            pipe.exists(keys.flush)
            pipe.hgetall(keys.summary)

        meta, ttl, pending, summary = await self._run_pipeline("stats", build, transaction=True)
        return decode_hash(meta), int(ttl), bool(pending), decode_hash(summary)

    async def resource_id(self, keys: MemoryKeys) -> str | None:
        """The resource the memory was created with (``None``: no metadata)."""
        with translate_errors("read resource"):
            value = await self.redis.hget(keys.meta, "resource_id")
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)
