"""Builds the Redis client from settings. The one place connection options are decided.

Three topologies (``MEMORY_REDIS_MODE``, docs/scaling.md):

- ``standalone``: :class:`redis.Redis` on ``MEMORY_REDIS_URL``;
- ``cluster``: :class:`EngineCluster` (redis-py's ``RedisCluster``) seeded with the node that
  ``MEMORY_REDIS_URL`` names; it reads the slot map, follows ``MOVED``/``ASK`` and re-reads the
  map after a failover. Every per-memory command touches one slot (the keys share the hash tag
  ``{<project>:<key>}``), so nothing here needs cross-slot support;
- ``sentinel``: :class:`redis.Redis` on a pool that asks the sentinels where the master is, on
  every new connection (so a failover is followed by reconnecting).
"""

from __future__ import annotations

from typing import Any, TypeAlias
from urllib.parse import urlsplit

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.connection import SSLConnection, parse_url
from redis.exceptions import ClusterDownError, ConnectionError, ResponseError, SlotNotCoveredError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

from memory_engine.settings import Settings

__all__ = [
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


class EngineCluster(RedisCluster):
    """redis-py's cluster client, retrying only what surely did not run.

    ``RedisCluster`` re-sends a command after a ``ConnectionError`` or ``TimeoutError`` too; a
    write whose reply timed out may have run, and sending it again could store an appended
    message twice (the standalone client has retries off for the same reason). Redirections
    (``MOVED``, ``ASK``, ``TRYAGAIN``) are followed inside one attempt and are unaffected.
    Pipelines keep redis-py's own rule: the engine's pipelines are reads, or index writes that
    are idempotent.
    """

    ERRORS_ALLOW_RETRY = (ClusterDownError, SlotNotCoveredError)  # type: ignore[assignment]


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
            if str(exc).startswith("NOREPLICAS"):
                self.disconnect()  # type: ignore[no-untyped-call]
                raise ConnectionError(f"the master refused the write: {exc}") from exc
            raise


class _SentinelMasterSSLConnection(_SentinelMasterConnection, SSLConnection):
    pass


RedisClient: TypeAlias = redis.Redis | RedisCluster
"""The client types the rest of the library is handed (it never imports redis-py itself)."""


def is_cluster(client: object) -> bool:
    """True for a Redis Cluster client: pipelines then refuse ``EVALSHA`` and cross-slot MULTI."""
    return isinstance(client, RedisCluster)


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
    options: dict[str, Any] = {
        "socket_timeout": timeout_s or settings.socket_timeout_s,
        "socket_connect_timeout": timeout_s or settings.socket_connect_timeout_s,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        "client_name": client_name,
    }
    if urlsplit(url).scheme != "unix":
        # TCP keepalive detects a dead peer on an idle pooled connection; a Unix socket has no
        # such option (redis-py's UnixDomainSocketConnection refuses the argument).
        options["socket_keepalive"] = True
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


def _sentinel_master(settings: Settings, url: str, options: dict[str, Any]) -> redis.Redis:
    """The master behind the sentinels. ``url`` gives the master's credentials, database and
    TLS options (its host and port are not used); the ``ssl_*`` options serve the sentinels
    too when they speak TLS."""
    parsed: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    master = {k: v for k, v in parsed.items() if k not in ("host", "port", "path")}
    tls = master.pop("connection_class", None) is SSLConnection
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


AsyncRedisClient = redis.asyncio.Redis
"""The ``redis.asyncio`` client type the async client is handed."""


def async_redis_from_settings(settings: Settings) -> redis.asyncio.Redis:
    """The ``redis.asyncio`` client of :class:`~memory_engine.aio.AsyncMemoryClient`: the options
    of :func:`redis_from_settings` (timeouts, no retries, keepalive on TCP, health checks, client
    name), with two differences that come from running on an event loop:

    - the pool *waits* for a free connection (``BlockingConnectionPool``) instead of raising: a
      thousand tasks on one loop share ``redis_max_connections`` connections, where threads are
      few. A wait longer than ``socket_timeout_s`` (every connection stuck on a dead server)
      fails as :class:`StoreUnavailable`;
    - retries off as in the sync client (a timed-out write may have run), with
      ``redis.asyncio``'s own ``Retry`` class.
    """
    url = settings.redis_dsn()
    tcp_only: dict[str, Any] = {}
    if urlsplit(url).scheme != "unix":
        tcp_only["socket_keepalive"] = True
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.socket_connect_timeout_s,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        max_connections=settings.redis_max_connections,
        timeout=settings.socket_timeout_s,
        retry=AsyncRetry(NoBackoff(), 0),
        client_name="memory-engine",
        **tcp_only,
    )
    return redis.asyncio.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


def ping_url(url: str, *, timeout_s: float) -> None:
    """One ``PING`` over a short-lived connection; raises redis-py's error when it fails
    (:func:`~memory_engine.store.memory.translate_errors` maps those to the engine's tree)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        client.ping()
    finally:
        client.close()
