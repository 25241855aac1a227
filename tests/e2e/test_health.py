"""``memory_engine.tooling.health`` against real processes: a Beat started by ``Services``
(celery-redbeat
on the private Redis), real breaker state, and the in-process worker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from memory_engine.breakers import RedisBreakerStorage
from memory_engine.keys import KeySpace
from memory_engine.settings import Settings
from memory_engine.task_contract import QUEUES
from memory_engine.tooling.health import CheckStatus, beat_status, check_health
from memory_engine.tooling.processes import pid_alive
from memory_engine.tooling.services import Services
from tests.fixtures_worker import broker_url_for, wait_for

BEAT_BROKER_DB = 8  # nothing consumes here


@pytest.fixture
def beat_settings(redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=redis_url,  # type: ignore[arg-type]
        broker_url=broker_url_for(redis_url, BEAT_BROKER_DB),  # type: ignore[arg-type]
        key_prefix=f"hb{uuid.uuid4().hex[:6]}",
        resources_dir=Path(__file__).resolve().parents[2] / "config" / "resources",
    )


@pytest.fixture
def broker(beat_settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(beat_settings.broker_dsn())
    yield client
    client.delete(*QUEUES)
    client.close()


def judge(client: redis.Redis, settings: Settings, **kwargs: Any) -> Any:
    return beat_status(
        client,
        KeySpace(settings.key_prefix),
        lock_timeout_s=settings.beat_lock_timeout_s,
        max_loop_interval_s=settings.beat_max_loop_interval_s,
        **kwargs,
    )


def test_beat_is_unknown_until_one_runs_then_ok_then_failed_when_stopped(
    beat_settings: Settings, broker: redis.Redis, tmp_path: Path
) -> None:
    unknown = judge(broker, beat_settings)
    assert unknown.status is CheckStatus.UNKNOWN and not unknown.failed
    assert judge(broker, beat_settings, require_beat=True).failed

    with Services(beat_settings, log_dir=tmp_path) as services:
        beat = services.start_beat(loglevel="INFO")

        def sent() -> Any:
            result = judge(broker, beat_settings)
            return (
                result if result.status is CheckStatus.OK and result.data["last_sent_at"] else None
            )

        ok = wait_for(sent, timeout=30, what="Beat to take its lock and send")
        assert ok.data["lock_held"] is True and ok.data["entries"] == 3
        assert 0 <= ok.data["last_tick_age_s"] <= beat_settings.beat_lock_timeout_s
        pids = beat.pids()
    assert [pid for pid in pids if pid_alive(pid)] == []

    stopped = judge(broker, beat_settings)
    assert stopped.failed and "no Beat holds" in stopped.detail
    assert stopped.data["last_sent_at"] == ok.data["last_sent_at"]


def test_a_beat_holding_its_lock_with_overdue_entries_is_stuck(
    beat_settings: Settings, broker: redis.Redis, tmp_path: Path
) -> None:
    keyspace = KeySpace(beat_settings.key_prefix)
    with Services(beat_settings, log_dir=tmp_path) as services:
        services.start_beat()
        wait_for(lambda: judge(broker, beat_settings).status is CheckStatus.OK, timeout=30)
    # A hung Beat: its lock still there, its entries long past due.
    broker.set(keyspace.beat_lock, "someone", ex=60)
    entry = broker.zrange(keyspace.beat_schedule, 0, 0)[0]
    broker.zadd(keyspace.beat_schedule, {entry: 1_000_000})
    stuck = judge(broker, beat_settings)
    assert stuck.failed and "overdue" in stuck.detail


def test_open_breaker_is_a_warning_not_a_failure(
    celery_worker: Any, worker_settings: Settings, key_prefix: str
) -> None:
    settings = worker_settings.replace(key_prefix=key_prefix)
    data = redis.Redis.from_url(settings.redis_dsn())
    try:
        storage = RedisBreakerStorage(data, KeySpace(key_prefix), "summarizer.openai@example")
        storage.state = "open"
        report = check_health(settings)
    finally:
        data.close()
    breakers = report.get("breakers")
    assert breakers.status is CheckStatus.WARN
    assert breakers.data["states"] == {"summarizer.openai@example": "open"}
    assert report.healthy, report.as_dict()
    assert report.get("workers").status is CheckStatus.OK


def test_queue_backlog_over_the_limit_fails(beat_settings: Settings, broker: redis.Redis) -> None:
    broker.rpush("memory.flush", *[b"x"] * 3)
    report = check_health(beat_settings, max_backlog=2, ping_timeout_s=0.2)
    queues = report.get("queues")
    assert queues.failed and queues.data["backlog"]["memory.flush"] == 3
    assert not report.healthy
