"""Redis Cluster vs standalone on the same machine: append latency and throughput, and cleanup of
expired memories among a million indexed ones on the Cluster.

Servers: a standalone ``redis-server`` (``common.redis_server``) and a 3-master Redis Cluster
started by ``tests/integration/topologies.py`` (the test fixture, reused), all on loopback from
the same binary. The client is ``MemoryClient`` with ``MEMORY_REDIS_MODE=standalone`` or
``cluster``; the cluster client sends the append script alone (redis-py's cluster client, no lean
path), so this measures what a deployment gets.

- append: one message to one of 64 memories per thread (spread over every master), alternated
  blocks of standalone and cluster; p50 with 1 thread and throughput with 4 threads;
- cleanup: ``bench/cleanup.py``'s fixture (its code, reused) on the Cluster: 1,000,000 ids in the
  indexes, 10,000 expired with leftover keys; ``engine.maintenance.cleanup`` timed; ``SCAN`` and
  ``KEYS`` counted on every master from ``INFO commandstats``.

Run: ``.venv/bin/python bench/cluster.py`` (``--quick``: 100,000 memories, fewer rounds).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cleanup import Fixture
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from memory_engine.client import Memory, MemoryClient  # noqa: E402
from memory_engine.engine.maintenance import cleanup  # noqa: E402
from tests.integration.topologies import LocalCluster  # noqa: E402

MEMORIES_PER_THREAD = 64
P50_RATIO_TARGET = 1.15
CLEANUP_TARGET_S = 0.5


def memories(client: MemoryClient, tag: str, threads: int) -> list[list[Memory]]:
    return [
        [
            client.memory("bench-plain", {"workflow": {"input": {"conv": f"{tag}{t}-{k}"}}})
            for k in range(MEMORIES_PER_THREAD)
        ]
        for t in range(threads)
    ]


def append_rows(standalone: MemoryClient, cluster: MemoryClient, quick: bool) -> dict[str, Any]:
    texts = TextSource()
    out: dict[str, Any] = {}
    for threads in (1, 4):
        plain = memories(standalone, f"s{threads}", threads)
        clustered = memories(cluster, f"c{threads}", threads)
        samples = alternate(
            [
                Contender(
                    "standalone",
                    lambda t, i, m=plain: m[t][i % MEMORIES_PER_THREAD].append(texts.message()),
                ),
                Contender(
                    "cluster",
                    lambda t, i, m=clustered: m[t][i % MEMORIES_PER_THREAD].append(texts.message()),
                ),
            ],
            rounds=3 if quick else 7,
            ops_per_thread=300 if quick else 2000,
            threads=threads,
        )
        for name, s in samples.items():
            out[f"{name} x{threads}"] = summarize_samples(s)
        out[f"p50 ratio x{threads}"] = paired_ratio(
            samples["cluster"], samples["standalone"], lambda s: s.p(50)
        )
        out[f"ops ratio x{threads}"] = paired_ratio(
            samples["cluster"], samples["standalone"], lambda s: s.ops_per_s
        )
    return out


def scan_calls(cluster: LocalCluster) -> int:
    total = 0
    for node in cluster.masters:
        stats = node.client().info("commandstats")
        total += sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("scan", "keys"))
    return total


def cleanup_rows(client: MemoryClient, cluster: LocalCluster, quick: bool) -> list[dict[str, Any]]:
    total, expired = (100_000, 1_000) if quick else (1_000_000, 10_000)
    fx = Fixture(client, total, expired)
    t0 = time.perf_counter()
    fx.load_indexes()
    console.print(f"setup: {total:,} index entries in {time.perf_counter() - t0:.1f} s")
    rows = []
    for _ in range(2 if quick else 5):
        fx.rebuild_expired()
        scans = scan_calls(cluster)
        t0 = time.perf_counter()
        result = cleanup(client, now=time.time())
        elapsed = time.perf_counter() - t0
        if result.expired_removed != expired:
            raise RuntimeError(f"cleanup removed {result.expired_removed}, expected {expired}")
        rows.append(
            {
                "indexed": total,
                "expired": expired,
                "s": elapsed,
                "scan": scan_calls(cluster) - scans,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run")
    args = parser.parse_args()
    report = Report("cluster", "Redis Cluster (3 masters) vs standalone, same machine")
    with (
        redis_server() as url,
        tempfile.TemporaryDirectory(prefix="memory-engine-cluster-") as tmp,
    ):
        cluster = LocalCluster(Path(tmp)).start()
        standalone = bench_client(url)
        clustered = bench_client(cluster.url, redis_mode="cluster")
        try:
            appends = append_rows(standalone, clustered, args.quick)
            for name, value in appends.items():
                if isinstance(value, dict):
                    report.rows.append({"contender": name, **value})
            report.extra["ratios"] = {k: v for k, v in appends.items() if "ratio" in k}
            cleanups = cleanup_rows(clustered, cluster, args.quick)
            median_s = sorted(r["s"] for r in cleanups)[len(cleanups) // 2]
            report.rows.append(
                {
                    "contender": f"cluster cleanup {cleanups[0]['expired']:,} of "
                    f"{cleanups[0]['indexed']:,}",
                    "median_s": round(median_s, 3),
                    "scan_or_keys": sum(r["scan"] for r in cleanups),
                }
            )
            report.targets += [
                Target(
                    "cluster/standalone append p50 (1 thread)",
                    appends["p50 ratio x1"],
                    P50_RATIO_TARGET,
                    unit="x",
                ),
                Target(
                    "cluster cleanup median seconds",
                    round(median_s, 3),
                    CLEANUP_TARGET_S,
                    unit=" s",
                ),
                Target("cluster cleanup SCAN/KEYS", sum(r["scan"] for r in cleanups), 0, "=="),
            ]
        finally:
            delete_prefix(standalone.redis, standalone.settings.key_prefix)
            standalone.close()
            clustered.close()
            cluster.close()
        report.finish(url)


if __name__ == "__main__":
    main()
