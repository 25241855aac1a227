"""``memory.summarize`` on a thread pool (``celery -A worker worker -P threads -c 16``), as
docker-compose.yml runs it: many memories summarized at once through one loopback LLM whose
answers take a while, with exact accounting, one LLM request per summary, metrics counted exactly
by the worker's main process, and the circuit breaker right under threads (it opens after
``breaker_fail_max`` failures, and when half-open lets one trial call through per process while
the other threads fall back at once).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from celery import Celery
from celery.result import AsyncResult
from prometheus_client.parser import text_string_to_metric_families

from memory_engine.breakers import breaker_name
from memory_engine.client import Memory, MemoryClient
from memory_engine.summarizers import FALLBACK_SOURCE
from memory_engine.task_contract import QUEUE_SUMMARIZE, TASK_SUMMARIZE
from memory_engine.tooling.embedded_redis import free_port
from memory_engine.tooling.loopback_llm import FakeLLMServer, running_llm_server
from tests.builders import hybrid, resource_yaml
from tests.fixtures_worker import wait_for
from tests.integration.accounting import Ledger, assert_all_accounted
from tests.integration.helpers import ctx
from tests.integration.procs import (
    ServiceProcess,
    http_get,
    memory_env,
    private_broker,
    running,
    settings_from_env,
    worker_process,
)

THREADS = 16
LLM_LATENCY_S = 0.5
MEMORIES = 48
FAIL_MAX = 4
RESET_TIMEOUT_S = 3.0
TRIAL_LATENCY_S = 2.0
TASK_TIMEOUT_S = 60.0
RESOURCE_ID = "pool-hybrid"

RESOURCES = resource_yaml(RESOURCE_ID, max_messages=10, flushing=hybrid(80), key_prefix="pool")

broker_url = pytest.fixture(private_broker, scope="module")


@dataclass
class PoolWorker:
    worker: ServiceProcess
    client: MemoryClient
    llm: FakeLLMServer
    app: Celery
    port: int
    ledger: Ledger

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        status, body = http_get(f"http://127.0.0.1:{self.port}/metrics")
        assert status == 200, body[:500]
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }

    def metric(self, name: str, **labels: str) -> float:
        return self.scrape().get((name, frozenset(labels.items())), 0.0)

    def filled_memories(self, count: int) -> list[Memory]:
        """``count`` fresh memories with 8 messages each (above the threshold), in the ledger."""
        memories = []
        for _ in range(count):
            memory = self.client.memory(RESOURCE_ID, ctx(uuid.uuid4().hex[:12]))
            for i in range(8):
                content = f"message {i} of {memory.key}: the customer asked about order {i}"
                started = Ledger.now_ns()
                result = memory.append({"role": "user", "content": content})
                assert result.last_seq is not None
                self.ledger.acked(memory.key, content, result.last_seq, started, Ledger.now_ns())
            memories.append(memory)
        return memories

    def summarize_all(self, memories: list[Memory]) -> list[dict[str, Any]]:
        """Send ``memory.summarize`` for every memory at once; the tasks' results."""
        ids = [
            self.client.producer.send(
                TASK_SUMMARIZE, {"memory_id": m.key, "resource_id": RESOURCE_ID}
            )
            for m in memories
        ]
        return [AsyncResult(i, app=self.app).get(timeout=TASK_TIMEOUT_S) for i in ids]


@pytest.fixture(scope="module")
def pool_worker(
    redis_url: str, broker_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PoolWorker]:
    tmp = tmp_path_factory.mktemp("summarize-pool")
    (tmp / "resources").mkdir()
    (tmp / "resources" / "pool.yaml").write_text(RESOURCES)
    port = free_port()
    with running_llm_server() as llm:
        env = memory_env(
            redis_url=redis_url,
            broker_url=broker_url,
            key_prefix=f"sp{uuid.uuid4().hex[:6]}",
            resources_dir=tmp / "resources",
            metrics_port=port,
            summarizer_provider="openai",
            summarizer_base_url=llm.openai_base_url,
            summarizer_model="fake-model",
            summarizer_timeout_s=TASK_TIMEOUT_S,
            breaker_fail_max=FAIL_MAX,
            breaker_reset_timeout_s=RESET_TIMEOUT_S,
            flush_marker_ttl_s=60,
        )
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp / "multiproc")
        worker = worker_process(
            env,
            tmp / "worker.log",
            queues=QUEUE_SUMMARIZE,
            name="summarize-threads",
            concurrency=THREADS,
            pool="threads",
        )
        app = Celery("pool-test", broker=broker_url, backend=broker_url, set_as_current=False)
        app.conf.update(accept_content=["json"], result_accept_content=["json"])
        with running(worker), MemoryClient(settings_from_env(env)) as client:
            worker.start().wait_for_log(r"ready\.")
            worker.wait_for_log(rf"metrics on http://\S+:{port}/metrics")
            yield PoolWorker(worker, client, llm, app, port, Ledger())
        app.close()


def runs(w: PoolWorker) -> float:
    return w.metric("memory_engine_task_runs_total", task=TASK_SUMMARIZE, outcome="success")


def test_threads_summarize_concurrently_with_exact_accounting_and_metrics(
    pool_worker: PoolWorker,
) -> None:
    w = pool_worker
    memories = w.filled_memories(MEMORIES)
    w.llm.reset()
    w.llm.latency_s = LLM_LATENCY_S
    runs_before = runs(w)
    summarized_before = w.metric("memory_engine_messages_summarized_total", resource=RESOURCE_ID)

    results = w.summarize_all(memories)

    # Concurrent: a prefork pool of 2 never has more than 2 calls in flight.
    assert THREADS // 2 <= w.llm.max_in_flight <= THREADS
    assert {r["status"] for r in results} == {"committed"}
    fallbacks = [line for line in w.worker.logs().splitlines() if "fallback" in line.lower()]
    assert {r["summary_source"] for r in results} == {"openai"}, fallbacks[:3]
    assert len(w.llm.recorded()) == MEMORIES, "one LLM request per summary, no more"
    assert_all_accounted(w.client, w.ledger, [m.key for m in memories])
    summarized = sum(r["summarized"] for r in results)
    assert summarized == sum(m.stats().summarized_count for m in memories) > 0
    # Counted by the main process, where the threads run: exact, nothing lost to races.
    wait_for(lambda: runs(w) - runs_before >= MEMORIES, what="task runs on /metrics")
    assert runs(w) - runs_before == MEMORIES
    after = w.metric("memory_engine_messages_summarized_total", resource=RESOURCE_ID)
    assert after - summarized_before == summarized


def test_breaker_under_threads_opens_then_admits_one_trial(pool_worker: PoolWorker) -> None:
    w = pool_worker
    name = breaker_name("summarizer", "openai", w.llm.openai_base_url)
    gauge = {"breaker": name}

    # The endpoint fails: the breaker opens after FAIL_MAX failures; calls already in flight
    # finish, every later summary is the rule-based fallback, written at once.
    failing = w.filled_memories(2 * THREADS)
    w.llm.reset()
    w.llm.mode, w.llm.latency_s = "error500", 0.3
    results = w.summarize_all(failing)
    assert len(w.llm.recorded()) <= FAIL_MAX + THREADS - 1
    assert {r["summary_source"] for r in results} == {FALLBACK_SOURCE}
    assert {r["status"] for r in results} == {"committed"}
    assert_all_accounted(w.client, w.ledger, [m.key for m in failing])
    assert w.metric("memory_engine_breaker_state", **gauge) == 2  # open

    # After the reset timeout the endpoint is back but slow: one thread makes the trial call
    # while the others fall back without a request; the trial's success closes the breaker.
    raw = w.client.redis.hget(w.client.keyspace.breaker(name), "opened_at")
    assert raw is not None
    opened_at = float(raw)
    wait_for(lambda: time.time() >= opened_at + RESET_TIMEOUT_S, what="the reset timeout")
    trial = w.filled_memories(THREADS)
    w.llm.reset()
    w.llm.latency_s = TRIAL_LATENCY_S
    results = w.summarize_all(trial)
    assert w.llm.max_in_flight == 1, "half-open admits one trial call at a time"
    sources = [r["summary_source"] for r in results]
    assert sources.count("openai") == len(w.llm.recorded()) >= 1
    assert sources.count(FALLBACK_SOURCE) >= 1, "the others did not wait for the trial"
    assert_all_accounted(w.client, w.ledger, [m.key for m in trial])
    wait_for(lambda: w.metric("memory_engine_breaker_state", **gauge) == 0, what="closed")


def test_worker_logged_no_traceback(pool_worker: PoolWorker) -> None:
    """The worker logged no traceback while threads ran summaries side by side."""
    assert "Traceback" not in pool_worker.worker.logs()
