"""``Memory.context(max_tokens)`` at memory lengths 100, 1,000 and 10,000: cost must stay flat.

``context`` reads the metadata, the summary, a head chunk and a tail that grows until it covers
the budget, so its cost follows the budget, not the memory's length. For contrast, LangChain's
``RedisChatMessageHistory.messages`` (what a LangChain app sends to the model: it reads and
decodes the whole list) is measured at the same lengths.

Budgets: 2,000 tokens (about 50 of these 150-character messages) and 8,000 (about 200, so the
tail grows twice). Run: ``.venv/bin/python bench/context.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
from typing import Any

import redis
from append import langchain_histories
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

LENGTHS = (100, 1_000, 10_000)
BUDGETS = (2_000, 8_000)
FILL_BATCH = 500
FLAT_LIMIT = 1.5  # p50 at 10,000 over p50 at 100; linear growth would be 100x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke run")
    args = parser.parse_args()
    rounds = 3 if args.quick else 10
    ops = 10 if args.quick else 40
    lc_ops = 3 if args.quick else 8

    from langchain_core.messages import AIMessage, HumanMessage

    report = Report("context", "context(max_tokens) vs memory length: latency (us)")
    report.config = {"rounds": rounds, "ops_per_block": ops, "langchain_ops_per_block": lc_ops}
    texts = TextSource()
    with redis_server() as url:
        client = bench_client(url)
        plain_r = redis.Redis.from_url(url)
        prefix = client.settings.key_prefix
        try:
            memories = {}
            histories: dict[int, Any] = {}
            for length in LENGTHS:
                m = client.memory("bench-plain", {"workflow": {"input": {"conv": f"ctx{length}"}}})
                m.append({"role": "system", "content": "You are a helpful support agent."})
                (h,) = langchain_histories(url, prefix, 1, None, name=f"ctx{length}")
                done = 1
                while done < length:
                    batch = [texts.message() for _ in range(min(FILL_BATCH, length - done))]
                    m.append_many(batch)
                    h.add_messages(
                        [
                            HumanMessage(content=x["content"])
                            if x["role"] == "user"
                            else AIMessage(content=x["content"])
                            for x in batch
                        ]
                    )
                    done += len(batch)
                memories[length] = m
                histories[length] = h
            for length, m in memories.items():
                assert m.stats().message_count == length, "fill went wrong"

            def ctx_op(length: int, budget: int) -> Any:
                m = memories[length]
                return lambda _t, _i: m.context(max_tokens=budget)

            ctx_contenders = [
                Contender(f"context({budget}) @{length:,}", ctx_op(length, budget))
                for budget in BUDGETS
                for length in LENGTHS
            ]
            console.print(f"[bold]context[/bold]: {rounds} rounds ...")
            samples = alternate(ctx_contenders, rounds=rounds, ops_per_thread=ops, warmup_ops=3)

            def lc_op(length: int) -> Any:
                h = histories[length]
                return lambda _t, _i: h.messages

            lc_contenders = [
                Contender(f"langchain .messages @{length:,}", lc_op(length)) for length in LENGTHS
            ]
            console.print(f"[bold]langchain .messages[/bold]: {rounds} rounds ...")
            samples.update(
                alternate(lc_contenders, rounds=rounds, ops_per_thread=lc_ops, warmup_ops=1)
            )
            windows = {
                (budget, length): len(memories[length].context(max_tokens=budget))
                for budget in BUDGETS
                for length in LENGTHS
            }
            for c in [*ctx_contenders, *lc_contenders]:
                s = samples[c.name]
                base_name = c.name.rsplit("@", 1)[0] + f"@{LENGTHS[0]:,}"
                summary = summarize_samples(s)
                report.rows.append(
                    {
                        "contender": c.name,
                        "p50_us": summary["p50_us"],
                        "p99_us": summary["p99_us"],
                        "ops_s": summary["ops_s"],
                        f"p50 / @{LENGTHS[0]}": paired_ratio(
                            s, samples[base_name], lambda x: x.p(50)
                        ),
                    }
                )
            for budget in BUDGETS:
                # Compare lengths whose window the budget bounds (at 100 messages an 8,000-token
                # budget returns the whole memory: less work, not a flat cost).
                base = min(n for n in LENGTHS if windows[(budget, n)] < n)
                big = samples[f"context({budget}) @{LENGTHS[-1]:,}"]
                small = samples[f"context({budget}) @{base:,}"]
                report.targets.append(
                    Target(
                        f"context({budget}): p50 @{LENGTHS[-1]:,} / @{base:,} "
                        f"(linear = {LENGTHS[-1] // base}x)",
                        paired_ratio(big, small, lambda x: x.p(50)),
                        FLAT_LIMIT,
                        unit="x",
                    )
                )
            window_sizes = {f"{budget}@{length}": n for (budget, length), n in windows.items()}
            report.extra["window_messages"] = window_sizes
            report.notes.append(f"messages returned (budget@length): {window_sizes}")
            report.notes.append(
                f"'flat' is read as p50 @10,000 within {FLAT_LIMIT}x of p50 at the shortest length "
                "whose window the budget bounds (the issue asks for not linear)"
            )
        finally:
            delete_prefix(plain_r, prefix)
            plain_r.close()
            client.close()
        report.finish(url)


if __name__ == "__main__":
    main()
