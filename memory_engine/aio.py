"""The asyncio client: :class:`AsyncMemoryClient` and :class:`AsyncMemory`, for agent code that
runs on an event loop (``docs/async.md``).

The same contract as the sync client (:mod:`memory_engine.client`): the same return types,
errors, Lua scripts, keys and counters, so a memory written by one is read identically by the
other and both may write it at once. Every decision comes from the same place: validation,
redaction and token counts (:func:`~memory_engine.core.append.prepare_batch`), script arguments
and replies (:mod:`memory_engine.core`), key rendering and resource plans (an inner sync
:class:`~memory_engine.client.MemoryClient`, which opens no connection until it is used).

What runs where:

- Redis reads and writes: on the loop, over ``redis.asyncio``
  (:class:`~memory_engine.store.aio.AsyncMemoryStore`); an append is one round trip;
- publishing a flush task (a threshold crossing, :meth:`AsyncMemory.request_flush`): in a thread
  of the loop's default executor, through the sync client's producer and broker breaker (Celery's
  publish is blocking). It is shielded: once the marker is set, a cancelled caller does not cancel
  the publish;
- :meth:`AsyncMemory.flush` and :meth:`AsyncMemory.evict`: the engine's flush in a thread
  (``asyncio.to_thread``) over the sync store; flushes requested by appends run in the Celery
  workers as with the sync client;
- validation, redaction and counting: on the loop, or in a thread when the resource names a
  ``token_provider`` (its counter may call a provider's HTTP API).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from memory_engine.client import Memory, MemoryClient
from memory_engine.core.append import (
    PreparedBatch,
    append_result,
    archive_argument,
    prepare_batch,
    unstored_result,
)
from memory_engine.core.commands import (
    check_page_arguments,
    page_of,
    stats_from_metadata,
)
from memory_engine.core.context import ContextRequest
from memory_engine.messages import (
    AppendResult,
    MemoryStats,
    Message,
    Page,
    check_int_argument,
)
from memory_engine.settings import Settings, load_settings
from memory_engine.store.aio import AsyncMemoryStore
from memory_engine.store.connections import AsyncRedisClient, async_redis_from_settings

if TYPE_CHECKING:
    from memory_engine.core.subjects import ErasureReport
    from memory_engine.engine.flush import FlushResult
    from memory_engine.keys import KeySpace, MemoryKeys
    from memory_engine.producer import TaskProducer
    from memory_engine.registry import ResourceRegistry
    from memory_engine.resources import MemoryResource
    from memory_engine.store.connections import RedisClient
    from memory_engine.summarizers import Summarizer

__all__ = ["AsyncMemory", "AsyncMemoryClient"]

T = TypeVar("T")


class AsyncMemoryClient:
    """Entry point on an event loop. Build with :meth:`from_env` or inject settings, clients.

    ``redis``: a ``redis.asyncio`` client (default: built from settings by
    :func:`~memory_engine.store.connections.async_redis_from_settings`). ``sync_redis``,
    ``registry``, ``producer``, ``summarizer``: handed to the inner sync client, which serves
    what runs in threads (publishing flush tasks, inline flushes, the breaker state).

    Use one client from one event loop (``redis.asyncio`` connections belong to their loop).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        redis: AsyncRedisClient | None = None,
        *,
        sync_redis: RedisClient | None = None,
        registry: ResourceRegistry | None = None,
        producer: TaskProducer | None = None,
        summarizer: Summarizer | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        self.sync = MemoryClient(
            self.settings,
            sync_redis,
            registry=registry,
            producer=producer,
            summarizer=summarizer,
        )
        self._owns_redis = redis is None
        self.redis = redis if redis is not None else async_redis_from_settings(self.settings)
        self.store = AsyncMemoryStore(self.redis, self.sync.keyspace, keyring=self.sync.keyring)
        self._closed = False

    @classmethod
    def from_env(cls, **overrides: Any) -> AsyncMemoryClient:
        """Settings from ``MEMORY_*`` environment variables (plus ``overrides``); no I/O."""
        return cls(load_settings(**overrides))

    @property
    def registry(self) -> ResourceRegistry:
        return self.sync.registry

    @property
    def keyspace(self) -> KeySpace:
        return self.sync.keyspace

    def memory(
        self,
        resource_id: str,
        context: dict[str, Any] | None = None,
        *,
        key_template: str | None = None,
    ) -> AsyncMemory:
        """A handle on the memory that ``resource_id``'s key template names in ``context`` (no
        I/O; the same key the sync client resolves)."""
        return AsyncMemory(self, self.sync.memory(resource_id, context, key_template=key_template))

    def memory_by_id(self, memory_id: str, resource_id: str) -> AsyncMemory:
        """A handle from an already resolved memory id (checked as rendered keys are; no I/O)."""
        return AsyncMemory(self, self.sync.memory_by_id(memory_id, resource_id))

    # ---- data subjects (docs/data-protection.md) --------------------------------------------

    async def export_subject(
        self, subject: str, project_id: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """:meth:`memory_engine.client.MemoryClient.export_subject` on the loop: each memory is
        read by the sync client in a thread (one MULTI each), yielded as it is read."""
        iterator = self.sync.export_subject(subject, project_id)
        done = object()
        while True:
            record = await asyncio.to_thread(next, iterator, done)
            if record is done:
                return
            yield record  # type: ignore[misc]

    async def erase_subject(self, subject: str, project_id: str | None = None) -> ErasureReport:
        """:meth:`memory_engine.client.MemoryClient.erase_subject` in a thread (as
        :meth:`AsyncMemory.flush` runs), shielded: a cancelled caller does not stop an erasure
        half-way."""
        erase = functools.partial(self.sync.erase_subject, subject, project_id)
        return await asyncio.shield(asyncio.to_thread(erase))

    async def aclose(self) -> None:
        """Release the ``redis.asyncio`` pool and what the inner sync client built (closed in a
        thread: closing a Celery producer may touch the network). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owns_redis:
            await self.redis.aclose()
        await asyncio.to_thread(self.sync.close)

    async def __aenter__(self) -> AsyncMemoryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncMemory:
    """One conversation memory on an event loop. Cheap to create; holds no connection.

    Every method has the sync :class:`~memory_engine.client.Memory` method's name, arguments,
    return type and errors."""

    def __init__(self, client: AsyncMemoryClient, memory: Memory) -> None:
        self.client = client
        self.sync = memory  # the same memory through the sync client (threads use it)
        self.resource: MemoryResource = memory.resource
        self.memory_id: str = memory.memory_id
        self.key: str = memory.memory_id  # the former name of memory_id (deprecated)
        self.keys: MemoryKeys = memory.keys
        self.seal = memory.seal
        # A provider-aware counter may call an HTTP API: keep it off the loop.
        self._offload = memory.resource.token_provider is not None

    def __repr__(self) -> str:
        return f"AsyncMemory(key={self.key!r}, resource={self.resource.id!r})"

    @property
    def project_id(self) -> str:
        return self.sync.project_id

    async def _compute(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """CPU work of the core, on the loop, or in a thread when it may block on I/O."""
        if self._offload:
            return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))
        return fn(*args, **kwargs)

    async def _publish(self, *, reason: str, marker_indexed: bool = False) -> bool:
        """The sync client's publish (producer, broker breaker, marker bookkeeping) in a thread,
        shielded: the marker is set, so the task must go out even if the caller is cancelled."""
        publish = functools.partial(
            self.sync._publish_flush, reason=reason, marker_indexed=marker_indexed
        )
        return await asyncio.shield(asyncio.to_thread(publish))

    # ---- writes ------------------------------------------------------------------------

    async def append(self, message: Message | dict[str, Any]) -> AppendResult:
        """Store one message (one round trip). Non-persistable roles are not stored."""
        return await self.append_many([message])

    async def append_many(self, messages: Sequence[Message | dict[str, Any]]) -> AppendResult:
        """Store a batch atomically: every message or none (one script, one round trip); the
        hard ceiling as :meth:`memory_engine.client.Memory.append_many` documents."""
        started = time.perf_counter()
        client = self.client
        plan = client.sync._append_plan(self.resource)
        batch: PreparedBatch = await self._compute(
            prepare_batch, messages, plan, client.sync.batch_limits, seal=self.seal
        )
        pending = batch.pending
        if not pending:
            stats = await self.stats()
            return unstored_result(batch, stats.message_count, stats.token_count)
        outcome = await client.store.append(
            self.keys,
            pending,
            subject_index=self.sync.subject_index,
            **plan.store_options(client.settings.flush_marker_ttl_s),
        )
        flush_requested = False
        if outcome.flush_requested:
            flush_requested = await self._publish(reason="threshold")
        self.sync._record_append(pending, outcome, started)
        return append_result(outcome, batch, flush_requested=flush_requested)

    async def replace(self, messages: Sequence[Message | dict[str, Any]]) -> int:
        """Replace every message (the summary goes too); keeps the TTL. Returns the new count."""
        plan = self.client.sync._append_plan(self.resource)
        batch: PreparedBatch = await self._compute(
            prepare_batch,
            messages,
            plan,
            self.client.sync.batch_limits,
            allow_empty=True,
            seal=self.seal,
        )
        count, _tokens, _epoch = await self.client.store.replace(
            self.keys,
            batch.pending,
            resource_id=self.resource.id,
            ttl_s=self.resource.ttl_s,
            archive=plan.archive,
        )
        return count

    async def clear(self) -> int:
        """Remove every message and the summary (to the archive when it is enabled); returns
        how many messages were cleared."""
        return await self.client.store.clear(self.keys, archive=archive_argument(self.resource))

    async def delete(self) -> bool:
        """Remove the memory entirely (messages, metadata, summary, markers, index entries)."""
        return await self.client.store.delete(self.keys)

    async def pop(self) -> Message | None:
        """Remove and return the newest message (one script; counted as cleared, and an
        in-flight flush does not commit over it); ``None`` when the memory holds none."""
        return await self.client.store.pop(self.keys)

    # ---- reads -------------------------------------------------------------------------

    async def read(self) -> list[Message]:
        """Every stored message, oldest first (the summary is not included: see ``context``)."""
        return await self.client.store.read(self.keys)

    async def read_tail(self, count: int) -> list[Message]:
        """The newest ``count`` stored messages, oldest first (one ``LRANGE``; no use recorded)."""
        check_int_argument("count", count, 1)
        return await self.client.store.read_tail(self.keys, count)

    async def read_page(self, offset: int = 0, limit: int = 50, *, record_use: bool = True) -> Page:
        """``limit`` messages from ``offset`` (0 = oldest), with the total; on an LRU resource a
        page read is a use of what it returns unless ``record_use=False``."""
        check_page_arguments(offset, limit)
        store = self.client.store
        messages, total = await store.read_page(self.keys, offset, limit)
        if record_use and self.resource.records_uses:
            seqs = [m.seq for m in messages if m.seq is not None]
            await store.record_use(self.keys, seqs, self.resource.ttl_s)
        return page_of(messages, total, offset, limit)

    async def read_archive(self, offset: int = 0, limit: int = 50) -> Page:
        """The archive, oldest first, as :meth:`memory_engine.client.Memory.read_archive`."""
        check_page_arguments(offset, limit)
        messages, total = await self.client.store.read_archive(self.keys, offset, limit)
        return page_of(messages, total, offset, limit)

    async def stats(self) -> MemoryStats:
        """Counts, tokens, budget used, TTL, summary point, flush pending (one round trip)."""
        meta, ttl, pending, summary = await self.client.store.metadata(self.keys)
        return stats_from_metadata(self.resource, self.key, meta, ttl, pending, summary)

    async def context(self, max_tokens: int | None = None) -> list[Message]:
        """The prompt window, as :meth:`memory_engine.client.Memory.context` builds it."""
        if max_tokens is not None:
            check_int_argument("max_tokens", max_tokens, 0)
        store = self.client.store
        counter = self.client.sync.counter_for(self.resource)
        request = ContextRequest(self.resource, counter, max_tokens)
        while True:
            found = await store.context_window(self.keys, request.read_budget)
            window = await self._compute(request.select, found)
            if window is not None:
                break
        used = request.used_seqs(window)
        if used is not None:
            await store.record_use(self.keys, used, self.resource.ttl_s)
        return window

    # ---- flush ---------------------------------------------------------------------------

    async def flush(self, strategy: str | None = None, dry_run: bool = False) -> FlushResult:
        """Flush inline, now: the engine's flush (the ``memory.flush`` task's code) in a thread
        over the sync store. Cancelling the caller does not stop a flush already running."""
        return await asyncio.to_thread(self.sync.flush, strategy, dry_run)

    async def evict(self, policy: str | None = None) -> FlushResult:
        """Enforce the hard limits now (in a thread, as :meth:`flush`)."""
        return await asyncio.to_thread(self.sync.evict, policy)

    async def request_flush(self) -> bool:
        """Enqueue a flush unless one is pending (the publish runs in a thread). False when a
        flush was already pending, or when the memory does not exist."""
        was_set = await self.client.store.set_flush_marker(
            self.keys, self.client.settings.flush_marker_ttl_s
        )
        if not self.sync._flush_marker_set(was_set):
            return False
        return await self._publish(reason="requested", marker_indexed=True)
