"""A bounded soak with real worker processes, then an accounting check of every memory.

Eight appender threads write unique messages to 50 memories of a ``hybrid_summary`` resource whose
limits are small, so flushes (and hard-limit evictions) run all the time on two ``celery -A worker
worker`` processes, while another thread clears and replaces memories. When the time is up the
test waits until no flush is pending and the queues are empty, stops the workers, and proves with
``tests/integration/accounting.py`` that every acknowledged message is in its list, covered by the
summary point, flushed/evicted and counted, or removed by an explicit clear/replace, and that every
memory's counters add up. Its duration is ``MEMORY_SOAK_SECONDS`` (default 60).

The first tests below show that the checker itself catches the faults it is meant to catch.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from memory_engine.client import Memory, MemoryClient
from memory_engine.errors import MemoryEngineError
from memory_engine.settings import Settings
from memory_engine.store.locks import MemoryLock
from memory_engine.task_contract import QUEUES
from tests.builders import hybrid, resource_yaml
from tests.fixtures_worker import broker_url_for, wait_for
from tests.integration.accounting import Ledger, account_memory, assert_all_accounted
from tests.integration.helpers import client_with, ctx, resource
from tests.integration.procs import (
    ServiceProcess,
    memory_env,
    running,
    settings_from_env,
    worker_process,
)

SOAK_SECONDS_DEFAULT = 60.0
SOAK_BROKER_DB = 12  # dedicated: no other test's worker consumes from it
SOAK_MEMORIES = 50
SOAK_APPENDERS = 8
SOAK_WORKERS = 2
WIPE_INTERVAL_S = 0.2
DRAIN_TIMEOUT_S = 60.0
FILLER_WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta")

SOAK_RESOURCE = resource_yaml(
    "soak", type="token_based", max_tokens=400, flushing=hybrid(60), eviction={"policy": "fifo"}
)


def soak_seconds() -> float:
    return float(os.environ.get("MEMORY_SOAK_SECONDS", SOAK_SECONDS_DEFAULT))


# --- the checker catches what it should ----------------------------------------------------------


@pytest.fixture
def checked(settings: Settings) -> Iterator[tuple[MemoryClient, Memory, Ledger]]:
    ledger = Ledger()
    with client_with(settings, resource("conv")) as client:
        memory = client.memory("conv", ctx(uuid.uuid4().hex[:8]))
        for i in range(6):
            started = ledger.now_ns()
            result = memory.append({"role": "user", "content": f"m{i}"})
            assert result.first_seq is not None
            ledger.acked(memory.key, f"m{i}", result.first_seq, started, ledger.now_ns())
        yield client, memory, ledger


def problems_of(client: MemoryClient, memory: Memory, ledger: Ledger) -> str:
    return "\n".join(account_memory(client, memory.key, ledger).problems)


def test_checker_passes_a_consistent_memory(checked: tuple[MemoryClient, Memory, Ledger]) -> None:
    client, memory, ledger = checked
    account = account_memory(client, memory.key, ledger)
    assert account.problems == [] and account.in_list == 6


def test_checker_catches_a_lost_message(
    checked: tuple[MemoryClient, Memory, Ledger], redis_client: redis.Redis
) -> None:
    client, memory, ledger = checked
    redis_client.lrem(memory.keys.msgs, 1, redis_client.lindex(memory.keys.msgs, 2) or b"")
    found = problems_of(client, memory, ledger)
    assert "message_count 6 != list length 5" in found
    assert "left the list" in found  # the acknowledged message is gone, and nothing counts it


def test_checker_catches_drifted_counters(
    checked: tuple[MemoryClient, Memory, Ledger], redis_client: redis.Redis
) -> None:
    client, memory, ledger = checked
    redis_client.hincrby(memory.keys.meta, "cleared", 1)
    redis_client.hincrby(memory.keys.meta, "token_count", 1)
    found = problems_of(client, memory, ledger)
    assert "seq 6 != message_count + flushed" in found
    assert "token_count" in found


def test_checker_catches_phantom_and_duplicate_messages(
    checked: tuple[MemoryClient, Memory, Ledger], redis_client: redis.Redis
) -> None:
    client, memory, ledger = checked
    first = redis_client.lindex(memory.keys.msgs, 0) or b""
    redis_client.rpush(memory.keys.msgs, first.replace(b'"s":1,', b'"s":7,'))
    redis_client.rpush(memory.keys.msgs, first.replace(b'"s":1,', b'"s":8,').replace(b"m0", b"zz"))
    found = problems_of(client, memory, ledger)
    assert "listed twice" in found and "nobody appended" in found


def test_checker_catches_a_clear_that_left_messages(
    checked: tuple[MemoryClient, Memory, Ledger],
) -> None:
    client, memory, ledger = checked
    now = ledger.now_ns()
    ledger.wiped(memory.key, "clear", now, now)  # recorded, but never sent to Redis
    assert "clear left older messages" in problems_of(client, memory, ledger)


# --- races the soak found -------------------------------------------------------------------------


@pytest.mark.usefixtures("celery_worker")
def test_flush_requested_while_the_lock_is_held_still_runs(
    engine: MemoryClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A flush task that finds the memory's lock held (another flush finishing: it already
    cleared the marker, then an append set it again) must not just exit: the marker would stay
    set, blocking every flush of the memory until its TTL. It runs once the lock is free."""
    caplog.set_level(logging.INFO, logger="memory_engine.engine.flush")
    memory = engine.memory("fifo-small", ctx(uuid.uuid4().hex[:8]))
    lock = MemoryLock(engine.redis, memory.keys.lock, ttl_s=30)
    lock.acquire()
    try:
        results = [memory.append({"role": "user", "content": f"m{i}"}) for i in range(8)]
        assert results[-1].flush_requested
        wait_for(
            lambda: f"flush of {memory.key} skipped: already running" in caplog.text,
            what="the worker to meet the held lock",
        )
    finally:
        lock.release()
    wait_for(lambda: not memory.stats().flush_pending, what="the flush to run after all")
    assert memory.stats().message_count == 5


# --- the soak ------------------------------------------------------------------------------------


class Appender(threading.Thread):
    """Appends unique messages to random memories until stopped; records every outcome."""

    def __init__(self, number: int, memories: list[Memory], ledger: Ledger, stop: threading.Event):
        super().__init__(name=f"appender-{number}", daemon=True)
        self.number, self.memories, self.ledger, self.stop = number, memories, ledger, stop
        self.errors: list[str] = []
        self.acked = 0

    def run(self) -> None:
        rng = random.Random(self.number)
        n = 0
        while not self.stop.is_set():
            memory = rng.choice(self.memories)
            words = " ".join(rng.choices(FILLER_WORDS, k=rng.randint(1, 12)))
            content = f"a{self.number}-{n} {words}"
            role = "user" if n % 2 == 0 else "assistant"
            n += 1
            started = self.ledger.now_ns()
            try:
                result = memory.append({"role": role, "content": content})
            except MemoryEngineError as exc:
                self.ledger.unknown(memory.key, content)
                self.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            assert result.first_seq is not None
            self.ledger.acked(memory.key, content, result.first_seq, started, self.ledger.now_ns())
            self.acked += 1


class Wiper(threading.Thread):
    """Every ``WIPE_INTERVAL_S`` clears or replaces (alternately) a random memory; records it."""

    def __init__(self, memories: list[Memory], ledger: Ledger, stop: threading.Event):
        super().__init__(name="wiper", daemon=True)
        self.memories, self.ledger, self.stop = memories, ledger, stop
        self.errors: list[str] = []
        self.done = 0

    def run(self) -> None:
        rng = random.Random(99)
        while not self.stop.wait(WIPE_INTERVAL_S):
            memory = rng.choice(self.memories)
            kind = "clear" if self.done % 2 == 0 else "replace"
            contents = (f"r{self.done}-0 replacement", f"r{self.done}-1 replacement")
            started = self.ledger.now_ns()
            try:
                if kind == "clear":
                    memory.clear()
                else:
                    memory.replace([{"role": "user", "content": c} for c in contents])
            except MemoryEngineError as exc:
                self.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
                continue
            self.ledger.wiped(memory.key, kind, started, self.ledger.now_ns(), contents)
            self.done += 1


def backlog(memories: list[Memory], broker: redis.Redis) -> dict[str, int]:
    """What is still to do: queued and unacknowledged tasks, memories with a flush pending."""
    pipe = broker.pipeline(transaction=False)
    for queue in QUEUES:
        pipe.llen(queue)
    pipe.hlen("unacked")
    *queued, unacked = pipe.execute()
    pending = sum(1 for m in memories if m.stats().flush_pending)
    return {"queued": sum(queued), "unacked": unacked, "flush_pending": pending}


def wait_drained(
    memories: list[Memory], broker: redis.Redis, workers: list[ServiceProcess]
) -> None:
    """Wait until nothing is queued, delivered-but-unacknowledged or pending; on the deadline,
    fail with what is left and what the workers said about it."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while any((left := backlog(memories, broker)).values()):
        if time.monotonic() > deadline:
            logs = "".join(w.logs() for w in workers)
            stuck = [m.key for m in memories if m.stats().flush_pending][:5]
            raise AssertionError(
                f"not drained after {DRAIN_TIMEOUT_S}s: {left}; stuck markers e.g. {stuck}; "
                f"workers logged {logs.count('already running')} 'already running' skips"
            )
        time.sleep(0.1)


@pytest.mark.slow
def test_soak_every_acknowledged_message_is_accounted_for(redis_url: str, tmp_path: Path) -> None:
    resources_dir = tmp_path / "resources"
    resources_dir.mkdir()
    (resources_dir / "soak.yaml").write_text(SOAK_RESOURCE)
    broker_url = broker_url_for(redis_url, SOAK_BROKER_DB)
    broker = redis.Redis.from_url(broker_url)
    broker.flushdb()  # leftovers of an earlier run would be consumed by these workers
    env = memory_env(
        redis_url=redis_url,
        broker_url=broker_url,
        key_prefix=f"soak{uuid.uuid4().hex[:6]}",
        resources_dir=resources_dir,
        summarizer_provider="rule_based",
        flush_marker_ttl_s=120,
        socket_timeout_s=10,
    )
    workers = [
        worker_process(env, tmp_path / f"worker{n}.log", queues=",".join(QUEUES), name=f"soak{n}")
        for n in range(SOAK_WORKERS)
    ]
    ledger = Ledger()
    stop = threading.Event()
    with running(*workers), MemoryClient(settings_from_env(env)) as client:
        for w in workers:
            w.start()
        for w in workers:
            w.wait_for_log(r"ready\.")
        memories = [client.memory("soak", ctx(f"c{i}", "soak")) for i in range(SOAK_MEMORIES)]
        appenders = [Appender(n, memories, ledger, stop) for n in range(SOAK_APPENDERS)]
        wiper = Wiper(memories, ledger, stop)
        for t in [*appenders, wiper]:
            t.start()
        deadline = time.monotonic() + soak_seconds()
        while time.monotonic() < deadline:
            assert all(w.alive for w in workers), "a worker died:\n" + workers[0].tail()
            time.sleep(0.5)
        stop.set()
        for t in [*appenders, wiper]:
            t.join(30)
        assert not any(t.is_alive() for t in [*appenders, wiper]), "a load thread hung"
        errors = [e for a in appenders for e in a.errors] + wiper.errors
        assert errors == [], errors[:10]

        wait_drained(memories, broker, workers)
        for w in workers:
            w.stop()
        accounts = assert_all_accounted(client, ledger, [m.key for m in memories])

    # The soak must have exercised what it claims to, or it proves nothing.
    summarized = sum(a.meta["summarized"] for a in accounts)
    evicted = sum(a.meta["evicted"] for a in accounts)
    assert ledger.acked_count > SOAK_MEMORIES * 20
    assert summarized > 0 and wiper.done > 0
    assert sum(1 for a in accounts if a.summary_point > 0) > SOAK_MEMORIES // 2
    logs = "".join(w.logs() for w in workers)
    print(
        f"soak {soak_seconds():.0f}s: {ledger.acked_count} appends acknowledged, "
        f"{wiper.done} clears/replaces, {logs.count('succeeded in')} tasks succeeded, "
        f"{summarized} messages summarized, {evicted} evicted, "
        f"{sum(a.in_list for a in accounts)} listed at the end, "
        f"{sum(a.covered_by_summary for a in accounts)} covered by summaries, "
        f"{sum(a.removed_by_wipe for a in accounts)} removed by clear/replace, "
        f"{sum(a.flushed_or_evicted for a in accounts)} flushed/evicted"
    )
