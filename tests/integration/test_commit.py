"""The commit script's two paths (one run cut without reading it; the window scan), checked
against a model of the list, plus the round trips of a whole FIFO flush."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import redis

from memory_engine.client import Memory, MemoryClient
from memory_engine.core.columns import StoredMessages
from memory_engine.core.plans import Snapshot
from memory_engine.engine.flush import FlushStatus, flush_memory
from memory_engine.messages import Message
from memory_engine.settings import Settings
from memory_engine.strategies import SimpleFifoStrategy

from .helpers import client_with, ctx, resource, socket_writes


@pytest.fixture
def mc(settings: Settings) -> Iterator[MemoryClient]:
    with client_with(
        settings,
        resource("conv"),
        resource(
            "fifo",
            type="message_count_based",
            max_messages=20,
            max_tokens=None,
            flushing={"type": "simple_fifo", "summarize_threshold": 0.8},
        ),
    ) as c:
        yield c


def fill(m: Memory, roles: Sequence[str]) -> None:
    m.append_many(
        [{"role": role, "content": f"message {i} from {role}"} for i, role in enumerate(roles)]
    )


def listed(r: redis.Redis, m: Memory) -> list[Message]:
    return [Message.from_wire(x) for x in r.lrange(m.keys.msgs, 0, -1)]


def commit(
    m: Memory, snap: Snapshot, meta: dict[str, str], drop: Sequence[int], summarize: Sequence[int]
) -> Any:
    return m.client.store.commit(
        m.keys,
        snap,
        drop=sorted(drop),
        summarize=sorted(summarize),
        summary=None,
        lock_token=None,
        counter_field="flushed",
        clear_marker=False,
        created_at=meta["created_at"],
    )


def check_commit(
    r: redis.Redis,
    m: Memory,
    drop: Sequence[int],
    summarize: Sequence[int] = (),
    snapshot_of: Callable[[Snapshot], Snapshot] | None = None,
) -> None:
    """Commit ``drop``/``summarize`` on a fresh snapshot and compare with the model: exactly those
    seqs gone, order kept, counters exact (reconcile finds nothing to fix), TTL kept."""
    store = m.client.store
    before = listed(r, m)
    snap, meta = store.snapshot(m.keys)
    if snapshot_of is not None:
        snap = snapshot_of(snap)
    named = set(drop) | set(summarize)
    result = commit(m, snap, meta, drop, summarize)
    after = listed(r, m)
    assert [x.seq for x in after] == [x.seq for x in before if x.seq not in named]
    assert (result.dropped, result.summarized) == (len(drop), len(summarize))
    assert result.tokens_removed == sum(x.token_count or 0 for x in before if x.seq in named)
    assert (result.message_count, result.token_count) == (
        len(after),
        sum(x.token_count or 0 for x in after),
    )
    assert store.reconcile(m.keys) == 0, "counters drifted from the list"
    if after:
        assert r.pttl(m.keys.msgs) > 0, "the list lost its TTL"


def test_a_prefix_run_is_cut(mc: MemoryClient, redis_client: redis.Redis) -> None:
    m = mc.memory("conv", ctx("prefix"))
    fill(m, ["user", "assistant"] * 10)
    check_commit(redis_client, m, drop=range(1, 9))


def test_a_run_after_system_messages_keeps_them_in_front(
    mc: MemoryClient, redis_client: redis.Redis
) -> None:
    m = mc.memory("conv", ctx("after-system"))
    fill(m, ["system", "system"] + ["user", "assistant"] * 8)
    check_commit(redis_client, m, drop=[], summarize=range(3, 12))
    assert [x.seq for x in listed(redis_client, m)[:3]] == [1, 2, 12]


def test_a_run_to_the_end_behind_a_kept_message(
    mc: MemoryClient, redis_client: redis.Redis
) -> None:
    # Nothing survives after the run, so cutting the head would empty the list (and drop its
    # TTL) before the kept message is pushed back: the script takes its other path.
    m = mc.memory("conv", ctx("to-end"))
    fill(m, ["system", "user", "assistant", "user"])
    check_commit(redis_client, m, drop=[2, 3, 4])
    assert [x.seq for x in listed(redis_client, m)] == [1]


def test_scattered_seqs(mc: MemoryClient, redis_client: redis.Redis) -> None:
    m = mc.memory("conv", ctx("scattered"))
    fill(m, ["user", "assistant"] * 10)
    check_commit(redis_client, m, drop=[2, 3, 7, 15], summarize=[9, 10])


def test_wrong_positions_from_the_caller_still_remove_exactly_the_named_seqs(
    mc: MemoryClient, redis_client: redis.Redis
) -> None:
    # A snapshot missing its first element puts every position one off: the run's ends do not
    # match and the window misses the last seq, so the script scans the whole list.
    m = mc.memory("conv", ctx("wrong-hints"))
    fill(m, ["user", "assistant"] * 10)

    def shifted(snap: Snapshot) -> Snapshot:
        return Snapshot(
            key=snap.key,
            messages=tuple(snap.messages)[1:],
            epoch=snap.epoch,
            last_seq=snap.last_seq,
            token_count=snap.token_count,
        )

    check_commit(redis_client, m, drop=range(4, 9), snapshot_of=shifted)


def test_appends_after_the_snapshot_survive(mc: MemoryClient, redis_client: redis.Redis) -> None:
    m = mc.memory("conv", ctx("appended"))
    fill(m, ["system"] + ["user", "assistant"] * 5)
    snap, meta = m.client.store.snapshot(m.keys)
    fill(m, ["user", "assistant"])  # the snapshot does not see these
    commit(m, snap, meta, drop=range(2, 7), summarize=[])
    assert [x.seq for x in listed(redis_client, m)] == [1, *range(7, 14)]
    assert m.client.store.reconcile(m.keys) == 0


def test_used_entries_of_removed_seqs_go(mc: MemoryClient, redis_client: redis.Redis) -> None:
    m = mc.memory("conv", ctx("used"))
    fill(m, ["user", "assistant"] * 5)
    m.client.store.record_use(m.keys, list(range(1, 11)), ttl_s=3600)
    check_commit(redis_client, m, drop=range(1, 5))
    check_commit(redis_client, m, drop=[6, 9])
    assert sorted(int(x) for x in redis_client.zrange(m.keys.used, 0, -1)) == [5, 7, 8, 10]


def test_random_plans_against_the_model(mc: MemoryClient, redis_client: redis.Redis) -> None:
    rng = random.Random(20261125)
    for case in range(60):
        m = mc.memory("conv", ctx(f"random-{case}"))
        n = rng.randint(1, 40)
        roles = [rng.choice(["system", "user", "assistant", "user"]) for _ in range(n - 1)]
        fill(m, [*roles, "user"])
        # Plans never name system messages (the store keeps them, and their count, as they are).
        seqs = [i + 1 for i, role in enumerate([*roles, "user"]) if role != "system"]
        if rng.random() < 0.5:  # a run of the removable messages: the shape FIFO and hybrid produce
            start = rng.randint(0, len(seqs) - 1)
            named = seqs[start : rng.randint(start + 1, len(seqs))]
        else:
            named = rng.sample(seqs, rng.randint(1, len(seqs)))
        split = rng.randint(0, len(named))
        kind = rng.choice(["drop", "summarize", "both"])
        drop = named if kind == "drop" else [] if kind == "summarize" else named[:split]
        summarize = [s for s in named if s not in drop]
        check_commit(redis_client, m, drop=drop, summarize=summarize)


def test_a_fifo_flush_is_four_round_trips(mc: MemoryClient, redis_client: redis.Redis) -> None:
    warm = mc.memory("fifo", ctx("rt-warm"))
    fill(warm, ["user"] * 30)
    flush_memory(warm)  # scripts loaded, connections open
    m = mc.memory("fifo", ctx("rt"))
    fill(m, ["system"] + ["user", "assistant"] * 15)
    m.request_flush()
    results: list[Any] = []
    # Lock SET; snapshot MULTI; commit EVALSHA; marker DEL + pending ZREM + lock release.
    assert socket_writes(mc, lambda: results.append(flush_memory(m))) == 4
    (result,) = results
    assert result.status is FlushStatus.COMMITTED and result.removed > 0
    assert not redis_client.exists(m.keys.flush, m.keys.lock)
    assert redis_client.zscore(mc.keyspace.pending_index, m.key) is None


def _script_commands_on_list(redis_url: str, m: Memory, action: Callable[[], object]) -> list[str]:
    """The commands the commit script ran on the memory's list (MONITOR shows script calls)."""
    monitor_client = redis.Redis.from_url(redis_url)
    seen: list[str] = []
    ready, done = threading.Event(), threading.Event()

    def watch() -> None:
        with monitor_client.monitor() as mon:
            ready.set()
            for cmd in mon.listen():
                text = cmd["command"]
                if "commit-end-marker" in text:
                    break
                if cmd.get("client_type") == "lua" and m.keys.msgs in text:
                    seen.append(text.split(" ", 1)[0].strip('"').upper())
        done.set()

    threading.Thread(target=watch, daemon=True).start()
    assert ready.wait(5)
    action()
    monitor_client.get("commit-end-marker")
    assert done.wait(5)
    monitor_client.close()
    return seen


def test_a_run_is_cut_without_reading_it(mc: MemoryClient, redis_url: str) -> None:
    m = mc.memory("conv", ctx("unread"))
    fill(m, ["system"] + ["user", "assistant"] * 20)
    snap, meta = m.client.store.snapshot(m.keys)
    seen = _script_commands_on_list(
        redis_url, m, lambda: commit(m, snap, meta, drop=range(2, 32), summarize=[])
    )
    # The run's two ends, the one element before it (read and pushed back), the cut.
    assert seen == ["LINDEX", "LINDEX", "LLEN", "LRANGE", "LTRIM", "LPUSH"]
    snap, meta = m.client.store.snapshot(m.keys)
    seen = _script_commands_on_list(
        redis_url, m, lambda: commit(m, snap, meta, drop=[33, 35], summarize=[])
    )
    # Two runs: the elements up to the last named one are read and matched.
    assert seen[0] == "LRANGE" and "LINDEX" not in seen


def test_stored_messages_are_planned_from_their_headers(mc: MemoryClient) -> None:
    # The append path writes {"s":N,"t":N,"r":"..." first: planning a FIFO flush of what it
    # stored decodes nothing (a change of that layout would make every flush decode the list).
    m = mc.memory("fifo", ctx("headers"))
    fill(m, ["system"] + ["user", "assistant"] * 15)
    snap, _meta = mc.store.snapshot(m.keys)
    plan = SimpleFifoStrategy().plan(snap, m.resource)
    assert plan.drop
    assert isinstance(snap.messages, StoredMessages) and snap.messages.decoded == 0
