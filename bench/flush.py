"""Flush throughput: 1,000-message memories flushed per second by one process.

Two measurements, each for ``simple_fifo`` (drops the oldest 500) and ``hybrid_summary`` (folds
the oldest 500 into a summary written by an LLM):

1. **engine op**: ``memory_engine.engine.flush.flush_memory`` called in this process, one memory
after
   another (lock, snapshot, plan, summarize, commit, unlock): the work a worker process does per
   task, without Celery. FIFO and hybrid blocks alternate; fresh memories are built before each
   block (untimed).
2. **worker**: a real ``celery -A worker worker -c 1`` subprocess (one pool process) consuming
   ``memory.flush`` and ``memory.summarize``; ``request_flush()`` enqueues one task per memory and
   the clock stops when the pending index is empty (every flush committed). Three blocks per
   strategy, alternating, median reported; the notes say what the worker adds per memory over
   the engine op. Skip with ``--no-worker``.

The LLM is ``tests/llm_server.py`` in mode ``ok`` (answers at once) in its own process, so its
HTTP handling does not share this process's interpreter lock; the summarizer is the OpenAI one
(``MEMORY_SUMMARIZER_PROVIDER=openai``). Run: ``.venv/bin/python bench/flush.py``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from common import (
    Contender,
    Report,
    Target,
    TextSource,
    alternate,
    bench_settings,
    console,
    delete_prefix,
    median,
    redis_server,
    summarize_samples,
)

from memory_engine.client import Memory, MemoryClient
from memory_engine.engine.flush import FlushStatus, flush_memory
from memory_engine.store import PendingMessage
from memory_engine.tooling.services import spawn_worker

MEMORY_LENGTH = 1_000
FILL_BATCH = 500
TARGET_FIFO_PER_S = 200
WORKER_READY_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 120.0
WORKER_ROUNDS = 3  # worker blocks per strategy, alternating; the median is reported
STRATEGIES = {"simple_fifo": "bench-fifo", "hybrid_summary": "bench-hybrid"}

_LLM_SERVER_SCRIPT = """
import sys
from memory_engine.tooling.loopback_llm import running_llm_server
with running_llm_server() as server:
    server.mode = "ok"
    print(server.openai_base_url, flush=True)
    sys.stdin.read()  # until the parent closes our stdin
"""


@contextmanager
def llm_server_process() -> Iterator[str]:
    """The loopback OpenAI-compatible server in a child process; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _LLM_SERVER_SCRIPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError("the LLM server process did not start")
        yield url
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class MemoryFactory:
    """Builds 1,000-message memories fast: the bodies are prepared once and stored through
    ``MemoryStore.append`` with thresholds off (no flush is requested while filling)."""

    def __init__(self, client: MemoryClient, texts: TextSource) -> None:
        self.client = client
        probe = client.memory("bench-plain", {"workflow": {"input": {"conv": "probe"}}})
        self.pending: list[PendingMessage] = []
        while len(self.pending) < MEMORY_LENGTH:
            batch = [texts.message() for _ in range(FILL_BATCH)]
            self.pending.extend(probe._prepare(batch)[0])
        self.count = 0

    def make(self, resource_id: str, n: int) -> list[Memory]:
        out = []
        for _ in range(n):
            self.count += 1
            m = self.client.memory(resource_id, {"workflow": {"input": {"conv": f"f{self.count}"}}})
            for start in range(0, MEMORY_LENGTH, FILL_BATCH):
                self.client.store.append(
                    m.keys,
                    self.pending[start : start + FILL_BATCH],
                    resource_id=resource_id,
                    ttl_s=m.resource.ttl_s,
                    token_threshold=0,
                    message_threshold=0,
                    marker_ttl_s=600,
                )
            out.append(m)
        return out


def engine_section(
    client: MemoryClient, factory: MemoryFactory, rounds: int, per_block: int, report: Report
) -> dict[str, float]:
    blocks: dict[str, list[Memory]] = {}
    results: dict[str, list[Any]] = {name: [] for name in STRATEGIES}

    def contender(strategy: str, resource_id: str) -> Contender:
        def setup() -> None:
            blocks[strategy] = factory.make(resource_id, per_block)

        def op(_t: int, i: int) -> None:
            result = flush_memory(blocks[strategy][i])
            if result.status is not FlushStatus.COMMITTED:
                raise RuntimeError(f"flush did not commit: {result}")
            results[strategy].append(result)

        return Contender(f"flush_memory {strategy}", op, setup=setup)

    contenders = [contender(s, rid) for s, rid in STRATEGIES.items()]
    console.print(f"[bold]engine op[/bold]: {rounds} rounds x {per_block} memories ...")
    samples = alternate(contenders, rounds=rounds, ops_per_thread=per_block, warmup_ops=3)
    rates: dict[str, float] = {}
    for (strategy, _), c in zip(STRATEGIES.items(), contenders, strict=True):
        summary = summarize_samples(samples[c.name])
        done = results[strategy]
        rates[strategy] = summary["ops_s"]
        report.rows.append(
            {
                "case": f"engine op, {strategy}",
                "memories_s": summary["ops_s"],
                "p50_ms": round(summary["p50_us"] / 1000, 2),
                "p99_ms": round(summary["p99_us"] / 1000, 2),
                "removed_per_flush": median([r.removed for r in done]),
                "summary_source": ",".join(sorted({str(r.summary_source) for r in done})),
                "memories": summary["blocks"] * summary["ops_per_block"],
            }
        )
    return rates


def worker_section(
    url: str,
    llm_url: str,
    factory: MemoryFactory,
    n: dict[str, int],
    rounds: int,
    report: Report,
) -> dict[str, float]:
    settings = factory.client.settings.replace(
        redis_url=url,
        broker_url=factory.client.settings.broker_dsn(),
        summarizer_provider="openai",
        summarizer_base_url=llm_url,
        summarizer_model="bench-model",
        summarizer_api_key="bench-key",
    )
    r = factory.client.redis
    samples: dict[str, list[tuple[float, float, int]]] = {s: [] for s in STRATEGIES}
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as tmp:
        # WARNING, as a production worker would run; -E: task events on, as in production.
        worker = spawn_worker(
            settings,
            Path(tmp) / "worker.log",
            queues=("memory.flush", "memory.summarize"),
            nodename=f"bench{os.getpid()}@%h",
            extra_args=("-E",),
        )
        try:
            console.print("[bold]worker[/bold]: starting celery -A worker worker -c 1 ...")
            warm = factory.make("bench-fifo", 2)
            deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
            for m in warm:
                m.request_flush()
            while r.zcard(factory.client.keyspace.pending_index):
                if time.monotonic() > deadline or not worker.alive():
                    raise RuntimeError(f"worker did not start:\n{worker.log_tail()}")
                time.sleep(0.05)
            order = list(STRATEGIES.items())
            for round_no in range(rounds):
                # Alternate which strategy goes first, as the engine-op blocks do.
                shift = round_no % len(order)
                for strategy, resource_id in [*order[shift:], *order[:shift]]:
                    memories = factory.make(resource_id, n[strategy])
                    console.print(f"  round {round_no + 1}, {strategy}: {len(memories)} memories")
                    samples[strategy].append(_drain(factory, worker, memories))
        finally:
            worker.stop()
    rates: dict[str, float] = {}
    for strategy, runs in samples.items():
        per_s = [len_ / elapsed for _, elapsed, len_ in runs]
        rates[strategy] = round(median(per_s), 1)
        report.rows.append(
            {
                "case": f"worker -c 1, {strategy}",
                "memories_s": rates[strategy],
                "p50_ms": "",
                "p99_ms": "",
                "removed_per_flush": MEMORY_LENGTH // 2,
                "summary_source": "",
                "memories": sum(count for _, _, count in runs),
                "enqueue_s": round(median([enq for enq, _, _ in runs]), 3),
                "total_s": round(median([elapsed for _, elapsed, _ in runs]), 3),
                "rounds_memories_s": [round(x, 1) for x in per_s],
            }
        )
    return rates


def _drain(factory: MemoryFactory, worker: Any, memories: list[Memory]) -> tuple[float, float, int]:
    """Request a flush of every memory; (enqueue seconds, seconds until all committed, count)."""
    r = factory.client.redis
    start = time.perf_counter()
    for m in memories:
        if not m.request_flush():
            raise RuntimeError(f"flush of {m.key} was already pending")
    enqueued = time.perf_counter() - start
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while r.zcard(factory.client.keyspace.pending_index):
        if time.monotonic() > deadline or not worker.alive():
            raise RuntimeError(f"flushes did not drain:\n{worker.log_tail()}")
        time.sleep(0.005)
    elapsed = time.perf_counter() - start
    left = [m.stats().message_count for m in memories]
    if any(x != MEMORY_LENGTH // 2 for x in left):
        raise RuntimeError(f"unexpected lengths after flush: {sorted(set(left))}")
    return enqueued, elapsed, len(memories)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke run")
    parser.add_argument("--no-worker", action="store_true", help="skip the worker subprocess")
    args = parser.parse_args()
    rounds = 2 if args.quick else 6
    per_block = 20 if args.quick else 60
    worker_n = (
        {"simple_fifo": 40, "hybrid_summary": 20}
        if args.quick
        else {
            "simple_fifo": 300,
            "hybrid_summary": 150,
        }
    )
    worker_rounds = 1 if args.quick else WORKER_ROUNDS

    report = Report("flush", "Flush throughput: 1,000-message memories per second, one process")
    report.config = {
        "rounds": rounds,
        "memories_per_block": per_block,
        "memory_length": MEMORY_LENGTH,
        "worker_memories": None if args.no_worker else worker_n,
        "worker_rounds": None if args.no_worker else worker_rounds,
        "llm": "tests/llm_server.py mode ok, separate process, OpenAI API",
    }
    with redis_server() as url, llm_server_process() as llm_url:
        settings = bench_settings(
            url,
            summarizer_provider="openai",
            summarizer_base_url=llm_url,
            summarizer_model="bench-model",
            summarizer_api_key="bench-key",
        )
        client = MemoryClient(settings)
        plain_r = redis.Redis.from_url(url)
        try:
            factory = MemoryFactory(client, TextSource())
            engine = engine_section(client, factory, rounds, per_block, report)
            report.targets.append(
                Target(
                    "engine op simple_fifo: memories/s per process",
                    engine["simple_fifo"],
                    TARGET_FIFO_PER_S,
                    op=">=",
                )
            )
            if not args.no_worker:
                worker = worker_section(url, llm_url, factory, worker_n, worker_rounds, report)
                for strategy in STRATEGIES:
                    # What the Celery worker adds per task: its time per memory minus the
                    # engine op's (both medians), for the notes.
                    added_ms = 1000 / worker[strategy] - 1000 / engine[strategy]
                    report.notes.append(
                        f"{strategy}: the worker adds {added_ms:.1f} ms per memory over the "
                        f"engine op ({1000 / worker[strategy]:.1f} vs "
                        f"{1000 / engine[strategy]:.1f} ms)"
                    )
                report.targets.append(
                    Target(
                        "worker -c 1 simple_fifo: memories/s per process",
                        worker["simple_fifo"],
                        TARGET_FIFO_PER_S,
                        op=">=",
                    )
                )
        finally:
            delete_prefix(plain_r, client.settings.key_prefix)
            broker = redis.Redis.from_url(client.settings.broker_dsn())
            broker.flushdb()
            broker.close()
            plain_r.close()
            client.close()
        report.finish(url)


if __name__ == "__main__":
    main()
