"""Client-side metrics (memory_engine/metrics.py) against the private Redis: each test reads the
counters before and after real operations and checks they moved by exactly the right amounts.

Metric values are process-wide, so every check is a delta, and resource ids are unique to this
module (a resource label no other test writes)."""

from __future__ import annotations

import json
import os
import random
import socket
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY, CollectorRegistry, Histogram

from memory_engine import metrics
from memory_engine.breakers import on_breaker_state
from memory_engine.client import Memory, MemoryClient
from memory_engine.engine.flush import FlushStatus
from memory_engine.errors import ConfigError
from memory_engine.producer import task_kwargsrepr
from memory_engine.settings import Settings
from memory_engine.store import PendingMessage
from memory_engine.store.locks import MemoryLock
from memory_engine.task_contract import QUEUE_FLUSH, QUEUES
from tests.fixtures_worker import broker_url_for
from tests.integration.helpers import client_with, ctx, resource
from worker.metrics import QueueDepthCollector, _prepare_directory

IDLE_BROKER_DB = 14  # no worker consumes here: published tasks stay for the test to read


def value(name: str, **labels: str) -> float:
    return metrics.registry().get_sample_value(name, labels) or 0.0


def fifo(rid: str, threshold: float = 0.8) -> dict[str, Any]:
    return resource(
        rid,
        type="message_count_based",
        max_messages=10,
        flushing={"type": "simple_fifo", "summarize_threshold": threshold},
    )


@pytest.fixture
def rid() -> str:
    return f"metrics-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def idle_broker(redis_url: str) -> Iterator[redis.Redis]:
    broker = redis.Redis.from_url(broker_url_for(redis_url, IDLE_BROKER_DB))
    broker.delete(*QUEUES)
    yield broker
    broker.delete(*QUEUES)
    broker.close()


@pytest.fixture
def engine(
    settings: Settings, redis_url: str, rid: str, idle_broker: redis.Redis
) -> Iterator[MemoryClient]:
    hybrid = resource(
        f"{rid}-hyb",
        type="token_based",
        max_tokens=400,
        flushing={"type": "hybrid_summary", "summarize_threshold": 0.8, "summary_tokens": 60},
    )
    evicting = fifo(f"{rid}-ev", threshold=1.0)
    with client_with(
        settings,
        fifo(rid),
        hybrid,
        evicting,
        broker_url=broker_url_for(redis_url, IDLE_BROKER_DB),
        summarizer_provider="rule_based",
    ) as c:
        yield c


def conv(client: MemoryClient, rid: str) -> Memory:
    return client.memory(rid, ctx(uuid.uuid4().hex[:10]))


def fill(memory: Memory, n: int) -> None:
    for i in range(n):
        memory.append({"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " * 4})


# ---- append path ---------------------------------------------------------------------------


def test_appends_tokens_and_latency_are_counted_per_call(engine: MemoryClient, rid: str) -> None:
    latency_before = value("memory_engine_append_latency_seconds_count")
    m = conv(engine, rid)
    m.append({"role": "user", "content": "hello there"})
    m.append_many([{"role": "user", "content": "one two"}, {"role": "assistant", "content": "x"}])
    stored_tokens = sum(msg.token_count or 0 for msg in m.read())
    assert stored_tokens > 0
    assert value("memory_engine_appends_total", resource=rid) == 3
    assert value("memory_engine_tokens_appended_total", resource=rid) == stored_tokens
    # one observation per call (append_many is one call), whatever the batch size
    assert value("memory_engine_append_latency_seconds_count") - latency_before == 2


def test_appends_from_many_threads_are_all_counted(engine: MemoryClient, rid: str) -> None:
    # Appends are queued without a lock and folded in batches: none may be lost or counted twice.
    latency_before = value("memory_engine_append_latency_seconds_count")
    memories = [conv(engine, rid) for _ in range(8)]

    def append(i: int) -> None:
        memories[i % 8].append({"role": "user", "content": f"m{i}"})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(append, range(2_000)))
    assert value("memory_engine_appends_total", resource=rid) == 2_000
    assert value("memory_engine_append_latency_seconds_count") - latency_before == 2_000


def test_queued_appends_are_folded_without_a_scrape(engine: MemoryClient, rid: str) -> None:
    instruments = metrics.instruments()
    m = conv(engine, rid)
    for i in range(metrics.APPEND_DRAIN_AT * 2 + 1):
        m.append({"role": "user", "content": f"m{i}"})
        assert len(instruments.append_queue) < metrics.APPEND_DRAIN_AT
    child = instruments.for_resource(rid).appends
    assert child._value.get() >= metrics.APPEND_DRAIN_AT * 2  # folded by appends, not a scrape


@pytest.mark.parametrize("seed", range(5))
def test_batched_histogram_matches_observe(seed: int) -> None:
    bounds = metrics.APPEND_LATENCY_BUCKETS_S
    rng = random.Random(seed)
    # every bound exactly, just above and below it, zero and far beyond the last bound
    values = [b + d for b in bounds for d in (0.0, 1e-9, -1e-9)] + [0.0, 3.0, 1e9]
    values += [rng.expovariate(1 / 0.003) for _ in range(500)]
    batched, reference = CollectorRegistry(), CollectorRegistry()
    h_batched = Histogram("h", "batched", buckets=bounds, registry=batched)
    h_reference = Histogram("h", "reference", buckets=bounds, registry=reference)
    metrics._observe_many(h_batched, values)
    for v in values:
        h_reference.observe(v)
    for le in [*map(str, bounds), "+Inf"]:
        got = batched.get_sample_value("h_bucket", {"le": le})
        assert got == reference.get_sample_value("h_bucket", {"le": le}), le
    assert batched.get_sample_value("h_count") == len(values)
    assert batched.get_sample_value("h_sum") == pytest.approx(
        reference.get_sample_value("h_sum"), rel=1e-12
    )


def test_non_persistable_appends_are_not_counted(engine: MemoryClient, settings: Settings) -> None:
    rid = f"skip-{uuid.uuid4().hex[:6]}"
    res = resource(rid, privacy_policy={"non_persistable_message_types": ["tool"]})
    with client_with(settings, res) as c:
        result = c.memory(rid, ctx("a")).append(
            {"role": "tool", "content": "raw data", "tool_call_id": "t1"}
        )
    assert result.stored is False
    assert value("memory_engine_appends_total", resource=rid) == 0


def test_threshold_crossings_count_one_trigger_and_the_rest_as_deduplicated(
    engine: MemoryClient, rid: str, idle_broker: redis.Redis
) -> None:
    m = conv(engine, rid)
    results = [m.append({"role": "user", "content": f"m{i}"}) for i in range(12)]
    assert [r.flush_requested for r in results] == [False] * 7 + [True] + [False] * 4
    assert value("memory_engine_flush_triggers_total", resource=rid) == 1
    assert value("memory_engine_flush_triggers_deduplicated_total", resource=rid) == 4
    assert m.request_flush() is False  # still pending: deduplicated too
    assert value("memory_engine_flush_triggers_deduplicated_total", resource=rid) == 5
    assert idle_broker.llen(QUEUE_FLUSH) == 1


def test_request_flush_counts_a_trigger(
    engine: MemoryClient, rid: str, idle_broker: redis.Redis
) -> None:
    m = conv(engine, rid)
    fill(m, 2)
    assert m.request_flush() is True
    assert value("memory_engine_flush_triggers_total", resource=rid) == 1
    assert value("memory_engine_flush_triggers_deduplicated_total", resource=rid) == 0


def test_append_script_tells_a_new_trigger_from_a_pending_one(engine: MemoryClient) -> None:
    keys = engine.keyspace.memory(f"p1:raw-{uuid.uuid4().hex[:8]}")

    def append() -> Any:
        return engine.store.append(
            keys,
            [PendingMessage('{"role":"user","content":"x"}', 1)],
            resource_id="raw",
            ttl_s=60,
            token_threshold=0,
            message_threshold=2,
            marker_ttl_s=60,
        )

    below, crossing, pending = append(), append(), append()
    assert (below.flush_requested, below.flush_deduplicated) == (False, False)
    assert (crossing.flush_requested, crossing.flush_deduplicated) == (True, False)
    assert (pending.flush_requested, pending.flush_deduplicated) == (False, True)


def test_published_tasks_show_ids_never_content(
    engine: MemoryClient, rid: str, idle_broker: redis.Redis
) -> None:
    m = conv(engine, rid)
    for i in range(8):
        m.append({"role": "user", "content": f"secret-content-{i}"})
    raw = idle_broker.lrange(QUEUE_FLUSH, 0, -1)
    assert len(raw) == 1
    headers = json.loads(raw[0])["headers"]
    assert headers["task"] == "memory.flush"
    assert m.key in headers["kwargsrepr"] and rid in headers["kwargsrepr"]
    assert "secret-content" not in raw[0].decode()
    assert headers["argsrepr"] == "()"


def test_kwargsrepr_masks_unknown_arguments() -> None:
    shown = task_kwargsrepr({"memory_id": "p:k", "resource_id": "r", "content": "private"})
    assert "p:k" in shown and "'resource_id': 'r'" in shown
    assert "private" not in shown and "'content': '<hidden>'" in shown


# ---- flush and evict -----------------------------------------------------------------------


def test_committed_fifo_flush_counts_run_drops_and_tokens_saved(
    engine: MemoryClient, rid: str
) -> None:
    m = conv(engine, rid)
    fill(m, 8)
    before = m.stats()
    runs = value("memory_engine_flush_runs_total", strategy="lru", outcome="committed")
    timed = value("memory_engine_flush_duration_seconds_count", strategy="lru")
    result = m.flush(strategy="lru")
    after = m.stats()
    assert result.status is FlushStatus.COMMITTED and result.dropped == 3
    assert value("memory_engine_flush_runs_total", strategy="lru", outcome="committed") == runs + 1
    assert value("memory_engine_flush_duration_seconds_count", strategy="lru") == timed + 1
    assert value("memory_engine_messages_dropped_total", resource=rid) == 3
    assert value("memory_engine_messages_summarized_total", resource=rid) == 0
    saved = before.token_count - after.token_count
    assert saved > 0
    assert value("memory_engine_tokens_saved_total", resource=rid) == saved


def test_summarizing_flush_counts_summarized_and_net_tokens_saved(
    engine: MemoryClient, rid: str
) -> None:
    m = conv(engine, f"{rid}-hyb")
    for i in range(30):
        m.append({"role": "user", "content": f"the customer asks about order {i} and its delivery"})
    before = m.stats()
    result = m.flush()
    after = m.stats()
    assert result.status is FlushStatus.COMMITTED and result.summarized > 0
    resource_id = f"{rid}-hyb"
    assert value("memory_engine_messages_summarized_total", resource=resource_id) == (
        result.summarized
    )
    net = (before.token_count + before.summary_tokens) - (after.token_count + after.summary_tokens)
    assert value("memory_engine_tokens_saved_total", resource=resource_id) == max(0, net)


def test_dry_run_is_not_counted(engine: MemoryClient, rid: str) -> None:
    m = conv(engine, rid)
    fill(m, 8)
    runs = value("memory_engine_flush_duration_seconds_count", strategy="token_aware_lru")
    assert m.flush(strategy="token_aware_lru", dry_run=True).dry_run
    assert value("memory_engine_flush_duration_seconds_count", strategy="token_aware_lru") == runs
    assert value("memory_engine_messages_dropped_total", resource=rid) == 0


def test_a_held_lock_counts_contention_and_an_already_running_run(
    engine: MemoryClient, rid: str
) -> None:
    m = conv(engine, rid)
    fill(m, 8)
    contention = value("memory_engine_lock_contention_total", operation="flush")
    evict_contention = value("memory_engine_lock_contention_total", operation="evict")
    busy = value("memory_engine_flush_runs_total", strategy="lru", outcome="already_running")
    with MemoryLock(engine.redis, m.keys.lock, 30):
        assert m.flush(strategy="lru").status is FlushStatus.ALREADY_RUNNING
        assert m.evict().status is FlushStatus.ALREADY_RUNNING
    assert value("memory_engine_lock_contention_total", operation="flush") == contention + 1
    assert value("memory_engine_lock_contention_total", operation="evict") == evict_contention + 1
    assert (
        value("memory_engine_flush_runs_total", strategy="lru", outcome="already_running")
        == busy + 1
    )


def test_a_failing_flush_counts_as_error_under_the_requested_strategy(
    engine: MemoryClient, rid: str
) -> None:
    m = conv(engine, rid)
    fill(m, 2)
    with pytest.raises(ConfigError):
        m.flush(strategy="no-such-strategy")
    assert (
        value("memory_engine_flush_runs_total", strategy="no-such-strategy", outcome="error") == 1
    )


def test_eviction_counts_evicted_messages_and_tokens(engine: MemoryClient, rid: str) -> None:
    m = conv(engine, f"{rid}-ev")  # threshold 1.0: never flushed, so appends pass max_messages
    fill(m, 13)
    before = m.stats()
    runs = value("memory_engine_flush_runs_total", strategy="evict:fifo", outcome="committed")
    result = m.evict()
    assert result.status is FlushStatus.COMMITTED and result.evicted == 3
    assert value("memory_engine_messages_evicted_total", resource=f"{rid}-ev") == 3
    assert value("memory_engine_messages_dropped_total", resource=f"{rid}-ev") == 0
    saved = before.token_count - m.stats().token_count
    assert value("memory_engine_tokens_saved_total", resource=f"{rid}-ev") == saved
    assert (
        value("memory_engine_flush_runs_total", strategy="evict:fifo", outcome="committed")
        == runs + 1
    )


# ---- breakers, registries -------------------------------------------------------------------


def test_breaker_states_arrive_through_the_breaker_callbacks() -> None:
    name = f"summarizer.test@{uuid.uuid4().hex[:6]}"
    on_breaker_state(name, "open")
    assert value("memory_engine_breaker_state", breaker=name) == 2
    on_breaker_state(name, "half-open")
    assert value("memory_engine_breaker_state", breaker=name) == 1
    metrics.set_breaker_state(name, "closed")
    assert value("memory_engine_breaker_state", breaker=name) == 0


@pytest.fixture
def restore_registry() -> Iterator[None]:
    yield
    metrics.use_registry(REGISTRY)


@pytest.mark.usefixtures("restore_registry")
def test_dedicated_registry_from_settings(settings: Settings, rid: str) -> None:
    name = f"summarizer.kept@{uuid.uuid4().hex[:6]}"
    metrics.set_breaker_state(name, "open")
    with client_with(settings, fifo(rid), metrics_registry="dedicated") as c:
        dedicated = metrics.registry()
        assert dedicated is not REGISTRY
        conv(c, rid).append({"role": "user", "content": "hi"})
    assert dedicated.get_sample_value("memory_engine_appends_total", {"resource": rid}) == 1
    assert REGISTRY.get_sample_value("memory_engine_appends_total", {"resource": rid}) is None
    # breaker states survive the move: the gauge describes shared state, not a count
    assert dedicated.get_sample_value("memory_engine_breaker_state", {"breaker": name}) == 2
    # a later client with default settings does not move the metrics back (or reset them)
    with client_with(settings, fifo(rid)):
        assert metrics.registry() is dedicated


@pytest.mark.usefixtures("restore_registry")
def test_use_registry_and_rebuild(engine: MemoryClient, rid: str) -> None:
    mine = CollectorRegistry()
    metrics.use_registry(mine)
    assert metrics.registry() is mine
    conv(engine, rid).append({"role": "user", "content": "hi"})
    assert mine.get_sample_value("memory_engine_appends_total", {"resource": rid}) == 1
    metrics.rebuild()
    assert mine.get_sample_value("memory_engine_appends_total", {"resource": rid}) is None


# ---- worker-side pieces that need no worker ----------------------------------------------------


def test_queue_depth_collector_reads_llen_per_queue(redis_url: str) -> None:
    client = redis.Redis.from_url(broker_url_for(redis_url, IDLE_BROKER_DB))
    queues = (f"q-{uuid.uuid4().hex[:6]}", f"q-{uuid.uuid4().hex[:6]}")
    client.rpush(queues[0], "a", "b", "c")
    try:
        registry = CollectorRegistry()
        registry.register(QueueDepthCollector(client, queues))
        assert registry.get_sample_value("memory_engine_queue_depth", {"queue": queues[0]}) == 3
        assert registry.get_sample_value("memory_engine_queue_depth", {"queue": queues[1]}) == 0
    finally:
        client.delete(*queues)
        client.close()


def test_queue_depth_is_left_out_when_the_broker_is_down() -> None:
    down = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    registry = CollectorRegistry()
    registry.register(QueueDepthCollector(down))
    assert registry.get_sample_value("memory_engine_queue_depth", {"queue": QUEUE_FLUSH}) is None


def test_multiprocess_directory_is_clean_and_removes_dead_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = socket.gethostname()
    dead = tmp_path / f"worker-{host}-999999999"
    (dead / "x").mkdir(parents=True)
    other_host = tmp_path / "worker-elsewhere-999999999"
    other_host.mkdir()
    own = tmp_path / f"worker-{host}-{os.getpid()}"
    own.mkdir()
    (own / "counter_1.db").write_bytes(b"old")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert _prepare_directory() == own
    assert list(own.iterdir()) == []  # a restart does not add up the previous run's files
    assert not dead.exists()
    assert other_host.exists()  # another host's worker may share a volume: not ours to judge
