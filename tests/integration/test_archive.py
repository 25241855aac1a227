"""The archive (issue 16): what flushes, evictions, the ceiling, clear() and replace() remove is
moved to the memory's archive in the same script, seq by seq, with its reason; its TTL and cap;
the pre-removal hook runs once per committed flush or eviction in a real worker. Real Redis."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from memory_engine.client import Memory, MemoryClient
from memory_engine.core.plans import FlushStatus
from memory_engine.engine.maintenance import cleanup
from memory_engine.errors import StoreUnavailable
from memory_engine.messages import Message
from memory_engine.settings import Settings
from tests.builders import fifo, hybrid, resource_yaml, resources_yaml
from tests.fixtures_worker import HOOK_TASK, hook_calls_key, wait_for
from tests.integration.accounting import Ledger, assert_all_accounted

ARCHIVE = {"enabled": True, "ttl": "1h"}
RESOURCES = resources_yaml(
    resource_yaml("a-fifo", max_messages=10, flushing=fifo(), archive=ARCHIVE),
    resource_yaml("a-lru", max_messages=10, flushing={"type": "lru"}, archive=ARCHIVE),
    resource_yaml(
        "a-hybrid", type="token_based", max_tokens=600, flushing=hybrid(80), archive=ARCHIVE
    ),
    resource_yaml(
        "a-mixed",
        type="token_based",
        max_tokens=400,
        flushing=hybrid(60),
        eviction={"policy": "fifo"},
        ceiling={"factor": 2},
        archive=ARCHIVE,
    ),
    resource_yaml("a-ceiling", max_messages=10, ceiling={"factor": 1}, archive=ARCHIVE),
    resource_yaml(
        "a-capped",
        max_messages=10,
        flushing=fifo(),
        archive={"enabled": True, "ttl": "2s", "max_messages": 5},
    ),
    resource_yaml("a-short", max_messages=100, ttl="1s", archive=ARCHIVE),
    resource_yaml("a-off", max_messages=10, flushing=fifo()),
)


@pytest.fixture
def arch(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[MemoryClient]:
    (tmp_path / "archive.yaml").write_text(RESOURCES)
    # Flushes requested by appends go to a broker database no worker reads: these tests flush
    # inline, so that every removal is the test's own.
    settings = Settings(
        redis_url=redis_url,  # type: ignore[arg-type]
        broker_url=redis_url.rsplit("/", 1)[0] + "/3",  # type: ignore[arg-type]
        key_prefix=key_prefix,
        resources_dir=tmp_path,
        socket_timeout_s=5.0,
    )
    with MemoryClient(settings) as c:
        yield c


def fill(memory: Memory, n: int, tag: str, tokens_each: int = 1) -> dict[int, str]:
    acked: dict[int, str] = {}
    for i in range(n):
        content = f"{tag}-{i} " + "w " * tokens_each
        acked[memory.append({"role": "user", "content": content}).last_seq or 0] = content
    return acked


def archive_of(memory: Memory) -> list[Message]:
    out: list[Message] = []
    while True:
        page = memory.read_archive(offset=len(out), limit=7)
        out.extend(page.messages)
        if not page.has_more:
            return out


def check_archive(
    memory: Memory,
    contents: dict[int, str],
    others: frozenset[str] | set[str] = frozenset(),
    *,
    one_writer: bool = True,
) -> list[Message]:
    """Every seq ever assigned is in the list or in the archive, never both; archived elements
    hold what was appended under their seq; reasons match the removal counters."""
    listed = memory.read()
    archived = archive_of(memory)
    stats = memory.stats()
    in_list = {m.seq for m in listed}
    in_archive = [m.seq for m in archived]
    assert len(in_archive) == len(set(in_archive)), "a seq was archived twice"
    assert not in_list & set(in_archive), f"listed and archived: {in_list & set(in_archive)}"
    assert in_list | set(in_archive) == set(range(1, stats.last_seq + 1))
    for m in archived:
        assert m.seq is not None
        assert m.content == contents.get(m.seq) or m.content in others, m.seq
    reasons = Counter(m.metadata["archive"]["reason"] for m in archived)
    meta = memory.client.redis.hgetall(memory.keys.meta)
    counters = {k: int(meta.get(k.encode(), 0)) for k in _COUNTERS}
    assert {k: v for k, v in counters.items() if v} == dict(reasons)
    # The accounting invariant is unchanged: archived messages count under their reason.
    assert stats.last_seq == stats.message_count + sum(counters.values())
    assert stats.archived_count == len(archived)
    times = [m.metadata["archive"]["archived_at"] for m in archived]
    # In removal order; "at" is the writer's clock, so with several writers it may step back by
    # the time between a call's clock read and its script.
    assert not one_writer or times == sorted(times), "the archive is oldest first"
    return archived


_COUNTERS = ("flushed", "summarized", "evicted", "cleared", "replaced")


def test_fifo_flush_archives_exactly_what_it_removed(arch: MemoryClient) -> None:
    memory = arch.memory("a-fifo", {"workflow": {"input": {"conv": "f1"}}})
    acked = fill(memory, 9, "m")
    result = memory.flush()
    assert result.status is FlushStatus.COMMITTED and result.dropped == 4
    archived = check_archive(memory, acked)
    assert [m.seq for m in archived] == [1, 2, 3, 4]
    assert {m.metadata["archive"]["reason"] for m in archived} == {"flushed"}
    # The element as stored, plus its reason: "s" and "t" still lead.
    raw = arch.redis.lindex(memory.keys.archive, 0)
    assert raw.startswith(b'{"s":1,"t":') and b'"why":"flushed"' in raw


def test_lru_flush_archives_the_least_used_not_a_prefix(arch: MemoryClient) -> None:
    memory = arch.memory("a-lru", {"workflow": {"input": {"conv": "l1"}}})
    acked = fill(memory, 9, "m")
    memory.read_page(0, 3)  # seqs 1-3 become the most recently used
    result = memory.flush()
    assert result.status is FlushStatus.COMMITTED
    archived = check_archive(memory, acked)
    assert not {1, 2, 3} & {m.seq for m in archived}


def test_hybrid_flush_archives_summarized_messages(arch: MemoryClient) -> None:
    memory = arch.memory("a-hybrid", {"workflow": {"input": {"conv": "h1"}}})
    acked = fill(memory, 30, "m", tokens_each=15)
    result = memory.flush()
    assert result.status is FlushStatus.COMMITTED and result.summarized > 0
    archived = check_archive(memory, acked)
    assert Counter(m.metadata["archive"]["reason"] for m in archived)["summarized"] == (
        result.summarized
    )


def test_eviction_ceiling_clear_and_replace_archive_with_their_reasons(arch: MemoryClient) -> None:
    memory = arch.memory("a-ceiling", {"workflow": {"input": {"conv": "c1"}}})
    acked = fill(memory, 14, "m")  # ceiling 10: the append evicts 4
    assert memory.stats().evicted_count == 4
    memory.replace([{"role": "user", "content": f"r{i}"} for i in range(12)])
    result = memory.evict()  # 12 > max_messages 10
    assert result.status is FlushStatus.COMMITTED and result.evicted == 2
    assert memory.clear() == 10
    archived = check_archive(memory, acked, {f"r{i}" for i in range(12)})
    assert [m.metadata["archive"]["reason"] for m in archived] == (
        ["evicted"] * 4 + ["replaced"] * 10 + ["evicted"] * 2 + ["cleared"] * 10
    )


def test_archive_under_concurrent_appends_holds_every_removed_seq(arch: MemoryClient) -> None:
    """Appenders run while the test flushes (hybrid, FIFO, LRU), evicts, clears and replaces,
    and while the ceiling evicts: afterwards every seq is in the list or the archive, once."""
    memory = arch.memory("a-mixed", {"workflow": {"input": {"conv": "x1"}}})
    ledger = Ledger()
    contents: dict[int, str] = {}
    lock = threading.Lock()
    stop = threading.Event()
    replacements: set[str] = set()

    def appender(worker: int) -> None:
        i = 0
        while not stop.is_set():
            content = f"w{worker}-{i} " + "x " * (i % 20)
            started = ledger.now_ns()
            try:
                result = memory.append({"role": "user", "content": content})
            except StoreUnavailable:
                ledger.unknown(memory.key, content)
                continue
            seq = result.last_seq or 0
            ledger.acked(memory.key, content, seq, started, ledger.now_ns())
            with lock:
                contents[seq] = content
            i += 1

    threads = [threading.Thread(target=appender, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    try:
        for round_ in range(6):
            wait_for(lambda: memory.stats().message_count > 20, what="appends")
            memory.flush()
            memory.flush(strategy="simple_fifo")
            memory.flush(strategy="lru")
            memory.evict()
            started = ledger.now_ns()
            if round_ % 2:
                memory.clear()
                ledger.wiped(memory.key, "clear", started, ledger.now_ns())
            else:
                batch = tuple(f"rep{round_}-{i}" for i in range(5))
                memory.replace([{"role": "user", "content": c} for c in batch])
                ledger.wiped(memory.key, "replace", started, ledger.now_ns(), batch)
                replacements.update(batch)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert_all_accounted(arch, ledger)
    archived = check_archive(memory, contents, replacements, one_writer=False)
    reasons = Counter(m.metadata["archive"]["reason"] for m in archived)
    assert set(reasons) == {"flushed", "summarized", "evicted", "cleared", "replaced"}


def test_archive_ttl_and_cap(arch: MemoryClient) -> None:
    memory = arch.memory("a-capped", {"workflow": {"input": {"conv": "t1"}}})
    acked = fill(memory, 9, "m")
    memory.flush()  # archives 4
    fill(memory, 3, "n")
    memory.flush()  # archives 3 more: the cap keeps the newest 5
    archived = archive_of(memory)
    assert [m.seq for m in archived] == [3, 4, 5, 6, 7]
    assert [m.content for m in archived] == [acked[s] for s in (3, 4, 5, 6, 7)]
    assert memory.stats().archived_count == 7  # every message archived, the cap aside
    pttl = arch.redis.pttl(memory.keys.archive)
    assert 0 < pttl <= 2000
    assert arch.redis.pttl(memory.keys.meta) > 3_000_000  # the memory keeps its own 1h TTL
    wait_for(lambda: not arch.redis.exists(memory.keys.archive), timeout=5, what="archive TTL")
    assert memory.read_archive().total == 0


def test_delete_and_cleanup_remove_the_archive(arch: MemoryClient) -> None:
    gone = arch.memory("a-fifo", {"workflow": {"input": {"conv": "d1"}}})
    fill(gone, 9, "m")
    gone.flush()
    assert arch.redis.exists(gone.keys.archive)
    assert gone.delete()
    assert not arch.redis.exists(gone.keys.archive)

    short = arch.memory("a-short", {"workflow": {"input": {"conv": "d2"}}})
    fill(short, 3, "m")
    short.clear()
    assert arch.redis.pttl(short.keys.archive) > 3_000_000
    wait_for(lambda: not arch.redis.exists(short.keys.meta), timeout=5, what="memory TTL")
    report = cleanup(arch, now=time.time() + 1)
    assert short.key in report.removed_ids
    assert not arch.redis.exists(short.keys.archive)


def test_archive_off_writes_nothing(arch: MemoryClient) -> None:
    memory = arch.memory("a-off", {"workflow": {"input": {"conv": "o1"}}})
    fill(memory, 9, "m")
    memory.flush()
    memory.replace([{"role": "user", "content": "r"}])
    memory.clear()
    assert not arch.redis.exists(memory.keys.archive)
    assert memory.stats().archived_count == 0
    assert memory.read_archive().total == 0


# ---- the pre-removal hook, in the in-process worker ------------------------------------------


def _hook_calls(engine: MemoryClient, memory_id: str) -> list[dict[str, Any]]:
    raw = engine.redis.lrange(hook_calls_key(engine.settings.key_prefix, memory_id), 0, -1)
    return [json.loads(x) for x in raw]


def test_hook_runs_once_per_committed_flush_and_eviction(
    celery_worker: Any, engine: MemoryClient
) -> None:
    memory = engine.memory("arch-hook", {"workflow": {"input": {"conv": f"h{time.time_ns()}"}}})
    for batch in (9, 4, 4):
        fill(memory, batch, "m")
        result = memory.flush()
        assert result.status is FlushStatus.COMMITTED
    archived = archive_of(memory)
    committed: list[tuple[int, int, str]] = [
        (1, 4, "flushed"),
        (5, 8, "flushed"),
        (9, 12, "flushed"),
    ]
    assert [m.seq for m in archived] == list(range(1, 13))
    memory.replace([{"role": "user", "content": f"r{i}"} for i in range(12)])  # no hook
    result = memory.evict()
    assert result.status is FlushStatus.COMMITTED and result.evicted == 2
    first_replacement = memory.stats().last_seq - 11
    committed.append((first_replacement, first_replacement + 1, "evicted"))

    wait_for(lambda: len(_hook_calls(engine, memory.key)) >= len(committed), what="hook calls")
    # A barrier on the same queue (the solo worker runs in order): once it has run, any
    # duplicate of an earlier call would have run too.
    barrier = f"barrier-{time.time_ns()}"
    engine.producer.send(
        HOOK_TASK,
        {"memory_id": barrier, "first_seq": 0, "last_seq": 0, "reason": "barrier"},
        queue="memory.maintenance",
    )
    wait_for(lambda: _hook_calls(engine, barrier), what="the barrier")
    calls = [(c["first_seq"], c["last_seq"], c["reason"]) for c in _hook_calls(engine, memory.key)]
    assert calls == committed


def test_hook_failure_to_send_never_fails_the_flush(engine: MemoryClient, redis_url: str) -> None:
    broken = Settings(
        redis_url=redis_url,  # type: ignore[arg-type]
        broker_url="redis://127.0.0.1:1/0",  # type: ignore[arg-type]
        key_prefix=engine.settings.key_prefix,
        resources_dir=engine.settings.resources_dir,
        socket_timeout_s=0.5,
        socket_connect_timeout_s=0.5,
    )
    with MemoryClient(broken) as c:
        memory = c.memory("arch-hook", {"workflow": {"input": {"conv": f"b{time.time_ns()}"}}})
        fill(memory, 9, "m")
        assert memory.flush().status is FlushStatus.COMMITTED
        assert memory.stats().archived_count == 4
    r = redis.Redis.from_url(redis_url)
    try:
        assert not r.exists(hook_calls_key(engine.settings.key_prefix, memory.key))
    finally:
        r.close()
