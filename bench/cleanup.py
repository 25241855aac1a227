"""Cleanup at scale: 1,000,000 memories in the indexes, 10,000 of them expired.

Setup (untimed, once): ``ZADD`` 1,000,000 memory ids into ``KeySpace(prefix).expiry_index`` and
``access_index`` in pipelines of big ``ZADD`` commands; 990,000 expire in the future, 10,000 in the
past. Real keys exist only for the expired ones, as Redis would leave them: ``meta`` is gone (it
expired), leftovers (``msgs``, ``summary``, ``used``) are present. Before each run the expired part
is rebuilt (untimed), so every run finds the same work.

Contenders, alternated: ``memory_engine.engine.maintenance.cleanup`` (what the ``memory.cleanup``
task
runs), and a bare sweep for reference (``ZRANGEBYSCORE`` the expired ids, one pipeline of
``UNLINK`` per id + ``ZREM``: what the issue quotes at about 0.07 s). Commands are counted from
``INFO commandstats`` before and after each run (the INFO call itself excluded); a ``SCAN`` or
``KEYS`` would show there.

Run: ``.venv/bin/python bench/cleanup.py`` (``--quick``: 100,000 memories, 1,000 expired).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import redis
from common import (
    Report,
    Target,
    bench_client,
    console,
    delete_prefix,
    median,
    redis_server,
)

from memory_engine.client import MemoryClient
from memory_engine.engine.maintenance import cleanup

ZADD_CHUNK = 10_000
PIPELINE_COMMANDS = 20
TARGET_S = 0.5


def command_counts(r: redis.Redis) -> dict[str, int]:
    return {
        name.removeprefix("cmdstat_"): int(stats["calls"])
        for name, stats in r.info("commandstats").items()
    }


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    out = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    out["info"] = out.get("info", 1) - 1  # the INFO that took the second reading
    return {k: v for k, v in out.items() if v}


def member(i: int) -> str:
    return f"bench:conv{i:07d}"


class Fixture:
    def __init__(self, client: MemoryClient, total: int, expired: int) -> None:
        self.client = client
        self.r = client.redis
        self.ks = client.keyspace
        self.total = total
        self.expired = expired
        self.now = time.time()

    def load_indexes(self) -> None:
        """Every id in both indexes; ids [0, expired) already past their expiry."""
        pipe = self.r.pipeline(transaction=False)
        queued = 0
        for start in range(0, self.total, ZADD_CHUNK):
            stop = min(start + ZADD_CHUNK, self.total)
            expiry = {
                member(i): (self.now - 60 - i if i < self.expired else self.now + 3600 + i)
                for i in range(start, stop)
            }
            access = {member(i): self.now - 7200 + i for i in range(start, stop)}
            pipe.zadd(self.ks.expiry_index, expiry)
            pipe.zadd(self.ks.access_index, access)
            queued += 2
            if queued >= PIPELINE_COMMANDS:
                pipe.execute()
                queued = 0
        pipe.execute()

    def rebuild_expired(self) -> None:
        """The expired memories' index entries and leftover keys (no meta), as after expiry."""
        pipe = self.r.pipeline(transaction=False)
        expiry = {member(i): self.now - 60 - i for i in range(self.expired)}
        access = {member(i): self.now - 7200 + i for i in range(self.expired)}
        pipe.zadd(self.ks.expiry_index, expiry)
        pipe.zadd(self.ks.access_index, access)
        for i in range(self.expired):
            k = self.ks.memory(member(i))
            pipe.rpush(k.msgs, '{"s":1,"t":5,"r":"user","c":"hi","ts":0}')
            pipe.hset(k.summary, mapping={"text": "a summary", "token_count": 3})
            pipe.zadd(k.used, {"1": self.now})
            if i % 2000 == 1999:
                pipe.execute()
        pipe.execute()

    def leftovers(self) -> int:
        pipe = self.r.pipeline(transaction=False)
        for i in range(self.expired):
            k = self.ks.memory(member(i))
            pipe.exists(k.msgs, k.summary, k.used, k.meta)
        return sum(int(x) for x in pipe.execute())


def bare_sweep(client: MemoryClient, now: float) -> int:
    """Reference: ZRANGEBYSCORE + one UNLINK per memory + ZREM, no TTL check."""
    r, ks = client.redis, client.keyspace
    ids = [
        m.decode() if isinstance(m, bytes) else str(m)
        for m in r.zrangebyscore(ks.expiry_index, "-inf", now)
    ]
    pipe = r.pipeline(transaction=False)
    for mid in ids:
        k = ks.memory(mid)
        pipe.unlink(k.msgs, k.meta, k.summary, k.used, k.flush, k.lock)
    if ids:
        pipe.zrem(ks.expiry_index, *ids)
        pipe.zrem(ks.access_index, *ids)
    pipe.execute()
    return len(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 memories: a smoke run")
    args = parser.parse_args()
    total, expired = (100_000, 1_000) if args.quick else (1_000_000, 10_000)
    rounds = 2 if args.quick else 5

    report = Report("cleanup", f"Cleanup: {total:,} memories indexed, {expired:,} expired")
    report.config = {"indexed": total, "expired": expired, "rounds": rounds}
    with redis_server() as url:
        client = bench_client(url)
        plain_r = redis.Redis.from_url(url)
        try:
            fx = Fixture(client, total, expired)
            console.print(f"[bold]setup[/bold]: {total:,} index entries ...")
            t0 = time.perf_counter()
            fx.load_indexes()
            report.extra["setup_s"] = round(time.perf_counter() - t0, 1)
            report.extra["index_sizes"] = {
                "expiry": client.redis.zcard(client.keyspace.expiry_index),
                "access": client.redis.zcard(client.keyspace.access_index),
            }
            runs: dict[str, list[dict[str, Any]]] = {"engine cleanup": [], "bare sweep": []}
            console.print(f"[bold]runs[/bold]: {rounds} rounds ...")
            for rnd in range(rounds):
                order = ["engine cleanup", "bare sweep"]
                if rnd % 2:
                    order.reverse()
                for name in order:
                    fx.rebuild_expired()
                    if fx.leftovers() != 3 * expired:
                        raise RuntimeError("fixture: leftovers not in place")
                    now = time.time()
                    before = command_counts(plain_r)
                    t0 = time.perf_counter()
                    if name == "engine cleanup":
                        result = cleanup(client, now=now)
                        removed = result.expired_removed
                    else:
                        removed = bare_sweep(client, now)
                    elapsed = time.perf_counter() - t0
                    commands = delta(before, command_counts(plain_r))
                    left = fx.leftovers()
                    if removed != expired or left:
                        raise RuntimeError(f"{name}: removed {removed}, {left} keys left")
                    remaining = client.redis.zcard(client.keyspace.expiry_index)
                    if remaining != total - expired:
                        raise RuntimeError(f"{name}: {remaining} ids left in the expiry index")
                    runs[name].append({"s": elapsed, "commands": commands})
            for name, rs in runs.items():
                commands = rs[-1]["commands"]
                report.rows.append(
                    {
                        "contender": name,
                        "median_s": round(median([x["s"] for x in rs]), 3),
                        "min_s": round(min(x["s"] for x in rs), 3),
                        "max_s": round(max(x["s"] for x in rs), 3),
                        "removed": expired,
                        "commands": sum(commands.values()),
                        "scan_or_keys": commands.get("scan", 0) + commands.get("keys", 0),
                        "by_command": " ".join(f"{k}={v}" for k, v in sorted(commands.items())),
                    }
                )
            engine = report.rows[0]
            report.targets.append(
                Target("engine cleanup: median seconds", engine["median_s"], TARGET_S, unit=" s")
            )
            report.targets.append(
                Target("engine cleanup: SCAN/KEYS commands", engine["scan_or_keys"], 0, "==")
            )
        finally:
            delete_prefix(plain_r, client.settings.key_prefix)
            plain_r.close()
            client.close()
        report.finish(url)


if __name__ == "__main__":
    main()
