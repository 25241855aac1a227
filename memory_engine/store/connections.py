"""Builds the Redis clients from settings. The one place connection options are decided.

Three topologies (``MEMORY_REDIS_MODE``, docs/scaling.md), each for the sync client
(:func:`redis_from_settings`) and the asyncio client (:func:`async_redis_from_settings`):

- ``standalone``: :class:`redis.Redis` (``redis.asyncio.Redis``) on ``MEMORY_REDIS_URL``;
- ``cluster``: :class:`EngineCluster` (:class:`AsyncEngineCluster`), redis-py's cluster client
  seeded with the node that ``MEMORY_REDIS_URL`` names; it reads the slot map, follows
  ``MOVED``/``ASK`` and re-reads the map after a failover. Every per-memory command touches one
  slot (the keys share the hash tag ``{<project>:<key>}``), so nothing here needs cross-slot
  support;
- ``sentinel``: a client on a pool that asks the sentinels where the master is, on every new
  connection (so a failover is followed by reconnecting).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import redis
import redis.asyncio
from redis.asyncio.cluster import ClusterPipeline as AsyncClusterPipeline
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.connection import SSLConnection as AsyncSSLConnection
from redis.asyncio.connection import parse_url as async_parse_url
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelConnectionPool
from redis.asyncio.sentinel import SentinelManagedConnection as AsyncSentinelManagedConnection
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.connection import SSLConnection, parse_url
from redis.exceptions import ClusterDownError, ConnectionError, ResponseError, SlotNotCoveredError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

from memory_engine.settings import Settings

__all__ = [
    "AsyncEngineCluster",
    "AsyncRedisClient",
    "CLUSTER_DOWN_RETRIES",
    "EngineCluster",
    "RedisClient",
    "async_redis_from_settings",
    "is_cluster",
    "ping_url",
    "redis_from_settings",
]

HEALTH_CHECK_INTERVAL_S = 30
CLUSTER_DOWN_RETRIES = 8
"""Times a command refused with CLUSTERDOWN (or for a slot the map does not cover) is sent again,
each after redis-py's 0.25 s pause and a fresh slot map: about 2 s, the length of a failover
with ``cluster-node-timeout`` near 1 s. Those errors mean the command did not run."""

_NOT_RUN_RETRYABLE = (ClusterDownError, SlotNotCoveredError)
"""The only errors a cluster client sends a command again after (sync and async alike)."""


class EngineCluster(RedisCluster):
    """redis-py's cluster client, retrying only what surely did not run.

    ``RedisCluster`` re-sends a command after a ``ConnectionError`` or ``TimeoutError`` too; a
    write whose reply timed out may have run, and sending it again could store an appended
    message twice (the standalone client has retries off for the same reason). Redirections
    (``MOVED``, ``ASK``, ``TRYAGAIN``) are followed inside one attempt and are unaffected.
    Pipelines keep redis-py's own rule: the engine's pipelines are reads, or index writes that
    are idempotent.
    """

    ERRORS_ALLOW_RETRY = _NOT_RUN_RETRYABLE  # type: ignore[assignment]


class _SentinelMasterConnection(SentinelManagedConnection):
    """A connection to the master the sentinels name, which also lets go of a master that
    refuses writes with ``NOREPLICAS``.

    redis-py reconnects (asking the sentinels again) when a demoted master answers
    ``READONLY``; but after a failover the old master keeps answering as a master until a
    sentinel reconfigures it, which takes up to its 10 s ``INFO`` period. A master run with
    ``min-replicas-to-write`` (docs/scaling.md) refuses writes once its replicas stop
    acknowledging, and that refusal is the earliest sign: drop the connection, so the next
    command asks the sentinels where the master is. A refusal by a master that is still the
    master costs one reconnect. The write did not run either way."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except ResponseError as exc:
            if _refused_for_replicas(exc):
                self.disconnect()  # type: ignore[no-untyped-call]
                raise ConnectionError(f"the master refused the write: {exc}") from exc
            raise


class _SentinelMasterSSLConnection(_SentinelMasterConnection, SSLConnection):
    pass


def _refused_for_replicas(exc: ResponseError) -> bool:
    """``NOREPLICAS``: the master has too few replicas acknowledging (the sentinel connections
    of both clients drop on it)."""
    return str(exc).startswith("NOREPLICAS")


RedisClient: TypeAlias = redis.Redis | RedisCluster
"""The client types the rest of the library is handed (it never imports redis-py itself)."""


def is_cluster(client: object) -> bool:
    """True for a Redis Cluster client, sync or asyncio: pipelines then refuse ``EVALSHA`` and
    cross-slot MULTI (``store/plumbing.py``)."""
    return isinstance(client, RedisCluster | AsyncRedisCluster)


def _connection_options(settings: Settings, url: str, timeout_s: float | None) -> dict[str, Any]:
    """Timeouts, keepalive and health checks, the same for every mode and both clients."""
    options: dict[str, Any] = {
        "socket_timeout": timeout_s or settings.socket_timeout_s,
        "socket_connect_timeout": timeout_s or settings.socket_connect_timeout_s,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
    }
    if urlsplit(url).scheme != "unix":
        # TCP keepalive detects a dead peer on an idle pooled connection; a Unix socket has no
        # such option (redis-py's UnixDomainSocketConnection refuses the argument).
        options["socket_keepalive"] = True
    return options


def redis_from_settings(
    settings: Settings,
    *,
    timeout_s: float | None = None,
    client_name: str = "memory-engine",
) -> Any:
    """A pooled, thread-safe client for ``settings.redis_mode`` with the configured timeouts
    (``timeout_s`` overrides both socket timeouts: a health check's short look).

    Retries are off on purpose: a write whose reply timed out may have run, and retrying it
    (redis-py's default) could append a message twice. Callers see :class:`StoreUnavailable`
    and decide. ``rediss://`` URLs enable TLS, ``unix:///path`` connects to a Unix socket
    (standalone only); credentials come from the URL.
    """
    url = settings.redis_dsn()
    options = _connection_options(settings, url, timeout_s)
    options["client_name"] = client_name
    if settings.redis_mode == "cluster":
        return EngineCluster.from_url(
            url,
            # per node: every node has its own pool
            max_connections=settings.redis_max_connections,
            retry=Retry(NoBackoff(), CLUSTER_DOWN_RETRIES),
            **options,
        )
    if settings.redis_mode == "sentinel":
        return _sentinel_master(settings, url, options)
    return redis.Redis.from_url(
        url,
        max_connections=settings.redis_max_connections,
        retry=Retry(NoBackoff(), 0),
        **options,
    )


def _sentinel_parts(
    settings: Settings,
    url: str,
    options: dict[str, Any],
    parse: Callable[[str], Any],
    ssl_class: type,
) -> tuple[dict[str, Any], bool, dict[str, Any]]:
    """(master connection options, TLS to the master, options of the sentinel connections),
    from ``url`` parsed by the sync or the asyncio ``parse_url`` (``ssl_class``: what it names
    for ``rediss://``). The URL gives the master's credentials, database and TLS options (its
    host and port are not used); the ``ssl_*`` options serve the sentinels too when they speak
    TLS."""
    parsed: dict[str, Any] = parse(url)
    master = {k: v for k, v in parsed.items() if k not in ("host", "port", "path")}
    tls = master.pop("connection_class", None) is ssl_class
    tls_options = {k: v for k, v in master.items() if k.startswith("ssl_")}
    sentinel_tls = tls if settings.redis_sentinel_tls is None else settings.redis_sentinel_tls
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": options["socket_timeout"],
        "socket_connect_timeout": options["socket_connect_timeout"],
        "username": settings.redis_sentinel_username,
        "password": (
            settings.redis_sentinel_password.get_secret_value()
            if settings.redis_sentinel_password
            else None
        ),
    }
    if sentinel_tls:
        sentinel_kwargs.update(ssl=True, **tls_options)
    return master, tls, sentinel_kwargs


def _sentinel_master(settings: Settings, url: str, options: dict[str, Any]) -> redis.Redis:
    """The master behind the sentinels (:func:`_sentinel_parts` says what the URL gives)."""
    master, tls, sentinel_kwargs = _sentinel_parts(settings, url, options, parse_url, SSLConnection)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        settings.sentinel_addresses(), sentinel_kwargs=sentinel_kwargs, **options, **master
    )
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        str(settings.redis_sentinel_master),
        max_connections=settings.redis_max_connections,
        retry=Retry(NoBackoff(), 0),
        connection_class=_SentinelMasterSSLConnection if tls else _SentinelMasterConnection,
    )
    return client


# ---- asyncio ----------------------------------------------------------------------------------

_HOLDS_CONNECTION: ContextVar[bool] = ContextVar("memory_engine_holds_connection", default=False)
"""Set while a task runs a command of :class:`AsyncEngineCluster` under its connection budget:
what redis-py sends from inside that command (a pipeline's redirected commands) is not counted
twice, so it cannot wait for a permit its own caller holds."""


class AsyncEngineCluster(AsyncRedisCluster):
    """``redis.asyncio``'s cluster client with the rules of :class:`EngineCluster`, and a pool
    that waits.

    - Retries: only after ``CLUSTERDOWN`` or an uncovered slot (the command did not run), as in
      the sync client; ``MOVED``/``ASK``/``TRYAGAIN`` are followed inside one attempt. Pipelines
      keep redis-py's rule, as in the sync client (they carry reads or idempotent index writes).
    - Waiting for a connection: redis-py's async cluster node raises ``MaxConnectionsError`` as
      soon as its ``max_connections`` are busy, where the standalone async client waits
      (``BlockingConnectionPool``). A thousand tasks on one loop would fail; so every command
      and pipeline first takes one of ``max_connections`` permits (a command or a pipeline
      holds at most one connection per node at a time, so no node's pool overflows), waiting
      up to ``connection_wait_s``; a longer wait fails as a ``ConnectionError``
      (:class:`StoreUnavailable`), before anything is sent.
    - ``reinitialize_steps=0``: on ``MOVED`` redis-py's async client would re-read the slot map
      every 5th redirection by closing *every* connection of the client, cutting the replies of
      other tasks' commands in flight (their outcome then unknown). The slot map is patched from
      each ``MOVED`` instead (a failed-over master's replica is promoted in the map); a full
      re-read still follows a connection error or ``CLUSTERDOWN``.
    """

    ERRORS_ALLOW_RETRY = _NOT_RUN_RETRYABLE  # type: ignore[assignment]

    def __init__(self, *args: Any, connection_wait_s: float | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("reinitialize_steps", 0)
        super().__init__(*args, **kwargs)
        self._permits = asyncio.Semaphore(int(kwargs.get("max_connections", 100)))
        self._connection_wait_s = connection_wait_s

    async def _take_permit(self) -> None:
        try:
            async with asyncio.timeout(self._connection_wait_s):
                await self._permits.acquire()
        except TimeoutError as exc:
            raise ConnectionError(
                f"no free cluster connection within {self._connection_wait_s} s"
            ) from exc

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if _HOLDS_CONNECTION.get():
            return await super().execute_command(*args, **kwargs)
        await self._take_permit()
        token = _HOLDS_CONNECTION.set(True)
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            _HOLDS_CONNECTION.reset(token)
            self._permits.release()

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> AsyncClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # redis-py refuses it
        return _AsyncEnginePipeline(self, transaction)  # type: ignore[abstract]


class _AsyncEnginePipeline(AsyncClusterPipeline):
    """A cluster pipeline that takes its client's connection permit around ``execute``."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        client = self.cluster_client
        if _HOLDS_CONNECTION.get() or not isinstance(client, AsyncEngineCluster):
            return await super().execute(raise_on_error, allow_redirections)
        await client._take_permit()
        token = _HOLDS_CONNECTION.set(True)
        try:
            return await super().execute(raise_on_error, allow_redirections)
        finally:
            _HOLDS_CONNECTION.reset(token)
            client._permits.release()


class _AsyncSentinelMasterConnection(AsyncSentinelManagedConnection):
    """:class:`_SentinelMasterConnection` for ``redis.asyncio``: drop the connection on
    ``NOREPLICAS`` so the next command asks the sentinels (redis-py does it on ``READONLY``)."""

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except ResponseError as exc:
            if _refused_for_replicas(exc):
                await self.disconnect()
                raise ConnectionError(f"the master refused the write: {exc}") from exc
            raise


class _AsyncSentinelMasterSSLConnection(_AsyncSentinelMasterConnection, AsyncSSLConnection):
    pass


class _AsyncSentinelPool(AsyncSentinelConnectionPool, redis.asyncio.BlockingConnectionPool):
    """The sentinel-backed pool, waiting for a free connection (as the standalone async pool
    does), and closing the sentinel connections with it."""

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            await self.sentinel_manager.aclose()


AsyncRedisClient: TypeAlias = redis.asyncio.Redis | AsyncRedisCluster
"""The ``redis.asyncio`` client types the async client is handed."""


def async_redis_from_settings(
    settings: Settings,
    *,
    timeout_s: float | None = None,
    client_name: str = "memory-engine",
) -> Any:
    """The ``redis.asyncio`` client of :class:`~memory_engine.aio.AsyncMemoryClient` for
    ``settings.redis_mode``: the options of :func:`redis_from_settings` (timeouts, no retries,
    keepalive on TCP, health checks, client name, TLS and credentials from the URL), with one
    difference that comes from running on an event loop: the pool *waits* for a free
    connection instead of raising. A thousand tasks on one loop share ``redis_max_connections``
    connections (per node on a cluster), where threads are few. A wait longer than
    ``socket_timeout_s`` (every connection stuck on a dead server) fails as
    :class:`StoreUnavailable`.

    - standalone: ``BlockingConnectionPool``;
    - cluster: :class:`AsyncEngineCluster`;
    - sentinel: the sentinels' master on a waiting pool whose connections drop on
      ``READONLY`` and ``NOREPLICAS`` (as the sync client's).
    """
    url = settings.redis_dsn()
    options = _connection_options(settings, url, timeout_s)
    options["client_name"] = client_name
    wait_s = timeout_s or settings.socket_timeout_s
    if settings.redis_mode == "cluster":
        return AsyncEngineCluster.from_url(
            url,
            max_connections=settings.redis_max_connections,
            connection_wait_s=wait_s,
            retry=AsyncRetry(NoBackoff(), CLUSTER_DOWN_RETRIES),
            **options,
        )
    if settings.redis_mode == "sentinel":
        return _async_sentinel_master(settings, url, options, wait_s)
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=settings.redis_max_connections,
        timeout=wait_s,
        retry=AsyncRetry(NoBackoff(), 0),
        **options,
    )
    return redis.asyncio.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


def _async_sentinel_master(
    settings: Settings, url: str, options: dict[str, Any], wait_s: float
) -> redis.asyncio.Redis:
    master, tls, sentinel_kwargs = _sentinel_parts(
        settings, url, options, async_parse_url, AsyncSSLConnection
    )
    sentinel = AsyncSentinel(  # type: ignore[no-untyped-call]
        settings.sentinel_addresses(), sentinel_kwargs=sentinel_kwargs, **options, **master
    )
    client: redis.asyncio.Redis = sentinel.master_for(
        str(settings.redis_sentinel_master),
        connection_pool_class=_AsyncSentinelPool,
        max_connections=settings.redis_max_connections,
        timeout=wait_s,
        retry=AsyncRetry(NoBackoff(), 0),
        connection_class=(
            _AsyncSentinelMasterSSLConnection if tls else _AsyncSentinelMasterConnection
        ),
    )
    return client


def ping_url(url: str, *, timeout_s: float) -> None:
    """One ``PING`` over a short-lived connection; raises redis-py's error when it fails
    (:func:`~memory_engine.store.memory.translate_errors` maps those to the engine's tree)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        client.ping()
    finally:
        client.close()
