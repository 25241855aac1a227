"""Read-only queries for operators (health checks, the CLI, the demo): what is in the data Redis
and in a Redis broker, read in one round trip each. No judgement here: the callers decide what the
figures mean (:mod:`memory_engine.tooling.health`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from memory_engine.keys import KeySpace
from memory_engine.settings import Settings
from memory_engine.store.connections import redis_from_settings

__all__ = [
    "BeatState",
    "RedisInfo",
    "beat_state",
    "client_for_settings",
    "client_for_url",
    "flushes_pending",
    "queue_lengths",
    "redis_info",
    "resource_id_of",
]


def client_for_url(url: str, *, timeout_s: float, name: str = "memory-engine-inspect") -> Any:
    """A short-lived client for one look, no retries: it reports what it sees now."""
    return redis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, client_name=name
    )


def client_for_settings(settings: Settings, *, timeout_s: float, name: str) -> Any:
    """A short-lived client of the memory-data Redis in its mode (standalone, cluster,
    sentinel), no retries. A cluster client reads the slot map here (it may raise)."""
    return redis_from_settings(settings, timeout_s=timeout_s, client_name=name)


@dataclass(frozen=True, slots=True)
class RedisInfo:
    latency_ms: float
    version: str


def redis_info(client: Any) -> RedisInfo:
    """The round-trip time of one ``PING`` and the server's version."""
    started = time.perf_counter()
    client.ping()
    latency_ms = (time.perf_counter() - started) * 1000
    info = client.info("server")
    if "redis_version" not in info and info:
        # A cluster client answers per node ({node name: info}): report the first node's.
        info = next(iter(info.values()))
    return RedisInfo(latency_ms, str(info.get("redis_version", "?")))


@dataclass(frozen=True, slots=True)
class BeatState:
    """celery-redbeat's state in the broker: its schedule (entry key, next due time), the
    remaining TTL of its lock (``None``: nobody holds it) and each entry's raw ``meta``."""

    entries: Sequence[tuple[str, float]]
    lock_ttl_ms: int | None
    metas: Sequence[Any]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def beat_state(client: Any, keyspace: KeySpace, *, max_entries: int) -> BeatState:
    """Two round trips: the schedule and the lock, then every entry's ``meta``."""
    pipe = client.pipeline(transaction=False)
    pipe.zrange(keyspace.beat_schedule, 0, max_entries - 1, withscores=True)
    pipe.pttl(keyspace.beat_lock)
    raw_entries, lock_ttl_ms = pipe.execute()
    entries = [(_text(member), float(score)) for member, score in raw_entries]
    metas: list[Any] = []
    if entries:
        pipe = client.pipeline(transaction=False)
        for key, _score in entries:
            pipe.hget(key, "meta")
        metas = list(pipe.execute())
    ttl = int(lock_ttl_ms)
    return BeatState(entries, ttl if ttl > 0 else None, metas)


def queue_lengths(
    client: Any, queues: Iterable[str], unacked_hash: str | None = None
) -> tuple[dict[str, int], int]:
    """Messages waiting in each queue of a Redis broker, and those delivered but not acked
    (0 when ``unacked_hash`` is not given)."""
    names = list(queues)
    pipe = client.pipeline(transaction=False)
    for queue in names:
        pipe.llen(queue)
    if unacked_hash is not None:
        pipe.hlen(unacked_hash)
    replies = pipe.execute()
    unacked = int(replies.pop()) if unacked_hash is not None else 0
    return {q: int(n) for q, n in zip(names, replies)}, unacked


def flushes_pending(client: Any, flush_keys: Iterable[str]) -> int:
    """How many of these memories have their flush marker set (one round trip)."""
    pipe = client.pipeline(transaction=False)
    for key in flush_keys:
        pipe.exists(key)
    return sum(int(x) for x in pipe.execute())


def resource_id_of(client: Any, keyspace: KeySpace, memory_id: str) -> str | None:
    """The resource id stored in a memory's metadata; ``None`` when the memory does not exist."""
    raw = client.hget(keyspace.memory(memory_id).meta, "resource_id")
    return _text(raw) if raw is not None else None
