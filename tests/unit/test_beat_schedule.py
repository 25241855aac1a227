"""The Beat schedule against the worker app: every scheduled name is a registered task, routed to
an existing queue (DESIGN §5). Pure: no Redis, no broker connection."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from celery import Celery

import beat_schedule
from memory_engine.errors import ConfigError
from memory_engine.settings import Settings
from memory_engine.task_contract import QUEUES, TASK_ROUTES
from worker.app import create_app

SETTINGS = Settings(cleanup_interval_s=11, reconcile_interval_s=22, marker_sweep_interval_s=33)


@pytest.fixture(scope="module")
def app() -> Celery:
    import tasks  # noqa: F401  (registers the shared tasks on every app)

    return create_app(SETTINGS)


def schedules(app: Celery) -> list[tuple[str, str, dict[str, Any]]]:
    schedule = beat_schedule.build_beat_schedule(SETTINGS)
    found = [("build_beat_schedule(SETTINGS)", n, e) for n, e in schedule.items()]
    found += [("create_app().conf.beat_schedule", n, e) for n, e in app.conf.beat_schedule.items()]
    return found


def test_every_scheduled_task_is_registered_and_routed_to_an_existing_queue(app: Celery) -> None:
    entries = schedules(app)
    assert len(entries) >= 6, "both schedules have entries"
    for where, name, entry in entries:
        task = entry["task"]
        assert task in app.tasks, f"{where}[{name}]: {task} is not a registered task"
        declared = {q.name for q in app.conf.task_queues}
        routed = app.amqp.router.route(dict(entry.get("options", {})), task)["queue"].name
        assert routed in QUEUES and routed in declared, f"{where}[{name}] -> {routed}"
        # The entry's explicit queue and the task's route agree (a worker on the routed queue
        # also gets the scheduled sends).
        assert routed == TASK_ROUTES[task]["queue"], f"{where}[{name}]"


def test_intervals_come_from_settings(app: Celery) -> None:
    every = {e["task"]: e["schedule"] for e in app.conf.beat_schedule.values()}
    assert sorted(every.values()) == [timedelta(seconds=s) for s in (11, 22, 33)]
    for entry in app.conf.beat_schedule.values():
        # A send that waited longer than its interval is stale: it expires instead of piling up.
        assert entry["options"]["expires"] == entry["schedule"].total_seconds()


def test_beat_uses_redbeat_with_a_lock_from_settings() -> None:
    conf = create_app(SETTINGS.replace(beat_lock_timeout_s=7, beat_max_loop_interval_s=2)).conf
    assert conf.beat_scheduler == "redbeat.RedBeatScheduler"
    assert (conf.redbeat_lock_timeout, conf.beat_max_loop_interval) == (7, 2)
    assert conf.redbeat_key_prefix.startswith(SETTINGS.key_prefix + ":")
    # RedBeat extends its lock once per loop: a loop as long as the lock would let it lapse.
    with pytest.raises(ConfigError, match="beat_max_loop_interval_s"):
        SETTINGS.replace(beat_lock_timeout_s=5, beat_max_loop_interval_s=5)
