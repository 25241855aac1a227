"""Append latency and throughput: ``Memory.append`` against the redis-py floor and LangChain.

Contenders, alternated block by block (see ``bench/common.py``):

- ``memory.append``: a resource without redaction (``bench-plain``);
- ``memory.append +redact``: a resource with two redact patterns (e-mail, SSN; one message in ten
  holds an address);
- ``redis-py floor``: ``MULTI RPUSH HINCRBY HINCRBY EXPIRE EXEC`` in one pipeline, the least a
  Python client can do to store a message with counters and a TTL in one round trip;
- ``langchain add_message``: ``RedisChatMessageHistory(ttl=3600).add_message`` (LPUSH, then
  EXPIRE: two round trips) and the same without a TTL (LPUSH only).

Each thread appends to its own memory (one conversation per thread), 150-character messages,
every text unique. A second section compares appends into memories of length ~10 and ~10,000.

Run: ``.venv/bin/python bench/append.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

import redis
from common import (
    Contender,
    Report,
    Sample,
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

from memory_engine.client import Memory, MemoryClient

TTL_S = 3600
THREAD_COUNTS = (1, 8)
LENGTH_POOL = 8  # memories per length in the length section; appends rotate over them
SMALL_LENGTH = 10
LARGE_LENGTH = 10_000


def _memory(client: MemoryClient, resource_id: str, conv: str) -> Memory:
    return client.memory(resource_id, {"workflow": {"input": {"conv": conv}}})


def langchain_histories(
    url: str, prefix: str, threads: int, ttl: int | None, name: str = "h"
) -> list[Any]:
    """One ``RedisChatMessageHistory`` per thread, keys under ``<prefix>:lc:``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # langchain-community's sunset notice
        from langchain_community.chat_message_histories import RedisChatMessageHistory
    return [
        RedisChatMessageHistory(f"{name}-t{t}-{ttl}", url=url, key_prefix=f"{prefix}:lc:", ttl=ttl)
        for t in range(threads)
    ]


def contenders(url: str, client: MemoryClient, texts: TextSource, threads: int) -> list[Contender]:
    from langchain_core.messages import AIMessage, HumanMessage

    prefix = client.settings.key_prefix
    plain = [_memory(client, "bench-plain", f"p{threads}-{t}") for t in range(threads)]
    redact = [_memory(client, "bench-redact", f"r{threads}-{t}") for t in range(threads)]
    lc_ttl = langchain_histories(url, prefix, threads, TTL_S)
    lc_none = langchain_histories(url, prefix, threads, None)
    r = client.redis  # same connection options as the engine's client

    def floor(t: int, _i: int) -> None:
        msgs, meta = f"{prefix}:floor:{t}:msgs", f"{prefix}:floor:{t}:meta"
        pipe = r.pipeline(transaction=True)
        pipe.rpush(msgs, texts.next())
        pipe.hincrby(meta, "message_count", 1)
        pipe.hincrby(meta, "token_count", 40)
        pipe.expire(msgs, TTL_S)
        pipe.execute()

    def lc_message(text: str) -> Any:
        return HumanMessage(content=text) if len(text) % 2 else AIMessage(content=text)

    return [
        Contender("memory.append", lambda t, _i: plain[t].append(texts.message())),
        Contender("memory.append +redact", lambda t, _i: redact[t].append(texts.message())),
        Contender("redis-py floor", floor),
        Contender(
            "langchain add_message ttl",
            lambda t, _i: lc_ttl[t].add_message(lc_message(texts.next())),
        ),
        Contender(
            "langchain add_message no-ttl",
            lambda t, _i: lc_none[t].add_message(lc_message(texts.next())),
        ),
    ]


def length_contenders(client: MemoryClient, texts: TextSource) -> list[Contender]:
    """Appends into memories at ~10 messages (reset before every block) and at ~10,000."""
    small = [_memory(client, "bench-plain", f"len10-{k}") for k in range(LENGTH_POOL)]
    large = [_memory(client, "bench-plain", f"len10k-{k}") for k in range(LENGTH_POOL)]
    for m in large:
        for _ in range(LARGE_LENGTH // 500):
            m.append_many([texts.message() for _ in range(500)])

    def reset_small() -> None:
        for m in small:
            m.replace([texts.message() for _ in range(SMALL_LENGTH)])

    return [
        Contender(
            f"append @len {SMALL_LENGTH}",
            lambda _t, i: small[i % LENGTH_POOL].append(texts.message()),
            setup=reset_small,
        ),
        Contender(
            f"append @len {LARGE_LENGTH:,}",
            lambda _t, i: large[i % LENGTH_POOL].append(texts.message()),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke run")
    args = parser.parse_args()
    rounds = 3 if args.quick else 12
    # 8 threads: blocks of ~0.5-1 s, long enough that which thread the GIL favours evens out
    # (blocks of 0.15 s gave throughput ratios that moved 2x between runs).
    ops = {1: 200 if args.quick else 800, 8: 50 if args.quick else 1000}

    report = Report("append", "Append: latency (us) and throughput, medians over rounds")
    report.config = {
        "rounds": rounds,
        "ops_per_thread_per_block": ops,
        "message_chars": 150,
        "ttl_s": TTL_S,
    }
    texts = TextSource()
    with redis_server() as url:
        client = bench_client(url)
        plain_r = redis.Redis.from_url(url)
        try:
            per_threads: dict[int, dict[str, list[Sample]]] = {}
            for threads in THREAD_COUNTS:
                console.print(f"[bold]{threads} thread(s)[/bold]: {rounds} rounds ...")
                cs = contenders(url, client, texts, threads)
                samples = alternate(cs, rounds=rounds, ops_per_thread=ops[threads], threads=threads)
                floor = samples["redis-py floor"]
                lc = samples["langchain add_message ttl"]
                lc_none = samples["langchain add_message no-ttl"]
                per_threads[threads] = samples
                for c in cs:
                    s = samples[c.name]
                    report.rows.append(
                        {
                            "threads": threads,
                            "contender": c.name,
                            **summarize_samples(s),
                            "p50 / floor": paired_ratio(s, floor, lambda x: x.p(50)),
                            "ops/s vs lc ttl": paired_ratio(s, lc, lambda x: x.ops_per_s),
                            "ops/s vs lc no-ttl": paired_ratio(s, lc_none, lambda x: x.ops_per_s),
                        }
                    )
            console.print(f"[bold]length 10 vs 10,000[/bold]: {rounds * 2} rounds ...")
            lcs = length_contenders(client, texts)
            length_samples = alternate(lcs, rounds=rounds * 2, ops_per_thread=ops[1] // 4)
            small, large = (length_samples[c.name] for c in lcs)
            for c in lcs:
                report.rows.append(
                    {
                        "threads": 1,
                        "contender": c.name,
                        **summarize_samples(length_samples[c.name]),
                        "p50 / floor": "",
                    }
                )
            for threads in THREAD_COUNTS:
                by_name = per_threads[threads]
                report.targets.append(
                    Target(
                        f"p50 memory.append / floor, {threads} thread(s)",
                        paired_ratio(
                            by_name["memory.append"], by_name["redis-py floor"], lambda x: x.p(50)
                        ),
                        1.2,
                        unit="x",
                    )
                )
                report.targets.append(
                    Target(
                        f"ops/s memory.append / langchain (ttl), {threads} thread(s)",
                        paired_ratio(
                            by_name["memory.append"],
                            by_name["langchain add_message ttl"],
                            lambda x: x.ops_per_s,
                        ),
                        1.5,
                        op=">=",
                        unit="x",
                    )
                )
            drift = paired_ratio(large, small, lambda x: x.p(50))
            report.targets.append(Target("p50 append @10,000 / @10", drift, 1.1, unit="x"))
            report.targets.append(
                Target("p50 append @10 / @10,000", round(1 / drift, 3), 1.1, unit="x")
            )
            report.notes.append(
                "ratios are medians of per-round ratios (both sides measured in the same round)"
            )
        finally:
            delete_prefix(plain_r, client.settings.key_prefix)
            plain_r.close()
            client.close()
        report.finish(url)


if __name__ == "__main__":
    main()
