"""OpenAI Agents SDK session: ``MemoryEngineSession.get_items()`` latency at 10, 1,000 and 10,000
stored items. It must stay flat: the session reads the memory's context window (one script that
reads the tail the budget covers), not the whole list.

Items are what a chat agent stores: user messages (easy input) and assistant output messages
(``output_text`` parts), 150 characters of text each, added in batches with ``add_items``. The
window's budget is 2,000 tokens (about 50 of these items). For contrast, the SDK's own
``SQLiteSession`` (in memory, ``:memory:``), whose ``get_items()`` returns every item, is measured
at the same lengths.

One event loop; lengths alternate round by round. Run: ``.venv/bin/python
bench/agents_session.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis
from agents import SQLiteSession
from common import (
    Report,
    Sample,
    Target,
    TextSource,
    bench_settings,
    console,
    delete_prefix,
    paired_ratio,
    redis_server,
    summarize_samples,
)

from memory_engine import AsyncMemoryClient
from memory_engine.integrations.openai_agents import MemoryEngineSession

LENGTHS = (10, 1_000, 10_000)
BUDGET_TOKENS = 2_000
FILL_BATCH = 500
FLAT_LIMIT = 1.5  # p50 at 10,000 over p50 at 1,000; linear growth would be 10x


def item(texts: TextSource, n: int) -> dict[str, Any]:
    text = texts.next()
    if n % 2 == 0:
        return {"role": "user", "content": text}
    return {
        "id": f"msg_{n}",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


async def block(op: Callable[[], Awaitable[object]], ops: int) -> Sample:
    latencies: list[int] = []
    started = time.perf_counter()
    for _ in range(ops):
        t0 = time.perf_counter_ns()
        await op()
        latencies.append(time.perf_counter_ns() - t0)
    return Sample(latencies, time.perf_counter() - started)


async def run(url: str, rounds: int, ops: int, report: Report) -> None:
    settings = bench_settings(url)
    texts = TextSource(email_every=0)
    plain = redis.Redis.from_url(url)
    contenders: dict[str, Callable[[], Awaitable[object]]] = {}
    sqlite_sessions: list[SQLiteSession] = []
    window_items: dict[int, int] = {}
    async with AsyncMemoryClient(settings) as client:
        try:
            for length in LENGTHS:
                memory = client.memory(
                    "bench-plain", {"workflow": {"input": {"conv": f"s{length}"}}}
                )
                session = MemoryEngineSession(memory, max_tokens=BUDGET_TOKENS)
                sqlite = SQLiteSession(f"s{length}", ":memory:")
                sqlite_sessions.append(sqlite)
                for start in range(0, length, FILL_BATCH):
                    batch = [item(texts, n) for n in range(start, min(length, start + FILL_BATCH))]
                    await session.add_items(batch)  # type: ignore[arg-type]
                    await sqlite.add_items(batch)  # type: ignore[arg-type]
                assert (await memory.stats()).message_count == length, "fill went wrong"
                window_items[length] = len(await session.get_items())
                contenders[f"session.get_items() @{length:,}"] = session.get_items
                contenders[f"SQLiteSession.get_items() @{length:,}"] = sqlite.get_items

            names = list(contenders)
            for name in names:  # warm-up: scripts loaded, connections open
                await block(contenders[name], 3)
            samples: dict[str, list[Sample]] = {name: [] for name in names}
            console.print(f"[bold]get_items[/bold]: {rounds} rounds of {ops} calls ...")
            for r in range(rounds):
                shift = r % len(names)
                for name in [*names[shift:], *names[:shift]]:
                    samples[name].append(await block(contenders[name], ops))

            for name in names:
                base = name.rsplit("@", 1)[0] + f"@{LENGTHS[0]:,}"
                summary = summarize_samples(samples[name])
                report.rows.append(
                    {
                        "contender": name,
                        "p50_us": summary["p50_us"],
                        "p99_us": summary["p99_us"],
                        "ops_s": summary["ops_s"],
                        f"p50 / @{LENGTHS[0]}": paired_ratio(
                            samples[name], samples[base], lambda x: x.p(50)
                        ),
                    }
                )
            big = samples[f"session.get_items() @{LENGTHS[-1]:,}"]
            mid = samples[f"session.get_items() @{LENGTHS[1]:,}"]
            report.targets.append(
                Target(
                    f"session.get_items(): p50 @{LENGTHS[-1]:,} / @{LENGTHS[1]:,} "
                    f"(linear = {LENGTHS[-1] // LENGTHS[1]}x)",
                    paired_ratio(big, mid, lambda x: x.p(50)),
                    FLAT_LIMIT,
                    unit="x",
                )
            )
            report.extra["window_items"] = window_items
            report.notes.append(f"items returned by session.get_items() per length: {window_items}")
            report.notes.append(
                f"budget {BUDGET_TOKENS} tokens; at {LENGTHS[0]} items the window is the whole "
                f"memory (less to read and decode), so flatness is read from @{LENGTHS[1]:,} "
                f"(the budget bounds the window) to @{LENGTHS[-1]:,}"
            )
        finally:
            for sqlite in sqlite_sessions:
                sqlite.close()
            delete_prefix(plain, settings.key_prefix)
            plain.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke run")
    args = parser.parse_args()
    rounds = 3 if args.quick else 10
    ops = 10 if args.quick else 50
    report = Report("agents_session", "Agents SDK session get_items() vs stored items (us)")
    report.config = {"rounds": rounds, "ops_per_block": ops, "budget_tokens": BUDGET_TOKENS}
    with redis_server() as url:
        asyncio.run(run(url, rounds, ops, report))
        report.finish(url)


if __name__ == "__main__":
    main()
