"""The thin client: what workflow code calls. Sync, safe to share across threads.

``client.memory(resource_id, context)`` resolves the key template and returns a :class:`Memory`
handle (cheap: no I/O). ``Memory.append`` validates, redacts, counts tokens and stores in one Redis
round trip; when the memory crosses its flush threshold the append script sets the flush marker
and the client publishes one ``memory.flush`` task by name.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from memory_engine import metrics
from memory_engine.core.append import (
    AppendOutcome,
    AppendPlan,
    BatchLimits,
    PendingMessage,
    PreparedBatch,
    append_result,
    archive_argument,
    prepare_batch,
    unstored_result,
)
from memory_engine.core.commands import check_page_arguments, page_of, stats_from_metadata
from memory_engine.crypto import Sealer, keyring_from_settings
from memory_engine.errors import (
    BrokerUnavailable,
    KeyTemplateError,
    ResourceMismatch,
    ResourceNotFound,
    StoreUnavailable,
)
from memory_engine.keys import (
    KeySpace,
    MemoryKeys,
    project_of,
    render_key,
    render_subject,
    validate_memory_id,
)
from memory_engine.messages import (
    AppendResult,
    MemoryStats,
    Message,
    Page,
    check_int_argument,
)
from memory_engine.privacy import Redactor
from memory_engine.producer import TaskProducer
from memory_engine.registry import ResourceRegistry
from memory_engine.resources import MemoryResource
from memory_engine.settings import Settings, load_settings
from memory_engine.store import MemoryStore
from memory_engine.store.connections import RedisClient
from memory_engine.store.subjects import SubjectStore
from memory_engine.task_contract import TASK_FLUSH
from memory_engine.tokens import TokenCounter, counter_for

if TYPE_CHECKING:
    from memory_engine.core.subjects import ErasureReport
    from memory_engine.engine.flush import FlushResult
    from memory_engine.summarizers import Summarizer
    from memory_engine.token_providers import CounterRegistry

__all__ = ["Memory", "MemoryClient"]

log = logging.getLogger(__name__)


class MemoryClient:
    """Entry point. Build with :meth:`from_env` or inject settings, a Redis client, a registry."""

    def __init__(
        self,
        settings: Settings | None = None,
        redis: RedisClient | None = None,
        *,
        registry: ResourceRegistry | None = None,
        producer: TaskProducer | None = None,
        summarizer: Summarizer | None = None,
    ) -> None:
        from memory_engine.store.connections import redis_from_settings

        self.settings = settings or load_settings()
        self._owns_redis = redis is None
        self.redis = redis if redis is not None else redis_from_settings(self.settings)
        self.registry = registry or ResourceRegistry.from_directory(self.settings.resources_dir)
        self.keyspace = KeySpace(self.settings.key_prefix)
        # Encryption at rest (docs/encryption.md): None unless MEMORY_ENCRYPTION_KEYS is set.
        self.keyring = keyring_from_settings(self.settings)
        self.store = MemoryStore(self.redis, self.keyspace, keyring=self.keyring)
        self.subjects = SubjectStore(self.redis, self.keyspace)
        self._owns_producer = producer is None
        self.producer = producer or TaskProducer(self.settings, self.redis)
        self._redactors: dict[str, Redactor] = {}
        self._append_plans: dict[str, AppendPlan] = {}
        self.batch_limits = BatchLimits(
            max_message_bytes=self.settings.max_message_bytes,
            max_batch_messages=self.settings.max_batch_messages,
            max_batch_bytes=self.settings.max_batch_bytes,
        )
        self._summarizer: Summarizer | None = summarizer
        self._summarizer_lock = threading.Lock()
        self._owns_summarizer = summarizer is None
        self._token_counters: CounterRegistry | None = None
        metrics.configure(self.settings)

    @classmethod
    def from_env(cls, **overrides: Any) -> MemoryClient:
        """Settings from ``MEMORY_*`` environment variables (plus ``overrides``)."""
        return cls(load_settings(**overrides))

    # ---- handles -----------------------------------------------------------------------

    def memory(
        self,
        resource_id: str,
        context: dict[str, Any] | None = None,
        *,
        key_template: str | None = None,
    ) -> Memory:
        """A handle on the memory that ``resource_id``'s key template names in ``context``."""
        resource = self.registry.get(resource_id)
        template = key_template or resource.default_key_template
        if not template:
            raise KeyTemplateError(
                f"resource {resource_id!r} has no default_key_template and no key_template given"
            )
        memory_id = render_key(
            template, context, default_project_id=self.settings.default_project_id
        )
        subject_index = None
        if resource.subject_template:
            from memory_engine.engine.subjects import subject_digest

            digest = subject_digest(
                self.settings, render_subject(resource.subject_template, context)
            )
            subject_index = self.keyspace.subject_index(project_of(memory_id), digest)
        return Memory(self, resource, memory_id, subject_index=subject_index)

    # ---- data subjects (docs/data-protection.md) --------------------------------------------

    def export_subject(
        self, subject: str, project_id: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Yield every memory of the data ``subject`` in ``project_id`` (``None``: this client's
        default project, ``MEMORY_DEFAULT_PROJECT_ID``) as a JSON-ready dict: ``memory_id``,
        ``project_id``, ``resource_id``, ``stats``, ``summary``, ``messages``, ``archive``.
        Each memory is read in one MULTI; memories are found through the subject's index."""
        from memory_engine.engine.subjects import export_subject

        return export_subject(
            self.settings, self.keyspace, self.registry, self.subjects, subject, project_id
        )

    def erase_subject(self, subject: str, project_id: str | None = None) -> ErasureReport:
        """Erase every memory of the data ``subject`` in ``project_id`` (``None``: the default
        project): messages, metadata, summary, archive, markers, index entries. Leaves an
        erasure record (subject hash, time, counts) in ``<prefix>:erasures`` and, per memory,
        a content-free tombstone that refuses appends for ``MEMORY_ERASURE_TOMBSTONE_TTL_S``
        (:class:`~memory_engine.errors.MemoryErased`)."""
        from memory_engine.engine.subjects import erase_subject

        return erase_subject(self.settings, self.keyspace, self.subjects, subject, project_id)

    def memory_by_id(
        self, memory_id: str, resource_id: str, *, verify_resource: bool = False
    ) -> Memory:
        """A handle from an already resolved memory id (what tasks carry).

        The id is checked with the rules rendered keys follow (:class:`KeyTemplateError`, the id
        shown escaped). With ``verify_resource`` (one round trip) ``resource_id`` must also be
        the resource the memory was created with, else :class:`ResourceMismatch`; a memory that
        does not exist (no metadata) passes, as there is nothing to act on.
        """
        memory_id = validate_memory_id(memory_id)
        if not isinstance(resource_id, str):  # a crafted task payload
            raise ResourceNotFound(f"<{type(resource_id).__name__}>", self.registry.ids())
        memory = Memory(self, self.registry.get(resource_id), memory_id)
        if verify_resource:
            meta, _ttl, _pending, _summary = self.store.metadata(memory.keys)
            stored = meta.get("resource_id")
            if stored and stored != resource_id:
                raise ResourceMismatch(
                    f"memory {memory_id} belongs to resource {stored!a}, not "
                    f"{resource_id!a}; refused, nothing changed"
                )
        return memory

    # ---- shared helpers ----------------------------------------------------------------

    def redactor_for(self, resource: MemoryResource) -> Redactor:
        redactor = self._redactors.get(resource.id)
        if redactor is None:
            redactor = Redactor.from_policy(
                resource.privacy_policy, timeout_ms=self.settings.redaction_timeout_ms
            )
            self._redactors[resource.id] = redactor
        return redactor

    def counter_for(self, resource: MemoryResource) -> TokenCounter:
        """The counter for ``resource``'s messages: the shared tiktoken counter of its model, or,
        when it names a ``token_provider``, a provider-aware counter (provider API -> tiktoken ->
        estimate; see :mod:`memory_engine.token_providers`) whose breaker state is shared through
        this client's Redis."""
        if resource.token_provider is None:
            return counter_for(resource.tokenizer_model)
        # Built lazily so clients of resources without a provider never load the HTTP machinery.
        from memory_engine.token_providers import CounterRegistry

        if self._token_counters is None:
            self._token_counters = CounterRegistry(self.settings, self.redis)
        return self._token_counters.counter_for(resource)

    def _append_plan(self, resource: MemoryResource) -> AppendPlan:
        plan = self._append_plans.get(resource.id)
        if plan is None or plan.resource is not resource:  # a reloaded registry: rebuild
            plan = AppendPlan.for_resource(
                resource, self.redactor_for(resource), self.counter_for(resource)
            )
            self._append_plans[resource.id] = plan
        return plan

    @property
    def summarizer(self) -> Summarizer:
        """The configured summarizer (``MEMORY_SUMMARIZER_*``), built on first use. An LLM
        summarizer's circuit breaker keeps its state in this client's Redis, shared with every
        process using the same key prefix."""
        # Locked: a thread-pool worker runs many summaries on one client, and two summarizers
        # built at once would leak an HTTP client and split the breaker's local state.
        with self._summarizer_lock:
            if self._summarizer is None:
                from memory_engine.summarizers import build_summarizer

                self._summarizer = build_summarizer(self.settings, redis=self.redis)
            return self._summarizer

    def close(self) -> None:
        """Release what this client built: HTTP clients, the producer, the Redis pool."""
        if self._token_counters is not None:
            self._token_counters.close()
        close_summarizer = getattr(self._summarizer, "close", None)
        if self._owns_summarizer and callable(close_summarizer):
            close_summarizer()
        if self._owns_producer:
            self.producer.close()
        self.store.close()
        if self._owns_redis:
            self.redis.close()

    def __enter__(self) -> MemoryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Memory:
    """One conversation memory. Cheap to create; holds no connection of its own."""

    def __init__(
        self,
        client: MemoryClient,
        resource: MemoryResource,
        memory_id: str,
        *,
        subject_index: str | None = None,
    ) -> None:
        self.client = client
        self.subject_index = subject_index
        """The data subject's SET of memory ids (``subject_template``), else ``None``."""
        self.resource = resource
        self.memory_id = memory_id
        """``<project>:<rendered key>``: what every task, log line and metric names it by."""
        self.key = memory_id  # the former name of memory_id, kept for callers (deprecated)
        self.keys: MemoryKeys = client.keyspace.memory(memory_id)
        keyring = client.keyring
        # What encrypts this memory's messages (None: stored in clear).
        self.seal: Sealer | None = keyring.sealer(memory_id) if keyring is not None else None

    def __repr__(self) -> str:
        return f"Memory(key={self.key!r}, resource={self.resource.id!r})"

    @property
    def project_id(self) -> str:
        return project_of(self.key)

    # ---- writes ------------------------------------------------------------------------

    def append(self, message: Message | dict[str, Any]) -> AppendResult:
        """Store one message. Non-persistable roles are not stored (``stored=False``)."""
        return self.append_many([message])

    def append_many(self, messages: Sequence[Message | dict[str, Any]]) -> AppendResult:
        """Store a batch atomically: every message or none (one script, one round trip).

        Beyond the resource's hard ceiling (``ceiling``) the oldest messages are evicted
        (``AppendResult.evicted``), or, if the resource says ``on_exceed: refuse``, this raises
        :class:`~memory_engine.errors.MemoryFull` with nothing written."""
        started = time.perf_counter()
        client = self.client
        plan = client._append_plan(self.resource)
        batch = self._prepare(messages, plan)
        pending = batch.pending
        if not pending:
            stats = self.stats()
            return unstored_result(batch, stats.message_count, stats.token_count)
        outcome = client.store.append(
            self.keys,
            pending,
            subject_index=self.subject_index,
            **plan.store_options(client.settings.flush_marker_ttl_s),
        )
        flush_requested = False
        if outcome.flush_requested:
            flush_requested = self._publish_flush(reason="threshold")
        self._record_append(pending, outcome, started)
        return append_result(outcome, batch, flush_requested=flush_requested)

    def _record_append(
        self, pending: list[PendingMessage], outcome: AppendOutcome, started: float
    ) -> None:
        """Metrics and the log line of a stored append (the async client's too)."""
        metrics.record_append(self.resource.id, pending, outcome, started)
        if outcome.evicted:  # the hard ceiling evicted (rare: flushes are not keeping up)
            metrics.instruments().for_resource(self.resource.id).evicted.inc(outcome.evicted)
            log.info(
                "memory %s is at its hard ceiling: this append evicted its %d oldest messages "
                "(are flushes running?)",
                self.key,
                outcome.evicted,
            )

    def replace(self, messages: Sequence[Message | dict[str, Any]]) -> int:
        """Replace every message (the summary goes too); keeps the TTL. Returns the new count."""
        plan = self.client._append_plan(self.resource)
        pending = self._prepare(messages, plan, allow_empty=True).pending
        count, _tokens, _epoch = self.client.store.replace(
            self.keys,
            pending,
            resource_id=self.resource.id,
            ttl_s=self.resource.ttl_s,
            archive=plan.archive,
        )
        return count

    def clear(self) -> int:
        """Remove every message and the summary (to the archive when it is enabled); returns
        how many messages were cleared."""
        return self.client.store.clear(self.keys, archive=archive_argument(self.resource))

    def delete(self) -> bool:
        """Remove the memory entirely (messages, metadata, summary, markers, index entries)."""
        return self.client.store.delete(self.keys)

    def pop(self) -> Message | None:
        """Remove and return the newest message (one script; counted as cleared, and an
        in-flight flush does not commit over it); ``None`` when the memory holds none."""
        return self.client.store.pop(self.keys)

    # ---- reads -------------------------------------------------------------------------

    def read(self) -> list[Message]:
        """Every stored message, oldest first (the summary is not included: see ``context``)."""
        return self.client.store.read(self.keys)

    def read_tail(self, count: int) -> list[Message]:
        """The newest ``count`` stored messages, oldest first (one ``LRANGE``; no use recorded)."""
        check_int_argument("count", count, 1)
        return self.client.store.read_tail(self.keys, count)

    def read_page(self, offset: int = 0, limit: int = 50, *, record_use: bool = True) -> Page:
        """``limit`` messages from ``offset`` (0 = oldest), with the total.

        On a resource whose strategy is LRU, a page read is a use of the messages it returns
        (the app re-reads what it keeps). ``record_use=False`` reads without recording: what
        operator tools (the CLI, health views) use, so that looking at a memory never changes
        what its next flush drops."""
        check_page_arguments(offset, limit)
        messages, total = self.client.store.read_page(self.keys, offset, limit)
        if record_use and self.resource.records_uses:
            # An explicit page read is a use: LRU flushing and eviction keep what the app re-reads.
            self.client.store.record_use(
                self.keys, [m.seq for m in messages if m.seq is not None], self.resource.ttl_s
            )
        return page_of(messages, total, offset, limit)

    def read_archive(self, offset: int = 0, limit: int = 50) -> Page:
        """``limit`` archived messages from ``offset`` (0 = oldest), with the total: what
        flushes, evictions, the ceiling, ``clear()`` and ``replace()`` removed while
        ``archive.enabled``. Each message keeps its seq; ``metadata["archive"]`` holds
        ``{"reason", "archived_at"}`` (reason: flushed, summarized, evicted, cleared, replaced)."""
        check_page_arguments(offset, limit)
        messages, total = self.client.store.read_archive(self.keys, offset, limit)
        return page_of(messages, total, offset, limit)

    def stats(self) -> MemoryStats:
        """Counts, tokens, budget used, TTL, summary point, flush pending (one round trip)."""
        meta, ttl, pending, summary = self.client.store.metadata(self.keys)
        return stats_from_metadata(self.resource, self.key, meta, ttl, pending, summary)

    def context(self, max_tokens: int | None = None) -> list[Message]:
        """The prompt window: system messages, the summary (one system message whose metadata
        has ``summary: true``) and the newest messages, within ``max_tokens`` (default: the
        resource's effective budget) and its token allocation. Order is kept; a tool call is
        never split from its results."""
        from memory_engine.engine.context import build_context

        if max_tokens is not None:
            check_int_argument("max_tokens", max_tokens, 0)
        return build_context(self, max_tokens)

    # ---- flush ---------------------------------------------------------------------------

    def flush(self, strategy: str | None = None, dry_run: bool = False) -> FlushResult:
        """Flush inline, now, with the resource's strategy (or ``strategy``). ``dry_run`` reports
        what would be removed and changes nothing. Same code as the ``memory.flush`` task."""
        from memory_engine.engine.flush import flush_memory

        return flush_memory(self, strategy=strategy, dry_run=dry_run)

    def evict(self, policy: str | None = None) -> FlushResult:
        """Enforce the hard limits now, by the resource's eviction policy (or ``policy``)."""
        from memory_engine.engine.flush import evict_memory

        return evict_memory(self, policy=policy)

    def request_flush(self) -> bool:
        """Enqueue a flush unless one is pending. False when a flush was already pending, or
        when the memory does not exist (then nothing is written and nothing enqueued)."""
        was_set = self.client.store.set_flush_marker(
            self.keys, self.client.settings.flush_marker_ttl_s
        )
        if not self._flush_marker_set(was_set):
            return False
        return self._publish_flush(reason="requested", marker_indexed=True)

    def _flush_marker_set(self, was_set: bool | None) -> bool:
        """Count a flush request by what setting its marker returned; True when this call set
        it and must publish the flush (the async client's too)."""
        if was_set is None:  # no such memory: nothing written, nothing to count
            return False
        metrics.record_flush_request(self.resource.id, deduplicated=not was_set)
        return was_set

    def _publish_flush(self, *, reason: str, marker_indexed: bool = False) -> bool:
        """Publish one ``memory.flush``; True if it was published.

        The append itself has succeeded by now and must not be reported as failed (the caller
        would append again), so a failure is logged, not raised. When the broker fails (or its
        breaker is open, which costs no wait) the marker stays, flagged unpublished: further
        appends do not try again, and the marker sweep publishes the flush once the broker is
        back. The breaker logs its transitions once, with the cause; this logs no traceback.
        """
        store = self.client.store
        try:
            if not marker_indexed:
                store.index_pending(self.keys, time.time())
            self.client.producer.send(
                TASK_FLUSH,
                {"memory_id": self.key, "resource_id": self.resource.id, "reason": reason},
            )
        except BrokerUnavailable as exc:
            log.debug(
                "%s for memory %s not published (%s); the marker sweep publishes it",
                TASK_FLUSH,
                self.key,
                "broker breaker open" if exc.breaker_open else exc,
            )
            try:
                store.mark_flush_unpublished(self.keys)
            except StoreUnavailable as mark_exc:
                log.warning(
                    "could not flag the flush marker of %s as unpublished (%s); the sweep "
                    "retries when the marker expires",
                    self.key,
                    mark_exc,
                )
            return False
        except Exception as exc:
            log.warning(
                "could not enqueue %s for memory %s (%s: %s); marker released, the sweep retries",
                TASK_FLUSH,
                self.key,
                type(exc).__name__,
                exc,
            )
            try:
                store.release_flush_marker(self.keys)
            except Exception:
                log.warning("could not release flush marker of %s; it expires by TTL", self.key)
            return False
        log.debug("enqueued %s for memory %s (%s)", TASK_FLUSH, self.key, reason)
        return True

    def publish_unpublished_flush(self) -> bool:
        """Publish the flush whose publish failed earlier (marker flagged unpublished); the
        marker sweep calls this. False when there was none, or it failed again."""
        if not self.client.store.claim_unpublished_flush(self.keys):
            return False
        return self._publish_flush(reason="sweep", marker_indexed=True)

    # ---- preparation -----------------------------------------------------------------------

    def _prepare(
        self,
        messages: Sequence[Message | dict[str, Any]],
        plan: AppendPlan | None = None,
        *,
        allow_empty: bool = False,
    ) -> PreparedBatch:
        """Validate, redact and count (:func:`memory_engine.core.append.prepare_batch`)."""
        if plan is None:
            plan = self.client._append_plan(self.resource)
        return prepare_batch(
            messages, plan, self.client.batch_limits, allow_empty=allow_empty, seal=self.seal
        )
