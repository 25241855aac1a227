"""``memory-engine demo``: the main job end to end, as a subprocess, and nothing left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from memory_engine.tooling.processes import pid_alive
from memory_engine.tooling.task_events import TaskEvents, percentile
from tests.fixtures_worker import broker_url_for, wait_for

ROOT = Path(__file__).resolve().parents[2]
DEMO_DEADLINE_S = 120.0  # the bound for --conversations 20 on this machine
EXTERNAL_BROKER_DB = 10  # the demo's own worker consumes here; no other test does


def clean_env(**memory: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEMORY_", "FLOWER_"))}
    env.update({f"MEMORY_{k.upper()}": v for k, v in memory.items()})
    return env


def demo(*args: str, env: dict[str, str], timeout: float = DEMO_DEADLINE_S) -> Any:
    result = subprocess.run(
        [sys.executable, "-m", "memory_engine.tooling.cli", "demo", "--json", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


def processes_mentioning(*needles: str) -> list[tuple[int, str]]:
    """Live processes whose command line contains any of ``needles`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if any(n in cmdline for n in needles) and pid_alive(int(entry.name)):
            found.append((int(entry.name), cmdline))
    return found


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc), whatever their session."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return out


def test_demo_with_embedded_redis_flushes_and_leaves_nothing_behind() -> None:
    started = time.monotonic()
    report = demo("--conversations", "20", env=clean_env())  # MEMORY_REDIS_URL unset
    elapsed = time.monotonic() - started
    print(f"demo --conversations 20: {elapsed:.1f}s, latency {report['task_latency_ms']}")

    assert report["ok"] is True and report["settled"] is True
    assert report["memories"] == 20
    assert report["messages_appended"] >= 20 * 60
    assert report["flushes_run"] > 0 and report["messages_trimmed"] > 0
    assert report["flush_outcomes"].get("failed", 0) == 0
    assert report["tokens_after"] < report["tokens_before"]
    assert report["redactions"] > 0
    assert report["task_latency_ms"]["samples"] == report["flushes_run"]
    assert report["task_latency_ms"]["p50"] <= report["task_latency_ms"]["p95"]
    window = report["context"]["messages"]
    assert window[0]["role"] == "system" and any(m["summary"] for m in window)
    assert not any("@" in m["content"] for m in window)  # e-mail addresses were redacted

    services = report["services"]
    assert services["embedded_redis"] is True and services["redis_port"]
    assert set(services["pids"]) == {"redis", "worker"}
    assert len(services["pids"]["worker"]) >= 3  # the main process and its two pool children
    assert report["pids"] and report["leftover_pids"] == []
    assert [pid for pid in report["pids"] if pid_alive(pid)] == []
    port = f"127.0.0.1:{services['redis_port']}"
    assert processes_mentioning(f"--port {services['redis_port']}", port) == []
    assert processes_mentioning(services["worker_node"]) == []


def test_demo_on_a_configured_redis_cleans_up_its_memories(redis_url: str, key_prefix: str) -> None:
    import redis

    env = clean_env(
        redis_url=redis_url,
        broker_url=broker_url_for(redis_url, EXTERNAL_BROKER_DB),
        key_prefix=key_prefix,
    )
    args = "--conversations 3 --messages-per-conversation 40 --resource demo-chat --turn-delay-ms 0"
    report = demo(*args.split(), env=env)
    assert report["services"]["embedded_redis"] is False
    assert set(report["services"]["pids"]) == {"worker"}
    assert report["flushes_run"] > 0 and report["trimmed"]["flushed"] > 0
    assert [pid for pid in report["pids"] if pid_alive(pid)] == []
    r = redis.Redis.from_url(redis_url)
    try:
        # Deleted after the run (without --keep): nothing is left in the indexes.
        assert r.zcard(f"{key_prefix}:idx:access") == 0
    finally:
        r.close()


def test_unknown_demo_resource_exits_2_listing_the_demo_ids() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "memory_engine.tooling.cli", "demo", "--resource", "nope", "--json"],
        env=clean_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    error = json.loads(result.stdout)["error"]
    assert {"demo-support", "demo-chat", "customer-support"} <= set(error["known"])


def test_demo_with_a_configured_redis_that_is_down_exits_3() -> None:
    from memory_engine.tooling.embedded_redis import free_port

    result = subprocess.run(
        [sys.executable, "-m", "memory_engine.tooling.cli", "demo", "--json"],
        env=clean_env(redis_url=f"redis://127.0.0.1:{free_port()}/0"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3, result.stderr
    assert json.loads(result.stdout)["error"]["type"] == "StoreUnavailable"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_demo_stops_everything_it_started(sig: signal.Signals, tmp_path: Path) -> None:
    log = (tmp_path / "demo.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "memory_engine.tooling.cli", "demo", "--conversations", "200"],
        env=clean_env(),
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        # Redis and the worker are direct children of the demo; wait until both run and the
        # simulation has begun.
        def started() -> list[int] | None:
            kids = children_of(proc.pid)
            ready = "answered a ping" in (tmp_path / "demo.log").read_text()
            return kids if ready and len(kids) >= 2 else None

        kids = wait_for(started, timeout=60, what="the demo to start its services")
        descendants = kids + [pid for kid in kids for pid in children_of(kid)]
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 130
        assert [pid for pid in descendants if pid_alive(pid)] == []
        assert "interrupted" in (tmp_path / "demo.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


# ---- pieces ----------------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 95) == 5.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 95) == 95.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0


def test_task_events_pair_a_handed_off_flush_with_its_commit() -> None:
    events = TaskEvents(app=None)
    feed = events._on_event
    sent = {"type": "task-sent", "name": "memory.flush"}
    feed({**sent, "uuid": "f1", "timestamp": 10.0})
    handed_off = "{'memory_id': 'p:k', 'status': 'handed_off'}"
    feed({"type": "task-succeeded", "uuid": "f1", "result": handed_off, "timestamp": 10.1})
    assert events.open_flushes() == 1
    # The summarize task's success arrives before its received event: still paired.
    committed = "{'memory_id': 'p:k', 'status': 'committed'}"
    feed({"type": "task-succeeded", "uuid": "s1", "result": committed, "timestamp": 10.5})
    feed({"type": "task-received", "uuid": "s1", "root_id": "f1", "timestamp": 10.2})
    feed({**sent, "uuid": "f2", "timestamp": 11.0})
    feed({"type": "task-failed", "uuid": "f2", "timestamp": 11.2})
    assert events.open_flushes() == 0
    outcomes, latencies = events.results()
    assert outcomes == {"committed": 1, "failed": 1}
    assert latencies == [pytest.approx(500.0)]
