"""Run every benchmark in sequence, each in its own process (and its own Redis), then print the
targets of all of them in one table and write ``bench/results/summary.json``.

Run: ``.venv/bin/python bench/run_all.py`` (about 4 minutes here; ``--quick`` for a smoke run of
about half a minute; ``--only append,cleanup`` to pick; ``--no-worker`` skips the Celery worker
subprocess of the flush benchmark; ``--profile`` also runs ``bench/profile_append.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS_DIR, console, machine_info, print_table

BENCH_DIR = Path(__file__).resolve().parent
SCRIPTS = (
    "append",
    "append_many",
    "async_append",
    "agents_session",
    "context",
    "flush",
    "trigger_storm",
    "cleanup",
    "memory_usage",
    "summarize_pool",
    "cluster",
    "http_api",
    "encryption",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run of every script")
    parser.add_argument("--only", default="", help="comma-separated script names")
    parser.add_argument("--no-worker", action="store_true", help="flush: skip the worker")
    parser.add_argument("--profile", action="store_true", help="also run profile_append.py")
    args = parser.parse_args()
    chosen = [s for s in SCRIPTS if not args.only or s in args.only.split(",")]
    if args.profile:
        chosen.append("profile_append")

    statuses: dict[str, dict[str, object]] = {}
    for name in chosen:
        cmd = [sys.executable, f"bench/{name}.py"]
        if args.quick:
            cmd.append("--quick")
        if args.no_worker and name == "flush":
            cmd.append("--no-worker")
        console.rule(f"[bold]{name}[/bold]")
        started = time.perf_counter()
        code = subprocess.call(cmd, cwd=BENCH_DIR.parent)
        statuses[name] = {"exit_code": code, "seconds": round(time.perf_counter() - started, 1)}

    tag = os.environ.get("BENCH_TAG", "").strip()
    suffix = f"-{tag}" if tag else ""
    rows = []
    for name in chosen:
        path = RESULTS_DIR / f"{name}{suffix}.json"
        if statuses[name]["exit_code"] != 0 or not path.exists():
            rows.append({"script": name, "target": "(script failed)", "met": "NO"})
            continue
        for t in json.loads(path.read_text()).get("targets", []):
            rows.append(
                {
                    "script": name,
                    "target": t["name"],
                    "measured": f"{t['measured']:g}{t['unit']}",
                    "required": f"{t['op']} {t['limit']:g}{t['unit']}",
                    "met": "yes" if t["met"] else "NO",
                }
            )
    console.rule("[bold]all targets[/bold]")
    print_table("targets", rows)
    print_table("scripts", [{"script": k, **v} for k, v in statuses.items()])
    summary = {"machine": machine_info(), "scripts": statuses, "targets": rows}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"summary{suffix}.json").write_text(json.dumps(summary, indent=2) + "\n")
    sys.exit(1 if any(v["exit_code"] for v in statuses.values()) else 0)


if __name__ == "__main__":
    main()
