"""The append's lean path (``memory_engine/resp.py``): connections kept between calls must behave
like the pool's own: stale ones reconnect, broken ones are never reused, a forked child never
touches its parent's, and closing the client hands them back."""

from __future__ import annotations

import gc
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from memory_engine.client import MemoryClient
from memory_engine.errors import StoreError, StoreUnavailable
from memory_engine.registry import ResourceRegistry
from memory_engine.resources import parse_resource
from memory_engine.settings import Settings
from memory_engine.store.lane import LANE_MAX_IDLE, Lane

from .helpers import client_with, ctx, resource


@pytest.fixture
def mc(settings: Settings) -> Iterator[MemoryClient]:
    with client_with(settings, resource("conv")) as c:
        yield c


def lane_of(mc: MemoryClient) -> Lane:
    lane = mc.store._lane
    assert lane is not None, "a pooled client must get the lean path"
    return lane


def warm(mc: MemoryClient, conv: str, *texts: str) -> None:
    """Append ``texts``: a memory's first append also writes its index entries (a pipeline), so
    from the second on an append takes the lean path."""
    m = mc.memory("conv", ctx(conv))
    for text in texts:
        m.append({"role": "user", "content": text})


def contents(mc: MemoryClient, conv: str) -> list[str]:
    return [m.content for m in mc.memory("conv", ctx(conv)).read()]


def engine_client_ids(r: redis.Redis) -> set[int]:
    return {int(c["id"]) for c in r.client_list() if c.get("name") == "memory-engine"}


def test_one_connection_serves_every_sequential_append(
    mc: MemoryClient, redis_client: redis.Redis
) -> None:
    m = mc.memory("conv", ctx("reuse"))
    warm(mc, "reuse", "first", "second")
    before = engine_client_ids(redis_client)
    for i in range(50):
        m.append({"role": "user", "content": f"m{i}"})
    assert engine_client_ids(redis_client) == before
    assert len(lane_of(mc)._idle) == 1


def test_a_connection_the_server_closed_is_reconnected_not_failed(
    mc: MemoryClient, redis_client: redis.Redis
) -> None:
    m = mc.memory("conv", ctx("killed"))
    warm(mc, "killed", "before 1", "before 2")
    [idle] = lane_of(mc)._idle
    host, port = idle._sock.getsockname()[:2]
    assert redis_client.client_kill(f"{host}:{port}")  # as an idle timeout would
    result = m.append({"role": "user", "content": "after"})
    assert result.stored and result.last_seq == 3
    assert contents(mc, "killed") == ["before 1", "before 2", "after"]


def test_a_timed_out_connection_is_never_reused(
    settings: Settings, redis_client: redis.Redis
) -> None:
    # The server is paused past the client's timeout: the append times out with its reply still
    # owed. Reusing that connection would hand the late reply to the next append.
    with client_with(settings, resource("conv"), socket_timeout_s=0.2) as c:
        m = c.memory("conv", ctx("timeout"))
        warm(c, "timeout", "one")
        lane = lane_of(c)
        redis_client.client_pause(600, all=False)  # WRITE pause: the append script waits
        with pytest.raises(StoreUnavailable):
            m.append({"role": "user", "content": "two (timed out; may still run)"})
        assert lane._idle == []
        redis_client.client_unpause()
        third = m.append({"role": "user", "content": "three"})
        got = contents(c, "timeout")
        # Whether or not the server ran the timed-out append (Redis drops a paused command of a
        # client that hung up), "three" got its own reply, not the late one.
        assert got[0] == "one" and got[-1] == "three" and len(got) in (2, 3)
        assert third.last_seq == len(got)


def test_an_error_reply_keeps_the_connection(mc: MemoryClient, redis_client: redis.Redis) -> None:
    m = mc.memory("conv", ctx("wrongtype"))
    warm(mc, "wrongtype", "ok 1", "ok 2")
    redis_client.delete(m.keys.msgs)
    redis_client.set(m.keys.msgs, "not a list")
    with pytest.raises(StoreError):
        m.append({"role": "user", "content": "fails inside the script"})
    assert len(lane_of(mc)._idle) == 1
    other = mc.memory("conv", ctx("fine"))
    assert other.append({"role": "user", "content": "next"}).last_seq == 1


def test_threads_share_a_bounded_set_of_connections(
    mc: MemoryClient, redis_client: redis.Redis
) -> None:
    def append(i: int) -> int:
        m = mc.memory("conv", ctx(f"t{i % 16}"))
        return m.append({"role": "user", "content": f"m{i}"}).last_seq or 0

    with ThreadPoolExecutor(16) as pool:
        assert all(list(pool.map(append, range(2_000))))
    lane = lane_of(mc)
    assert len(lane._idle) <= lane.max_idle <= LANE_MAX_IDLE
    assert sum(len(contents(mc, f"t{i}")) for i in range(16)) == 2_000
    mc.store.close()
    assert lane._idle == []
    assert not mc.redis.connection_pool._in_use_connections


@pytest.fixture
def injected(redis_url: str) -> Iterator[redis.Redis]:
    """An application's own Redis client, handed to MemoryClient (which must not close it)."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def client_on(settings: Settings, injected: redis.Redis) -> MemoryClient:
    registry = ResourceRegistry([parse_resource(resource("conv"))])
    return MemoryClient(settings, redis=injected, registry=registry)


def test_closing_the_client_gives_connections_back_to_an_injected_pool(
    settings: Settings, injected: redis.Redis
) -> None:
    with client_on(settings, injected) as c:
        warm(c, "injected", "x", "y")
        assert injected.connection_pool._in_use_connections
    assert not injected.connection_pool._in_use_connections
    assert injected.ping()


def test_a_client_dropped_without_close_gives_its_connections_back(
    settings: Settings, injected: redis.Redis
) -> None:
    c = client_on(settings, injected)
    warm(c, "dropped", "x", "y")
    assert injected.connection_pool._in_use_connections
    del c
    gc.collect()
    assert not injected.connection_pool._in_use_connections


def _append_in_child(mc: MemoryClient, queue: multiprocessing.Queue[object]) -> None:
    try:
        lane = lane_of(mc)
        queue.put(len(lane._idle))  # the parent's connection must be gone
        result = mc.memory("conv", ctx("fork")).append({"role": "user", "content": "child"})
        queue.put(result.last_seq)
    except BaseException as exc:  # reported to the parent, which asserts
        queue.put(repr(exc))


def test_a_forked_child_never_uses_the_parents_connections(
    mc: MemoryClient, redis_client: redis.Redis
) -> None:
    m = mc.memory("conv", ctx("fork"))
    warm(mc, "fork", "parent 1")
    m.append({"role": "user", "content": "parent 2"})
    assert len(lane_of(mc)._idle) == 1
    fork = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[object] = fork.Queue()
    child = fork.Process(target=_append_in_child, args=(mc, queue))
    child.start()
    assert queue.get(timeout=30) == 0
    assert queue.get(timeout=30) == 3
    child.join(timeout=30)
    assert child.exitcode == 0
    # The parent's kept connection was not disturbed by the child.
    assert m.append({"role": "user", "content": "parent 3"}).last_seq == 4
    assert contents(mc, "fork") == ["parent 1", "parent 2", "child", "parent 3"]
