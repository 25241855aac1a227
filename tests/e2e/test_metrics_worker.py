"""A real prefork worker (``celery -A worker worker -c 2``) with ``MEMORY_METRICS_PORT``: tasks
run in two pool children, the main process serves ``/metrics``, and the counters scraped from it
move by exactly the number of tasks run (multiprocess mode adds the children's values up).

Also what Flower sees: task arguments (ids, never content) and the ``SUMMARIZING`` progress state
of a slow summarization, read from the same task events Flower consumes
(``celery.events.state.State``) and from the result backend.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.result import AsyncResult
from prometheus_client.parser import text_string_to_metric_families

from memory_engine.client import Memory, MemoryClient
from memory_engine.task_contract import QUEUES, TASK_CLEANUP, TASK_EVICT, TASK_FLUSH
from memory_engine.tooling.embedded_redis import free_port
from memory_engine.tooling.loopback_llm import FakeLLMServer, running_llm_server
from tests.builders import fifo, hybrid, resource_yaml, resources_yaml
from tests.fixtures_worker import broker_url_for, wait_for
from tests.integration.helpers import ctx
from tests.integration.procs import (
    ServiceProcess,
    http_get,
    memory_env,
    running,
    settings_from_env,
    worker_process,
)

METRICS_BROKER_DB = 13  # this module's worker is the only consumer here
FLUSHES = 4
SLOW_SUMMARY_S = 4.0  # the summarizer's LLM answers after this long: SUMMARIZING is observable
TASK_TIMEOUT_S = 30.0

RESOURCES = resources_yaml(
    resource_yaml("mw-fifo", max_messages=10, flushing=fifo()),
    resource_yaml("mw-hybrid", max_messages=10, flushing=hybrid(80), key_prefix="mw-hyb"),
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class MetricsWorker:
    worker: ServiceProcess
    client: MemoryClient
    port: int
    llm: FakeLLMServer
    app: Celery  # a plain app on the worker's broker and result backend (results, events)
    multiproc_base: Path

    def scrape(self) -> Samples:
        status, body = http_get(f"http://127.0.0.1:{self.port}/metrics")
        assert status == 200, body[:500]
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for_delta(
    w: MetricsWorker, before: Samples, name: str, expected: float, **labels: str
) -> Samples:
    """Scrape until ``name{labels}`` grew by at least ``expected``; return that scrape. The
    caller asserts the exact amount (a task's postrun follows the commit the test waits on)."""

    def grown() -> Samples | None:
        now = w.scrape()
        return (
            now
            if sample(now, name, **labels) - sample(before, name, **labels) >= expected
            else None
        )

    return wait_for(grown, timeout=TASK_TIMEOUT_S, what=f"{name}{labels} to grow by {expected}")


@pytest.fixture(scope="module")
def metrics_worker(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MetricsWorker]:
    tmp = tmp_path_factory.mktemp("metrics-worker")
    resources_dir = tmp / "resources"
    resources_dir.mkdir()
    (resources_dir / "metrics_worker.yaml").write_text(RESOURCES)
    broker_url = broker_url_for(redis_url, METRICS_BROKER_DB)
    broker = redis.Redis.from_url(broker_url)
    broker.flushdb()  # nothing consumes this DB yet
    broker.close()
    port = free_port()
    with running_llm_server() as llm:
        env = memory_env(
            redis_url=redis_url,
            broker_url=broker_url,
            key_prefix=f"mw{uuid.uuid4().hex[:6]}",
            resources_dir=resources_dir,
            metrics_port=port,
            summarizer_provider="openai",
            summarizer_base_url=llm.openai_base_url,
            summarizer_model="fake-model",
            summarizer_timeout_s=TASK_TIMEOUT_S,
            flush_marker_ttl_s=60,
        )
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp / "multiproc")
        worker = worker_process(
            env, tmp / "worker.log", queues=",".join(QUEUES), name="metrics", concurrency=2
        )
        app = Celery("metrics-test", broker=broker_url, backend=broker_url, set_as_current=False)
        app.conf.update(accept_content=["json"], result_accept_content=["json"])
        with running(worker), MemoryClient(settings_from_env(env)) as client:
            worker.start().wait_for_log(r"ready\.")
            worker.wait_for_log(rf"metrics on http://\S+:{port}/metrics")
            yield MetricsWorker(worker, client, port, llm, app, tmp / "multiproc")
        app.close()


def fifo_memory(w: MetricsWorker) -> Memory:
    return w.client.memory("mw-fifo", ctx(uuid.uuid4().hex[:10]))


# ---- counters ----------------------------------------------------------------------------------


def test_flush_tasks_move_the_counters_by_their_number(metrics_worker: MetricsWorker) -> None:
    w = metrics_worker
    before = w.scrape()
    memories = [fifo_memory(w) for _ in range(FLUSHES)]
    tokens_at_trigger = []
    for memory in memories:
        results = [memory.append({"role": "user", "content": f"turn {i}"}) for i in range(8)]
        assert results[-1].flush_requested
        tokens_at_trigger.append(results[-1].token_count)
    wait_for(
        lambda: not any(m.stats().flush_pending for m in memories),
        timeout=TASK_TIMEOUT_S,
        what="every flush to commit",
    )
    flush_ok = {"task": TASK_FLUSH, "outcome": "success"}
    after = wait_for_delta(w, before, "memory_engine_task_runs_total", FLUSHES, **flush_ok)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("memory_engine_task_runs_total", **flush_ok) == FLUSHES
    assert delta("memory_engine_task_duration_seconds_count", task=TASK_FLUSH) == FLUSHES
    assert delta("memory_engine_task_runs_total", task=TASK_FLUSH, outcome="failure") == 0
    fifo_ok = {"strategy": "simple_fifo", "outcome": "committed"}
    assert delta("memory_engine_flush_runs_total", **fifo_ok) == FLUSHES
    assert delta("memory_engine_flush_duration_seconds_count", strategy="simple_fifo") == FLUSHES
    assert delta("memory_engine_messages_dropped_total", resource="mw-fifo") == 3 * FLUSHES
    saved = sum(t - m.stats().token_count for t, m in zip(tokens_at_trigger, memories))
    assert saved > 0
    assert delta("memory_engine_tokens_saved_total", resource="mw-fifo") == saved
    for queue in QUEUES:
        assert ("memory_engine_queue_depth", frozenset({("queue", queue)})) in after
    # The children wrote their values to files in this worker start's own directory.
    assert list(w.multiproc_base.glob("worker-*/counter_*.db"))


def test_failed_and_other_tasks_are_counted_by_outcome(metrics_worker: MetricsWorker) -> None:
    w = metrics_worker
    before = w.scrape()
    producer = w.client.producer
    producer.send(TASK_FLUSH, {"memory_id": "p1:gone", "resource_id": "no-such-resource"})
    producer.send(TASK_CLEANUP, {})
    absent = fifo_memory(w).key  # never written: the eviction finds nothing to do
    producer.send(TASK_EVICT, {"memory_id": absent, "resource_id": "mw-fifo"})

    failed = {"task": TASK_FLUSH, "outcome": "failure"}
    cleanup_ok = {"task": TASK_CLEANUP, "outcome": "success"}
    evict_ok = {"task": TASK_EVICT, "outcome": "success"}
    wait_for_delta(w, before, "memory_engine_task_runs_total", 1, **failed)
    wait_for_delta(w, before, "memory_engine_task_runs_total", 1, **cleanup_ok)
    after = wait_for_delta(w, before, "memory_engine_task_runs_total", 1, **evict_ok)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert delta("memory_engine_task_runs_total", **failed) == 1
    assert delta("memory_engine_task_runs_total", **cleanup_ok) == 1
    assert delta("memory_engine_task_runs_total", **evict_ok) == 1
    assert delta("memory_engine_flush_runs_total", strategy="evict:fifo", outcome="noop") == 1
    assert delta("memory_engine_task_runs_total", task=TASK_FLUSH, outcome="success") == 0


# ---- what Flower sees --------------------------------------------------------------------------


class EventCapture:
    """Task events as Flower receives them, fed into ``celery.events.state.State``."""

    def __init__(self, app: Celery) -> None:
        self.state = app.events.State()
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._connection = app.connection_for_read()
        self._receiver = app.events.Receiver(self._connection, handlers={"*": self._on_event})
        self._thread = threading.Thread(target=self._receiver.capture, daemon=True)

    def _on_event(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(event)
        self.state.event(event)

    def find(self, type_: str, **fields: Any) -> dict[str, Any] | None:
        with self._lock:
            for event in self.events:
                if event["type"] == type_ and all(event.get(k) == v for k, v in fields.items()):
                    return event
        return None

    def types(self, task_id: str) -> list[str]:
        with self._lock:
            return [e["type"] for e in self.events if e.get("uuid") == task_id]

    def __enter__(self) -> EventCapture:
        self._thread.start()
        # Events are broadcast (pub/sub): listen before anything happens. Heartbeats every 2 s
        # show that the subscription is live.
        wait_for(lambda: self.find("worker-heartbeat"), what="a worker heartbeat event")
        return self

    def __exit__(self, *exc: object) -> None:
        self._receiver.should_stop = True
        self._thread.join(timeout=10)
        self._connection.release()


def test_summarize_reports_progress_visible_to_flower(metrics_worker: MetricsWorker) -> None:
    w = metrics_worker
    before = w.scrape()
    memory = w.client.memory("mw-hybrid", ctx(uuid.uuid4().hex[:10]))
    w.llm.mode, w.llm.delay_s = "slow", SLOW_SUMMARY_S
    try:
        with EventCapture(w.app) as events:
            for i in range(8):
                memory.append({"role": "user", "content": f"private detail {i} of the order"})
            progress = wait_for(
                lambda: events.find("task-summarizing", memory_id=memory.key),
                timeout=TASK_TIMEOUT_S,
                what="the task-summarizing event",
            )
            task_id = progress["uuid"]
            result = AsyncResult(task_id, app=w.app)
            # The LLM is still answering: the backend holds the custom state and its meta.
            info = wait_for(
                lambda: result.info if result.state == "SUMMARIZING" else None,
                what="the SUMMARIZING state in the result backend",
            )
            assert info == {"memory_id": memory.key, "resource_id": "mw-hybrid"}
            report = result.get(timeout=TASK_TIMEOUT_S)
            wait_for(lambda: events.find("task-succeeded", uuid=task_id), what="task-succeeded")
    finally:
        w.llm.mode = "ok"

    assert report["status"] == "committed" and report["summarized"] > 0
    task = events.state.tasks[task_id]  # what Flower's task page shows
    assert task.name == "memory.summarize" and task.state == "SUCCESS"
    assert memory.key in task.kwargs and "mw-hybrid" in task.kwargs
    assert "private detail" not in task.kwargs
    seen = events.types(task_id)
    assert (
        seen.index("task-started") < seen.index("task-summarizing") < seen.index("task-succeeded")
    )

    summarize_ok = {"task": "memory.summarize", "outcome": "success"}
    after = wait_for_delta(w, before, "memory_engine_task_runs_total", 1, **summarize_ok)
    summarized = sample(after, "memory_engine_messages_summarized_total", resource="mw-hybrid")
    summarized -= sample(before, "memory_engine_messages_summarized_total", resource="mw-hybrid")
    assert summarized == report["summarized"]
