"""Circuit breaker state shared through Redis: the storage behind :mod:`memory_engine.breakers`.

One HASH per breaker, ``<prefix>:breaker:<name>`` (fields ``state``, ``failures``, ``successes``,
``opened_at`` as unix seconds with a fraction, ``updated_at``), and the SET
``<prefix>:breaker:_index`` of every name, so :func:`breaker_states` finds them without ``SCAN``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import pybreaker
from redis.exceptions import RedisError

from memory_engine.breaker_events import BreakerState
from memory_engine.errors import ConfigError, StoreUnavailable
from memory_engine.keys import KeySpace

if TYPE_CHECKING:
    from memory_engine.store.connections import RedisClient

__all__ = [
    "BREAKER_NAME_PATTERN",
    "REDIS_RETRY_INTERVAL_S",
    "RedisBreakerStorage",
    "breaker_states",
]

logger = logging.getLogger("memory_engine.breakers")

T = TypeVar("T")

BREAKER_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.@:\-]{0,199}$")
"""Breaker names: they become part of a Redis key and a Prometheus label value."""

REDIS_RETRY_INTERVAL_S = 1.0
"""While Redis is unreachable, a breaker tries it again at most this often (else: local state)."""


def _breaker_key(keyspace: KeySpace, name: str) -> str:
    return keyspace.breaker(name)


def _index_key(keyspace: KeySpace) -> str:
    return keyspace.breaker_index


def _text(value: Any) -> str | None:
    """A reply as ``str`` whether or not the client decodes responses."""
    if value is None:
        return None
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class RedisBreakerStorage(pybreaker.CircuitBreakerStorage):
    """pybreaker storage in one Redis HASH per breaker, shared by every process using the prefix.

    Each read goes to Redis (a breaker must see what other processes did); each value read or
    written is mirrored in a per-process shadow that answers while Redis is unreachable. The
    constructor registers the name in the index and never raises for an unreachable Redis.
    """

    def __init__(self, redis: RedisClient, keyspace: KeySpace, name: str) -> None:
        super().__init__("redis")
        if not BREAKER_NAME_PATTERN.match(name):
            raise ConfigError(f"invalid circuit breaker name {name!r}")
        self._redis = redis
        self._key = _breaker_key(keyspace, name)
        self._breaker_name = name
        self._shadow: dict[str, str] = {"state": BreakerState.CLOSED.value}
        self._redis_ok = True
        self._retry_at = 0.0
        self._index = _index_key(keyspace)
        self._run(lambda: self._redis.sadd(self._index, name))

    def __repr__(self) -> str:
        return f"RedisBreakerStorage(key={self._key!r})"

    def _run(self, command: Callable[[], T]) -> T | None:
        """Run one Redis command; on a Redis error log once per outage and return ``None``.

        During an outage Redis is tried again at most every ``REDIS_RETRY_INTERVAL_S``: each
        attempt may wait for the connect timeout, and a guarded call makes several.
        """
        if not self._redis_ok and time.monotonic() < self._retry_at:
            return None
        try:
            result = command()
        except RedisError as exc:
            self._retry_at = time.monotonic() + REDIS_RETRY_INTERVAL_S
            if self._redis_ok:
                self._redis_ok = False
                logger.warning(
                    "circuit breaker %s: Redis unavailable (%s: %s); this process keeps its own "
                    "breaker state until Redis answers again",
                    self._breaker_name,
                    type(exc).__name__,
                    exc,
                )
            return None
        if not self._redis_ok:
            self._redis_ok = True
            logger.info(
                "circuit breaker %s: Redis is back; state is shared again", self._breaker_name
            )
        return result

    def _get(self, field: str) -> str | None:
        value = self._run(lambda: self._redis.hget(self._key, field))
        if value is None:
            return self._shadow.get(field) if not self._redis_ok else None
        text = _text(value)
        if text is not None:
            self._shadow[field] = text
        return text

    def _set(self, field: str, value: str) -> None:
        self._shadow[field] = value
        now = f"{time.time():.6f}"
        self._run(lambda: self._redis.hset(self._key, mapping={field: value, "updated_at": now}))

    def _incr(self, field: str) -> None:
        value = self._run(lambda: self._redis.hincrby(self._key, field, 1))
        self._shadow[field] = str(value if value is not None else self._int(field) + 1)

    def _int(self, field: str) -> int:
        value = self._shadow.get(field)
        try:
            return int(value) if value else 0
        except ValueError:
            return 0

    def _read_int(self, field: str) -> int:
        value = self._get(field)
        try:
            return int(value) if value else 0
        except ValueError:
            return 0

    # ---- pybreaker's storage interface -------------------------------------------------

    @property
    def state(self) -> str:
        """The shared state; ``closed`` when the breaker was never used."""
        value = self._get("state")
        if value not in (BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN):
            return BreakerState.CLOSED.value
        return value

    @state.setter
    def state(self, state: str) -> None:
        # Re-register with every transition (rare): a Redis that lost its data while this
        # process ran would otherwise hold a breaker that breaker_states() cannot find.
        self._shadow["state"] = str(state)
        now = f"{time.time():.6f}"

        def write() -> Any:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hset(self._key, mapping={"state": str(state), "updated_at": now})
            pipe.sadd(self._index, self._breaker_name)
            return pipe.execute()

        self._run(write)

    def increment_counter(self) -> None:
        self._incr("failures")

    def reset_counter(self) -> None:
        self._set("failures", "0")

    def increment_success_counter(self) -> None:
        self._incr("successes")

    def reset_success_counter(self) -> None:
        self._set("successes", "0")

    @property
    def counter(self) -> int:
        return self._read_int("failures")

    @property
    def success_counter(self) -> int:
        return self._read_int("successes")

    @property
    def opened_at(self) -> datetime | None:
        value = self._get("opened_at")
        try:
            return datetime.fromtimestamp(float(value), UTC) if value else None
        except (ValueError, OverflowError, OSError):
            return None

    @opened_at.setter
    def opened_at(self, now: datetime) -> None:
        self._set("opened_at", f"{now.timestamp():.6f}")


def breaker_states(redis: RedisClient, keyspace: KeySpace) -> dict[str, str]:
    """``{name: state}`` of every breaker registered under ``keyspace``, read from Redis.

    Two round trips (the index, then every state in one pipeline), no ``SCAN``. A breaker that is
    ``open`` past its reset timeout stays ``open`` here until some process makes the trial call.
    Raises :class:`~memory_engine.errors.StoreUnavailable` when Redis cannot be read.
    """
    try:
        names = sorted(n for n in (_text(v) for v in redis.smembers(_index_key(keyspace))) if n)
        pipe = redis.pipeline(transaction=False)
        for name in names:
            pipe.hget(_breaker_key(keyspace, name), "state")
        values = pipe.execute() if names else []
    except RedisError as exc:
        raise StoreUnavailable(f"cannot read circuit breaker states: {exc}") from exc
    return {name: _text(value) or BreakerState.CLOSED.value for name, value in zip(names, values)}
