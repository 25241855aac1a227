"""The engine on real Redis topologies (``MEMORY_REDIS_MODE``): a 3-master Redis Cluster, a
failover and a slot migration under appends, Sentinel with a master failover, and TLS with ACL
users. The servers come from ``tests/integration/topologies.py`` (same binary as the suite).

What these prove:
- the client contract (append, append_many, read, pages, context, stats, replace, clear, delete,
  inline flush and evict) and the maintenance operations (cleanup, reconcile, marker sweep) work
  in cluster mode on memories spread over every master, and their indexes are kept;
- every acknowledged message survives a ``CLUSTER FAILOVER`` and a live slot migration, and the
  same client object keeps working afterwards;
- Sentinel: only appends acknowledged inside the failover window can be lost (asynchronous
  replication, docs/scaling.md); everything acknowledged before it (and replicated) or after it
  is there;
- TLS + ACL: the contract over ``rediss://user:pass@``; a user confined to another prefix gets
  :class:`StoreError`, never data.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from memory_engine.client import Memory, MemoryClient
from memory_engine.engine.flush import FlushStatus
from memory_engine.engine.maintenance import cleanup, reconcile, sweep_markers
from memory_engine.errors import StoreError
from memory_engine.settings import Settings
from memory_engine.store.connections import EngineCluster
from tests.integration.accounting import Ledger, assert_all_accounted
from tests.integration.helpers import client_with, ctx, resource
from tests.integration.topologies import LocalCluster, LocalSentinels, TlsServer, wait_until

pytestmark = pytest.mark.timeout(180)

RESOURCES = (
    resource("conv"),
    resource(
        "fifo",
        type="message_count_based",
        max_messages=20,
        max_tokens=None,
        flushing={"type": "simple_fifo", "summarize_threshold": 0.8},
    ),
    resource(
        "hybrid",
        type="message_count_based",
        max_messages=20,
        max_tokens=None,
        flushing={"type": "hybrid_summary", "summary_tokens": 60},
    ),
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("cluster")).start()
    try:
        yield c
    finally:
        c.close()


def topology_client(settings: Settings, **overrides: Any) -> MemoryClient:
    # The broker stays the suite's standalone Redis: flushes are published, nobody consumes.
    return client_with(settings, *RESOURCES, broker_url=settings.redis_dsn(), **overrides)


@pytest.fixture
def cluster_client(settings: Settings, cluster: LocalCluster) -> Iterator[MemoryClient]:
    with topology_client(settings, redis_url=cluster.url, redis_mode="cluster") as mc:
        yield mc


def contents(m: Memory) -> list[str]:
    return [x.content for x in m.read()]


def exercise_contract(mc: MemoryClient, tag: str) -> None:
    """Every operation of the sync client on memories spread over many slots."""
    ks = mc.keyspace
    memories = [mc.memory("conv", ctx(f"{tag}{i}")) for i in range(12)]
    for i, m in enumerate(memories):
        first = m.append({"role": "system", "content": "be brief"})  # the memory's first write
        assert first.last_seq == 1
        m.append_many([{"role": "user", "content": f"q{i}-{j}"} for j in range(5)])
        assert mc.redis.zscore(ks.access_index, m.key) is not None, "not indexed"
        assert mc.redis.zscore(ks.expiry_index, m.key) is not None, "not indexed"
    m = memories[0]
    assert contents(m) == ["be brief", *(f"q0-{j}" for j in range(5))]
    page = m.read_page(1, 2)
    assert [x.content for x in page.messages] == ["q0-0", "q0-1"] and page.total == 6
    stats = m.stats()
    assert stats.message_count == 6 and stats.last_seq == 6 and stats.ttl_s > 0
    assert m.context()[0].content == "be brief"
    assert m.replace([{"role": "user", "content": "only"}]) == 1
    assert contents(m) == ["only"]
    assert m.clear() == 1 and contents(m) == []
    assert m.delete() is True and m.stats().ttl_s == -2
    for index in (ks.access_index, ks.expiry_index, ks.pending_index):
        assert mc.redis.zscore(index, m.key) is None, "index entry left after delete"
    assert m.delete() is False

    fifo = mc.memory("fifo", ctx(f"{tag}-fifo"))
    fifo.append_many([{"role": "user", "content": f"f{j}"} for j in range(17)])  # over 80%
    assert fifo.stats().flush_pending
    assert mc.redis.zscore(ks.pending_index, fifo.key) is not None
    done = fifo.flush()
    assert done.status == FlushStatus.COMMITTED and done.removed > 0
    assert not fifo.stats().flush_pending
    assert mc.redis.zscore(ks.pending_index, fifo.key) is None
    assert fifo.evict().status in (FlushStatus.COMMITTED, FlushStatus.NOOP)

    hybrid = mc.memory("hybrid", ctx(f"{tag}-hybrid"))
    hybrid.append_many([{"role": "user", "content": f"h{j} " * 5} for j in range(18)])
    summarized = hybrid.flush()
    assert summarized.status == FlushStatus.COMMITTED and summarized.summarized > 0
    assert hybrid.context()[0].content  # the summary leads the context
    assert mc.store.reconcile(hybrid.keys) == 0


def test_cluster_runs_the_client_contract_on_every_master(
    cluster_client: MemoryClient, cluster: LocalCluster
) -> None:
    mc = cluster_client
    assert isinstance(mc.redis, EngineCluster)
    assert mc.store._lane is None  # the lean append path is standalone-only
    owners = {
        cluster.owner(cluster.keyslot(mc.memory("conv", ctx(f"c{i}")).keys.meta)).port
        for i in range(12)
    }
    assert len(owners) == 3, "the memories should spread over all three masters"
    exercise_contract(mc, "c")


def test_cluster_maintenance_operations(cluster_client: MemoryClient) -> None:
    mc, ks = cluster_client, cluster_client.keyspace
    live = [mc.memory("conv", ctx(f"live{i}")) for i in range(6)]
    gone = [mc.memory("conv", ctx(f"gone{i}")) for i in range(6)]
    for m in (*live, *gone):
        m.append({"role": "user", "content": "hello"})
    for m in gone:  # what an expiry leaves: the metadata gone, leftovers still there
        mc.redis.delete(m.keys.meta)
    report = cleanup(mc, now=time.time() + 7200)
    assert sorted(report.removed_ids) == sorted(m.key for m in gone)
    assert report.reindexed == len(live)
    for m in gone:
        assert mc.redis.exists(m.keys.msgs) == 0
        assert mc.redis.zscore(ks.expiry_index, m.key) is None
    assert all(m.stats().message_count == 1 for m in live)

    mc.redis.hset(live[0].keys.meta, "message_count", 99)
    fixed = reconcile(mc, since_s=3600)
    assert fixed.checked >= len(live) and fixed.fixed_memories == 1
    assert live[0].stats().message_count == 1

    fifo = mc.memory("fifo", ctx("sweep"))
    fifo.append_many([{"role": "user", "content": f"s{j}"} for j in range(17)])
    mc.store.mark_flush_unpublished(fifo.keys)
    swept = sweep_markers(mc, stale_after_s=0.0, now=time.time() + 1)
    assert swept.republished == 1
    mc.redis.delete(fifo.keys.flush)  # the flush finished elsewhere (or its marker expired)
    swept = sweep_markers(mc, stale_after_s=0.0, now=time.time() + 1)
    assert swept.released == 1 and swept.reflushed == 1  # still at its threshold: flush again


def test_health_reads_the_cluster(cluster_client: MemoryClient) -> None:
    from memory_engine.store.breakers import RedisBreakerStorage
    from memory_engine.tooling.health import check_breakers, check_redis

    mc = cluster_client
    storage = RedisBreakerStorage(mc.redis, mc.keyspace, "summarizer.test")
    storage.state = "open"  # the breaker's hash and the name index sit in different slots
    assert check_redis(mc.settings).status == "ok"
    breakers = check_breakers(mc.redis, mc.keyspace)
    assert "summarizer.test" in str(breakers.as_dict())


def test_cluster_accounting_soak(cluster_client: MemoryClient) -> None:
    """Appending threads and inline flushes/evictions on 8 memories for ~3 s: every
    acknowledged message is accounted for and the counters match the lists."""
    mc, ledger = cluster_client, Ledger()
    memories = [mc.memory("fifo", ctx(f"soak{i}")) for i in range(8)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def appender(worker: int) -> None:
        n = 0
        try:
            while not stop.is_set():
                m = memories[(worker + n) % len(memories)]
                content = f"w{worker}-{n}"
                n += 1
                started = ledger.now_ns()
                try:
                    result = m.append({"role": "user", "content": content})
                except StoreError:
                    ledger.unknown(m.key, content)
                    continue
                ledger.acked(m.key, content, int(result.last_seq or 0), started, ledger.now_ns())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def flusher() -> None:
        n = 0
        try:
            while not stop.is_set():
                m = memories[n % len(memories)]
                m.evict() if n % 5 == 4 else m.flush()
                n += 1
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=appender, args=(w,)) for w in range(3)]
    threads.append(threading.Thread(target=flusher))
    for t in threads:
        t.start()
    wait_until(lambda: ledger.acked_count >= 1500 or bool(errors), "1,500 appends", 60)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors
    accounts = assert_all_accounted(mc, ledger)
    assert sum(a.flushed_or_evicted + a.covered_by_summary for a in accounts) > 0
    for m in memories:
        assert mc.store.reconcile(m.keys) == 0


class Appenders:
    """Threads appending unique contents to ``memories`` until stopped; what was acknowledged
    (with the time it returned) and how many calls were made."""

    def __init__(self, memories: list[Memory], threads: int = 3) -> None:
        self.memories = memories
        self.acked: list[tuple[Memory, str, float]] = []
        self.failed = 0
        self.attempts = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(w,)) for w in range(threads)]

    def _run(self, worker: int) -> None:
        n = 0
        while not self._stop.is_set():
            m = self.memories[(worker + n) % len(self.memories)]
            content = f"a{worker}-{n}"
            n += 1
            try:
                m.append({"role": "user", "content": content})
            except StoreError:
                with self._lock:
                    self.failed += 1
                    self.attempts += 1
                continue
            with self._lock:
                self.acked.append((m, content, time.monotonic()))
                self.attempts += 1

    def wait_for(self, more_acked: int, timeout_s: float = 30) -> None:
        target = len(self.acked) + more_acked
        wait_until(lambda: len(self.acked) >= target, f"{more_acked} more appends", timeout_s)

    def __enter__(self) -> Appenders:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def missing(self, acked_after: float = 0.0, acked_before: float = float("inf")) -> list[str]:
        stored: dict[str, set[str]] = {}
        lost = []
        for m, content, at in self.acked:
            if not acked_after <= at <= acked_before:
                continue
            if m.key not in stored:
                stored[m.key] = set(contents(m))
            if content not in stored[m.key]:
                lost.append(content)
        return lost


def test_cluster_failover_during_appends_loses_nothing(settings: Settings, tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, masters=3, replicas=1).start()
    try:
        with topology_client(settings, redis_url=c.url, redis_mode="cluster") as mc:
            memories = [mc.memory("conv", ctx(f"fo{i}")) for i in range(6)]
            victim = c.owner(c.keyslot(memories[0].keys.meta))
            with Appenders(memories) as run:
                run.wait_for(200)
                c.failover(c.replica_of(victim))
                switched = time.monotonic()
                run.wait_for(300)
            assert c.owner(c.keyslot(memories[0].keys.meta)) is not victim
            assert run.missing() == [], "acknowledged appends lost in the failover"
            after = [a for a in run.acked if a[0] is memories[0] and a[2] > switched]
            assert after, "the client did not recover on the failed-over master"
            for m in memories:
                assert mc.store.reconcile(m.keys) == 0
    finally:
        c.close()


def test_cluster_slot_migration_during_appends_loses_nothing(
    cluster_client: MemoryClient, cluster: LocalCluster
) -> None:
    mc = cluster_client
    moving = mc.memory("conv", ctx("migrating"))
    others = [mc.memory("conv", ctx(f"stay{i}")) for i in range(3)]
    slot = cluster.keyslot(moving.keys.meta)
    source = cluster.owner(slot)
    target = next(n for n in cluster.masters if n is not source)
    with Appenders([moving, *others]) as run:
        run.wait_for(100)

        def let_clients_write() -> None:  # appends keep arriving while the slot is half-moved
            before = run.attempts
            wait_until(lambda: run.attempts >= before + 5, "appends during the migration")

        moved = cluster.migrate_slot(slot, target, pause=let_clients_write)
        run.wait_for(100)
    assert moved >= 2  # at least the list and the metadata
    assert cluster.owner(slot) is target
    assert run.missing() == []
    assert mc.store.reconcile(moving.keys) == 0
    assert moving.append({"role": "user", "content": "after"}).last_seq == moving.stats().last_seq


def test_sentinel_failover_loses_only_the_replication_window(
    settings: Settings, tmp_path: Path
) -> None:
    group = LocalSentinels(tmp_path).start()
    try:
        with topology_client(
            settings,
            redis_mode="sentinel",
            redis_url="redis://sentinel-master/0",  # address unused: the sentinels name it
            redis_sentinels=group.addresses,
            redis_sentinel_master="enginemaster",
        ) as mc:
            memories = [mc.memory("conv", ctx(f"sn{i}")) for i in range(4)]
            exercise_contract(mc, "sn")
            with Appenders(memories) as run:
                run.wait_for(200)
                group.master.client().execute_command("WAIT", 1, 5000)
                window_start = time.monotonic()
                old, new = group.failover()
                window_end = time.monotonic()
                run.wait_for(200)
            assert old is group.master and new is group.replica
            assert run.missing(acked_before=window_start) == []
            assert run.missing(acked_after=window_end) == []
            lost = set(run.missing())
            in_window = [a for a in run.acked if window_start < a[2] < window_end]
            lost_at = [at - window_start for _m, content, at in in_window if content in lost]
            print(
                f"sentinel failover: {len(lost)} of {len(in_window)} appends acknowledged in the "
                f"{window_end - window_start:.2f} s window lost, the last "
                f"{max(lost_at, default=0):.2f} s after the failover began"
            )
            # min-replicas-max-lag 1: the demoted master refuses writes within about 2 s (the
            # lag bound plus one REPLCONF ACK period); the client then asks the sentinels.
            assert max(lost_at, default=0) < 5.0
            assert [a for a in run.acked if a[2] > window_end], "the client did not recover"
            for m in memories:
                assert mc.store.reconcile(m.keys) == 0
    finally:
        group.close()


def test_tls_with_an_acl_user_confined_to_the_prefix(settings: Settings, tmp_path: Path) -> None:
    server = TlsServer(tmp_path).start()
    try:
        prefix, other_prefix = settings.key_prefix, f"{settings.key_prefix}x"
        server.add_user("engine", "engine-pw", prefix)
        server.add_user("other", "other-pw", other_prefix)
        with topology_client(settings, redis_url=server.url("engine", "engine-pw")) as mc:
            exercise_contract(mc, "tls")
            secret = mc.memory("conv", ctx("secret"))
            secret.append({"role": "user", "content": "for engine only"})
        with topology_client(settings, redis_url=server.url("other", "other-pw")) as intruder:
            theirs = intruder.memory("conv", ctx("secret"))
            for attempt in (
                theirs.read,
                theirs.stats,
                theirs.context,
                theirs.delete,
                lambda: theirs.append({"role": "user", "content": "x"}),
            ):
                with pytest.raises(StoreError, match=r"NOPERM|no permissions"):
                    attempt()
        with topology_client(
            settings, redis_url=server.url("other", "other-pw"), key_prefix=other_prefix
        ) as own:  # the same user within its own prefix works
            assert (
                own.memory("conv", ctx("mine")).append({"role": "user", "content": "y"}).last_seq
                == 1
            )
    finally:
        server.close()


def test_topology_settings_are_checked_when_built() -> None:
    from memory_engine.errors import ConfigError
    from memory_engine.settings import load_settings

    with pytest.raises(ConfigError, match="MEMORY_REDIS_SENTINELS"):
        load_settings(redis_mode="sentinel")
    with pytest.raises(ConfigError, match="not host:port"):
        load_settings(redis_mode="sentinel", redis_sentinels="a:1,b", redis_sentinel_master="m")
    with pytest.raises(ConfigError, match="cluster"):
        load_settings(redis_mode="cluster", redis_url="unix:///tmp/r.sock")
    ok = load_settings(
        redis_mode="sentinel", redis_sentinels="10.0.0.5:26379, s2:26380", redis_sentinel_master="m"
    )
    assert ok.sentinel_addresses() == [("10.0.0.5", 26379), ("s2", 26380)]
