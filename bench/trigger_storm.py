"""Trigger storm: how many ``memory.flush`` tasks one threshold crossing enqueues, and what the
append that crosses it pays.

1. **storm**: 8 threads append 20 messages each, released together, into one fresh memory whose
   flush threshold is 80 messages (``bench-storm``: ``max_messages: 100``, threshold 0.8), so the
   crossing happens mid-storm. No worker runs: the broker queue's ``LLEN memory.flush`` before and
   after each trial counts what was enqueued. Must be exactly 1 per crossing (the append script's
   ``SET NX`` marker lets one append through).
2. **trigger latency**, one thread, quiet: in each trial a fresh memory is filled to 79 messages
   (untimed), then one append into it (it crosses: ``flush_requested=True``) and one append into a
   memory below its threshold are timed, in alternating order. The difference of the medians is
   what the crossing append pays (marker index, task publish). The storm's appends are split the
   same way, under contention.

Run: ``.venv/bin/python bench/trigger_storm.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import threading
import time

import redis
from common import (
    Report,
    Target,
    TextSource,
    bench_client,
    console,
    delete_prefix,
    median,
    percentile,
    redis_server,
)

from memory_engine.client import Memory, MemoryClient
from memory_engine.task_contract import QUEUE_FLUSH

THREADS = 8
APPENDS_PER_THREAD = 20
THRESHOLD_MESSAGES = 80  # bench-storm: max_messages 100 x summarize_threshold 0.8


def _memory(client: MemoryClient, conv: str) -> Memory:
    return client.memory("bench-storm", {"workflow": {"input": {"conv": conv}}})


def storm_trial(
    memory: Memory, texts: TextSource
) -> tuple[list[tuple[int, bool]], BaseException | None]:
    """8 threads x 20 appends into ``memory``; [(latency ns, flush_requested)]."""
    out: list[tuple[int, bool]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def worker() -> None:
        mine: list[tuple[int, bool]] = []
        barrier.wait()
        try:
            for _ in range(APPENDS_PER_THREAD):
                t0 = time.perf_counter_ns()
                result = memory.append(texts.message())
                mine.append((time.perf_counter_ns() - t0, result.flush_requested))
        except BaseException as exc:
            errors.append(exc)
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out, (errors[0] if errors else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few trials: a smoke run")
    args = parser.parse_args()
    storm_trials = 10 if args.quick else 100
    quiet_trials = 30 if args.quick else 300

    report = Report("trigger_storm", "Trigger storm: tasks per threshold crossing, trigger cost")
    report.config = {
        "threads": THREADS,
        "appends_per_thread": APPENDS_PER_THREAD,
        "threshold_messages": THRESHOLD_MESSAGES,
        "storm_trials": storm_trials,
        "quiet_trials": quiet_trials,
        "queue": QUEUE_FLUSH,
    }
    texts = TextSource()
    with redis_server() as url:
        client = bench_client(url)
        plain_r = redis.Redis.from_url(url)
        broker = redis.Redis.from_url(client.settings.broker_dsn())
        try:
            broker.delete(QUEUE_FLUSH)
            # Warm-up: builds the producer's Celery app and broker connection (first publish).
            warm = _memory(client, "warm")
            warm.append_many([texts.message() for _ in range(THRESHOLD_MESSAGES)])
            if broker.llen(QUEUE_FLUSH) != 1:
                raise RuntimeError(
                    f"expected the warm-up task in list {QUEUE_FLUSH!r} of the broker DB; "
                    f"found keys {broker.keys('*')[:10]}"
                )

            console.print(f"[bold]storm[/bold]: {storm_trials} trials x {THREADS} threads ...")
            per_crossing: list[int] = []
            requested_flags: list[int] = []
            storm_trig: list[int] = []
            storm_plain: list[int] = []
            for trial in range(storm_trials):
                memory = _memory(client, f"storm{trial}")
                before = broker.llen(QUEUE_FLUSH)
                results, error = storm_trial(memory, texts)
                if error is not None:
                    raise error
                per_crossing.append(broker.llen(QUEUE_FLUSH) - before)
                requested_flags.append(sum(1 for _, flag in results if flag))
                storm_trig.extend(lat for lat, flag in results if flag)
                storm_plain.extend(lat for lat, flag in results if not flag)
                stats = memory.stats()
                if stats.message_count != THREADS * APPENDS_PER_THREAD or not stats.flush_pending:
                    raise RuntimeError(f"unexpected state after the storm: {stats}")

            console.print(f"[bold]trigger latency[/bold]: {quiet_trials} trials, one thread ...")
            control = _memory(client, "control")
            quiet_trig: list[int] = []
            quiet_plain: list[int] = []
            diffs: list[int] = []
            for trial in range(quiet_trials):
                memory = _memory(client, f"quiet{trial}")
                memory.append_many([texts.message() for _ in range(THRESHOLD_MESSAGES - 1)])
                if trial % 50 == 0:  # keep the control memory far below its threshold
                    control.replace([texts.message() for _ in range(10)])
                pair: dict[str, int] = {}
                order = ("trig", "plain") if trial % 2 else ("plain", "trig")
                for which in order:
                    target = memory if which == "trig" else control
                    t0 = time.perf_counter_ns()
                    result = target.append(texts.message())
                    pair[which] = time.perf_counter_ns() - t0
                    if result.flush_requested != (which == "trig"):
                        raise RuntimeError(f"{which} append: flush_requested={result}")
                quiet_trig.append(pair["trig"])
                quiet_plain.append(pair["plain"])
                diffs.append(pair["trig"] - pair["plain"])

            def us(values: list[int], q: float) -> float:
                return round(percentile(values, q) / 1000, 1)

            for case, trig, plain in (
                ("quiet, 1 thread", quiet_trig, quiet_plain),
                (f"storm, {THREADS} threads", storm_trig, storm_plain),
            ):
                report.rows.append(
                    {
                        "case": case,
                        "crossing_appends": len(trig),
                        "p50_crossing_us": us(trig, 50),
                        "p50_other_us": us(plain, 50),
                        "p99_crossing_us": us(trig, 99),
                        "p99_other_us": us(plain, 99),
                        "p50_extra_us": round(us(trig, 50) - us(plain, 50), 1),
                        "ratio": round(percentile(trig, 50) / percentile(plain, 50), 2),
                    }
                )
            report.extra["tasks_per_crossing"] = {
                "min": min(per_crossing),
                "max": max(per_crossing),
                "mean": sum(per_crossing) / len(per_crossing),
                "trials": len(per_crossing),
            }
            report.extra["flush_requested_per_trial"] = {
                "min": min(requested_flags),
                "max": max(requested_flags),
            }
            report.extra["quiet_paired_extra_us_median"] = round(median(diffs) / 1000, 1)
            report.targets.append(
                Target("tasks enqueued per crossing (max over trials)", max(per_crossing), 1, "==")
            )
            report.targets.append(
                Target("tasks enqueued per crossing (min over trials)", min(per_crossing), 1, "==")
            )
            report.notes.append(
                f"tasks per crossing over {len(per_crossing)} storms: min {min(per_crossing)}, "
                f"max {max(per_crossing)}; appends reporting flush_requested per storm: "
                f"min {min(requested_flags)}, max {max(requested_flags)}"
            )
            report.notes.append(
                "quiet: median of paired differences (crossing - other) = "
                f"{report.extra['quiet_paired_extra_us_median']} us"
            )
        finally:
            broker.delete(QUEUE_FLUSH)
            broker.close()
            delete_prefix(plain_r, client.settings.key_prefix)
            plain_r.close()
            client.close()
        report.finish(url)


if __name__ == "__main__":
    main()
