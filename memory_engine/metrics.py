"""Prometheus metrics of the engine: what the client's append path and the flush code record.

Every name starts with ``memory_engine_``. Instruments are process-wide, as Prometheus
instrumentation is (a process is one scrape target), and live in one registry, :func:`registry`:

- by default prometheus_client's global ``REGISTRY``: a host application that already exposes the
  default registry (``prometheus_client.start_http_server``, ``make_wsgi_app()``, a framework
  exporter) exposes the engine's metrics with no extra code;
- with ``MEMORY_METRICS_REGISTRY=dedicated`` (``Settings.metrics_registry``) the first client built
  with those settings moves them to a registry of their own, which the host exposes where it
  likes: ``make_wsgi_app(memory_engine.metrics.registry())``. :func:`use_registry` does the same
  from code.

Instruments are built on first use, not at import: Celery workers switch prometheus_client to
multiprocess mode (``worker/metrics.py``) before anything records, and :func:`rebuild` makes a
fresh set after such a switch.

Recording sits on the append hot path, so it is kept cheap and free of locks: an append puts one
tuple on a queue (``collections.deque.append``, atomic under the GIL), and the queue is
folded into the instruments in batches: by the append that finds :data:`APPEND_DRAIN_AT` entries
waiting, and by every collection (a scrape, ``registry.get_sample_value``), through a collector
registered ahead of the instruments, so what a scrape reports includes every append that returned
before it. Recording each append straight into prometheus_client's instruments took five lock
round trips per append, and with several threads appending that contention cost throughput
(docs/performance.md). In multiprocess mode (Celery workers) every append is folded at once: the
scraping process cannot drain another process's queue. The label children of a resource are bound
once and cached (no ``.labels()`` lookup per fold).

Breaker states arrive through :func:`memory_engine.breakers.subscribe_breaker_state`, subscribed
when this module is imported; :func:`set_breaker_state` may also be called directly.
"""

from __future__ import annotations

import bisect
import functools
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from memory_engine.breaker_events import BreakerState, subscribe_breaker_state
from memory_engine.core.plans import FlushStatus

if TYPE_CHECKING:
    from memory_engine.core.append import AppendOutcome, PendingMessage
    from memory_engine.core.plans import Snapshot, Summary
    from memory_engine.settings import Settings
    from memory_engine.store import CommitResult

__all__ = [
    "APPEND_DRAIN_AT",
    "APPEND_LATENCY_BUCKETS_S",
    "BREAKER_STATE_VALUES",
    "FLUSH_DURATION_BUCKETS_S",
    "METRIC_PREFIX",
    "EngineMetrics",
    "configure",
    "instrument_flush",
    "instruments",
    "rebuild",
    "record_append",
    "record_evict_commit",
    "record_flush_commit",
    "record_flush_request",
    "record_lock_contention",
    "registry",
    "set_breaker_state",
    "use_registry",
]

METRIC_PREFIX = "memory_engine_"

# An append is one Redis round trip plus validation and token counting: sub-millisecond on a
# local Redis, a few milliseconds across a network. Few buckets: observe() scans them linearly.
APPEND_LATENCY_BUCKETS_S = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
# Appends queued before the append that finds this many folds them into the instruments.
APPEND_DRAIN_AT = 256
# A flush spans a Redis-only FIFO trim (milliseconds) up to an LLM summary (tens of seconds,
# bounded by the task time limit).
FLUSH_DURATION_BUCKETS_S = (0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

BREAKER_STATE_VALUES: dict[str, int] = {
    BreakerState.CLOSED.value: 0,
    BreakerState.HALF_OPEN.value: 1,
    BreakerState.OPEN.value: 2,
}
"""Gauge value of each breaker state (pybreaker's state names)."""

_COMMITTED = FlushStatus.COMMITTED.value
_ALREADY_RUNNING = FlushStatus.ALREADY_RUNNING.value
_ERROR = "error"  # not a FlushStatus: the flush raised

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class _ResourceChildren:
    """The label children of one resource, bound once (the append hot path reuses them)."""

    appends: Any
    tokens: Any
    triggers: Any
    deduplicated: Any
    summarized: Any
    dropped: Any
    evicted: Any
    tokens_saved: Any


class EngineMetrics:
    """The engine's instruments, registered in ``registry``.

    Build one per registry; :func:`instruments` keeps the process's set. In multiprocess mode
    (``PROMETHEUS_MULTIPROC_DIR``) the breaker gauge reports the most recent value any process
    wrote, since every process sees the same shared breaker state.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        p = METRIC_PREFIX
        r = registry
        # Appends recorded and not yet folded into the instruments: (resource id, messages,
        # tokens, 1 trigger / 2 deduplicated / 0, seconds). See the module docstring.
        self.append_queue: deque[tuple[str, int, int, int, float]] = deque()
        # Multiprocess mode: fold every append at once, waiting for a fold in progress, since no
        # scrape of this process's queue will come.
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.drain_at = 1 if self.multiprocess else APPEND_DRAIN_AT
        self._drain_lock = threading.Lock()
        # Registered first, so a collection folds the queue before the instruments report.
        self._drainer = _AppendDrainer(self)
        r.register(self._drainer)
        self.appends = Counter(
            f"{p}appends", "Messages appended (stored), by resource.", ["resource"], registry=r
        )
        self.tokens_appended = Counter(
            f"{p}tokens_appended", "Tokens of the appended messages.", ["resource"], registry=r
        )
        self.append_latency = Histogram(
            f"{p}append_latency_seconds",
            "Time of one append/append_many call as its caller sees it: validation, redaction, "
            "token counting, the Redis round trip and, on a threshold crossing, the enqueue.",
            buckets=APPEND_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.flush_triggers = Counter(
            f"{p}flush_triggers",
            "Flush requests that set the flush marker (a memory crossed its threshold, or "
            "request_flush()): each one enqueues one memory.flush.",
            ["resource"],
            registry=r,
        )
        self.flush_triggers_deduplicated = Counter(
            f"{p}flush_triggers_deduplicated",
            "Flush requests that found a flush already pending (marker set): no task enqueued.",
            ["resource"],
            registry=r,
        )
        self.flush_runs = Counter(
            f"{p}flush_runs",
            "Flush and evict runs by strategy (evictions as evict:<policy>) and outcome: "
            "committed, noop, handed_off, already_running, error.",
            ["strategy", "outcome"],
            registry=r,
        )
        self.flush_duration = Histogram(
            f"{p}flush_duration_seconds",
            "Duration of flush and evict runs (dry runs excluded), by strategy.",
            ["strategy"],
            buckets=FLUSH_DURATION_BUCKETS_S,
            registry=r,
        )
        self.messages_summarized = Counter(
            f"{p}messages_summarized",
            "Messages folded into a memory's running summary by committed flushes.",
            ["resource"],
            registry=r,
        )
        self.messages_dropped = Counter(
            f"{p}messages_dropped",
            "Messages removed by a flush strategy without being summarized (FIFO, LRU).",
            ["resource"],
            registry=r,
        )
        self.messages_evicted = Counter(
            f"{p}messages_evicted",
            "Messages removed by an eviction policy to enforce a hard limit.",
            ["resource"],
            registry=r,
        )
        self.tokens_saved = Counter(
            f"{p}tokens_saved",
            "Tokens a memory shrank by in committed flushes and evictions: tokens removed from "
            "the list minus the growth of the running summary.",
            ["resource"],
            registry=r,
        )
        self.lock_contention = Counter(
            f"{p}lock_contention",
            "Flushes or evictions that found the memory's lock held (FlushAlreadyRunning).",
            ["operation"],
            registry=r,
        )
        self.breaker_state = Gauge(
            f"{p}breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ["breaker"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self._children: dict[str, _ResourceChildren] = {}
        self._lock = threading.Lock()

    def for_resource(self, resource_id: str) -> _ResourceChildren:
        """The bound label children of ``resource_id`` (created once, then cached)."""
        children = self._children.get(resource_id)
        if children is None:
            with self._lock:
                children = self._children.get(resource_id)
                if children is None:
                    children = _ResourceChildren(
                        appends=self.appends.labels(resource_id),
                        tokens=self.tokens_appended.labels(resource_id),
                        triggers=self.flush_triggers.labels(resource_id),
                        deduplicated=self.flush_triggers_deduplicated.labels(resource_id),
                        summarized=self.messages_summarized.labels(resource_id),
                        dropped=self.messages_dropped.labels(resource_id),
                        evicted=self.messages_evicted.labels(resource_id),
                        tokens_saved=self.tokens_saved.labels(resource_id),
                    )
                    self._children[resource_id] = children
        return children

    def drain_appends(self, *, wait: bool = True) -> None:
        """Fold the queued appends into the instruments. With ``wait=False`` (the append path)
        return at once when another thread is folding: it will take what is queued."""
        if not self._drain_lock.acquire(blocking=wait):
            return
        try:
            queue = self.append_queue
            totals: dict[str, list[int]] = {}
            latencies: list[float] = []
            # Bounded by the length seen now: appends queued meanwhile wait for the next fold.
            for _ in range(len(queue)):
                resource_id, messages, tokens, flush, seconds = queue.popleft()
                total = totals.get(resource_id)
                if total is None:
                    total = totals[resource_id] = [0, 0, 0, 0]
                total[0] += messages
                total[1] += tokens
                if flush:
                    total[1 + flush] += 1
                latencies.append(seconds)
            _observe_many(self.append_latency, latencies)
            for resource_id, (messages, tokens, triggers, deduplicated) in totals.items():
                children = self.for_resource(resource_id)
                children.appends.inc(messages)
                children.tokens.inc(tokens)
                if triggers:
                    children.triggers.inc(triggers)
                if deduplicated:
                    children.deduplicated.inc(deduplicated)
        finally:
            self._drain_lock.release()

    def unregister(self) -> None:
        """Remove every instrument from the registry (before a replacement set is built); queued
        appends are folded into them first."""
        self.drain_appends()
        for collector in (
            self._drainer,
            self.appends,
            self.tokens_appended,
            self.append_latency,
            self.flush_triggers,
            self.flush_triggers_deduplicated,
            self.flush_runs,
            self.flush_duration,
            self.messages_summarized,
            self.messages_dropped,
            self.messages_evicted,
            self.tokens_saved,
            self.lock_contention,
            self.breaker_state,
        ):
            try:
                self.registry.unregister(collector)
            except KeyError:
                pass  # already unregistered by its owner


def _observe_many(histogram: Any, values: list[float]) -> None:
    """``histogram.observe(v)`` for each of ``values``, with one increment per bucket instead of
    two locked increments per value. Uses prometheus_client's per-bucket values (``_buckets``,
    ``_upper_bounds``, ``_sum``; stable since 0.4, and checked against ``observe`` by
    ``tests/integration/test_metrics.py``); falls back to ``observe`` when they are not there."""
    buckets = getattr(histogram, "_buckets", None)
    bounds = getattr(histogram, "_upper_bounds", None)
    total = getattr(histogram, "_sum", None)
    if buckets is None or bounds is None or total is None or len(buckets) != len(bounds):
        for value in values:
            histogram.observe(value)
        return
    counts = [0] * len(bounds)
    for value in values:
        # observe() counts a value in the first bucket whose bound is >= it (the last is +Inf)
        counts[bisect.bisect_left(bounds, value)] += 1
    for bucket, count in zip(buckets, counts, strict=True):
        if count:
            bucket.inc(count)
    if values:
        total.inc(math.fsum(values))


class _AppendDrainer:
    """A collector that reports nothing: collecting it folds the queued appends into the
    instruments (registered before them, so a scrape sees every append that returned)."""

    def __init__(self, metrics: EngineMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> list[Any]:
        self._metrics.drain_appends()
        return []

    def describe(self) -> list[Any]:
        return []


# ---- the process's instruments -------------------------------------------------------------


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.registry: CollectorRegistry = REGISTRY
        self.metrics: EngineMetrics | None = None
        # Last state of every breaker seen, so a rebuilt set starts with the current states.
        self.breakers: dict[str, float] = {}


_state = _State()


def instruments() -> EngineMetrics:
    """The process's instruments, built in :func:`registry` on first use."""
    metrics = _state.metrics
    if metrics is None:
        with _state.lock:
            metrics = _state.metrics
            if metrics is None:
                metrics = EngineMetrics(_state.registry)
                for name, value in _state.breakers.items():
                    metrics.breaker_state.labels(name).set(value)
                _state.metrics = metrics
    return metrics


def registry() -> CollectorRegistry:
    """The registry the engine's metrics are registered in (expose it in the host application).

    prometheus_client's global ``REGISTRY`` unless a dedicated one was selected, by settings
    (``MEMORY_METRICS_REGISTRY=dedicated``, applied when a client is built) or by
    :func:`use_registry`.
    """
    return _state.registry


def use_registry(target: CollectorRegistry) -> None:
    """Register the engine's metrics in ``target`` from now on.

    Instruments already built are unregistered from the previous registry and built again in
    ``target``, so their counts restart from zero: select the registry at start-up.
    """
    with _state.lock:
        if target is _state.registry:
            return
        if _state.metrics is not None:
            _state.metrics.unregister()
            _state.metrics = None
        _state.registry = target


def configure(settings: Settings) -> None:
    """Apply ``settings.metrics_registry`` (called by every :class:`MemoryClient`).

    ``dedicated`` moves the process's engine metrics to a new registry the first time; once
    dedicated, they stay there (``global`` settings of a later client do not move them back, so
    two clients with different settings cannot reset each other's counts).
    """
    if settings.metrics_registry == "dedicated" and _state.registry is REGISTRY:
        use_registry(CollectorRegistry(auto_describe=True))


def rebuild() -> EngineMetrics:
    """Build a fresh set of instruments in the current registry (counts restart from zero).

    Worker processes call it after switching prometheus_client to multiprocess mode, so that no
    instrument built earlier keeps a per-process value.
    """
    with _state.lock:
        if _state.metrics is not None:
            _state.metrics.unregister()
            _state.metrics = None
    return instruments()


# ---- recording: the client -------------------------------------------------------------------


def record_append(
    resource_id: str,
    pending: Sequence[PendingMessage],
    outcome: AppendOutcome,
    started_s: float,
) -> None:
    """One stored append of ``pending`` that began at ``started_s`` (``time.perf_counter()``):
    queued, and folded into the instruments in batches (module docstring)."""
    metrics = _state.metrics or instruments()
    tokens = pending[0].token_count if len(pending) == 1 else sum(m.token_count for m in pending)
    flush = 1 if outcome.flush_requested else 2 if outcome.flush_deduplicated else 0
    queue = metrics.append_queue
    queue.append((resource_id, len(pending), tokens, flush, time.perf_counter() - started_s))
    if len(queue) >= metrics.drain_at:
        metrics.drain_appends(wait=metrics.multiprocess)


def record_flush_request(resource_id: str, *, deduplicated: bool) -> None:
    """One ``request_flush()``: it set the marker, or found a flush already pending."""
    children = (_state.metrics or instruments()).for_resource(resource_id)
    (children.deduplicated if deduplicated else children.triggers).inc()


# ---- recording: flush and evict --------------------------------------------------------------


def record_flush_commit(
    resource_id: str, committed: CommitResult, snap: Snapshot, summary: Summary | None
) -> None:
    """A committed flush: messages summarized and dropped, tokens saved."""
    children = instruments().for_resource(resource_id)
    children.summarized.inc(committed.summarized)
    children.dropped.inc(committed.dropped)
    previous = snap.summary.token_count if snap.summary else 0
    growth = summary.token_count - previous if summary else 0
    children.tokens_saved.inc(max(0, committed.tokens_removed - growth))


def record_evict_commit(resource_id: str, committed: CommitResult) -> None:
    """A committed eviction: messages evicted, tokens saved."""
    children = instruments().for_resource(resource_id)
    children.evicted.inc(committed.dropped)
    children.tokens_saved.inc(max(0, committed.tokens_removed))


def record_lock_contention(operation: str) -> None:
    """A flush or eviction found the memory's lock held."""
    instruments().lock_contention.labels(operation).inc()


def _default_strategy(operation: str, memory: Any, kwargs: dict[str, Any]) -> str:
    # The label a run gets when it raised before producing a result (flush.py names strategies
    # the same way in its FlushResult).
    if operation == "evict":
        return f"evict:{kwargs.get('policy') or memory.resource.eviction.policy}"
    return str(kwargs.get("strategy") or memory.resource.flushing.type)


def instrument_flush(operation: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate ``flush_memory`` / ``evict_memory``: count each run by strategy and outcome (the
    result's status, or ``error`` when it raised), time it, and count lock contention. Dry runs
    change nothing and are not counted."""

    def decorate(run: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(run)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if kwargs.get("dry_run"):
                return run(*args, **kwargs)
            started = time.perf_counter()
            try:
                result = run(*args, **kwargs)
            except Exception:
                strategy = _default_strategy(operation, args[0], kwargs)
                _record_run(strategy, _ERROR, time.perf_counter() - started)
                raise
            elapsed = time.perf_counter() - started
            outcome: str = getattr(result, "status", _ERROR)
            _record_run(getattr(result, "strategy", "unknown"), outcome, elapsed)
            if outcome == _ALREADY_RUNNING:
                record_lock_contention(operation)
            return result

        return wrapper

    return decorate


def _record_run(strategy: str, outcome: str, seconds: float) -> None:
    metrics = instruments()
    metrics.flush_runs.labels(strategy, str(outcome)).inc()
    metrics.flush_duration.labels(strategy).observe(seconds)


# ---- breakers ------------------------------------------------------------------------------


def set_breaker_state(name: str, state: str | int) -> None:
    """Export breaker ``name``'s state: a pybreaker state name or 0/1/2 (closed/half-open/open).

    Subscribed to :mod:`memory_engine.breakers`, which calls it on every state a process sees.
    """
    value = float(state) if isinstance(state, int) else float(BREAKER_STATE_VALUES[str(state)])
    with _state.lock:
        _state.breakers[name] = value
    instruments().breaker_state.labels(name).set(value)


subscribe_breaker_state(set_breaker_state)
