"""The asyncio client (``memory_engine.aio``) on the real topologies of ``MEMORY_REDIS_MODE``: a
3-master Redis Cluster, a Sentinel group and a TLS server with ACL users, started by
``tests/integration/topologies.py`` (the suite's ``redis-server``).

What these prove:
- the async contract in cluster mode on memories spread over every master, with the index
  entries written (after the script, as their own pipeline) and removed by ``delete()``;
- 1,000 concurrent appends on one loop through a pool of 8 connections per node: every one
  acknowledged and accounted for exactly (the cluster client waits for a free connection, as
  the standalone async pool does, where redis-py's raises ``MaxConnectionsError``);
- sync and async clients writing the same cluster memories at once;
- ``CLUSTER FAILOVER`` during async appends: nothing acknowledged lost, the same client object
  appends again on the failed-over master;
- Sentinel failover during async appends (``min-replicas-to-write 1``): only appends
  acknowledged inside the failover window may be lost, and the client follows the new master;
- TLS + ACL over ``rediss://user:pass@``: the contract works; a user confined to another prefix
  gets :class:`StoreError` (``NOPERM``), never data.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from memory_engine import AsyncMemory, AsyncMemoryClient, StoreError, StoreUnavailable
from memory_engine.engine.flush import FlushStatus
from memory_engine.registry import ResourceRegistry
from memory_engine.resources import parse_resource
from memory_engine.settings import Settings
from memory_engine.store.connections import AsyncEngineCluster
from tests.integration.accounting import Ledger, assert_all_accounted
from tests.integration.helpers import ctx
from tests.integration.test_topologies import RESOURCES
from tests.integration.topologies import LocalCluster, LocalSentinels, TlsServer

pytestmark = pytest.mark.timeout(180)

T = TypeVar("T")
WAIT_S = 30.0
CONCURRENT_APPENDS = 1_000
SENTINEL_RECOVERY_S = 5.0


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def aclient(settings: Settings, **overrides: Any) -> AsyncMemoryClient:
    # The broker stays the suite's standalone Redis: flushes are published, nobody consumes.
    registry = ResourceRegistry([parse_resource(r) for r in RESOURCES])
    return AsyncMemoryClient(
        settings.replace(broker_url=settings.redis_dsn(), **overrides), registry=registry
    )


async def until(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    """Poll ``condition`` on the loop (the appending tasks run meanwhile) until it holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("acluster")).start()
    try:
        yield c
    finally:
        c.close()


async def contents(m: AsyncMemory) -> list[str]:
    return [x.content for x in await m.read()]


async def exercise_async_contract(client: AsyncMemoryClient, tag: str) -> None:
    """Every operation of the async client on memories spread over many slots."""
    ks, sync_redis = client.keyspace, client.sync.redis
    memories = [client.memory("conv", ctx(f"{tag}{i}")) for i in range(12)]
    for i, m in enumerate(memories):
        first = await m.append({"role": "system", "content": "be brief"})  # its first write
        assert first.last_seq == 1
        await m.append_many([{"role": "user", "content": f"q{i}-{j}"} for j in range(5)])
        assert sync_redis.zscore(ks.access_index, m.key) is not None, "not indexed"
        assert sync_redis.zscore(ks.expiry_index, m.key) is not None, "not indexed"
    m = memories[0]
    assert await contents(m) == ["be brief", *(f"q0-{j}" for j in range(5))]
    page = await m.read_page(1, 2)
    assert [x.content for x in page.messages] == ["q0-0", "q0-1"] and page.total == 6
    stats = await m.stats()
    assert stats.message_count == 6 and stats.last_seq == 6 and stats.ttl_s > 0
    assert (await m.context())[0].content == "be brief"
    assert await m.replace([{"role": "user", "content": "only"}]) == 1
    assert await contents(m) == ["only"]
    assert await m.clear() == 1 and await contents(m) == []
    assert await m.delete() is True and (await m.stats()).ttl_s == -2
    for index in (ks.access_index, ks.expiry_index, ks.pending_index):
        assert sync_redis.zscore(index, m.key) is None, "index entry left after delete"
    assert await m.delete() is False

    fifo = client.memory("fifo", ctx(f"{tag}-fifo"))
    await fifo.append_many([{"role": "user", "content": f"f{j}"} for j in range(17)])  # > 80%
    assert (await fifo.stats()).flush_pending
    assert sync_redis.zscore(ks.pending_index, fifo.key) is not None
    done = await fifo.flush()
    assert done.status == FlushStatus.COMMITTED and done.removed > 0
    assert not (await fifo.stats()).flush_pending
    assert sync_redis.zscore(ks.pending_index, fifo.key) is None
    assert await fifo.request_flush() is True  # marker set, pending entry written after it
    assert sync_redis.zscore(ks.pending_index, fifo.key) is not None
    assert await fifo.request_flush() is False
    assert await client.memory("conv", ctx(f"{tag}-none")).request_flush() is False


# ---- Redis Cluster ------------------------------------------------------------------------------


def test_async_contract_on_every_master(settings: Settings, cluster: LocalCluster) -> None:
    async def scenario() -> None:
        async with aclient(settings, redis_url=cluster.url, redis_mode="cluster") as client:
            assert isinstance(client.redis, AsyncEngineCluster) and client.store.cluster
            owners = {
                cluster.owner(cluster.keyslot(client.memory("conv", ctx(f"c{i}")).keys.meta)).port
                for i in range(12)
            }
            assert len(owners) == 3, "the memories should spread over all three masters"
            await exercise_async_contract(client, "ac")

    run(scenario())


def test_a_thousand_concurrent_appends_are_accounted_for(
    settings: Settings, cluster: LocalCluster
) -> None:
    ledger = Ledger()

    async def append(m: AsyncMemory, content: str) -> None:
        started = ledger.now_ns()
        result = await m.append({"role": "user", "content": content})
        assert result.first_seq is not None
        ledger.acked(m.key, content, result.first_seq, started, ledger.now_ns())

    async def scenario() -> None:
        async with aclient(
            settings, redis_url=cluster.url, redis_mode="cluster", redis_max_connections=8
        ) as client:
            memories = [client.memory("conv", ctx(f"k{i}")) for i in range(20)]
            await asyncio.gather(
                *(append(memories[n % 20], f"m{n}") for n in range(CONCURRENT_APPENDS))
            )
            assert ledger.acked_count == CONCURRENT_APPENDS
            accounts = assert_all_accounted(client.sync, ledger)
            assert sum(a.in_list for a in accounts) == CONCURRENT_APPENDS
            for m in memories:
                assert (await m.stats()).message_count == CONCURRENT_APPENDS // 20
                assert client.sync.store.reconcile(m.keys) == 0

    run(scenario())


def test_sync_and_async_clients_share_cluster_memories(
    settings: Settings, cluster: LocalCluster
) -> None:
    ledger = Ledger()

    async def scenario() -> None:
        async with aclient(settings, redis_url=cluster.url, redis_mode="cluster") as client:
            sync = client.sync  # a sync MemoryClient on the same cluster (its own connections)
            handles = [(client.memory("conv", ctx(f"x{i}")), i) for i in range(6)]
            a = handles[0][0]
            await a.append({"role": "user", "content": "from async"})
            s = sync.memory("conv", ctx("x0"))
            s.append({"role": "assistant", "content": "from sync"})
            assert [x.content for x in s.read()] == await contents(a)
            assert (await a.stats()).message_count == s.stats().message_count == 2

            def sync_writer(n: int) -> None:
                for j in range(40):
                    m = sync.memory("conv", ctx(f"x{(n + j) % 6}"))
                    content, started = f"s{n}-{j}", ledger.now_ns()
                    seq = m.append({"role": "user", "content": content}).first_seq
                    ledger.acked(m.key, content, int(seq or 0), started, ledger.now_ns())

            async def async_writer(n: int) -> None:
                for j in range(40):
                    m = handles[(n + j) % 6][0]
                    content, started = f"a{n}-{j}", ledger.now_ns()
                    seq = (await m.append({"role": "user", "content": content})).first_seq
                    ledger.acked(m.key, content, int(seq or 0), started, ledger.now_ns())

            await asyncio.gather(
                *(asyncio.to_thread(sync_writer, n) for n in range(2)),
                *(async_writer(n) for n in range(4)),
            )
            ledger.acked(a.key, "from async", 1, 0, 1)
            ledger.acked(a.key, "from sync", 2, 0, 1)
            assert_all_accounted(sync, ledger)
            for m, i in handles:
                assert await contents(m) == [
                    x.content for x in sync.memory("conv", ctx(f"x{i}")).read()
                ]

    run(scenario())


BUSY_SCRIPT = """
local start = redis.call('TIME')
local deadline = start[1] * 1000000 + start[2] + tonumber(ARGV[1]) * 1000
repeat
  local now = redis.call('TIME')
until now[1] * 1000000 + now[2] >= deadline
return 1
"""


def test_a_timed_out_cluster_append_is_not_sent_again(
    settings: Settings, cluster: LocalCluster
) -> None:
    """The node is busy (a Lua loop) past the client's socket timeout while an append waits in
    its socket, then runs it: the reply is lost, the write happened. redis-py's cluster client
    would send it again after the timeout (a second copy, run too); the engine's raises
    :class:`StoreUnavailable` and the message is stored once."""
    busy_ms = 1000

    async def scenario() -> None:
        async with aclient(
            settings, redis_url=cluster.url, redis_mode="cluster", socket_timeout_s=0.2
        ) as client:
            m = client.memory("conv", ctx("timed-out"))
            await m.append({"role": "user", "content": "before"})
            node = cluster.owner(cluster.keyslot(m.keys.meta))
            busy = asyncio.create_task(
                asyncio.to_thread(node.client().eval, BUSY_SCRIPT, 0, busy_ms)
            )
            probe = node.client(timeout_s=0.05, retry=Retry(NoBackoff(), 0))

            def node_is_busy() -> bool:
                try:
                    probe.ping()
                except redis.TimeoutError:
                    return True
                return False

            await until(node_is_busy, "the node to run the busy script")
            raised: StoreUnavailable | None = None
            try:
                await m.append({"role": "user", "content": "held"})
            except StoreUnavailable as exc:
                raised = exc
            await busy
            probe.close()
            assert await contents(m) == ["before", "held"], "the timed-out append was re-sent"
            assert raised is not None, "a write whose reply was lost must be reported"
            assert (await m.stats()).message_count == 2

    run(scenario())


class AsyncAppenders:
    """Tasks appending unique contents to ``memories`` until stopped: what was acknowledged
    (with the monotonic time it returned) and how many calls failed with a store error."""

    def __init__(self, memories: list[AsyncMemory], tasks: int = 6) -> None:
        self.memories = memories
        self.acked: list[tuple[AsyncMemory, str, float]] = []
        self.failed = 0
        self.attempts = 0
        self._stop = False
        self._count = tasks
        self._tasks: list[asyncio.Task[None]] = []

    async def _run(self, worker: int) -> None:
        n = 0
        while not self._stop:
            m = self.memories[(worker + n) % len(self.memories)]
            content = f"a{worker}-{n}"
            n += 1
            self.attempts += 1
            try:
                await m.append({"role": "user", "content": content})
            except StoreError:
                self.failed += 1
                await asyncio.sleep(0.01)  # the topology is moving: do not spin
                continue
            self.acked.append((m, content, time.monotonic()))

    async def wait_for(self, more_acked: int, timeout_s: float = WAIT_S) -> None:
        target = len(self.acked) + more_acked
        await until(lambda: len(self.acked) >= target, f"{more_acked} more appends", timeout_s)

    async def __aenter__(self) -> AsyncAppenders:
        self._tasks = [asyncio.create_task(self._run(w)) for w in range(self._count)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop = True
        await asyncio.gather(*self._tasks)

    async def missing(
        self, acked_after: float = 0.0, acked_before: float = float("inf")
    ) -> list[str]:
        stored: dict[str, set[str]] = {}
        lost = []
        for m, content, at in self.acked:
            if not acked_after <= at <= acked_before:
                continue
            if m.key not in stored:
                stored[m.key] = set(await contents(m))
            if content not in stored[m.key]:
                lost.append(content)
        return lost


def test_cluster_failover_during_async_appends_loses_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    c = LocalCluster(tmp_path, masters=3, replicas=1).start()

    async def scenario() -> None:
        async with aclient(settings, redis_url=c.url, redis_mode="cluster") as client:
            memories = [client.memory("conv", ctx(f"afo{i}")) for i in range(6)]
            victim = c.owner(c.keyslot(memories[0].keys.meta))
            async with AsyncAppenders(memories) as appenders:
                await appenders.wait_for(200)
                await asyncio.to_thread(c.failover, c.replica_of(victim))
                switched = time.monotonic()
                await appenders.wait_for(300)
            assert c.owner(c.keyslot(memories[0].keys.meta)) is not victim
            # A coordinated failover refuses nothing: writes wait out the old master's pause,
            # then MOVED is followed, and the slot map is patched from it without closing the
            # connections other tasks are reading from (AsyncEngineCluster, reinitialize_steps).
            assert appenders.failed == 0, f"{appenders.failed} appends failed in the failover"
            assert await appenders.missing() == [], "acknowledged appends lost in the failover"
            after = [a for a in appenders.acked if a[0] is memories[0] and a[2] > switched]
            assert after, "the client did not recover on the failed-over master"
            for m in memories:
                assert client.sync.store.reconcile(m.keys) == 0

    try:
        run(scenario())
    finally:
        c.close()


# ---- Sentinel -----------------------------------------------------------------------------------


def test_sentinel_failover_during_async_appends(settings: Settings, tmp_path: Path) -> None:
    group = LocalSentinels(tmp_path).start()

    async def scenario() -> None:
        async with aclient(
            settings,
            redis_mode="sentinel",
            redis_url="redis://sentinel-master/0",  # address unused: the sentinels name it
            redis_sentinels=group.addresses,
            redis_sentinel_master="enginemaster",
        ) as client:
            memories = [client.memory("conv", ctx(f"asn{i}")) for i in range(4)]
            await exercise_async_contract(client, "asn")
            async with AsyncAppenders(memories) as appenders:
                await appenders.wait_for(200)
                await asyncio.to_thread(group.master.client().execute_command, "WAIT", 1, 5000)
                window_start = time.monotonic()
                old, new = await asyncio.to_thread(group.failover)
                window_end = time.monotonic()
                # Followed at once: the connection drops on the old master's NOREPLICAS, where
                # redis-py alone waits for READONLY (up to a sentinel's 10 s INFO period).
                await appenders.wait_for(200, timeout_s=SENTINEL_RECOVERY_S)
            assert old is group.master and new is group.replica
            assert await appenders.missing(acked_before=window_start) == []
            assert await appenders.missing(acked_after=window_end) == []
            lost = set(await appenders.missing())
            in_window = [a for a in appenders.acked if window_start < a[2] < window_end]
            lost_at = [at - window_start for _m, content, at in in_window if content in lost]
            print(
                f"async sentinel failover: {len(lost)} of {len(in_window)} appends acknowledged "
                f"in the {window_end - window_start:.2f} s window lost"
            )
            # min-replicas-max-lag 1 (topologies.py): the demoted master refuses writes within
            # about 2 s, and the connection drops on that NOREPLICAS.
            assert max(lost_at, default=0) < 5.0
            assert [a for a in appenders.acked if a[2] > window_end], "the client did not recover"
            for m in memories:
                assert client.sync.store.reconcile(m.keys) == 0

    try:
        run(scenario())
    finally:
        group.close()


# ---- TLS and ACL --------------------------------------------------------------------------------


def test_async_tls_with_an_acl_user_confined_to_the_prefix(
    settings: Settings, tmp_path: Path
) -> None:
    server = TlsServer(tmp_path).start()
    prefix, other_prefix = settings.key_prefix, f"{settings.key_prefix}x"
    server.add_user("engine", "engine-pw", prefix)
    server.add_user("other", "other-pw", other_prefix)

    async def scenario() -> None:
        async with aclient(settings, redis_url=server.url("engine", "engine-pw")) as client:
            await exercise_async_contract(client, "atls")
            secret = client.memory("conv", ctx("asecret"))
            await secret.append({"role": "user", "content": "for engine only"})
        async with aclient(settings, redis_url=server.url("other", "other-pw")) as intruder:
            theirs = intruder.memory("conv", ctx("asecret"))
            for attempt in (
                theirs.read,
                theirs.stats,
                theirs.context,
                theirs.delete,
                theirs.request_flush,
                lambda: theirs.append({"role": "user", "content": "x"}),
            ):
                with pytest.raises(StoreError, match=r"NOPERM|no permissions"):
                    await attempt()
        async with aclient(
            settings, redis_url=server.url("other", "other-pw"), key_prefix=other_prefix
        ) as own:  # the same user within its own prefix works
            mine = own.memory("conv", ctx("amine"))
            assert (await mine.append({"role": "user", "content": "y"})).last_seq == 1

    try:
        run(scenario())
    finally:
        server.close()
