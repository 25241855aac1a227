"""The Celery side with a real in-process worker on the private Redis broker."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
import redis
from celery import Celery

from memory_engine.client import Memory, MemoryClient
from memory_engine.engine.flush import FlushStatus, flush_memory
from memory_engine.errors import LockLost
from memory_engine.settings import Settings
from memory_engine.task_contract import (
    QUEUE_FLUSH,
    TASK_CLEANUP,
    TASK_EVICT,
    TASK_FLUSH,
    TASK_RECONCILE,
)
from tests.fixtures_worker import broker_url_for, wait_for

pytestmark = pytest.mark.usefixtures("celery_worker")


def conv() -> dict[str, Any]:
    return {"project": {"id": "p1"}, "workflow": {"input": {"conv": uuid.uuid4().hex[:10]}}}


def fill(memory: Memory, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        memory.append({"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}"})


def test_threshold_crossing_enqueues_one_flush_that_trims_to_target(engine: MemoryClient) -> None:
    m = engine.memory("fifo-small", conv())
    results = [m.append({"role": "user", "content": f"m{i}"}) for i in range(8)]
    assert [r.flush_requested for r in results] == [False] * 7 + [True]
    wait_for(lambda: not m.stats().flush_pending, what="the flush to commit")
    s = m.stats()
    assert s.message_count == 5  # target: 50 % of max_messages
    assert s.flushed_count == 3
    assert [x.content for x in m.read()] == [f"m{i}" for i in range(3, 8)]
    assert s.last_flush_at is not None


def test_flush_stores_no_result_but_keeps_its_failures(
    engine: MemoryClient, celery_app: Celery, redis_url: str
) -> None:
    # Appends never wait for a flush: its result would be a backend write nobody reads. A flush
    # that fails for good is still stored, so AsyncResult tells FAILURE from "not stored".
    m = engine.memory("fifo-small", conv())
    fill(m, 7)  # one below the threshold: only our task flushes it
    ok = celery_app.send_task(TASK_FLUSH, kwargs={"memory_id": m.key, "resource_id": "fifo-small"})
    failed = celery_app.send_task(
        TASK_FLUSH, kwargs={"memory_id": "p1:nope", "resource_id": "no-such-resource"}
    )
    # One queue, one solo worker: the failure is stored after the good flush ran.
    wait_for(lambda: failed.state == "FAILURE", what="the failure in the result backend")
    assert m.stats().flushed_count == 2
    backend = redis.Redis.from_url(broker_url_for(redis_url, 1))
    assert ok.state == "PENDING"  # what Celery says of an id it has no record of
    assert backend.exists(f"celery-task-meta-{ok.id}") == 0
    assert backend.exists(f"celery-task-meta-{failed.id}") == 1


def test_thousand_appends_over_threshold_leave_exactly_one_task(
    worker_settings: Settings, redis_url: str
) -> None:
    # A broker DB no worker listens on: the task stays in the queue for us to count.
    idle = worker_settings.replace(broker_url=broker_url_for(redis_url, 2))
    broker = redis.Redis.from_url(broker_url_for(redis_url, 2))
    broker.delete(QUEUE_FLUSH)
    with MemoryClient(idle) as c:
        m = c.memory("fifo-small", conv())
        flags = [
            m.append({"role": "user", "content": f"m{i}"}).flush_requested for i in range(1000)
        ]
        assert sum(flags) == 1
        assert broker.llen(QUEUE_FLUSH) == 1
        assert m.request_flush() is False
        assert m.stats().flush_pending is True
    broker.delete(QUEUE_FLUSH)


def test_request_flush_enqueues_when_nothing_pending(engine: MemoryClient) -> None:
    m = engine.memory("tok-small", conv())
    fill(m, 3)
    assert m.request_flush() is True
    wait_for(lambda: not m.stats().flush_pending, what="the requested flush to finish")


def test_dry_run_reports_and_changes_nothing(
    engine: MemoryClient, redis_client: redis.Redis
) -> None:
    m = engine.memory("fifo-small", conv())
    for i in range(7):
        m.append({"role": "user", "content": f"m{i}"})
    before = redis_client.lrange(m.keys.msgs, 0, -1), m.stats()
    res = m.flush(dry_run=True)
    assert res.dry_run and res.status is FlushStatus.DRY_RUN
    assert res.removed == 2 and len(res.would_remove) == 2
    assert (redis_client.lrange(m.keys.msgs, 0, -1), m.stats()) == before


def test_two_flushes_at_once_one_runs_one_exits_as_already_running(engine: MemoryClient) -> None:
    m = engine.memory("fifo-small", conv())
    for i in range(7):
        m.append({"role": "user", "content": f"m{i}"})
    # Marker set without a task, so no worker races the two flushes under test.
    assert engine.store.set_flush_marker(m.keys, 60)
    entered, release = threading.Event(), threading.Event()
    results: list[Any] = []

    def hold(_plan: Any) -> None:
        entered.set()
        assert release.wait(10)

    t = threading.Thread(target=lambda: results.append(flush_memory(m, before_commit=hold)))
    t.start()
    assert entered.wait(10)
    second = m.flush()
    assert second.status is FlushStatus.ALREADY_RUNNING
    assert m.stats().flush_pending is True
    release.set()
    t.join(10)
    assert results[0].status is FlushStatus.COMMITTED
    assert m.stats().flush_pending is False
    assert m.stats().message_count == 5


def test_appends_during_a_flush_survive_it(engine: MemoryClient) -> None:
    m = engine.memory("tok-small", conv())
    for i in range(12):
        m.append({"role": "user", "content": f"older message number {i} " + "pad " * 5})

    def append_meanwhile(_plan: Any) -> None:
        for i in range(5):
            m.append({"role": "user", "content": f"during {i}"})

    res = flush_memory(m, strategy="simple_fifo", before_commit=append_meanwhile)
    assert res.status is FlushStatus.COMMITTED and res.removed > 0
    contents = [x.content for x in m.read()]
    assert contents[-5:] == [f"during {i}" for i in range(5)]
    s = m.stats()
    assert s.message_count == len(contents)
    assert s.token_count == sum(x.token_count or 0 for x in m.read())


def test_clear_during_a_flush_makes_the_commit_replan(engine: MemoryClient) -> None:
    m = engine.memory("tok-small", conv())
    for i in range(12):
        m.append({"role": "user", "content": f"message {i} " + "pad " * 5})
    calls = 0

    def clear_once(_plan: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            m.clear()
            m.append({"role": "user", "content": "after clear"})

    res = flush_memory(m, strategy="simple_fifo", before_commit=clear_once)
    assert res.status is FlushStatus.NOOP  # replanned on the cleared memory: nothing to do
    assert [x.content for x in m.read()] == ["after clear"]


def test_a_holder_that_lost_its_lock_cannot_commit(
    engine: MemoryClient, redis_client: redis.Redis
) -> None:
    m = engine.memory("tok-small", conv())
    for i in range(12):
        m.append({"role": "user", "content": f"message {i} " + "pad " * 5})
    before = redis_client.lrange(m.keys.msgs, 0, -1)

    def steal(_plan: Any) -> None:
        redis_client.set(m.keys.lock, "someone-else", px=60_000)

    with pytest.raises(LockLost):
        flush_memory(m, strategy="simple_fifo", before_commit=steal)
    assert redis_client.lrange(m.keys.msgs, 0, -1) == before
    assert redis_client.get(m.keys.lock) == b"someone-else"  # not ours to release
    redis_client.delete(m.keys.lock)


@pytest.fixture
def idle_engine(worker_settings: Settings, redis_url: str) -> Any:
    """A client whose broker no worker listens on: its flush requests are never consumed."""
    with MemoryClient(worker_settings.replace(broker_url=broker_url_for(redis_url, 2))) as c:
        yield c


def test_evict_task_enforces_hard_limits_and_counts(
    engine: MemoryClient, idle_engine: MemoryClient, celery_app: Celery
) -> None:
    # Over max_messages=10 and its flush never ran (as if the summarize queue had no worker).
    m = idle_engine.memory("evict-small", conv())
    m.append_many([{"role": "user", "content": f"m{i}"} for i in range(14)])
    result = celery_app.send_task(
        TASK_EVICT, kwargs={"memory_id": m.key, "resource_id": "evict-small"}
    ).get(timeout=20)
    assert result["status"] == "committed" and result["evicted"] == 4
    s = m.stats()
    assert (s.message_count, s.evicted_count) == (10, 4)
    assert m.read()[0].content == "m4"


def test_cleanup_removes_leftovers_of_expired_memories(
    engine: MemoryClient, celery_app: Celery, redis_client: redis.Redis
) -> None:
    m = engine.memory("short-ttl", conv())
    m.append({"role": "user", "content": "soon gone"})
    # A leftover that outlives the memory (e.g. written without a TTL by an older version).
    redis_client.hset(m.keys.summary, mapping={"text": "orphan", "token_count": 3})
    wait_for(lambda: redis_client.exists(m.keys.meta) == 0, timeout=10, what="TTL expiry")
    assert redis_client.exists(m.keys.summary) == 1
    report = celery_app.send_task(TASK_CLEANUP).get(timeout=20)
    assert report["expired_removed"] >= 1
    assert redis_client.exists(m.keys.summary) == 0
    assert redis_client.zscore(engine.keyspace.expiry_index, m.key) is None
    assert redis_client.zscore(engine.keyspace.access_index, m.key) is None


def test_reconcile_fixes_drifted_metadata(
    engine: MemoryClient, celery_app: Celery, redis_client: redis.Redis
) -> None:
    m = engine.memory("fifo-small", conv())
    for i in range(3):
        m.append({"role": "user", "content": f"m{i}"})
    true_tokens = m.stats().token_count
    redis_client.hincrby(m.keys.meta, "message_count", 5)
    redis_client.hincrby(m.keys.meta, "token_count", -2)
    report = celery_app.send_task(TASK_RECONCILE, kwargs={"since_s": 3600}).get(timeout=20)
    assert report["fixed_memories"] >= 1
    s = m.stats()
    assert (s.message_count, s.token_count) == (3, true_tokens)


def test_sweep_publishes_a_flush_the_broker_refused_and_heals_a_lost_one(
    engine: MemoryClient, redis_client: redis.Redis
) -> None:
    from memory_engine.engine.maintenance import sweep_markers

    refused, lost = (engine.memory("fifo-small", conv()) for _ in range(2))
    # Eight appends through a client whose broker is unreachable: the publish fails, the marker
    # stays (flagged unpublished: later appends do not try again) and its entry is due at once.
    down = engine.settings.replace(broker_url="redis://127.0.0.1:1/0", socket_connect_timeout_s=0.2)
    with MemoryClient(down, registry=engine.registry) as broken:
        for m in (refused, lost):
            bm = broken.memory_by_id(m.key, "fifo-small")
            flags = [
                bm.append({"role": "user", "content": f"m{i}"}).flush_requested for i in range(8)
            ]
            assert not any(flags)
            assert m.stats().flush_pending
    # A task lost after it was published: its marker expired, the pending entry stayed behind.
    redis_client.delete(lost.keys.flush)
    redis_client.zadd(engine.keyspace.pending_index, {lost.key: 0})
    report = sweep_markers(engine, stale_after_s=60)
    assert (report.republished, report.reflushed) == (1, 1)
    for m in (refused, lost):
        wait_for(lambda m=m: m.stats().message_count == 5, what=f"the healed flush of {m.key}")
