"""Two real ``celery -A worker beat`` processes (RedBeat, config/celery.py) on the private Redis:
one sends, the other waits on the lock as a hot standby and takes over when the first dies.

No worker consumes the broker DB used here, so every message Beat sends stays in the
``memory.maintenance`` list, where the test counts it and reads its sender from the ``origin``
header (``gen<pid>@<host>``, set by Celery for every message).
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path

import pytest
import redis

from memory_engine.task_contract import QUEUE_MAINTENANCE, TASK_SWEEP_MARKERS
from tests.fixtures_worker import wait_for
from tests.integration.procs import (
    ServiceProcess,
    beat_process,
    memory_env,
    private_broker,
    running,
)

pytestmark = pytest.mark.slow

SWEEP_INTERVAL_S = 1
LOCK_TIMEOUT_S = 3
MAX_LOOP_INTERVAL_S = 1
SENDS_TO_OBSERVE = 6
# A standby retries the lock every loop interval once the dead holder's lock has expired.
TAKEOVER_BOUND_S = LOCK_TIMEOUT_S + MAX_LOOP_INTERVAL_S

broker_url = pytest.fixture(private_broker)  # no worker consumes it: sent tasks stay queued


def sweeps_by_origin(broker: redis.Redis) -> list[str]:
    """The ``origin`` of every queued memory.sweep_markers message, oldest first."""
    origins = []
    for raw in reversed(broker.lrange(QUEUE_MAINTENANCE, 0, -1)):  # LPUSHed: newest first
        headers = json.loads(raw)["headers"]
        if headers["task"] == TASK_SWEEP_MARKERS:
            origins.append(headers["origin"])
    return origins


def origin_of(beat: ServiceProcess) -> str:
    return f"gen{beat.pid}@{socket.gethostname()}"


def test_two_beats_schedule_once_and_the_standby_takes_over(
    redis_url: str, broker_url: str, tmp_path: Path
) -> None:
    broker = redis.Redis.from_url(broker_url)
    prefix = f"bt{uuid.uuid4().hex[:6]}"
    env = memory_env(
        redis_url=redis_url,
        broker_url=broker_url,
        key_prefix=prefix,
        marker_sweep_interval_s=SWEEP_INTERVAL_S,
        cleanup_interval_s=3600,
        reconcile_interval_s=3600,
        beat_lock_timeout_s=LOCK_TIMEOUT_S,
        beat_max_loop_interval_s=MAX_LOOP_INTERVAL_S,
    )
    lock_key = f"{prefix}:beat::lock"
    active = beat_process(env, tmp_path / "beat-a.log")
    standby = beat_process(env, tmp_path / "beat-b.log")
    with running(active, standby):
        active.start().wait_for_log(r"beat: Acquired lock")
        started = time.monotonic()
        standby.start().wait_for_log(r"beat: Starting")

        # Both run; only the lock holder sends, at one beat's rate.
        wait_for(
            lambda: len(sweeps_by_origin(broker)) >= SENDS_TO_OBSERVE,
            timeout=SENDS_TO_OBSERVE * SWEEP_INTERVAL_S + 20,
            what="the active Beat's sweeps",
        )
        elapsed_s = time.monotonic() - started
        origins = sweeps_by_origin(broker)
        assert set(origins) == {origin_of(active)}, "only the lock holder sends"
        # One scheduler sends at most once per interval (+1 for the first send); two would
        # send twice as many.
        assert len(origins) <= elapsed_s / SWEEP_INTERVAL_S + 1, (len(origins), elapsed_s)
        assert standby.alive and "Acquired lock" not in standby.logs()

        active.kill()
        killed = time.monotonic()
        assert broker.pttl(lock_key) > 0, "the dead Beat's lock is still held until it expires"
        standby.wait_for_log(r"beat: Acquired lock", timeout_s=TAKEOVER_BOUND_S + 10)
        takeover_s = time.monotonic() - killed
        sent_before = len(origins)
        wait_for(
            lambda: origin_of(standby) in sweeps_by_origin(broker),
            timeout=SWEEP_INTERVAL_S + 10,
            what="the new lock holder to send",
        )
        after = sweeps_by_origin(broker)
        # The standby's sends all come after the active one's: no overlap, no gap-filling burst.
        first_new = after.index(origin_of(standby))
        assert set(after[:first_new]) == {origin_of(active)}
        assert set(after[first_new:]) == {origin_of(standby)}
        assert first_new >= sent_before
        print(f"standby took over {takeover_s:.1f}s after SIGKILL (bound {TAKEOVER_BOUND_S}s)")
