"""Summaries per second of one ``memory.summarize`` worker by pool, against a slow LLM.

A summary waits on the LLM almost all the time, so one worker can run at most ``concurrency``
summaries at once and its throughput is bounded by ``concurrency / LLM latency``. This script
starts a real ``celery -A worker worker -Q memory.summarize`` subprocess per pool (prefork -c 2,
the old compose setting; threads -c 16, the new one; threads -c 64), fills memories just above
their summarize threshold, sends one ``memory.summarize`` per memory at once and times the
results (worker start-up excluded). The LLM is ``tests/llm_server.py`` on loopback, answering
after ``--latency-s`` (1 s by default).

Run: ``.venv/bin/python bench/summarize_pool.py`` (about 40 s; ``--quick``: a few seconds).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path

import redis
from celery import Celery
from celery.result import AsyncResult
from common import Report, Target, bench_settings, console, delete_prefix, redis_server

from memory_engine.client import MemoryClient
from memory_engine.task_contract import QUEUE_SUMMARIZE, TASK_SUMMARIZE
from memory_engine.tooling.loopback_llm import running_llm_server
from memory_engine.tooling.services import spawn_worker

RESOURCE = """
resource: memory
id: bench-pool
type: message_count_based
max_messages: 10
flushing: {type: hybrid_summary, summarize_threshold: 0.8, summary_tokens: 80}
persistence: {ttl: 1h}
default_key_template: "pool:{{ workflow.input.conv }}"
"""
MESSAGES_PER_MEMORY = 8  # above the threshold (0.8 x 10): one summary each
ROUNDS_PER_POOL = 4  # memories = rounds x concurrency: the pool is refilled that many times
MIN_EFFICIENCY = 0.5  # target: at least half of concurrency / latency
READY_TIMEOUT_S = 60.0
RESULT_TIMEOUT_S = 300.0


def fill(client: MemoryClient, count: int) -> list[str]:
    keys = []
    for _ in range(count):
        memory = client.memory("bench-pool", {"workflow": {"input": {"conv": uuid.uuid4().hex}}})
        memory.append_many(
            [
                {"role": "user", "content": f"question {i}: where is order {i} of this customer"}
                for i in range(MESSAGES_PER_MEMORY)
            ]
        )
        keys.append(memory.key)
    return keys


def measure(
    url: str, llm_url: str, pool: str, concurrency: int, memories: int, tmp: Path
) -> tuple[float, int]:
    """Summaries/s of one worker (``pool``, ``concurrency``) and the summaries that used the LLM."""
    settings = bench_settings(
        url,
        resources_dir=tmp / "resources",
        summarizer_provider="openai",
        summarizer_base_url=llm_url,
        summarizer_model="bench-model",
        summarizer_timeout_s=RESULT_TIMEOUT_S,
    )
    worker = spawn_worker(
        settings.replace(redis_url=url, broker_url=settings.broker_dsn()),
        tmp / f"worker-{pool}-{concurrency}.log",
        queues=(QUEUE_SUMMARIZE,),
        nodename=f"bench-pool-{os.getpid()}-{pool}{concurrency}@%h",
        concurrency=concurrency,
        pool=pool,
        loglevel="INFO",  # the "ready." line
    )
    app = Celery("bench-pool", broker=settings.broker_dsn(), backend=settings.broker_dsn())
    app.conf.update(accept_content=["json"], result_accept_content=["json"])
    try:
        client = MemoryClient(settings)
        worker.wait_for_log(r"ready\.", timeout_s=READY_TIMEOUT_S)
        keys = fill(client, memories)
        started = time.perf_counter()
        ids = [
            client.producer.send(TASK_SUMMARIZE, {"memory_id": k, "resource_id": "bench-pool"})
            for k in keys
        ]
        results = [AsyncResult(i, app=app).get(timeout=RESULT_TIMEOUT_S) for i in ids]
        elapsed = time.perf_counter() - started
        with redis.Redis.from_url(url) as r:
            delete_prefix(r, settings.key_prefix)
        client.close()
    finally:
        worker.stop()
    app.close()
    by_llm = sum(1 for r in results if r.get("summary_source") == "openai")
    return memories / elapsed, by_llm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short latency, two pools")
    parser.add_argument("--latency-s", type=float, default=None, help="LLM answer time")
    args = parser.parse_args()
    latency_s = args.latency_s or (0.2 if args.quick else 1.0)
    pools = (
        [("prefork", 2), ("threads", 16)]
        if args.quick
        else [
            ("prefork", 2),
            ("threads", 16),
            ("threads", 64),
        ]
    )
    rounds = 2 if args.quick else ROUNDS_PER_POOL

    report = Report("summarize_pool", "memory.summarize: summaries/s of one worker by pool")
    report.config = {"llm_latency_s": latency_s, "rounds_per_pool": rounds, "pools": pools}
    with (
        redis_server() as url,
        running_llm_server() as llm,
        tempfile.TemporaryDirectory(prefix="bench-pool-") as tmp_name,
    ):
        tmp = Path(tmp_name)
        (tmp / "resources").mkdir()
        (tmp / "resources" / "pool.yaml").write_text(RESOURCE)
        llm.latency_s = latency_s
        for pool, concurrency in pools:
            memories = rounds * concurrency
            console.print(f"[bold]{pool} -c {concurrency}[/bold]: {memories} summaries ...")
            llm.reset()
            llm.latency_s = latency_s
            rate, by_llm = measure(url, llm.openai_base_url, pool, concurrency, memories, tmp)
            limit = concurrency / latency_s
            report.rows.append(
                {
                    "pool": f"{pool} -c {concurrency}",
                    "summaries": memories,
                    "by_llm": by_llm,
                    "llm_requests": len(llm.recorded()),
                    "max_llm_calls_in_flight": llm.max_in_flight,
                    "summaries_per_s": round(rate, 2),
                    "limit_per_s": round(limit, 2),
                    "efficiency": round(rate / limit, 2),
                }
            )
            report.targets.append(
                Target(
                    f"{pool} -c {concurrency}: summaries/s vs concurrency/latency "
                    f"x {MIN_EFFICIENCY}",
                    round(rate, 2),
                    round(limit * MIN_EFFICIENCY, 2),
                    op=">=",
                    unit="/s",
                )
            )
        broker = redis.Redis.from_url(bench_settings(url).broker_dsn())
        broker.flushdb()
        broker.close()
        report.notes.append(
            "limit = concurrency / LLM latency: a worker runs at most `concurrency` summaries at "
            "once; efficiency below 1 is the worker's own work (plan, commit, result writes) "
            "and dispatch"
        )
        report.finish(url)


if __name__ == "__main__":
    main()
