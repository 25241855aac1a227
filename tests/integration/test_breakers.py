"""Circuit breaker state shared by real processes through Redis, and a Redis that goes away.

Each helper process is ``python -c SCRIPT``: it builds its own breaker (its own Redis connection,
its own pybreaker objects) with the test's key prefix and breaker name, does one thing and prints
what it saw as JSON. Nothing but Redis connects it to the test process.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pybreaker
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from memory_engine import metrics
from memory_engine.breakers import (
    BreakerState,
    breaker_name,
    breaker_states,
    build_breaker,
    subscribe_breaker_state,
    unsubscribe_breaker_state,
)
from memory_engine.client import MemoryClient
from memory_engine.engine.maintenance import sweep_markers
from memory_engine.errors import SummarizerError
from memory_engine.keys import KeySpace
from memory_engine.settings import Settings
from memory_engine.store import FLUSH_MARKER_UNPUBLISHED
from memory_engine.task_contract import QUEUE_FLUSH
from memory_engine.tooling.embedded_redis import EmbeddedRedis
from tests.fixtures_worker import wait_for

from .helpers import ctx
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


# ---- the broker breaker: a hung broker, then the same broker answering ------------------------


class BrokerGate:
    """A TCP front on loopback for a real redis-server. While ``hung`` it accepts connections and
    reads what clients send (counting it) but never answers, like a broker stuck in a long
    command or behind a dead NAT; :meth:`recover` closes those connections and forwards every
    new one to the server."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.hung = True
        self.received_bytes = 0
        self.accepted = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self._sockets.append(conn)
                hung = self.hung
            if hung:
                threading.Thread(target=self._swallow, args=(conn,), daemon=True).start()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._sockets.append(upstream)
            for src, dst in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _swallow(self, conn: socket.socket) -> None:
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self.received_bytes += len(data)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def seen(self) -> tuple[int, int]:
        """(connections accepted, bytes received while hung)."""
        with self._lock:
            return self.accepted, self.received_bytes

    def recover(self) -> None:
        with self._lock:
            self.hung = False
            stale, self._sockets = self._sockets, []
        for conn in stale:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def close(self) -> None:
        self.server.close()
        self.recover()


@pytest.fixture
def broker_gate() -> Iterator[tuple[BrokerGate, redis.Redis]]:
    with EmbeddedRedis() as server:
        gate = BrokerGate(server.port)
        broker = redis.Redis.from_url(server.url)
        yield gate, broker
        broker.close()
        gate.close()


def test_a_hung_broker_costs_one_publish_timeout_then_appends_skip_it_and_the_sweep_heals(
    redis_url: str,
    prefix: str,
    worker_resources_dir: Path,
    broker_gate: tuple[BrokerGate, redis.Redis],
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate, broker = broker_gate
    settings = Settings(
        redis_url=redis_url,  # type: ignore[arg-type]
        broker_url=gate.url,  # type: ignore[arg-type]
        key_prefix=prefix,
        resources_dir=worker_resources_dir,
        socket_timeout_s=0.5,
        socket_connect_timeout_s=0.5,
        breaker_reset_timeout_s=2.0,
    )
    caplog.set_level(logging.WARNING)
    with MemoryClient(settings) as client:
        producer = client.producer
        memories = [client.memory("fifo-small", ctx(uuid.uuid4().hex[:10])) for _ in range(4)]
        for memory in memories:  # 7 of 10: the next append crosses the 0.8 threshold
            memory.append_many([{"role": "user", "content": f"m{i}"} for i in range(7)])

        first, *others = memories
        started = time.monotonic()
        result = first.append({"role": "user", "content": "crossing"})
        elapsed_s = time.monotonic() - started
        assert result.stored and not result.flush_requested
        assert elapsed_s < producer.publish_timeout_s + 1.0
        assert gate.seen()[1] > 0, "the publish reached the hung broker"
        name = breaker_name("broker", "redis", gate.url)
        assert breaker_states(client.redis, KeySpace(prefix)).get(name) == "open"
        assert (
            metrics.registry().get_sample_value("memory_engine_breaker_state", {"breaker": name})
            == 2
        )

        tried = gate.seen()
        for memory in others:  # crossings while open: nothing is sent, nothing waits
            started = time.monotonic()
            crossing = memory.append({"role": "user", "content": "crossing"})
            assert not crossing.flush_requested
            assert time.monotonic() - started < settings.socket_timeout_s
        for memory in memories:  # and appends past the threshold: the marker is still set
            assert not memory.append({"role": "user", "content": "more"}).flush_requested
        assert gate.seen() == tried, "a publish was attempted while the breaker was open"
        for memory in memories:
            assert memory.stats().flush_pending
            assert client.redis.get(memory.keys.flush) == FLUSH_MARKER_UNPUBLISHED.encode()

        problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert [r.name for r in problems] == ["memory_engine.breakers"], problems
        assert "is open" in problems[0].getMessage()
        assert not any(r.exc_info for r in caplog.records)

        gate.recover()
        published = 0

        def sweep_publishes_all() -> bool:
            nonlocal published
            published += sweep_markers(client, stale_after_s=60.0).republished
            return published == len(memories)

        wait_for(sweep_publishes_all, what="the sweep to publish every unpublished flush")
        assert broker.llen(QUEUE_FLUSH) == len(memories)
        queued = {
            json.loads(base64.b64decode(json.loads(m)["body"]))[1]["memory_id"]
            for m in broker.lrange(QUEUE_FLUSH, 0, -1)
        }
        assert queued == {m.key for m in memories}
        assert breaker_states(client.redis, KeySpace(prefix)).get(name) == "closed"
        assert sweep_markers(client, stale_after_s=60.0).republished == 0  # published once
        for memory in memories:
            assert client.redis.get(memory.keys.flush) != FLUSH_MARKER_UNPUBLISHED.encode()
