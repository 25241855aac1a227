"""A real worker (``celery -A worker worker``) on a 3-master Redis Cluster for the memory data.

The broker, result backend and RedBeat store are a private standalone redis-server (a Cluster is
refused for them, config/celery.py); the summarizer is the loopback LLM. What this proves:

- appends to FIFO and hybrid_summary memories on every master, past their thresholds, are
  flushed (and summarized, through the LLM) by the worker, with exact accounting;
- the maintenance task bodies run through the worker in cluster mode and have their effect:
  ``memory.cleanup`` removes an expired memory's leftovers, ``memory.reconcile`` fixes a drifted
  counter, ``memory.sweep_markers`` heals a lost flush (its task went to a queue nobody reads).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from memory_engine.client import Memory, MemoryClient
from memory_engine.task_contract import (
    QUEUE_FLUSH,
    QUEUE_MAINTENANCE,
    QUEUE_SUMMARIZE,
    TASK_CLEANUP,
    TASK_RECONCILE,
    TASK_SWEEP_MARKERS,
)
from memory_engine.tooling.embedded_redis import EmbeddedRedis
from memory_engine.tooling.loopback_llm import FakeLLMServer, running_llm_server
from tests.builders import fifo, hybrid, resource_yaml, resources_yaml
from tests.fixtures_worker import wait_for
from tests.integration.accounting import Ledger, assert_all_accounted
from tests.integration.helpers import ctx
from tests.integration.procs import (
    ServiceProcess,
    memory_env,
    running,
    settings_from_env,
    worker_process,
)
from tests.integration.topologies import LocalCluster

pytestmark = pytest.mark.timeout(120)

MAX_MESSAGES = 10
PER_MEMORY = 9  # past the 0.8 threshold (8 of 10)
MEMORIES_PER_RESOURCE = 6
EFFECT_TIMEOUT_S = 20.0
RESOURCES = resources_yaml(
    resource_yaml("cw-fifo", max_messages=MAX_MESSAGES, flushing=fifo(0.8)),
    resource_yaml("cw-hybrid", max_messages=MAX_MESSAGES, flushing=hybrid(60, 0.8)),
)


@dataclass
class ClusterWorker:
    cluster: LocalCluster
    worker: ServiceProcess
    client: MemoryClient
    lost: MemoryClient  # same data, its flushes go to a broker database nobody consumes
    llm: FakeLLMServer


@pytest.fixture(scope="module")
def cluster_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterWorker]:
    tmp: Path = tmp_path_factory.mktemp("cluster-worker")
    (tmp / "resources").mkdir()
    (tmp / "resources" / "cw.yaml").write_text(RESOURCES)
    cluster = LocalCluster(tmp / "cluster").start()
    try:
        with EmbeddedRedis() as celery_redis, running_llm_server() as llm:
            env = memory_env(
                redis_mode="cluster",
                redis_url=cluster.url,
                broker_url=celery_redis.url,
                result_backend_url=celery_redis.url,
                beat_redis_url=celery_redis.url,
                key_prefix=f"cw{uuid.uuid4().hex[:6]}",
                resources_dir=tmp / "resources",
                summarizer_provider="openai",
                summarizer_base_url=llm.openai_base_url,
                summarizer_model="fake-model",
                summarizer_timeout_s=30,
                flush_marker_ttl_s=60,
            )
            lost_env = {**env, "MEMORY_BROKER_URL": celery_redis.url.rsplit("/", 1)[0] + "/2"}
            worker = worker_process(
                env,
                tmp / "worker.log",
                queues=f"{QUEUE_FLUSH},{QUEUE_SUMMARIZE},{QUEUE_MAINTENANCE}",
                name="cluster",
                concurrency=2,
            )
            with (
                running(worker),
                MemoryClient(settings_from_env(env)) as client,
                MemoryClient(settings_from_env(lost_env)) as lost,
            ):
                worker.start().wait_for_log(r"ready\.")
                yield ClusterWorker(cluster, worker, client, lost, llm)
    finally:
        cluster.close()


def fill(memory: Memory, ledger: Ledger, count: int = PER_MEMORY) -> None:
    for i in range(count):
        content = f"message {i} of {memory.key}: the customer asked about order {i}"
        started = Ledger.now_ns()
        result = memory.append({"role": "user", "content": content})
        assert result.last_seq is not None
        ledger.acked(memory.key, content, result.last_seq, started, Ledger.now_ns())


def spread_over_masters(w: ClusterWorker, resource_id: str, tag: str) -> list[Memory]:
    """``MEMORIES_PER_RESOURCE`` memories, at least one on every master."""
    memories = [
        w.client.memory(resource_id, ctx(f"{tag}{i}-{uuid.uuid4().hex[:6]}"))
        for i in range(MEMORIES_PER_RESOURCE)
    ]
    owners = {w.cluster.owner(w.cluster.keyslot(m.keys.meta)).port for m in memories}
    if len(owners) < len(w.cluster.masters):  # unlucky hashing: add one per missing master
        for master in w.cluster.masters:
            while master.port not in owners:
                m = w.client.memory(resource_id, ctx(f"{tag}x-{uuid.uuid4().hex[:8]}"))
                port = w.cluster.owner(w.cluster.keyslot(m.keys.meta)).port
                if port == master.port:
                    memories.append(m)
                    owners.add(port)
    return memories


def test_worker_flushes_and_summarizes_on_every_master_with_exact_accounting(
    cluster_worker: ClusterWorker,
) -> None:
    w, ledger = cluster_worker, Ledger()
    fifos = spread_over_masters(w, "cw-fifo", "f")
    hybrids = spread_over_masters(w, "cw-hybrid", "h")
    for m in (*fifos, *hybrids):
        fill(m, ledger)

    def all_committed() -> bool:
        fifo_done = all(not m.stats().flush_pending for m in fifos)
        hybrid_done = all(
            not (s := m.stats()).flush_pending and s.summary_point > 0 for m in hybrids
        )
        return fifo_done and hybrid_done

    wait_for(all_committed, timeout=EFFECT_TIMEOUT_S, what="every flush committed")
    assert_all_accounted(w.client, ledger, [m.key for m in (*fifos, *hybrids)])
    for m in fifos:
        assert m.stats().message_count < PER_MEMORY, "the FIFO flush dropped the oldest"
    for m in hybrids:
        assert m.stats().summarized_count > 0
    assert len(w.llm.recorded()) >= len(hybrids), "summaries came from the loopback LLM"
    assert "Traceback" not in w.worker.logs(), w.worker.tail()


def test_maintenance_tasks_run_through_the_worker_on_the_cluster(
    cluster_worker: ClusterWorker,
) -> None:
    w = cluster_worker
    ks, redis = w.client.keyspace, w.client.redis
    send = w.client.producer.send

    # cleanup: what an expiry leaves (metadata gone, the index entry due, the list still there).
    gone = spread_over_masters(w, "cw-fifo", "gone")
    for m in gone:
        m.append({"role": "user", "content": "hello"})
        redis.delete(m.keys.meta)
        redis.zadd(ks.expiry_index, {m.key: time.time() - 1})
    send(TASK_CLEANUP, {})
    wait_for(
        lambda: all(redis.exists(m.keys.msgs) == 0 for m in gone),
        timeout=EFFECT_TIMEOUT_S,
        what="cleanup removed the expired memories' leftovers",
    )
    assert all(redis.zscore(ks.expiry_index, m.key) is None for m in gone)

    # reconcile: a drifted counter is set back to the list's length.
    drifted = w.client.memory("cw-fifo", ctx(f"drift-{uuid.uuid4().hex[:6]}"))
    drifted.append({"role": "user", "content": "one"})
    redis.hset(drifted.keys.meta, "message_count", 99)
    send(TASK_RECONCILE, {"since_s": 3600})
    wait_for(
        lambda: drifted.stats().message_count == 1,
        timeout=EFFECT_TIMEOUT_S,
        what="reconcile fixed the counter",
    )

    # sweep: a flush whose task was lost (sent where nobody consumes) and whose marker expired.
    lost = w.lost.memory("cw-fifo", ctx(f"lost-{uuid.uuid4().hex[:6]}"))
    ledger = Ledger()
    fill(lost, ledger)
    assert lost.stats().flush_pending
    redis.delete(lost.keys.flush)
    send(TASK_SWEEP_MARKERS, {"stale_after_s": 0})
    wait_for(
        lambda: lost.stats().message_count < PER_MEMORY and not lost.stats().flush_pending,
        timeout=EFFECT_TIMEOUT_S,
        what="the sweep re-requested the lost flush and the worker ran it",
    )
    assert_all_accounted(w.client, ledger, [lost.key])
    assert "Traceback" not in w.worker.logs(), w.worker.tail()
