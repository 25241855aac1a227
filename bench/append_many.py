"""Batch append: messages per second of ``Memory.append_many(100)`` on one thread.

Contenders, alternated block by block: ``append_many(100)`` on a resource without redaction and on
one with two redact patterns; the redis-py floor for a batch (``MULTI RPUSH x100 HINCRBY HINCRBY
EXPIRE EXEC``); LangChain's ``RedisChatMessageHistory.add_messages`` (one LPUSH + EXPIRE per
message: it has no batch path). Batches are built before each block, so only the call is timed.

Run: ``.venv/bin/python bench/append_many.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
from typing import Any

import redis
from append import TTL_S, langchain_histories
from common import (
    Contender,
    Report,
    Target,
    TextSource,
    alternate,
    bench_client,
    console,
    delete_prefix,
    paired_ratio,
    redis_server,
    summarize_samples,
)

BATCH = 100
TARGET_MSGS_S = 30_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke run")
    args = parser.parse_args()
    rounds = 3 if args.quick else 12
    batches_per_block = 5 if args.quick else 20

    from langchain_core.messages import AIMessage, HumanMessage

    report = Report("append_many", f"append_many({BATCH}): messages/s, one thread")
    report.config = {
        "rounds": rounds,
        "batches_per_block": batches_per_block,
        "batch": BATCH,
        "message_chars": 150,
    }
    texts = TextSource()
    with redis_server() as url:
        client = bench_client(url)
        plain_r = redis.Redis.from_url(url)
        prefix = client.settings.key_prefix
        ctx = {"workflow": {"input": {"conv": "many"}}}
        plain = client.memory("bench-plain", ctx)
        redact = client.memory("bench-redact", ctx)
        (history,) = langchain_histories(url, prefix, 1, TTL_S)
        r = client.redis
        batches: dict[str, list[list[Any]]] = {}

        def make(name: str, langchain: bool = False) -> None:
            out: list[list[Any]] = []
            for _ in range(batches_per_block):
                batch: list[Any] = [texts.message() for _ in range(BATCH)]
                if langchain:
                    batch = [
                        HumanMessage(content=m["content"])
                        if m["role"] == "user"
                        else AIMessage(content=m["content"])
                        for m in batch
                    ]
                out.append(batch)
            batches[name] = out

        def floor(_t: int, i: int) -> None:
            pipe = r.pipeline(transaction=True)
            pipe.rpush(f"{prefix}:floor:msgs", *[m["content"] for m in batches["floor"][i]])
            pipe.hincrby(f"{prefix}:floor:meta", "message_count", BATCH)
            pipe.hincrby(f"{prefix}:floor:meta", "token_count", 40 * BATCH)
            pipe.expire(f"{prefix}:floor:msgs", TTL_S)
            pipe.execute()

        contenders = [
            Contender(
                "append_many plain",
                lambda _t, i: plain.append_many(batches["plain"][i]),
                setup=lambda: make("plain"),
            ),
            Contender(
                "append_many +redact",
                lambda _t, i: redact.append_many(batches["redact"][i]),
                setup=lambda: make("redact"),
            ),
            Contender("redis-py floor", floor, setup=lambda: make("floor")),
            Contender(
                "langchain add_messages ttl",
                lambda _t, i: history.add_messages(batches["lc"][i]),
                setup=lambda: make("lc", langchain=True),
            ),
        ]
        try:
            console.print(f"[bold]append_many({BATCH})[/bold]: {rounds} rounds ...")
            samples = alternate(
                contenders, rounds=rounds, ops_per_thread=batches_per_block, warmup_ops=2
            )
            floor_s = samples["redis-py floor"]
            for c in contenders:
                s = samples[c.name]
                summary = summarize_samples(s)
                report.rows.append(
                    {
                        "contender": c.name,
                        "msgs_s": round(summary["ops_s"] * BATCH),
                        "p50_batch_us": summary["p50_us"],
                        "p99_batch_us": summary["p99_us"],
                        "us_per_msg": round(summary["p50_us"] / BATCH, 2),
                        "msgs_s / floor": paired_ratio(s, floor_s, lambda x: x.ops_per_s),
                    }
                )
            for name in ("append_many plain", "append_many +redact"):
                measured = round(summarize_samples(samples[name])["ops_s"] * BATCH)
                report.targets.append(
                    Target(f"{name}: messages/s", measured, TARGET_MSGS_S, op=">=")
                )
            report.notes.append("the issue's target applies to a resource without redaction")
        finally:
            delete_prefix(plain_r, prefix)
            plain_r.close()
            client.close()
        report.finish(url)


if __name__ == "__main__":
    main()
