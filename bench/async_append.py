"""Async append throughput: ``AsyncMemory.append`` on one event loop with 64 concurrent tasks,
against the ``redis.asyncio`` floor and the sync client on one thread.

Contenders, alternated block by block (see ``bench/common.py``), each block timed as a whole:

- ``async append, 64 tasks``: one event loop, 64 tasks, each appending to its own memory (one
  conversation per task) through :class:`~memory_engine.aio.AsyncMemoryClient` (resource
  ``bench-plain``: validation, token counting, the append script, no redaction);
- ``redis.asyncio floor, 64 tasks``: the same loop and tasks doing ``MULTI RPUSH HINCRBY EXPIRE
  EXEC`` in one pipeline per message over a client with the engine's connection options
  (:func:`~memory_engine.store.connections.async_redis_from_settings`): the least an asyncio
  client can do to store a message with a counter and a TTL in one round trip;
- ``sync append, 1 thread``: :class:`~memory_engine.client.MemoryClient` from one thread (its lean
  path), one memory.

150-character messages, every text unique. Targets (issue 13): async >= 0.8x the floor's
throughput, and >= 3x the sync client's single-thread throughput.

Run: ``.venv/bin/python bench/async_append.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import redis
from common import (
    Report,
    Sample,
    Target,
    TextSource,
    bench_settings,
    console,
    delete_prefix,
    median,
    paired_ratio,
    redis_server,
    summarize_samples,
)

from memory_engine.aio import AsyncMemoryClient
from memory_engine.client import MemoryClient
from memory_engine.store.connections import async_redis_from_settings

TASKS = 64
TTL_S = 3600
ASYNC = "async append, 64 tasks"
FLOOR = "redis.asyncio floor, 64 tasks"
SYNC = "sync append, 1 thread"


async def _block(op: Callable[[int], Awaitable[object]], ops_per_task: int) -> Sample:
    """``TASKS`` tasks on this loop, each running ``op(task)`` ``ops_per_task`` times."""
    clock = time.perf_counter_ns
    latencies: list[int] = []

    async def task(t: int) -> None:
        for _ in range(ops_per_task):
            t0 = clock()
            await op(t)
            latencies.append(clock() - t0)

    start = clock()
    await asyncio.gather(*(task(t) for t in range(TASKS)))
    return Sample(latencies, (clock() - start) / 1e9)


def _sync_block(op: Callable[[], object], ops: int) -> Sample:
    clock = time.perf_counter_ns
    latencies: list[int] = []
    start = clock()
    for _ in range(ops):
        t0 = clock()
        op()
        latencies.append(clock() - t0)
    return Sample(latencies, (clock() - start) / 1e9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke run")
    args = parser.parse_args()
    rounds = 3 if args.quick else 10
    ops_per_task = 15 if args.quick else 60  # 64 tasks: ~1,000 / ~3,800 appends per block
    sync_ops = 300 if args.quick else 1500

    report = Report("async_append", "Async append: throughput (ops/s) and latency (us)")
    report.config = {
        "rounds": rounds,
        "tasks": TASKS,
        "ops_per_task_per_block": ops_per_task,
        "sync_ops_per_block": sync_ops,
        "message_chars": 150,
        "ttl_s": TTL_S,
    }
    texts = TextSource(email_every=0)
    loop = asyncio.new_event_loop()
    with redis_server() as url:
        settings = bench_settings(url, redis_max_connections=TASKS)
        prefix = settings.key_prefix
        aclient = AsyncMemoryClient(settings)
        floor_r = async_redis_from_settings(settings)
        sync = MemoryClient(settings)
        plain_r = redis.Redis.from_url(url)
        amems = [
            aclient.memory("bench-plain", {"workflow": {"input": {"conv": f"a{t}"}}})
            for t in range(TASKS)
        ]
        smem = sync.memory("bench-plain", {"workflow": {"input": {"conv": "s"}}})

        async def async_append(t: int) -> object:
            return await amems[t].append(texts.message())

        async def floor(t: int) -> object:
            pipe = floor_r.pipeline(transaction=True)
            pipe.rpush(f"{prefix}:floor:{t}:msgs", texts.next())
            pipe.hincrby(f"{prefix}:floor:{t}:meta", "message_count", 1)
            pipe.expire(f"{prefix}:floor:{t}:msgs", TTL_S)
            return await pipe.execute()

        blocks: dict[str, Callable[[], Sample]] = {
            ASYNC: lambda: loop.run_until_complete(_block(async_append, ops_per_task)),
            FLOOR: lambda: loop.run_until_complete(_block(floor, ops_per_task)),
            SYNC: lambda: _sync_block(lambda: smem.append(texts.message()), sync_ops),
        }
        try:
            for name, run in blocks.items():  # warm: connections, scripts, lazy imports
                console.print(f"warming {name} ...")
                run()
            samples: dict[str, list[Sample]] = {name: [] for name in blocks}
            names = list(blocks)
            console.print(f"[bold]{rounds} rounds[/bold] ...")
            for r in range(rounds):
                shift = r % len(names)
                for name in [*names[shift:], *names[:shift]]:
                    samples[name].append(blocks[name]())
            for name in names:
                s = samples[name]
                report.rows.append(
                    {
                        "contender": name,
                        **summarize_samples(s),
                        "ops/s vs floor": paired_ratio(s, samples[FLOOR], lambda x: x.ops_per_s),
                        "ops/s vs sync": paired_ratio(s, samples[SYNC], lambda x: x.ops_per_s),
                    }
                )
            report.targets.append(
                Target(
                    "ops/s async append / redis.asyncio floor, 64 tasks",
                    paired_ratio(samples[ASYNC], samples[FLOOR], lambda x: x.ops_per_s),
                    0.8,
                    op=">=",
                    unit="x",
                )
            )
            report.targets.append(
                Target(
                    "ops/s async append (64 tasks) / sync append (1 thread)",
                    paired_ratio(samples[ASYNC], samples[SYNC], lambda x: x.ops_per_s),
                    3.0,
                    op=">=",
                    unit="x",
                )
            )
            report.extra["median_ops_s"] = {
                name: round(median([x.ops_per_s for x in s]), 1) for name, s in samples.items()
            }
            report.notes.append(
                "one event loop, one process; latencies of the 64-task contenders include the "
                "wait for the loop (each task's await), so compare them across those two only"
            )
        finally:
            delete_prefix(plain_r, prefix)
            plain_r.close()
            loop.run_until_complete(aclient.aclose())
            loop.run_until_complete(floor_r.aclose())
            loop.close()
            sync.close()
        report.finish(url)


if __name__ == "__main__":
    main()
