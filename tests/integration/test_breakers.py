"""Circuit breaker state shared by real processes through Redis, and a Redis that goes away.

Each helper process is ``python -c SCRIPT``: it builds its own breaker (its own Redis connection,
its own pybreaker objects) with the test's key prefix and breaker name, does one thing and prints
what it saw as JSON. Nothing but Redis connects it to the test process.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from typing import Any

import pybreaker
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from memory_engine.breakers import (
    BreakerState,
    breaker_states,
    build_breaker,
    subscribe_breaker_state,
    unsubscribe_breaker_state,
)
from memory_engine.errors import SummarizerError
from memory_engine.keys import KeySpace
from memory_engine.settings import Settings
from memory_engine.tooling.embedded_redis import EmbeddedRedis

from .conftest import wait_for
from .procs import ROOT

FAIL_MAX = 3
NAME = "summarizer.openai@127.0.0.1:9"
PROCESS_TIMEOUT_S = 60

# argv: redis url, key prefix, breaker name, action ("trip", "fail_once" or "probe").
SCRIPT = """
import json, sys
import redis
from memory_engine.breakers import build_breaker
from memory_engine.errors import SummarizerError
from memory_engine.settings import Settings

url, prefix, name, action = sys.argv[1:5]
settings = Settings(key_prefix=prefix, breaker_fail_max=3, breaker_reset_timeout_s=3600)
client = redis.Redis.from_url(url)
breaker = build_breaker(name, settings, failures=(SummarizerError,), redis=client)
calls = 0

def fail():
    global calls
    calls += 1
    raise SummarizerError("dependency down")

def ok():
    global calls
    calls += 1
    return "answered"

report = {"pid_state": breaker.current.value}
attempts = {"trip": 3, "fail_once": 1}.get(action, 0)
for _ in range(attempts):
    try:
        breaker.call(fail)
    except SummarizerError:
        pass
if action == "probe":
    try:
        report["outcome"] = breaker.call_or_raise(ok, error_type=SummarizerError)
    except SummarizerError as exc:
        report["outcome"] = "refused: " + str(exc)
report["calls"] = calls
report["state"] = breaker.current.value
print(json.dumps(report))
"""


def run_process(redis_url: str, prefix: str, action: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMORY_")}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, redis_url, prefix, NAME, action],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


@pytest.fixture
def prefix() -> str:
    return f"brk{uuid.uuid4().hex[:8]}"


def local_breaker(redis_url: str, prefix: str, **changes: Any) -> Any:
    settings = Settings(
        key_prefix=prefix, breaker_fail_max=FAIL_MAX, breaker_reset_timeout_s=3600.0
    ).replace(**changes)
    # Configured like the engine's client: no retries, short connect timeout.
    client = redis.Redis.from_url(
        redis_url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=0.5, socket_timeout=5
    )
    return build_breaker(NAME, settings, failures=(SummarizerError,), redis=client), client


def test_a_breaker_tripped_by_another_process_fails_fast_here(redis_url: str, prefix: str) -> None:
    breaker, client = local_breaker(redis_url, prefix)
    seen: list[tuple[str, str]] = []

    def record(name: str, state: str) -> None:
        seen.append((name, state))

    subscribe_breaker_state(record)
    try:
        assert breaker.current is BreakerState.CLOSED  # built before the other process ran
        other = run_process(redis_url, prefix, "trip")
        assert other == {"pid_state": "closed", "calls": FAIL_MAX, "state": "open"}
        called: list[int] = []
        with pytest.raises(pybreaker.CircuitBreakerError):
            breaker.call(lambda: called.append(1))
        assert called == [], "this process must not call a dependency another one found down"
        assert (NAME, "open") in seen
        assert breaker_states(client, KeySpace(prefix)) == {NAME: "open"}
    finally:
        unsubscribe_breaker_state(record)
        client.close()


def test_a_breaker_tripped_here_refuses_calls_in_another_process(
    redis_url: str, prefix: str
) -> None:
    breaker, client = local_breaker(redis_url, prefix)
    try:
        for _ in range(FAIL_MAX):
            with pytest.raises(SummarizerError):
                breaker.call(_fail)
        other = run_process(redis_url, prefix, "probe")
        assert other["pid_state"] == "open" and other["calls"] == 0
        assert other["outcome"].startswith("refused: circuit breaker " + NAME)
        breaker.close()  # closed here: the other process calls through again
        assert run_process(redis_url, prefix, "probe")["outcome"] == "answered"
    finally:
        client.close()


def test_failures_counted_in_different_processes_add_up(redis_url: str, prefix: str) -> None:
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, redis_url, prefix, NAME, "fail_once"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(FAIL_MAX)
    ]
    for process in processes:
        _out, err = process.communicate(timeout=PROCESS_TIMEOUT_S)
        assert process.returncode == 0, err
    client = redis.Redis.from_url(redis_url)
    try:
        assert breaker_states(client, KeySpace(prefix)) == {NAME: "open"}
    finally:
        client.close()


def test_redis_down_then_back(prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    """While Redis is down each process protects itself; once it is back the state is shared
    again (and what was decided locally meanwhile is written back on the next transition)."""
    caplog.set_level(logging.INFO, logger="memory_engine.breakers")
    server = EmbeddedRedis().start()
    try:
        breaker, client = local_breaker(server.url, prefix)
        server.kill()
        for _ in range(FAIL_MAX):
            with pytest.raises(SummarizerError):
                breaker.call(_fail)
        assert breaker.current is BreakerState.OPEN  # this process's own state
        server = EmbeddedRedis(port=server.port).start()
        # Locally it would stay open for an hour; after the retry interval it reads Redis again
        # (a fresh server: no state, so closed) and calls through.
        wait_for(lambda: _answers(breaker), timeout=10, what="calls through once Redis is back")
        assert "Redis unavailable" in caplog.text and "Redis is back" in caplog.text
        for _ in range(FAIL_MAX):
            with pytest.raises(SummarizerError):
                breaker.call(_fail)
        assert breaker_states(client, KeySpace(prefix)) == {NAME: "open"}
        client.close()
    finally:
        server.cleanup()


def _fail() -> None:
    raise SummarizerError("dependency down")


def _answers(breaker: Any) -> bool:
    try:
        return bool(breaker.call(lambda: True))
    except pybreaker.CircuitBreakerError:
        return False
