"""The asyncio client (``memory_engine.aio``) against real Redis: the whole contract, 1,000
concurrent appends on one loop, interop with the sync client (both ways, and both writing at
once), cancellation mid-call, Redis paused or killed, and the one flush task a threshold crossing
enqueues (read from the broker Redis).

Each test drives its own event loop with ``asyncio.run``. Faults use a private ``redis-server``
(never the session one): SIGSTOP freezes it with commands in flight, SIGKILL kills it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from memory_engine import (
    AppendResult,
    AsyncMemory,
    AsyncMemoryClient,
    FlushResult,
    MemoryClient,
    MemoryFull,
    MemoryStats,
    Message,
    MessageValidationError,
    Page,
    StoreUnavailable,
)
from memory_engine.registry import ResourceRegistry
from memory_engine.resources import parse_resource
from memory_engine.settings import Settings
from memory_engine.task_contract import QUEUE_FLUSH, TASK_FLUSH
from memory_engine.tooling.embedded_redis import EmbeddedRedis

from .accounting import Ledger, assert_all_accounted
from .helpers import ctx, resource

T = TypeVar("T")

CONCURRENT_APPENDS = 1_000
FAULT_TIMEOUT_S = 0.5
FAULT_DEADLINE_S = 10 * FAULT_TIMEOUT_S  # no hang: the error comes long before this
WAIT_S = 10.0


def aclient_with(
    settings: Settings, *resources: dict[str, Any], **overrides: Any
) -> AsyncMemoryClient:
    registry = ResourceRegistry([parse_resource(r) for r in resources])
    if overrides:
        settings = settings.replace(**overrides)
    return AsyncMemoryClient(settings, registry=registry)


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def until(condition: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> None:
    """Poll ``condition`` on the loop (other tasks run meanwhile) until it holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def acked_append(ledger: Ledger, memory: AsyncMemory, content: str) -> AppendResult:
    started = ledger.now_ns()
    try:
        result = await memory.append({"role": "user", "content": content})
    except BaseException:
        ledger.unknown(memory.key, content)
        raise
    assert result.first_seq is not None
    ledger.acked(memory.key, content, result.first_seq, started, ledger.now_ns())
    return result


# --- the contract ------------------------------------------------------------------------------


def test_every_call_of_the_contract_returns_the_sync_clients_types(settings: Settings) -> None:
    small = resource("small", type="message_count_based", max_tokens=None, max_messages=100)

    async def scenario() -> None:
        async with aclient_with(settings, resource("conv"), small) as client:
            mem = client.memory("conv", ctx("contract"))
            assert isinstance(mem, AsyncMemory) and mem.key == "p1:conv:contract"
            r = await mem.append({"role": "user", "content": "hello"})
            assert isinstance(r, AppendResult) and (r.stored, r.first_seq, r.message_count) == (
                True,
                1,
                1,
            )
            r = await mem.append_many(
                [
                    {"role": "assistant", "content": "", "tool_calls": [_call("c1")]},
                    {"role": "tool", "content": "42", "tool_call_id": "c1"},
                    Message(role="assistant", content="it is 42"),
                ]
            )
            assert (r.first_seq, r.last_seq, r.appended) == (2, 4, 3)
            read = await mem.read()
            assert [m.seq for m in read] == [1, 2, 3, 4]
            page = await mem.read_page(1, 2)
            assert isinstance(page, Page) and page.total == 4 and page.has_more
            assert [m.seq for m in page.messages] == [2, 3]
            stats = await mem.stats()
            assert isinstance(stats, MemoryStats) and stats.message_count == 4
            window = await mem.context()
            assert [m.seq for m in window] == [1, 2, 3, 4]
            assert [m.seq for m in await mem.context(max_tokens=0)] == []
            assert await mem.request_flush() is True
            assert await mem.request_flush() is False  # already pending
            # Same typed errors, raised before any I/O.
            with pytest.raises(MessageValidationError):
                await mem.append({"role": "user", "content": "  "})
            with pytest.raises(MessageValidationError):
                await mem.read_page(-1, 5)
            assert await mem.replace([{"role": "user", "content": "only this"}]) == 1
            assert [m.content for m in await mem.read()] == ["only this"]
            assert await mem.clear() == 1
            assert await mem.read() == []
            assert await mem.delete() is True
            assert (await mem.stats()).ttl_s == -2
            assert await mem.request_flush() is False  # no such memory: nothing written

            flushed = client.memory("small", ctx("flushed"))
            await flushed.append_many([{"role": "user", "content": f"m{i}"} for i in range(90)])
            dry = await flushed.flush(dry_run=True)
            assert isinstance(dry, FlushResult) and dry.removed > 0
            assert (await flushed.stats()).message_count == 90
            done = await flushed.flush()
            assert done.removed == dry.removed
            assert (await flushed.stats()).message_count == 90 - done.removed

    run(scenario())


def _call(call_id: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": "f", "arguments": "{}"}}


def test_refused_append_at_the_ceiling_raises_memory_full(settings: Settings) -> None:
    capped = resource(
        "capped",
        type="message_count_based",
        max_tokens=None,
        max_messages=10,
        ceiling={"max_messages": 12, "on_exceed": "refuse"},
    )

    async def scenario() -> None:
        async with aclient_with(settings, capped) as client:
            mem = client.memory("capped", ctx("full"))
            await mem.append_many([{"role": "user", "content": f"m{i}"} for i in range(12)])
            with pytest.raises(MemoryFull):
                await mem.append({"role": "user", "content": "one too many"})
            assert (await mem.stats()).message_count == 12

    run(scenario())


# --- concurrency and interop --------------------------------------------------------------------


def test_a_thousand_concurrent_appends_on_one_loop_are_each_stored_once(
    settings: Settings,
) -> None:
    ledger = Ledger()

    async def scenario() -> MemoryClient:
        client = aclient_with(settings, resource("conv"))
        async with client:
            mem = client.memory("conv", ctx("thousand"))
            results = await asyncio.gather(
                *(acked_append(ledger, mem, f"c{i}") for i in range(CONCURRENT_APPENDS))
            )
            assert sorted(r.first_seq for r in results) == list(range(1, CONCURRENT_APPENDS + 1))
            stats = await mem.stats()
            assert stats.message_count == stats.last_seq == CONCURRENT_APPENDS
            assert len(await mem.read()) == CONCURRENT_APPENDS
        return client.sync

    sync = run(scenario())
    with MemoryClient(settings, registry=sync.registry) as checker:
        accounts = assert_all_accounted(checker, ledger)
    assert accounts[0].in_list == CONCURRENT_APPENDS


def test_what_one_client_writes_the_other_reads_identically(settings: Settings) -> None:
    lru = resource("lru", flushing={"type": "lru"})
    turn = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "weather?", "metadata": {"lang": "en"}},
        {"role": "assistant", "content": "", "tool_calls": [_call("w1")]},
        {"role": "tool", "content": "sunny", "tool_call_id": "w1", "name": "f"},
        {"role": "assistant", "content": "Sunny."},
    ]

    async def scenario() -> None:
        sync = MemoryClient(settings, registry=ResourceRegistry([parse_resource(lru)]))
        async with AsyncMemoryClient(settings, registry=sync.registry) as client:
            for writer in ("sync", "async"):
                smem = sync.memory("lru", ctx(f"interop-{writer}"))
                amem = client.memory("lru", ctx(f"interop-{writer}"))
                assert amem.key == smem.key and amem.keys == smem.keys
                if writer == "sync":
                    sync_result = smem.append_many(turn)
                    assert (await amem.read())[-1].seq == sync_result.last_seq
                else:
                    await amem.append_many(turn)
                assert await amem.read() == smem.read()
                assert await amem.read_page(1, 3) == smem.read_page(1, 3)
                assert await amem.context(max_tokens=60) == smem.context(max_tokens=60)
                a_stats, s_stats = await amem.stats(), smem.stats()
                assert a_stats.model_dump(exclude={"ttl_s"}) == s_stats.model_dump(
                    exclude={"ttl_s"}
                )
                # Appends continue the same sequence whichever client writes next.
                a = await amem.append({"role": "user", "content": "from async"})
                s = smem.append({"role": "user", "content": "from sync"})
                assert s.first_seq == a.first_seq + 1 == len(turn) + 2
        sync.close()

    run(scenario())


def test_sync_threads_and_async_tasks_writing_one_memory_at_once_lose_nothing(
    settings: Settings,
) -> None:
    ledger = Ledger()
    registry = ResourceRegistry([parse_resource(resource("conv"))])
    sync = MemoryClient(settings, registry=registry)
    smem = sync.memory("conv", ctx("mixed"))
    stop = threading.Event()
    sync_acks = [0, 0]

    def sync_writer(t: int) -> None:
        n = 0
        while not stop.is_set():
            content = f"sync{t}-{n}"
            started = ledger.now_ns()
            r = smem.append({"role": "user", "content": content})
            assert r.first_seq is not None
            ledger.acked(smem.key, content, r.first_seq, started, ledger.now_ns())
            sync_acks[t] += 1
            n += 1

    async def scenario() -> None:
        async with AsyncMemoryClient(settings, registry=registry) as client:
            amem = client.memory("conv", ctx("mixed"))
            threads = [threading.Thread(target=sync_writer, args=(t,)) for t in range(2)]
            for th in threads:
                th.start()
            try:
                await until(lambda: min(sync_acks) > 5, "the sync writers to start")
                await asyncio.gather(
                    *(acked_append(ledger, amem, f"async-{i}") for i in range(400))
                )
            finally:
                stop.set()
                for th in threads:
                    th.join(WAIT_S)

    try:
        run(scenario())
        accounts = assert_all_accounted(sync, ledger)
        assert accounts[0].in_list == ledger.acked_count == 400 + sum(sync_acks)
    finally:
        sync.close()


# --- the flush task a threshold crossing enqueues ----------------------------------------------


@pytest.fixture
def broker() -> Iterator[EmbeddedRedis]:
    """A private broker Redis: no worker consumes its queues, so the test reads them."""
    with EmbeddedRedis() as server:
        yield server


def test_a_threshold_crossed_by_concurrent_appends_enqueues_exactly_one_flush(
    settings: Settings, broker: EmbeddedRedis
) -> None:
    small = resource("small", type="message_count_based", max_tokens=None, max_messages=50)

    async def scenario() -> list[AppendResult]:
        async with aclient_with(settings, small, broker_url=broker.url) as client:
            mem = client.memory("small", ctx("threshold"))
            keys.append(mem.key)
            results = await asyncio.gather(
                *(mem.append({"role": "user", "content": f"m{i}"}) for i in range(60))
            )
            assert (await mem.stats()).flush_pending
            return list(results)

    keys: list[str] = []
    results = run(scenario())
    assert sum(r.flush_requested for r in results) == 1
    queue = redis.Redis.from_url(broker.url)
    try:
        raw = queue.lrange(QUEUE_FLUSH, 0, -1)
    finally:
        queue.close()
    assert len(raw) == 1
    headers = json.loads(raw[0])["headers"]
    assert headers["task"] == TASK_FLUSH
    assert headers["kwargsrepr"] == repr(
        {"memory_id": keys[0], "resource_id": "small", "reason": "threshold"}
    )


# --- cancellation and faults ------------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(data_dir=tmp_path)
    server.start()
    yield server
    if server.proc is not None:
        os.kill(server.proc.pid, signal.SIGCONT)  # never leave it stopped
    server.cleanup()


def fault_settings(server: EmbeddedRedis, **overrides: Any) -> Settings:
    fields: dict[str, Any] = {
        "redis_url": server.url,
        "broker_url": "redis://127.0.0.1:1/0",  # thresholds are far away in these tests
        "key_prefix": f"f{uuid.uuid4().hex[:8]}",
        "socket_timeout_s": FAULT_TIMEOUT_S,
        "socket_connect_timeout_s": FAULT_TIMEOUT_S,
    }
    return Settings(**(fields | overrides))


def freeze(server: EmbeddedRedis) -> None:
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)


def thaw(server: EmbeddedRedis) -> None:
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGCONT)


def awaiting(task: asyncio.Task[Any]) -> list[str]:
    """Names of the coroutines ``task`` is suspended in, outermost first."""
    names: list[str] = []
    coro: Any = task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None)
        if frame is not None:
            names.append(frame.f_code.co_name)
        coro = getattr(coro, "cr_await", None)
    return names


@pytest.mark.parametrize("path", ["first append (script + index pipeline)", "lone EVALSHA"])
def test_an_append_cancelled_mid_call_happened_once_or_not_at_all(
    private_redis: EmbeddedRedis, path: str
) -> None:
    """Redis frozen with the append's command sent, the task cancelled while it waits for the
    reply: afterwards the memory holds it once or not at all, and the one pooled connection
    (``redis_max_connections=1``) never hands its stale reply to a later call."""
    ledger = Ledger()
    settings = fault_settings(private_redis, redis_max_connections=1, socket_timeout_s=30.0)

    async def scenario() -> MemoryClient:
        client = aclient_with(settings, resource("conv"))
        async with client:
            mem = client.memory("conv", ctx("cancelled"))
            if path == "lone EVALSHA":
                for i in range(3):
                    await acked_append(ledger, mem, f"before {i}")
            freeze(private_redis)
            try:
                task = asyncio.create_task(mem.append({"role": "user", "content": "cancelled"}))
                await until(lambda: "read_response" in awaiting(task), "the reply to be awaited")
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            finally:
                thaw(private_redis)
            ledger.unknown(mem.key, "cancelled")
            before = 0 if path.startswith("first") else 3
            stats = await mem.stats()
            assert stats.message_count in (before, before + 1)
            # Every later reply belongs to its own call: seqs follow the stored count exactly.
            for i in range(20):
                r = await acked_append(ledger, mem, f"after {i}")
                assert r.first_seq == stats.last_seq + 1 + i
                page = await mem.read_page(0, 1)
                assert page.total == stats.message_count + 1 + i
        return client.sync

    sync = run(scenario())
    with MemoryClient(settings, registry=sync.registry) as checker:
        accounts = assert_all_accounted(checker, ledger)
    assert accounts[0].unknown_present <= 1


def test_paused_redis_gives_store_unavailable_within_the_timeout_and_the_client_recovers(
    private_redis: EmbeddedRedis,
) -> None:
    ledger = Ledger()
    settings = fault_settings(private_redis)

    async def scenario() -> MemoryClient:
        client = aclient_with(settings, resource("conv"))
        async with client:
            mem = client.memory("conv", ctx("paused"))
            for i in range(3):
                await acked_append(ledger, mem, f"before {i}")
            freeze(private_redis)
            failures: list[StoreUnavailable] = []
            calls: list[Callable[[], Awaitable[Any]]] = [
                lambda: acked_append(ledger, mem, "during the pause"),
                mem.read,
                mem.stats,
                mem.context,
            ]
            try:
                for call in calls:
                    with pytest.raises(StoreUnavailable) as caught:
                        await asyncio.wait_for(call(), FAULT_DEADLINE_S)
                    failures.append(caught.value)
            finally:
                thaw(private_redis)
            assert all(isinstance(f.__cause__, redis.TimeoutError) for f in failures), failures
            # The same client, no reconnect call: the pool drops the timed-out connections.
            await acked_append(ledger, mem, "after the pause")
            assert (await mem.read())[-1].content == "after the pause"
        return client.sync

    sync = run(scenario())
    with MemoryClient(settings, registry=sync.registry) as checker:
        accounts = assert_all_accounted(checker, ledger)
    assert accounts[0].in_list == 4 and accounts[0].unknown_present <= 1


def test_killed_redis_gives_store_unavailable_and_the_client_recovers_after_a_restart(
    private_redis: EmbeddedRedis,
) -> None:
    settings = fault_settings(private_redis)

    async def scenario() -> None:
        async with aclient_with(settings, resource("conv")) as client:
            mem = client.memory("conv", ctx("killed"))
            await asyncio.gather(
                *(mem.append({"role": "user", "content": f"m{i}"}) for i in range(64))
            )
            private_redis.kill()
            outcomes = await asyncio.gather(
                *(
                    asyncio.wait_for(
                        mem.append({"role": "user", "content": f"x{i}"}), FAULT_DEADLINE_S
                    )
                    for i in range(64)
                ),
                return_exceptions=True,
            )
            assert all(isinstance(o, StoreUnavailable) for o in outcomes), {
                type(o).__name__ for o in outcomes
            }
            private_redis.start()  # same port, empty (no persistence): a fresh server
            r = await mem.append({"role": "user", "content": "after the restart"})
            assert r.first_seq == 1 and [m.content for m in await mem.read()] == [
                "after the restart"
            ]

    run(scenario())
