"""A lean path for the one command of the append hot path: ``EVALSHA`` packed here, sent on a
connection borrowed from the client's own pool and kept in a small free list (a :class:`Lane`).

Why: around the socket, redis-py's ``execute_command`` runs a retry wrapper, observability hooks,
generic argument encoding and response callbacks, and its pool's ``get_connection``/``release``
take a lock, keep books and dispatch events; for an append that is a large share of its latency,
and with several threads sharing one GIL it bounds throughput (measured in docs/performance.md,
``bench/profile_append.py``). This module keeps what matters from that path and drops the rest:

- connections come from the client's pool (``get_connection``), so pool limits, health checks,
  TLS/Unix-socket connection classes all still apply; a lane keeps at most
  :data:`LANE_MAX_IDLE` of them (never more than a quarter of the pool) between calls, and gives
  them back to the pool on :meth:`Lane.close`;
- an idle connection is checked before reuse as the pool checks it (``can_read``: data or EOF
  waiting on an idle socket means it was closed or is out of step), and reconnected if so; so a
  server restart or idle timeout costs a reconnect, not an error;
- a connection that failed mid-command (``ConnectionError``, ``TimeoutError``, ``OSError``) is
  disconnected and returned to the pool, as redis-py does, so no reply is ever read by the next
  user;
- after ``fork()`` a child never touches its parent's idle connections (an at-fork hook empties
  every lane in the child);
- nothing is retried: a write whose reply was lost may have run (the engine builds its own client
  with retries off for the same reason, ``memory_engine/connections.py``).

Not kept: redis-py's own command metrics (OpenTelemetry) do not see these calls; the engine's
``memory_append_*`` metrics do. A client this path cannot serve (Redis Cluster, Sentinel, a
single-connection client, client-side caching, another encoding than UTF-8) gets ``None`` from
:func:`lane_for`, and callers use the regular redis-py call.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from typing import Any

from redis import exceptions as redis_errors
from redis.sentinel import SentinelConnectionPool

__all__ = ["LANE_MAX_IDLE", "Lane", "command_head", "lane_for"]

LANE_MAX_IDLE = 8
"""Connections a lane keeps between calls: enough for eight threads appending at once."""

_CONNECTION_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)


def _pool_of(client: Any) -> Any | None:
    """The connection pool of ``client`` if this module can use it, else ``None``."""
    pool = getattr(client, "connection_pool", None)
    if pool is None or getattr(client, "connection", None) is not None:
        return None  # Redis Cluster (no single pool) or a single-connection client
    if isinstance(pool, SentinelConnectionPool):
        # Its connections re-ask the sentinels for the master and drop themselves on a
        # READONLY reply after a failover: redis-py's own call path keeps that behaviour.
        return None
    if getattr(pool, "cache", None) is not None:
        return None  # client-side caching wraps connections in proxies with their own rules
    kwargs = getattr(pool, "connection_kwargs", {})
    if str(kwargs.get("encoding", "utf-8")).replace("-", "").lower() != "utf8":
        return None
    if not (hasattr(pool, "get_connection") and hasattr(pool, "release")):
        return None
    return pool


def lane_for(client: Any) -> Lane | None:
    """A :class:`Lane` on the pool of ``client``, or ``None`` when this module cannot serve it."""
    pool = _pool_of(client)
    return None if pool is None else Lane(pool)


def command_head(*parts: str | bytes) -> bytes:
    """The RESP bulk strings of a command's fixed leading arguments (e.g. ``EVALSHA sha 5 k1..k5``),
    without the array header: callers memoise it and add the rest with :meth:`Lane.send`."""
    encoded = (p.encode("utf-8") if isinstance(p, str) else p for p in parts)
    return b"".join(b"$%d\r\n%s\r\n" % (len(e), e) for e in encoded)


_lanes: weakref.WeakSet[Lane] = weakref.WeakSet()


class Lane:
    """Connections of one redis-py pool, borrowed once and reused call after call.

    Thread-safe without a lock: ``list.pop`` and ``list.append`` are atomic, and a connection is
    in the free list only while no thread uses it.
    """

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        max_connections = getattr(pool, "max_connections", None) or LANE_MAX_IDLE * 4
        self.max_idle = max(0, min(LANE_MAX_IDLE, max_connections // 4))
        self._idle: list[Any] = []
        _lanes.add(self)
        # A client dropped without close() must not keep its connections out of the pool: the
        # pool would count them as in use for ever (and an injected pool could run dry).
        finalizer = weakref.finalize(self, _give_back, pool, self._idle)
        finalizer.atexit = False

    def send(self, head: bytes, head_count: int, args: Sequence[bytes]) -> Any:
        """Send ``head`` (``head_count`` arguments, from :func:`command_head`) plus ``args`` as one
        command in one socket write, and return the parsed reply.

        An error reply is raised as redis-py raises it (``NoScriptError``, ``ResponseError``); a
        connection error disconnects the connection and hands it back to the pool first.
        """
        parts = [b"*%d\r\n" % (head_count + len(args)), head]
        parts.extend([b"$%d\r\n%s\r\n" % (len(a), a) for a in args])
        packed = b"".join(parts)
        conn = self._acquire()
        try:
            conn.send_packed_command([packed])
            reply = conn.read_response()
        except BaseException as exc:
            # Anything raised between the write and the end of the read (a connection error, a
            # KeyboardInterrupt) can leave a reply unread on the socket: never reuse it then.
            # An error *reply* (ResponseError) was read whole: the connection stays good.
            if isinstance(exc, redis_errors.ResponseError):
                self._release(conn)
            else:
                conn.disconnect()
                self.pool.release(conn)
            raise
        self._release(conn)
        return reply

    def _acquire(self) -> Any:
        try:
            conn = self._idle.pop()
        except IndexError:
            return self.pool.get_connection()
        try:
            # As the pool does: data or EOF waiting on an idle socket means the server closed it
            # (restart, idle timeout) or a reply is out of step. Reconnect before sending.
            stale = conn.can_read()
        except _CONNECTION_ERRORS:
            stale = True
        if stale:
            conn.disconnect()
        return conn

    def _release(self, conn: Any) -> None:
        if len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            self.pool.release(conn)

    def close(self) -> None:
        """Give every idle connection back to the pool."""
        _give_back(self.pool, self._idle)

    def _forget(self) -> None:
        """In a forked child: the idle connections are the parent's; drop them unused (cleared
        in place: the finalizer holds this list)."""
        self._idle.clear()


def _give_back(pool: Any, idle: list[Any]) -> None:
    while idle:
        try:
            conn = idle.pop()
        except IndexError:
            break
        pool.release(conn)


def _after_fork_in_child() -> None:
    for lane in list(_lanes):
        lane._forget()


os.register_at_fork(after_in_child=_after_fork_in_child)
