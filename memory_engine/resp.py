"""A lean path for the one command of the append hot path: ``EVALSHA`` packed here, sent on a
connection of the client's own pool.

Why: redis-py's ``execute_command`` spends about 20 us of CPU per call around the socket (retry
wrapper, observability hooks, generic argument encoding, response callbacks); for a ~100 us append
that is a fifth of its latency, and with eight threads sharing one GIL it bounds throughput
(``bench/profile_append.py``). This module keeps what matters from that path and drops the rest:

- connections come from, and go back to, the client's pool (``get_connection`` / ``release``), so
  pool limits, health checks, fork safety and TLS/Unix-socket connection classes all still apply;
- a connection that failed mid-command (``ConnectionError``, ``TimeoutError``, ``OSError``) is
  disconnected before it goes back, as redis-py does, so no reply is ever read by the next user;
- nothing is retried: a write whose reply was lost may have run (the engine builds its own client
  with retries off for the same reason, ``memory_engine/connections.py``).

Not kept: redis-py's own command metrics (OpenTelemetry) do not see these calls; the engine's
``memory_append_*`` metrics do. A client this path cannot serve (Redis Cluster, a single-connection
client, client-side caching, another encoding than UTF-8) gets ``None`` from :func:`pool_of`, and
callers use the regular redis-py call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis import exceptions as redis_errors

__all__ = ["command_head", "pool_of", "send_command"]

_CONNECTION_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)


def pool_of(client: Any) -> Any | None:
    """The connection pool of ``client`` if this module can use it, else ``None``."""
    pool = getattr(client, "connection_pool", None)
    if pool is None or getattr(client, "connection", None) is not None:
        return None  # Redis Cluster (no single pool) or a single-connection client
    if getattr(pool, "cache", None) is not None:
        return None  # client-side caching wraps connections in proxies with their own rules
    kwargs = getattr(pool, "connection_kwargs", {})
    if str(kwargs.get("encoding", "utf-8")).replace("-", "").lower() != "utf8":
        return None
    if not (hasattr(pool, "get_connection") and hasattr(pool, "release")):
        return None
    return pool


def command_head(*parts: str | bytes) -> bytes:
    """The RESP bulk strings of a command's fixed leading arguments (e.g. ``EVALSHA sha 5 k1..k5``),
    without the array header: callers memoise it and add the rest with :func:`send_command`."""
    encoded = (p.encode("utf-8") if isinstance(p, str) else p for p in parts)
    return b"".join(b"$%d\r\n%s\r\n" % (len(e), e) for e in encoded)


def send_command(pool: Any, head: bytes, head_count: int, args: Sequence[bytes]) -> Any:
    """Send ``head`` (``head_count`` arguments, from :func:`command_head`) plus ``args`` as one
    command in one socket write, and return the parsed reply.

    An error reply is raised as redis-py raises it (``NoScriptError``, ``ResponseError``); a
    connection error disconnects the connection first.
    """
    parts = [b"*%d\r\n" % (head_count + len(args)), head]
    parts.extend([b"$%d\r\n%s\r\n" % (len(a), a) for a in args])
    packed = b"".join(parts)
    conn = pool.get_connection()
    try:
        conn.send_packed_command([packed])
        return conn.read_response()
    except _CONNECTION_ERRORS:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)
