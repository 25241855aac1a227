"""Workers SIGKILLed in the middle of a flush: the task is redelivered and completes, and no
message is lost or duplicated (DESIGN §4 invariants 2 and 3, §5 ``acks_late``).

Real ``celery -A worker worker`` subprocesses, killed as a process group (main process and pool
child), with a short broker visibility timeout so kombu redelivers in seconds. Each flush is held
at a known point before the kill:

- ``memory.summarize`` waits on an LLM that never answers (``tests/llm_server.py``, mode ``hang``):
  the lock is held, the snapshot taken, nothing committed.
- ``memory.flush`` (``simple_fifo``) is held by ``CLIENT PAUSE ... WRITE`` on the data Redis: its
  first write (the lock) waits in Redis, visible in ``CLIENT LIST``. Pausing the *broker* Redis
  instead lets the commit through while holding back the acknowledgement: a kill then leaves a
  committed flush whose message is redelivered, and the second run must change nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from memory_engine.client import Memory, MemoryClient
from memory_engine.task_contract import QUEUE_FLUSH, QUEUE_SUMMARIZE, TASK_FLUSH, TASK_SUMMARIZE
from memory_engine.tooling.embedded_redis import EmbeddedRedis
from memory_engine.tooling.loopback_llm import running_llm_server
from tests.builders import fifo, hybrid, resource_yaml, resources_yaml
from tests.fixtures_worker import wait_for
from tests.integration.helpers import ctx
from tests.integration.procs import (
    memory_env,
    private_broker,
    running,
    settings_from_env,
    task_ids,
    worker_process,
)

pytestmark = pytest.mark.slow

VISIBILITY_TIMEOUT_S = 5
RESTORE_INTERVAL_S = 1
LOCK_TTL_S = 2  # below the visibility timeout: a redelivered flush never meets a dead lock
PAUSE_MS = 60_000  # an upper bound; every pause is lifted explicitly
REDELIVERY_TIMEOUT_S = VISIBILITY_TIMEOUT_S + 25

CRASH_LOCKING = {"flush_ttl": f"{LOCK_TTL_S}s"}
CRASH_RESOURCES = resources_yaml(
    resource_yaml("crash-fifo", max_messages=10, flushing=fifo(), locking=CRASH_LOCKING),
    resource_yaml("crash-hybrid", max_messages=10, flushing=hybrid(80), locking=CRASH_LOCKING),
)


broker_url = pytest.fixture(private_broker)


@pytest.fixture
def resources_dir(tmp_path: Path) -> Path:
    d = tmp_path / "resources"
    d.mkdir()
    (d / "crash.yaml").write_text(CRASH_RESOURCES)
    return d


def crash_env(
    redis_url: str, broker_url: str, resources_dir: Path, **extra: object
) -> dict[str, str]:
    return memory_env(
        redis_url=redis_url,
        broker_url=broker_url,
        key_prefix=f"crash{uuid.uuid4().hex[:6]}",
        resources_dir=resources_dir,
        broker_visibility_timeout_s=VISIBILITY_TIMEOUT_S,
        broker_unacked_restore_interval_s=RESTORE_INTERVAL_S,
        socket_timeout_s=10,
        **extra,
    )


def append_all(memory: Memory, contents: list[str]) -> dict[int, str]:
    """Append one by one; returns seq -> content of what Redis acknowledged."""
    acked: dict[int, str] = {}
    for i, content in enumerate(contents):
        result = memory.append({"role": "user" if i % 2 == 0 else "assistant", "content": content})
        assert result.first_seq is not None
        acked[result.first_seq] = content
    return acked


def assert_nothing_lost_or_duplicated(memory: Memory, acked: dict[int, str]) -> None:
    """Every acknowledged message is in the list once, or covered by the summary point, or
    removed by a policy that counted it (``flushed``/``evicted``); counts match the list."""
    stats = memory.stats()
    kept = memory.read()
    seqs = [m.seq for m in kept]
    assert seqs == sorted(set(seqs)), f"seqs not unique and ordered: {seqs}"
    assert all(acked.get(m.seq) == m.content for m in kept), "a stored message changed"
    gone = [seq for seq in acked if seq not in seqs]
    covered = [seq for seq in gone if seq <= stats.summary_point]
    dropped = [seq for seq in gone if seq > stats.summary_point]
    assert not [s for s in seqs if s <= stats.summary_point], "kept and summarized at once"
    assert len(covered) == stats.summarized_count, (covered, stats)
    assert len(dropped) == stats.flushed_count + stats.evicted_count, (dropped, stats)
    assert stats.message_count == len(kept)
    # Nothing appended escapes the counters (no clear or replace ran here).
    assert stats.last_seq == (
        stats.message_count + stats.summarized_count + stats.flushed_count + stats.evicted_count
    ), stats


def paused_writes(r: redis.Redis, command: str) -> list[str]:
    """Clients whose ``command`` waits in Redis behind ``CLIENT PAUSE`` (flag ``b``)."""
    return [
        c["addr"] for c in r.client_list() if c.get("cmd") == command and "b" in c.get("flags", "")
    ]


@contextmanager
def unpaused_on_exit(*servers: redis.Redis) -> Iterator[None]:
    try:
        yield
    finally:
        for r in servers:
            r.execute_command("CLIENT", "UNPAUSE")


def test_sigkill_during_summarize_redelivers_and_completes(
    redis_url: str, broker_url: str, resources_dir: Path, tmp_path: Path
) -> None:
    broker = redis.Redis.from_url(broker_url)
    with running_llm_server() as llm:
        llm.mode = "hang"
        env = crash_env(
            redis_url,
            broker_url,
            resources_dir,
            summarizer_provider="openai",
            summarizer_base_url=llm.openai_base_url,
            summarizer_model="x",
            summarizer_timeout_s=120,
        )
        queues = f"{QUEUE_FLUSH},{QUEUE_SUMMARIZE}"
        first = worker_process(env, tmp_path / "w1.log", queues=queues, name="crash-a")
        second = worker_process(env, tmp_path / "w2.log", queues=queues, name="crash-b")
        with running(first, second), MemoryClient(settings_from_env(env)) as client:
            first.start().wait_for_log(r"ready\.")
            memory = client.memory("crash-hybrid", ctx(uuid.uuid4().hex[:10]))
            acked = append_all(memory, [f"turn {i} about topic {i}" for i in range(8)])

            # memory.flush hands the plan to memory.summarize, which now waits on the LLM.
            wait_for(llm.recorded, what="the summarizer's LLM request")
            assert client.redis.exists(memory.keys.lock), "the summarize task holds the lock"
            assert broker.hlen("unacked") == 1
            acked |= append_all(memory, ["said during the summary", "and one more"])

            first.kill()
            [summarize_id] = task_ids(first.logs(), TASK_SUMMARIZE)
            assert broker.hlen("unacked") == 1, "the running task's message is parked, not lost"
            assert memory.stats().summary_point == 0 and memory.stats().flush_pending

            # The dead worker's lock lapses by TTL; the message comes back after the timeout.
            wait_for(
                lambda: not client.redis.exists(memory.keys.lock),
                timeout=LOCK_TTL_S + 5,
                what="the dead worker's lock to expire",
            )
            llm.mode = "ok"
            second.start()
            wait_for(
                lambda: summarize_id in task_ids(second.logs(), TASK_SUMMARIZE),
                timeout=REDELIVERY_TIMEOUT_S,
                what=f"memory.summarize[{summarize_id}] redelivered to the second worker",
            )
            wait_for(
                lambda: memory.stats().summary_point > 0 and not memory.stats().flush_pending,
                what="the redelivered summarize to commit",
            )
            wait_for(
                lambda: broker.hlen("unacked") == 0 and broker.llen(QUEUE_SUMMARIZE) == 0,
                what="the redelivered message to be acknowledged",
            )
            summary = client.redis.hgetall(memory.keys.summary)
            assert summary[b"text"].startswith(b"SUMMARY:"), "the LLM's summary was persisted"
            assert summary[b"source"] == b"openai"
            assert_nothing_lost_or_duplicated(memory, acked)
            assert memory.stats().summarized_count > 0


def test_sigkill_before_and_after_a_fifo_commit(resources_dir: Path, tmp_path: Path) -> None:
    # Private servers: pausing them cannot stall anything else in the session.
    with EmbeddedRedis() as data_server, EmbeddedRedis() as broker_server:
        data = redis.Redis.from_url(data_server.url)
        broker = redis.Redis.from_url(broker_server.url)
        env = crash_env(data_server.url, broker_server.url, resources_dir)
        workers = [
            worker_process(env, tmp_path / f"w{n}.log", queues=QUEUE_FLUSH, name=f"fifo-{n}")
            for n in (1, 2, 3)
        ]
        with (
            running(*workers),
            MemoryClient(settings_from_env(env)) as client,
            unpaused_on_exit(data, broker),
        ):
            memory = client.memory("crash-fifo", ctx(uuid.uuid4().hex[:10]))
            # The 8th append crosses 0.8 x 10 and enqueues one memory.flush; no worker runs yet.
            acked = append_all(memory, [f"m{i}" for i in range(8)])
            assert broker.llen(QUEUE_FLUSH) == 1

            # 1. Killed before the commit: the flush waits on its first write (the lock).
            data.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
            workers[0].start()
            wait_for(lambda: paused_writes(data, "set"), what="the flush's lock write to wait")
            [task_id] = task_ids(workers[0].logs(), TASK_FLUSH)
            workers[0].kill()
            assert broker.hlen("unacked") == 1
            wait_for(
                lambda: not paused_writes(data, "set"), what="Redis to drop the dead worker's write"
            )

            # 2. Killed after the commit, before the ack: the redelivered flush is held the
            # same way, then the broker's writes are paused and the data Redis released.
            workers[1].start()
            wait_for(
                lambda: task_id in task_ids(workers[1].logs(), TASK_FLUSH),
                timeout=REDELIVERY_TIMEOUT_S,
                what="the flush redelivered to the second worker",
            )
            wait_for(lambda: paused_writes(data, "set"), what="the second flush to wait")
            broker.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
            data.execute_command("CLIENT", "UNPAUSE")
            wait_for(
                lambda: memory.stats().flushed_count > 0 and not data.exists(memory.keys.lock),
                what="the flush to commit and release its lock",
            )
            assert memory.stats().flush_pending is False
            workers[1].kill()
            assert broker.hlen("unacked") == 1, "committed, but the message was never acked"
            broker.execute_command("CLIENT", "UNPAUSE")
            committed = memory.stats()

            # 3. The third worker receives the same message again; running it changes nothing.
            workers[2].start()
            workers[2].wait_for_log(
                rf"Task {TASK_FLUSH}\[{task_id}\] succeeded", timeout_s=REDELIVERY_TIMEOUT_S
            )
            wait_for(
                lambda: broker.hlen("unacked") == 0 and broker.llen(QUEUE_FLUSH) == 0,
                what="the message to be acknowledged",
            )
            after = memory.stats()
            assert (after.flushed_count, after.message_count) == (3, 5)
            assert (after.epoch, after.last_seq) == (committed.epoch, committed.last_seq)
            assert [m.content for m in memory.read()] == [f"m{i}" for i in range(3, 8)]
            assert_nothing_lost_or_duplicated(memory, acked)
