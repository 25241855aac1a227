"""Redis faults with real processes: killed mid-storm, restarted from its AOF, paused.

Each test runs its own ``redis-server`` (``EmbeddedRedis``), never the session one, so a kill or a
pause cannot disturb the session worker. Clients use short socket timeouts (``FAULT_TIMEOUT_S``) so
the store-unavailable error comes quickly; what is asserted is the error's type and cause and what
Redis holds afterwards (``tests/integration/accounting.py``), never how long anything took.
"""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from memory_engine.client import Memory, MemoryClient
from memory_engine.errors import CorruptMessage, StoreUnavailable
from memory_engine.settings import Settings
from memory_engine.tooling.embedded_redis import EmbeddedRedis, find_redis_server
from tests.fixtures_worker import wait_for

from .accounting import Ledger, assert_all_accounted
from .helpers import client_with, ctx, resource

FAULT_TIMEOUT_S = 0.5
STORM_THREADS = 8
STORM_MEMORIES = 5
ACKS_BEFORE_KILL = 25  # per thread: the kill lands mid-storm, not before it started
THREAD_JOIN_TIMEOUT_S = 30.0
PAUSE_S = 3  # long enough for two calls to time out at FAULT_TIMEOUT_S each
PROBE_TIMEOUT_S = 0.1


def fault_settings(server: EmbeddedRedis) -> Settings:
    return Settings(
        redis_url=server.url,  # type: ignore[arg-type]
        # Thresholds are far away in these tests; a publish would go to the dead broker below.
        broker_url="redis://127.0.0.1:1/0",  # type: ignore[arg-type]
        key_prefix=f"f{uuid.uuid4().hex[:8]}",
        socket_timeout_s=FAULT_TIMEOUT_S,
        socket_connect_timeout_s=FAULT_TIMEOUT_S,
    )


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A private Redis that fsyncs its AOF before acknowledging any write."""
    server = EmbeddedRedis(data_dir=tmp_path, appendonly=True, appendfsync="always")
    server.start()
    yield server
    server.cleanup()


def restart(server: EmbeddedRedis) -> None:
    """Start the same server again: same port, same data directory, replays the AOF."""
    server.start()


def timed_append(ledger: Ledger, memory: Memory, content: str, role: str = "user") -> None:
    """Append and record the outcome: acknowledged (with its seq) or unknown (it raised)."""
    started = ledger.now_ns()
    try:
        result = memory.append({"role": role, "content": content})
    except BaseException:
        ledger.unknown(memory.key, content)
        raise
    assert result.first_seq is not None
    ledger.acked(memory.key, content, result.first_seq, started, ledger.now_ns())


# --- Redis killed during an append storm -------------------------------------------------------


def test_redis_killed_mid_storm_fails_fast_and_leaves_no_half_written_append(
    aof_redis: EmbeddedRedis,
) -> None:
    """SIGKILL under 8 appending threads: every thread gets StoreUnavailable (not a hang, not a
    redis-py error); after a restart from the AOF every acknowledged append is there, metadata
    matches every list exactly, and the same client works again."""
    ledger = Ledger()
    with client_with(fault_settings(aof_redis), resource("conv")) as client:
        memories = [client.memory("conv", ctx(f"storm{i}")) for i in range(STORM_MEMORIES)]
        acks = [0] * STORM_THREADS
        errors: list[BaseException | None] = [None] * STORM_THREADS

        def storm(t: int) -> None:
            n = 0
            while True:
                memory = memories[(t + n) % STORM_MEMORIES]
                try:
                    timed_append(ledger, memory, f"t{t}-m{n} " + "w" * (n % 13))
                except BaseException as exc:  # recorded, asserted below
                    errors[t] = exc
                    return
                acks[t] += 1
                n += 1

        threads = [
            threading.Thread(target=storm, args=(t,), daemon=True) for t in range(STORM_THREADS)
        ]
        for th in threads:
            th.start()
        wait_for(lambda: min(acks) >= ACKS_BEFORE_KILL, what="every thread to be appending")
        aof_redis.kill()
        for th in threads:
            th.join(THREAD_JOIN_TIMEOUT_S)
        assert not any(th.is_alive() for th in threads), "an appender hung after the kill"
        kinds = [type(e).__name__ for e in errors]
        assert all(isinstance(e, StoreUnavailable) for e in errors), kinds
        # The translated error keeps redis-py's cause, for logs and debugging.
        assert all(isinstance(e.__cause__, redis.RedisError | OSError) for e in errors)

        restart(aof_redis)
        accounts = assert_all_accounted(client, ledger)
        assert sum(a.in_list for a in accounts) == ledger.acked_count  # nothing flushed here
        assert all(a.meta["seq"] == a.meta["message_count"] for a in accounts)
        # The same client (same pool) recovers by itself after the restart.
        last_seq = {a.memory_id: a.meta["seq"] for a in accounts}
        after = memories[0].append({"role": "user", "content": "after the restart"})
        assert after.first_seq == last_seq[memories[0].key] + 1


# --- AOF appendfsync always: acknowledged means durable ----------------------------------------


def test_aof_always_keeps_every_acknowledged_write_across_sigkill(
    aof_redis: EmbeddedRedis,
) -> None:
    """Appends (single and batched), an inline flush, a clear and a replace, then SIGKILL and a
    restart: every acknowledged write is there and every counter still adds up."""
    ledger = Ledger()
    small = resource("small", max_tokens=None, type="message_count_based", max_messages=20)
    settings = fault_settings(aof_redis).replace(broker_url=aof_redis.url.replace("/0", "/1"))
    with client_with(settings, resource("conv"), small) as client:
        plain = [client.memory("conv", ctx(f"aof{i}")) for i in range(3)]
        for i in range(60):
            timed_append(ledger, plain[i % 3], f"plain {i}", role="user" if i % 2 else "assistant")
        batch = client.memory("conv", ctx("aof-batch"))
        started = ledger.now_ns()
        result = batch.append_many([{"role": "user", "content": f"batch {i}"} for i in range(25)])
        assert result.first_seq == 1 and result.last_seq == 25
        for i in range(25):
            ledger.acked(batch.key, f"batch {i}", i + 1, started, ledger.now_ns())

        flushed = client.memory("small", ctx("aof-flushed"))
        for i in range(30):
            timed_append(ledger, flushed, f"flush me {i}")
        assert flushed.flush().removed > 0

        cleared = client.memory("conv", ctx("aof-cleared"))
        replaced = client.memory("conv", ctx("aof-replaced"))
        for i in range(10):
            timed_append(ledger, cleared, f"clear me {i}")
            timed_append(ledger, replaced, f"replace me {i}")
        started = ledger.now_ns()
        assert cleared.clear() == 10
        ledger.wiped(cleared.key, "clear", started, ledger.now_ns())
        timed_append(ledger, cleared, "after the clear")
        started = ledger.now_ns()
        assert replaced.replace([{"role": "user", "content": "the replacement"}]) == 1
        ledger.wiped(replaced.key, "replace", started, ledger.now_ns(), ("the replacement",))

        before = {m.key: [x.content for x in m.read()] for m in [*plain, batch, flushed]}
        aof_redis.kill()
        restart(aof_redis)

        accounts = {a.memory_id: a for a in assert_all_accounted(client, ledger)}
        for key, contents in before.items():
            assert [x.content for x in client.memory_by_id(key, "conv").read()] == contents
        assert accounts[flushed.key].meta["flushed"] > 0
        assert accounts[cleared.key].meta["cleared"] == 10
        assert accounts[replaced.key].meta["replaced"] == 10
        assert [x.content for x in replaced.read()] == ["the replacement"]
        assert [x.content for x in cleared.read()] == ["after the clear"]


# --- Redis paused ----------------------------------------------------------------------------


def _redis_major_version() -> int:
    out = subprocess.run(
        [find_redis_server(), "--version"], capture_output=True, text=True, check=True
    ).stdout
    return int(out.split("v=", 1)[1].split(".", 1)[0])


class _Pause:
    """Stops Redis from answering for ``PAUSE_S``, from another connection: ``CLIENT PAUSE ...
    ALL`` or ``DEBUG SLEEP`` (the server's main thread sleeps). Neither can be cut short (Redis 7.0
    holds back even ``CLIENT UNPAUSE`` during an ALL pause), so :meth:`end` waits it out."""

    def __init__(self, server: EmbeddedRedis, how: str) -> None:
        self.how = how
        self.admin = redis.Redis.from_url(server.url, socket_timeout=PAUSE_S + 10)
        self.probe = redis.Redis.from_url(server.url, socket_timeout=PROBE_TIMEOUT_S)
        self.sleeper: threading.Thread | None = None

    def begin(self) -> None:
        if self.how == "client-pause":
            self.admin.execute_command("CLIENT", "PAUSE", PAUSE_S * 1000, "ALL")
        else:
            self.sleeper = threading.Thread(
                target=self.admin.execute_command, args=("DEBUG", "SLEEP", PAUSE_S), daemon=True
            )
            self.sleeper.start()
        wait_for(lambda: not self._answers(), what="Redis to stop answering")

    def _answers(self) -> bool:
        try:
            return bool(self.probe.ping())
        except redis.TimeoutError:
            return False

    def end(self) -> None:
        wait_for(self._answers, timeout=PAUSE_S + 20, what="the pause to end")
        if self.sleeper is not None:
            self.sleeper.join(PAUSE_S + 10)

    def close(self) -> None:
        self.admin.close()
        self.probe.close()


@pytest.fixture(params=["client-pause", "debug-sleep"])
def paused_redis(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[EmbeddedRedis, _Pause]]:
    how: str = request.param
    # Redis 7 refuses DEBUG unless enable-debug-command allows it; older servers have no option.
    extra = (
        ("--enable-debug-command", "local")
        if how == "debug-sleep" and _redis_major_version() >= 7
        else ()
    )
    server = EmbeddedRedis(data_dir=tmp_path, extra_args=extra)
    server.start()
    pause = _Pause(server, how)
    yield server, pause
    pause.close()
    server.cleanup()


def test_paused_redis_times_out_as_configured_and_the_same_client_recovers(
    paused_redis: tuple[EmbeddedRedis, _Pause],
) -> None:
    server, pause = paused_redis
    ledger = Ledger()
    with client_with(fault_settings(server), resource("conv")) as client:
        memory = client.memory("conv", ctx("paused"))
        for i in range(5):
            timed_append(ledger, memory, f"before {i}")

        pause.begin()
        failures: list[StoreUnavailable] = []
        calls: list[Callable[[], Any]] = [
            lambda: timed_append(ledger, memory, "during the pause 1"),
            memory.read,
            lambda: timed_append(ledger, memory, "during the pause 2"),
        ]
        try:
            for call in calls:
                with pytest.raises(StoreUnavailable) as caught:
                    call()
                failures.append(caught.value)
        finally:
            pause.end()
        # A timeout (the configured socket_timeout_s), not a refused connection.
        assert all(isinstance(f.__cause__, redis.TimeoutError) for f in failures), failures

        # No new client, no reconnect call: the pool drops the timed-out connections itself.
        timed_append(ledger, memory, "after the pause")
        assert [m.content for m in memory.read()][-1] == "after the pause"
        accounts = assert_all_accounted(client, ledger)
        # A timed-out append has an unknown outcome: applied once or not at all, never twice
        # (redis-py retries are off) and never half-written (the checker proves both).
        assert accounts[0].unknown_present <= 2
        assert accounts[0].in_list == 6


def test_client_shared_by_threads_recovers_after_pause(aof_redis: EmbeddedRedis) -> None:
    """Threads sharing one MemoryClient through a pause: each call either succeeds or raises
    StoreUnavailable, and after the pause every thread appends again through the same pool."""
    ledger = Ledger()
    pause = _Pause(aof_redis, "client-pause")
    stop = threading.Event()
    outcomes: list[list[str]] = [[] for _ in range(4)]
    with client_with(fault_settings(aof_redis), resource("conv")) as client:
        memories = [client.memory("conv", ctx(f"shared{i}")) for i in range(4)]

        def appender(t: int) -> None:
            n = 0
            while not stop.is_set():
                try:
                    timed_append(ledger, memories[t], f"t{t} {n}")
                    outcomes[t].append("ok")
                except StoreUnavailable:
                    outcomes[t].append("unavailable")
                except BaseException as exc:  # any other type is the failure under test
                    outcomes[t].append(f"{type(exc).__name__}: {exc}")
                    return
                n += 1

        threads = [threading.Thread(target=appender, args=(t,), daemon=True) for t in range(4)]
        for th in threads:
            th.start()
        try:
            wait_for(lambda: all(o.count("ok") >= 5 for o in outcomes), what="appends to start")
            pause.begin()
            wait_for(
                lambda: all("unavailable" in o for o in outcomes), what="every thread to time out"
            )
            pause.end()
            marks = [len(o) for o in outcomes]
            wait_for(
                lambda: all(o[m:].count("ok") >= 5 for o, m in zip(outcomes, marks, strict=True)),
                what="every thread to append again",
            )
        finally:
            pause.end()
            stop.set()
            for th in threads:
                th.join(THREAD_JOIN_TIMEOUT_S)
            pause.close()
        assert {x for o in outcomes for x in o} == {"ok", "unavailable"}
        assert_all_accounted(client, ledger)


# --- a stored element that cannot be decoded ---------------------------------------------------


def test_corrupt_stored_element_is_a_typed_error_naming_memory_and_seq(
    client: MemoryClient, redis_client: redis.Redis
) -> None:
    """Data written before the nesting cap (or by hand) raised RecursionError on every read."""
    memory = client.memory(
        "chat-window", {"project": {"id": "p1"}, "workflow": {"input": {"session_id": "s1"}}}
    )
    memory.append({"role": "user", "content": "fine"})
    deep = '{"s":2,"t":5,"r":"user","c":"x","m":' + "[" * 990 + "]" * 990 + "}"
    redis_client.rpush(memory.keys.msgs, deep)
    for read in (memory.read, memory.context, lambda: memory.read_page(0, 5)):
        with pytest.raises(CorruptMessage) as caught:
            read()
        assert caught.value.memory_id == memory.key
        assert caught.value.seq == 2


# --- Redis on a Unix socket ----------------------------------------------------------------------


@pytest.fixture
def socket_redis(tmp_path: Path) -> Iterator[tuple[EmbeddedRedis, str]]:
    """A private redis-server listening on a Unix socket (and TCP, which the tests never use)."""
    path = tmp_path / "redis.sock"
    server = EmbeddedRedis(
        data_dir=tmp_path, extra_args=("--unixsocket", str(path), "--unixsocketperm", "700")
    )
    server.start()
    wait_for(path.exists, what="the Unix socket")
    yield server, f"unix://{path}?db=0"
    server.cleanup()


def test_unix_socket_url_serves_data_broker_and_results(
    socket_redis: tuple[EmbeddedRedis, str],
) -> None:
    """Every operation failed with TypeError (socket_keepalive) on a unix:// URL."""
    from config.celery import build_celery_config
    from memory_engine.task_contract import QUEUE_FLUSH

    server, url = socket_redis
    settings = Settings(redis_url=url, key_prefix="sock", socket_timeout_s=FAULT_TIMEOUT_S)  # type: ignore[arg-type]
    with client_with(settings, resource("conv")) as mc:
        memory = mc.memory("conv", ctx("over-the-socket"))
        memory.append({"role": "user", "content": "hello over a socket"})
        assert [m.content for m in memory.read()] == ["hello over a socket"]
        assert memory.stats().message_count == 1
        assert len(memory.context()) == 1
        # The broker defaults to the same URL: the flush task goes through kombu's socket form.
        assert memory.request_flush()
    tcp = redis.Redis(port=server.port)
    try:
        assert tcp.llen(QUEUE_FLUSH) == 1  # the same server, reached over TCP to check
    finally:
        tcp.close()
    # Celery's Redis result backend, configured as the workers configure it.
    from celery import Celery

    app = Celery("socket-check", set_as_current=False)
    app.conf.update(build_celery_config(settings))
    try:
        assert app.backend.client.ping()
    finally:
        app.close()
