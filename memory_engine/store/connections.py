"""Builds the Redis client from settings. The one place connection options are decided."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from memory_engine.settings import Settings

__all__ = [
    "AsyncRedisClient",
    "RedisClient",
    "async_redis_from_settings",
    "ping_url",
    "redis_from_settings",
]

HEALTH_CHECK_INTERVAL_S = 30


def redis_from_settings(settings: Settings) -> redis.Redis:
    """A pooled, thread-safe client with the configured timeouts.

    Retries are off on purpose: a write whose reply timed out may have run, and retrying it
    (redis-py's default) could append a message twice. Callers see :class:`StoreUnavailable`
    and decide. ``rediss://`` URLs enable TLS, ``unix:///path`` connects to a Unix socket;
    credentials come from the URL.
    """
    url = settings.redis_dsn()
    tcp_only: dict[str, Any] = {}
    if urlsplit(url).scheme != "unix":
        # TCP keepalive detects a dead peer on an idle pooled connection; a Unix socket has no
        # such option (redis-py's UnixDomainSocketConnection refuses the argument).
        tcp_only["socket_keepalive"] = True
    return redis.Redis.from_url(
        url,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.socket_connect_timeout_s,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        max_connections=settings.redis_max_connections,
        retry=Retry(NoBackoff(), 0),
        client_name="memory-engine",
        **tcp_only,
    )


RedisClient = redis.Redis
"""The client type the rest of the library is handed (it never imports redis-py itself)."""

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
