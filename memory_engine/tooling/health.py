"""Health checks for operators and orchestrators: ``memory-engine health``.

:func:`check_health` runs every check and returns a :class:`HealthReport`; each check ends
``ok``, ``warn`` (worth a look, not a failure), ``fail``, ``unknown`` (nothing to judge by yet) or
``skipped``. The report is healthy when no check failed.

Checks, in order:

- ``redis``: PING on the memory-data Redis, with its round-trip latency.
- ``broker``: a connection to the Celery broker (Redis or RabbitMQ; the detail names which).
- ``workers``: live workers answering a Celery control ping (none = fail).
- ``beat``: celery-redbeat's schedule in its Redis (``Settings.beat_redis_dsn``: the broker when it
  is Redis, else the data Redis or ``MEMORY_BEAT_REDIS_URL``; ``<key_prefix>:beat:``). RedBeat
  keeps a sorted set of entry keys scored by their next due time, a ``meta`` JSON with
  ``last_run_at`` per entry, and a lock that the running Beat extends to ``beat_lock_timeout_s`` on
  every tick and releases on a clean stop; so the lock's remaining TTL dates Beat's last tick.
  Nothing there = no Beat ever ran: ``unknown``, a failure only with ``require_beat``. Lock held
  and no entry overdue = ``ok``. No lock (Beat stopped, or died and its lock expired) or an entry
  overdue by more than ``BEAT_OVERDUE_GRACE_S`` plus one Beat loop (Beat hung) = ``fail``.
- ``queues``: backlog of each engine queue (LLEN on Redis, with the unacknowledged deliveries;
  a passive ``queue.declare`` on RabbitMQ, which counts ready messages only); over
  ``max_backlog`` = fail.
- ``breakers``: circuit breaker states from ``memory_engine.breakers.breaker_states`` (shared in
  Redis); an open or half-open breaker is a warning (flushes fall back and lose nothing), not a
  failure. Skipped in a build without that module.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from memory_engine.errors import StoreUnavailable
from memory_engine.keys import KeySpace
from memory_engine.settings import Settings
from memory_engine.store import inspect, translate_errors
from memory_engine.task_contract import QUEUES

__all__ = [
    "BEAT_OVERDUE_GRACE_S",
    "CheckResult",
    "CheckStatus",
    "DEFAULT_MAX_BACKLOG",
    "HealthReport",
    "beat_status",
    "check_health",
]

DEFAULT_PING_TIMEOUT_S = 1.0
DEFAULT_MAX_BACKLOG = 10_000
# Beat wakes at least every beat_max_loop_interval (10 s in config/celery.py) and sends what is
# due; an entry still unsent a minute after its due time means Beat is not doing its job.
BEAT_OVERDUE_GRACE_S = 60.0
BEAT_MAX_ENTRIES = 100
# Kombu's Redis transport keeps delivered-but-unacknowledged messages in this hash.
UNACKED_HASH = "unacked"


class CheckStatus(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    UNKNOWN = "unknown"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class CheckResult:
    """One check: its status, a human sentence, and machine-readable figures."""

    name: str
    status: CheckStatus
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status is CheckStatus.FAIL

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status.value, "detail": self.detail, **self.data}


@dataclass(frozen=True)
class HealthReport:
    """Every check's result; ``healthy`` when none failed."""

    checks: tuple[CheckResult, ...]
    checked_at: float

    @property
    def healthy(self) -> bool:
        return not any(c.failed for c in self.checks)

    def get(self, name: str) -> CheckResult:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "checked_at": self.checked_at,
            "checks": {c.name: c.as_dict() for c in self.checks},
        }


def _redis(url: str, timeout_s: float) -> Any:
    # No retries: a health check reports what it sees now, within its timeout.
    return inspect.client_for_url(url, timeout_s=timeout_s, name="memory-engine-health")


def _guard(name: str, check: Callable[[], CheckResult]) -> CheckResult:
    """Run ``check``; an unexpected exception is that check's failure, never a crash."""
    try:
        with translate_errors(f"the {name} check"):
            return check()
    except StoreUnavailable as exc:
        return CheckResult(name, CheckStatus.FAIL, f"unreachable: {exc.__cause__ or exc}")
    except Exception as exc:
        return CheckResult(name, CheckStatus.FAIL, f"{type(exc).__name__}: {exc}")


def _data_redis(settings: Settings) -> Any:
    """The memory-data Redis in its mode (``MEMORY_REDIS_MODE``), no retries."""
    return inspect.client_for_settings(
        settings, timeout_s=settings.socket_connect_timeout_s, name="memory-engine-health"
    )


def check_redis(settings: Settings) -> CheckResult:
    client = _data_redis(settings)
    try:
        info = inspect.redis_info(client)
        latency_ms, version = info.latency_ms, info.version
    finally:
        client.close()
    return CheckResult(
        "redis",
        CheckStatus.OK,
        f"PING answered in {latency_ms:.1f} ms (Redis {version})",
        {"latency_ms": round(latency_ms, 3), "version": version},
    )


def check_broker(app: Any, timeout_s: float) -> CheckResult:
    conn = app.connection_for_write()
    try:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout_s)
        transport = conn.transport_cls
    finally:
        conn.release()
    return CheckResult(
        "broker", CheckStatus.OK, f"connected ({transport})", {"transport": str(transport)}
    )


def check_workers(app: Any, timeout_s: float) -> CheckResult:
    replies = app.control.ping(timeout=timeout_s) or []
    nodes = sorted(name for reply in replies for name in reply)
    if not nodes:
        return CheckResult(
            "workers",
            CheckStatus.FAIL,
            f"no worker answered a ping within {timeout_s:g} s",
            {"count": 0, "nodes": []},
        )
    return CheckResult(
        "workers",
        CheckStatus.OK,
        f"{len(nodes)} worker(s) answered: {', '.join(nodes)}",
        {"count": len(nodes), "nodes": nodes},
    )


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _last_run_at(raw_meta: Any) -> float | None:
    """``last_run_at`` from a RedBeat entry's ``meta`` JSON, as unix time."""
    if not raw_meta:
        return None
    from redbeat.decoder import RedBeatJSONDecoder  # RedBeat's own datetime encoding

    meta = json.loads(_decode(raw_meta), cls=RedBeatJSONDecoder)
    value = meta.get("last_run_at")
    return value.timestamp() if isinstance(value, datetime) else None


def beat_status(
    client: Any,
    keyspace: KeySpace,
    *,
    lock_timeout_s: float,
    max_loop_interval_s: float,
    require_beat: bool = False,
    now: float | None = None,
) -> CheckResult:
    """Judge celery-redbeat's state in ``client`` (the broker Redis). See the module docstring.

    ``lock_timeout_s`` and ``max_loop_interval_s`` are the Beat's ``redbeat_lock_timeout`` and
    ``beat_max_loop_interval`` (settings ``beat_lock_timeout_s``, ``beat_max_loop_interval_s``).
    """
    now = time.time() if now is None else now
    state = inspect.beat_state(client, keyspace, max_entries=BEAT_MAX_ENTRIES)
    entries = state.entries
    lock_ttl_s = state.lock_ttl_ms / 1000 if state.lock_ttl_ms is not None else None
    if not entries and lock_ttl_s is None:
        status = CheckStatus.FAIL if require_beat else CheckStatus.UNKNOWN
        return CheckResult(
            "beat",
            status,
            f"no Beat has run against this broker (nothing under {keyspace.beat_prefix})",
            {"lock_held": False, "last_tick_age_s": None, "last_sent_at": None, "entries": 0},
        )
    keys = [key for key, _score in entries]
    runs = [r for r in (_last_run_at(raw) for raw in state.metas) if r is not None]
    last_sent_at = max(runs) if runs else None
    # Scores are the next due times (unix seconds); -1 marks an entry that never runs again.
    due = [(now - score, key) for key, score in entries if score >= 0]
    overdue_s, overdue_key = max(due, default=(0.0, ""), key=lambda pair: pair[0])
    # Every tick extends the lock back to the full timeout, so what is gone of it is the time
    # since the last tick.
    tick_age_s = max(0.0, lock_timeout_s - lock_ttl_s) if lock_ttl_s is not None else None
    data = {
        "lock_held": lock_ttl_s is not None,
        "last_tick_age_s": round(tick_age_s, 3) if tick_age_s is not None else None,
        "last_sent_at": last_sent_at,
        "entries": len(keys),
        "max_overdue_s": round(max(0.0, overdue_s), 3),
    }
    sent = f"last sent {now - last_sent_at:.0f} s ago" if last_sent_at else "nothing sent yet"
    if tick_age_s is None:
        return CheckResult(
            "beat",
            CheckStatus.FAIL,
            f"no Beat holds the schedule lock (Beat stopped, or died); {sent}",
            data,
        )
    if overdue_s > BEAT_OVERDUE_GRACE_S + max_loop_interval_s:
        entry = overdue_key.removeprefix(keyspace.beat_prefix)
        return CheckResult(
            "beat",
            CheckStatus.FAIL,
            f"Beat holds its lock but {entry!r} is {overdue_s:.0f} s overdue (Beat is stuck)",
            data,
        )
    return CheckResult("beat", CheckStatus.OK, f"Beat ticked {tick_age_s:.0f} s ago; {sent}", data)


def check_queues(client: Any, max_backlog: int) -> CheckResult:
    backlog, unacked = inspect.queue_lengths(client, QUEUES, UNACKED_HASH)
    return _judge_backlog(backlog, unacked, max_backlog)


def _judge_backlog(backlog: dict[str, int], unacked: int | None, max_backlog: int) -> CheckResult:
    total = sum(backlog.values())
    data = {"backlog": backlog, "total": total, "unacked": unacked, "max": max_backlog}
    listed = ", ".join(f"{q}={n}" for q, n in backlog.items())
    if total > max_backlog:
        return CheckResult(
            "queues", CheckStatus.FAIL, f"backlog {total} > {max_backlog} ({listed})", data
        )
    return CheckResult("queues", CheckStatus.OK, f"backlog {total} ({listed})", data)


def check_amqp_queues(settings: Settings, max_backlog: int) -> CheckResult:
    """:func:`check_queues` for RabbitMQ: ready messages per queue (no unacked count: RabbitMQ
    returns a dead consumer's deliveries to the queue itself)."""
    from memory_engine.producer import TaskProducer

    producer = TaskProducer(settings)
    try:
        backlog = producer.queue_depths()
    finally:
        producer.close()
    return _judge_backlog(backlog, None, max_backlog)


def check_beat(settings: Settings, keyspace: KeySpace, require_beat: bool) -> CheckResult:
    """:func:`beat_status` on RedBeat's Redis (``Settings.beat_redis_dsn``)."""
    client = _redis(settings.beat_redis_dsn(), settings.socket_connect_timeout_s)
    try:
        return beat_status(
            client,
            keyspace,
            lock_timeout_s=settings.beat_lock_timeout_s,
            max_loop_interval_s=settings.beat_max_loop_interval_s,
            require_beat=require_beat,
        )
    finally:
        client.close()


def check_breakers(client: Any, keyspace: KeySpace) -> CheckResult:
    if importlib.util.find_spec("memory_engine.breakers") is None:
        return CheckResult("breakers", CheckStatus.SKIPPED, "no circuit breakers in this build")
    module = importlib.import_module("memory_engine.breakers")
    reader = getattr(module, "breaker_states", None)
    if not callable(reader):
        return CheckResult(
            "breakers", CheckStatus.SKIPPED, "memory_engine.breakers has no breaker_states()"
        )
    states: Mapping[str, Any] = reader(client, keyspace)
    named = {str(k): str(v).lower() for k, v in states.items()}
    opened = sorted(name for name, state in named.items() if state != "closed")
    if opened:
        return CheckResult(
            "breakers",
            CheckStatus.WARN,
            f"not closed: {', '.join(f'{n}={named[n]}' for n in opened)} (flushes fall back)",
            {"states": named},
        )
    detail = f"{len(named)} closed" if named else "no circuit breaker has been used yet"
    return CheckResult("breakers", CheckStatus.OK, detail, {"states": named})


def check_health(
    settings: Settings,
    *,
    require_beat: bool = False,
    ping_timeout_s: float = DEFAULT_PING_TIMEOUT_S,
    max_backlog: int = DEFAULT_MAX_BACKLOG,
) -> HealthReport:
    """Run every check against ``settings``' Redis and broker. Never raises for a bad service:
    an unreachable Redis or broker is a failed check in the report."""
    from memory_engine.producer import TaskProducer

    keyspace = KeySpace(settings.key_prefix)
    checks: list[CheckResult] = [_guard("redis", lambda: check_redis(settings))]
    producer = TaskProducer(settings)
    try:
        broker = _guard("broker", lambda: check_broker(producer.app, ping_timeout_s))
        checks.append(broker)
        if broker.failed:
            checks.append(CheckResult("workers", CheckStatus.FAIL, "broker unreachable"))
        else:
            checks.append(_guard("workers", lambda: check_workers(producer.app, ping_timeout_s)))
    finally:
        producer.close()

    checks.append(_guard("beat", lambda: check_beat(settings, keyspace, require_beat)))
    kind = settings.broker_kind()
    if broker.failed:
        checks.append(CheckResult("queues", CheckStatus.FAIL, "broker unreachable"))
    elif kind == "redis":
        broker_redis = _redis(settings.broker_dsn(), settings.socket_connect_timeout_s)
        try:
            checks.append(_guard("queues", lambda: check_queues(broker_redis, max_backlog)))
        finally:
            broker_redis.close()
    elif kind == "amqp":
        checks.append(_guard("queues", lambda: check_amqp_queues(settings, max_backlog)))
    else:
        checks.append(
            CheckResult("queues", CheckStatus.SKIPPED, "the broker is neither Redis nor RabbitMQ")
        )

    def breakers() -> CheckResult:
        data_redis = _data_redis(settings)
        try:
            return check_breakers(data_redis, keyspace)
        finally:
            data_redis.close()

    checks.append(_guard("breakers", breakers))
    return HealthReport(tuple(checks), time.time())
