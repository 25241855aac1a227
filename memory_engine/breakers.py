"""Circuit breakers around external calls, with their state shared across processes in Redis.

One breaker guards each external dependency: the LLM summarizer endpoint
(``summarizer.<provider>@<host>``), each provider token-count endpoint
(``tokens.<provider>@<host>``) and the Celery broker tasks are published to
(``broker.redis@<host>``, see :mod:`memory_engine.producer`). Breakers are :mod:`pybreaker`
breakers; what this module adds:

- **Shared state.** :class:`~memory_engine.store.breakers.RedisBreakerStorage` keeps a
  breaker's state in one Redis HASH,
  ``<prefix>:breaker:<name>`` (fields ``state``, ``failures``, ``successes``, ``opened_at`` as
  unix seconds with a fraction, ``updated_at``), and lists every breaker name in the SET
  ``<prefix>:breaker:_index`` so :func:`breaker_states` finds them without ``SCAN``. Every worker
  process that builds a breaker of the same name and prefix sees the same state: when one process
  has counted ``breaker_fail_max`` consecutive failures, all of them fail fast.
- **Fail fast.** While a breaker is open, a guarded call raises at once, without touching the
  network; :meth:`SharedCircuitBreaker.call_or_raise` turns that into the caller's own error
  (:class:`~memory_engine.errors.SummarizerError` for the summarizer, so the rule-based fallback
  answers immediately). After ``breaker_reset_timeout_s`` the next call is a trial (half-open): a
  success closes the breaker, a failure opens it for another period.
- **Observability.** Transitions are logged (``open`` at WARNING, the others at INFO) and passed
  to :func:`on_breaker_state`, which calls every callback registered with
  :func:`subscribe_breaker_state` (the metrics module exports them as a gauge). A process learns
  of a transition made by another process on its next guarded call; :func:`breaker_states` reads
  the shared truth directly, for health checks.

Why not pybreaker's ``CircuitRedisStorage``: it formats its own keys (four per breaker under
``pybreaker:``), stores ``opened_at`` in whole seconds (a short reset timeout ends up to a second
early), decodes replies with ``bytes.decode`` (breaks on ``decode_responses=True`` clients), makes
Redis calls in its constructor that raise when Redis is down, logs a traceback on every call
during an outage and uses a WATCH transaction to set ``opened_at``. :class:`RedisBreakerStorage`
keeps a per-process shadow of the state instead: while Redis is unreachable the breaker goes on
protecting this process on its own, and says so once in the log.

Also unlike plain pybreaker, :class:`SharedCircuitBreaker` does not hold its lock while the
guarded function runs (pybreaker does, which would serialise every provider call of a
multi-threaded client behind one slow request); only state transitions are locked.

Clock note: ``opened_at`` is written with the writer's clock and compared with the reader's, so
worker hosts need NTP-synchronised clocks (a skew of a second shifts the reset timeout by as much).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import pybreaker

from memory_engine.breaker_events import (
    BreakerState,
    BreakerStateCallback,
    on_breaker_state,
    subscribe_breaker_state,
    unsubscribe_breaker_state,
)
from memory_engine.errors import ConfigError
from memory_engine.keys import KeySpace
from memory_engine.store.breakers import (
    BREAKER_NAME_PATTERN,
    REDIS_RETRY_INTERVAL_S,
    RedisBreakerStorage,
    breaker_states,
)

if TYPE_CHECKING:
    from memory_engine.settings import Settings
    from memory_engine.store.connections import RedisClient

__all__ = [
    "BREAKER_NAME_PATTERN",
    "REDIS_RETRY_INTERVAL_S",
    "BreakerState",
    "BreakerStateCallback",
    "RedisBreakerStorage",
    "SharedCircuitBreaker",
    "breaker_name",
    "breaker_states",
    "build_breaker",
    "on_breaker_state",
    "subscribe_breaker_state",
    "unsubscribe_breaker_state",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.@:\-]")


class _StateListener(pybreaker.CircuitBreakerListener):
    """Logs transitions and forwards them to :func:`on_breaker_state`, once per new state.

    pybreaker notifies both transitions this breaker makes and ones it notices in Redis, and
    concurrent failing calls may each "open" it; remembering the last reported state keeps the
    log and the metric to one line per real change.
    """

    def __init__(self) -> None:
        self._last: str | None = None
        self._last_failure = ""
        self._lock = threading.Lock()

    def failure(self, cb: pybreaker.CircuitBreaker, exc: BaseException) -> None:
        # Remembered for the "open" line: the cause is logged once, with the transition, so a
        # caller whose failure opened the breaker need not log it (and no traceback at all).
        with self._lock:
            self._last_failure = f"{type(exc).__name__}: {exc}"[:300]

    def report_initial(self, name: str, state: str) -> None:
        with self._lock:
            self._last = state
        on_breaker_state(name, state)

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        name, state = cb.name or "unnamed", new_state.name
        with self._lock:
            previous, self._last = self._last, state
            cause = self._last_failure
        if previous == state:
            return
        if state == BreakerState.OPEN:
            logger.warning(
                "circuit breaker %s is open (was %s; last failure: %s): calls fail fast for %gs, "
                "then one trial call",
                name,
                previous,
                cause or "-",
                cb.reset_timeout,
            )
        elif state == BreakerState.HALF_OPEN:
            logger.info("circuit breaker %s is half-open: the next call is a trial", name)
        else:
            logger.info("circuit breaker %s is closed (was %s)", name, previous)
        on_breaker_state(name, state)


# ---- the breaker -------------------------------------------------------------------------------


class SharedCircuitBreaker(pybreaker.CircuitBreaker):
    """A pybreaker breaker that runs the guarded function outside its lock and translates an open
    circuit into the caller's error type (:meth:`call_or_raise`).

    Only exceptions of the types in ``failures`` count as failures; pybreaker treats any other
    exception as a success (it resets the failure count) and re-raises it. The exception that
    trips the breaker is re-raised as is, so the caller sees the real cause.
    """

    def __init__(
        self,
        name: str,
        *,
        fail_max: int,
        reset_timeout_s: float,
        storage: pybreaker.CircuitBreakerStorage,
        failures: tuple[type[BaseException], ...],
    ) -> None:
        if not BREAKER_NAME_PATTERN.match(name):
            raise ConfigError(f"invalid circuit breaker name {name!r}")
        self._listener = _StateListener()
        self._trial_running = False  # a half-open trial call of this process is in flight
        super().__init__(
            fail_max=fail_max,
            reset_timeout=reset_timeout_s,
            exclude=[lambda exc: not isinstance(exc, failures)],
            listeners=[self._listener],
            state_storage=storage,
            name=name,
            throw_new_error_on_trip=False,
        )
        self._listener.report_initial(name, self._state.name)

    def __repr__(self) -> str:
        return (
            f"SharedCircuitBreaker(name={self.name!r}, fail_max={self.fail_max}, "
            f"reset_timeout_s={self.reset_timeout:g}, storage={self._state_storage!r})"
        )

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``func`` by the rules of the current (shared) state; raises
        :class:`pybreaker.CircuitBreakerError` without calling it while the breaker is open.

        Half-open admits one trial call per process at a time: pybreaker gets that from holding
        its lock during the call, which this class does not, so other threads that arrive while
        the trial runs fail fast instead of all trying the endpoint that just failed.
        """
        with self._lock:
            stored = self.current_state  # one round trip; notices other processes' transitions
            if stored != self._state.name:
                self.state = stored  # pybreaker's setter takes a state name
            if self._state.name == BreakerState.OPEN and self._reset_timeout_elapsed():
                self.half_open()
            state = self._state
            trial = state.name == BreakerState.HALF_OPEN
            if trial:
                if self._trial_running:
                    raise pybreaker.CircuitBreakerError(
                        "half-open: a trial call is in progress, circuit breaker still open"
                    )
                self._trial_running = True
        try:
            return state.call(func, *args, **kwargs)
        finally:
            if trial:
                with self._lock:
                    self._trial_running = False

    def _reset_timeout_elapsed(self) -> bool:
        opened_at = self._state_storage.opened_at
        if opened_at is None:
            return True
        return datetime.now(UTC) >= opened_at + timedelta(seconds=self.reset_timeout)

    def call_or_raise(
        self,
        func: Callable[..., T],
        *args: Any,
        error_type: Callable[[str], Exception],
        **kwargs: Any,
    ) -> T:
        """:meth:`call`, with an open circuit raised as ``error_type(message)`` from pybreaker's
        error (for example :class:`~memory_engine.errors.SummarizerError`)."""
        try:
            return self.call(func, *args, **kwargs)
        except pybreaker.CircuitBreakerError as exc:
            raise error_type(
                f"circuit breaker {self.name} is open after repeated failures; call skipped "
                f"(retried after {self.reset_timeout:g}s)"
            ) from exc

    @property
    def current(self) -> BreakerState:
        """The state as stored (shared across processes when Redis-backed)."""
        return BreakerState(self.current_state)


def breaker_name(kind: str, provider: str, url: str) -> str:
    """``<kind>.<provider>@<host>[:<port>]`` for the endpoint ``url``: one breaker per endpoint.

    Characters a Redis key or metric label should not hold are replaced by ``_``.
    """
    parts = urlsplit(url)
    host = parts.hostname or "unknown"
    try:
        port = parts.port
    except ValueError:
        port = None
    where = f"{host}:{port}" if port else host
    name = _UNSAFE_NAME_CHARS.sub("_", f"{kind}.{provider}@{where}")
    return name[:200]


def build_breaker(
    name: str,
    settings: Settings,
    *,
    failures: tuple[type[BaseException], ...],
    redis: RedisClient | None = None,
    fail_max: int | None = None,
) -> SharedCircuitBreaker:
    """A breaker with ``settings.breaker_fail_max`` (or ``fail_max``) and
    ``settings.breaker_reset_timeout_s``.

    With ``redis`` its state lives under ``KeySpace(settings.key_prefix).breaker_prefix`` and is
    shared with every process using the same prefix; without, it is this process's own.
    """
    storage: pybreaker.CircuitBreakerStorage
    if redis is not None:
        storage = RedisBreakerStorage(redis, KeySpace(settings.key_prefix), name)
    else:
        storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
    return SharedCircuitBreaker(
        name,
        fail_max=settings.breaker_fail_max if fail_max is None else fail_max,
        reset_timeout_s=settings.breaker_reset_timeout_s,
        storage=storage,
        failures=failures,
    )
