"""Where an append's time goes: a pyinstrument profile and a cost breakdown of the hot path.

1. ``pyinstrument`` (sampling) over single-thread ``Memory.append`` and ``append_many(100)`` calls;
   the text reports go to ``bench/results/profile_append*.txt``.
2. A breakdown in CPU microseconds of this process per call (``time.process_time``, which is
   steadier than wall time on a shared machine), median over interleaved repeats: each step of
   ``Memory.append`` measured alone, next to the redis-py floor and a bare ``PING``.
3. Server-side microseconds per call from ``INFO commandstats``: the append script against the
   floor's commands.

Run: ``.venv/bin/python bench/profile_append.py``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from common import (
    RESULTS_DIR,
    Report,
    TextSource,
    bench_client,
    console,
    delete_prefix,
    median,
    redis_server,
)

from memory_engine.core.append import check_message
from memory_engine.messages import AppendResult, coerce_message

PROFILE_APPENDS = 5_000
PROFILE_BATCHES = 200
REPEATS = 15
CALLS_PER_REPEAT = 300


def cpu_us(steps: dict[str, Callable[[], object]], repeats: int, calls: int) -> dict[str, float]:
    """Median CPU microseconds per call of each step, the steps interleaved repeat by repeat."""
    found: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            start = time.process_time()
            for _ in range(calls):
                fn()
            found[name].append((time.process_time() - start) / calls * 1e6)
    return {name: round(median(v), 2) for name, v in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls: a smoke run")
    args = parser.parse_args()
    appends = 1_000 if args.quick else PROFILE_APPENDS
    repeats = 5 if args.quick else REPEATS

    from pyinstrument import Profiler

    report = Report("profile_append", "Append hot path: CPU us per call of each step")
    texts = TextSource()
    with redis_server() as url:
        client = bench_client(url)
        r = client.redis
        try:
            plain = client.memory("bench-plain", {"workflow": {"input": {"conv": "prof"}}})
            redact = client.memory("bench-redact", {"workflow": {"input": {"conv": "prof"}}})
            for m in (plain, redact):
                m.append(texts.message())

            console.print(f"[bold]pyinstrument[/bold]: {appends} appends, then append_many ...")
            runs: list[tuple[str, Callable[[], object]]] = [
                ("profile_append", lambda: [plain.append(texts.message()) for _ in range(appends)]),
                (
                    "profile_append_many",
                    lambda: [
                        plain.append_many([texts.message() for _ in range(100)])
                        for _ in range(PROFILE_BATCHES)
                    ],
                ),
            ]
            for name, run in runs:
                profiler = Profiler(interval=0.0005)
                profiler.start()
                run()
                profiler.stop()
                text = profiler.output_text(unicode=False, color=False)
                (RESULTS_DIR / f"{name}.txt").write_text(text, encoding="utf-8")
                report.extra[f"{name}_txt"] = f"bench/results/{name}.txt"

            pending = plain._prepare([texts.message()])[0]
            token_thr, message_thr = plain.resource.trigger_thresholds()
            counter = client.counter_for(plain.resource)
            redactor = client.redactor_for(redact.resource)
            message = coerce_message(texts.message())
            prefix = client.settings.key_prefix

            def floor() -> None:
                pipe = r.pipeline(transaction=True)
                pipe.rpush(f"{prefix}:floor:msgs", pending[0].body)
                pipe.hincrby(f"{prefix}:floor:meta", "message_count", 1)
                pipe.hincrby(f"{prefix}:floor:meta", "token_count", 40)
                pipe.expire(f"{prefix}:floor:msgs", 3600)
                pipe.execute()

            def store_append() -> None:
                client.store.append(
                    plain.keys,
                    pending,
                    resource_id=plain.resource.id,
                    ttl_s=plain.resource.ttl_s,
                    token_threshold=token_thr,
                    message_threshold=message_thr,
                    marker_ttl_s=600,
                )

            steps: dict[str, Callable[[], object]] = {
                "memory.append (plain)": lambda: plain.append(texts.message()),
                "memory.append (+redact)": lambda: redact.append(texts.message()),
                "  _prepare([1 msg]) plain": lambda: plain._prepare([texts.message()]),
                "  _prepare([1 msg]) +redact": lambda: redact._prepare([texts.message()]),
                "    coerce_message (pydantic)": lambda: coerce_message(texts.message()),
                "    _check_message": lambda: check_message(message, 0, 65536),
                "    count_text (unique 150 chars)": lambda: counter.count_text(texts.next()),
                "    encode_ordinary alone": lambda: counter._encoding.encode_ordinary(
                    texts.next()
                ),
                "    redact_text (2 patterns)": lambda: redactor.redact_text(texts.next()),
                "    wire_body (json.dumps)": lambda: message.wire_body(40, 1.5),
                "    trigger_thresholds": plain.resource.trigger_thresholds,
                "    AppendResult(...)": lambda: AppendResult(
                    stored=True, appended=1, message_count=3, token_count=5
                ),
                "    text source (bench input)": texts.message,
                "  store.append (1 prepared msg)": store_append,
                "redis-py floor (MULTI x4)": floor,
                "redis-py PING": r.ping,
            }
            console.print(f"[bold]breakdown[/bold]: {repeats} interleaved repeats ...")
            costs = cpu_us(steps, repeats, CALLS_PER_REPEAT)
            for name, value in costs.items():
                report.rows.append({"step": name, "cpu_us_per_call": value})

            r.config_resetstat()
            for _ in range(2_000):
                plain.append(texts.message())
            for _ in range(2_000):
                floor()
            server = {
                name.removeprefix("cmdstat_"): stats["usec_per_call"]
                for name, stats in r.info("commandstats").items()
                if stats["calls"] >= 2_000
            }
            report.extra["server_usec_per_call"] = server
            report.notes.append(
                "server usec per call (2,000 appends + 2,000 floors): "
                + ", ".join(f"{k}={v}" for k, v in sorted(server.items()))
            )
        finally:
            delete_prefix(r, client.settings.key_prefix)
            client.close()
        report.finish(url)


if __name__ == "__main__":
    main()
