"""``pop()`` (``lua/pop.lua``) through the sync and async clients: the newest message comes back
and leaves the list, counted like a clear of one message so the accounting invariant holds."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis

from memory_engine.aio import AsyncMemoryClient
from memory_engine.client import Memory, MemoryClient
from memory_engine.errors import FlushConflict
from memory_engine.registry import ResourceRegistry
from memory_engine.resources import parse_resource
from memory_engine.settings import Settings

from .helpers import client_with, ctx, resource

COUNTERS = ("message_count", "flushed", "summarized", "evicted", "cleared", "replaced")


def meta_of(r: redis.Redis, mc: MemoryClient, memory: Memory) -> dict[str, int]:
    raw = r.hgetall(mc.keyspace.memory(memory.key).meta)
    return {k.decode(): int(float(v)) for k, v in raw.items() if k.decode() != "resource_id"}


def assert_invariant(meta: dict[str, int]) -> None:
    assert meta["seq"] == sum(meta.get(field, 0) for field in COUNTERS)


def test_sync_pop_returns_the_newest_and_keeps_the_accounting(
    settings: Settings, redis_client: redis.Redis
) -> None:
    with client_with(settings, resource()) as mc:
        memory = mc.memory("conv", ctx(uuid.uuid4().hex))
        assert memory.pop() is None  # no memory: nothing written
        assert not redis_client.exists(mc.keyspace.memory(memory.key).meta)
        memory.append_many(
            [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "second answer"},
            ]
        )
        before = meta_of(redis_client, mc, memory)
        popped = memory.pop()
        assert popped is not None
        assert (popped.role.value, popped.content, popped.seq) == ("assistant", "second answer", 3)
        after = meta_of(redis_client, mc, memory)
        assert after["message_count"] == 2
        assert after["token_count"] == before["token_count"] - (popped.token_count or 0)
        assert after["cleared"] == 1 and after["epoch"] == before["epoch"] + 1
        assert_invariant(after)
        assert [m.content for m in memory.read()] == ["be brief", "first"]
        # A popped system message leaves the system count too (context() finds them by it).
        assert memory.pop() is not None
        system = memory.pop()
        assert system is not None and system.is_system
        final = meta_of(redis_client, mc, memory)
        assert final["system_count"] == 0 and final["token_count"] == 0
        assert_invariant(final)
        assert memory.pop() is None
        # seqs keep counting after pops
        assert memory.append({"role": "user", "content": "again"}).first_seq == 4


def test_async_pop_and_read_tail(settings: Settings, redis_client: redis.Redis) -> None:
    registry = ResourceRegistry([parse_resource(resource())])

    async def scenario() -> None:
        async with AsyncMemoryClient(settings, registry=registry) as client:
            memory = client.memory("conv", ctx(uuid.uuid4().hex))
            assert await memory.pop() is None
            await memory.append_many([{"role": "user", "content": f"m{i}"} for i in range(5)])
            assert [m.content for m in await memory.read_tail(2)] == ["m3", "m4"]
            assert [m.content for m in await memory.read_tail(50)] == [f"m{i}" for i in range(5)]
            popped = await memory.pop()
            assert popped is not None and popped.content == "m4"
            assert (await memory.stats()).message_count == 4
            # the sync client sees the same memory
            assert [m.content for m in memory.sync.read_tail(1)] == ["m3"]
            assert memory.sync.pop() is not None
            meta = meta_of(redis_client, client.sync, memory.sync)
            assert meta["cleared"] == 2
            assert_invariant(meta)

    asyncio.run(scenario())


def test_a_flush_planned_before_a_pop_does_not_commit(settings: Settings) -> None:
    """The pop moves the epoch: a commit planned on a snapshot that still held the popped
    message is fenced (FlushConflict) instead of summarizing or dropping around it."""
    with client_with(settings, resource()) as mc:
        memory = mc.memory("conv", ctx(uuid.uuid4().hex))
        memory.append_many([{"role": "user", "content": f"m{i}"} for i in range(4)])
        keys = mc.keyspace.memory(memory.key)
        snapshot, meta = mc.store.snapshot(keys)
        assert memory.pop() is not None
        with pytest.raises(FlushConflict):
            mc.store.commit(
                keys,
                snapshot,
                drop=[1, 2],
                summarize=[],
                summary=None,
                lock_token=None,
                counter_field="flushed",
                clear_marker=False,
                created_at=meta["created_at"],
            )
        assert [m.content for m in memory.read()] == ["m0", "m1", "m2"]
