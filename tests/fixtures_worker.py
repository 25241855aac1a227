"""Celery fixtures: an in-process worker (solo pool, real Redis broker) for the whole session.

The worker consumes every engine queue from the private Redis (broker on DB 1). Tests drive it
through a MemoryClient that shares the worker's settings and key prefix; each test uses its own
memory keys, so nothing is flushed between tests (FLUSHDB under a running worker breaks kombu).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker

from memory_engine.client import MemoryClient
from memory_engine.settings import Settings
from memory_engine.task_contract import QUEUE_MAINTENANCE, QUEUES
from tests.builders import fifo, hybrid, resource_yaml, resources_yaml

HOOK_TASK = "tests.record_removal"
"""A pre-removal hook registered in the in-process worker: it records each call in Redis."""


def hook_calls_key(worker_prefix: str, memory_id: str) -> str:
    """Where :data:`HOOK_TASK` records its calls for ``memory_id`` (a test-only key)."""
    return f"{worker_prefix}:test-hook:{memory_id}"


WORKER_RESOURCES = resources_yaml(
    resource_yaml("fifo-small", max_messages=10, flushing=fifo(), key_prefix="fifo"),
    resource_yaml(
        "tok-small", type="token_based", max_tokens=300, flushing=fifo(), key_prefix="tok"
    ),
    resource_yaml(
        "hybrid-small", type="token_based", max_tokens=600, flushing=hybrid(80), key_prefix="hyb"
    ),
    resource_yaml(
        "evict-small",
        max_messages=10,
        flushing=hybrid(50, threshold=1.0),
        eviction={"policy": "fifo"},
        key_prefix="ev",
    ),
    resource_yaml("short-ttl", max_messages=100, ttl="1s", key_prefix="ttl"),
    # The archive's pre-removal hook (tests/integration/test_archive.py): the flush never
    # triggers on its own (threshold 1.0 with appends kept below it), the test flushes inline.
    resource_yaml(
        "arch-hook",
        max_messages=10,
        flushing=fifo(threshold=1.0),
        archive={
            "enabled": True,
            "on_remove_task": HOOK_TASK,
            "on_remove_queue": QUEUE_MAINTENANCE,
        },
        key_prefix="arh",
    ),
)
"""Resources of the in-process worker (its registry reads them)."""


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def worker_resources_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("resources")
    (d / "worker_test.yaml").write_text(WORKER_RESOURCES)
    return d


def broker_url_for(redis_url: str, db: int) -> str:
    return redis_url.rsplit("/", 1)[0] + f"/{db}"


@pytest.fixture(scope="session")
def worker_settings(redis_url: str, worker_resources_dir: Path) -> Settings:
    return Settings(
        redis_url=redis_url,  # type: ignore[arg-type]
        broker_url=broker_url_for(redis_url, 1),  # type: ignore[arg-type]
        key_prefix="wk",
        resources_dir=worker_resources_dir,
        socket_timeout_s=5.0,
        flush_marker_ttl_s=60,
    )


@pytest.fixture(scope="session")
def celery_app(worker_settings: Settings) -> Celery:
    from worker.app import create_app

    app = create_app(worker_settings)
    # Keep pytest's log capture working (the worker would otherwise take over the root logger).
    app.conf.worker_hijack_root_logger = False
    redis_dsn, prefix = worker_settings.redis_dsn(), worker_settings.key_prefix

    @app.task(name=HOOK_TASK)  # type: ignore[misc]
    def record_removal(memory_id: str, first_seq: int, last_seq: int, reason: str) -> None:
        r = redis.Redis.from_url(redis_dsn)
        try:
            call = {"first_seq": first_seq, "last_seq": last_seq, "reason": reason}
            r.rpush(hook_calls_key(prefix, memory_id), json.dumps(call))
        finally:
            r.close()

    return app


@pytest.fixture(scope="session")
def celery_worker(celery_app: Celery, worker_settings: Settings) -> Iterator[Any]:
    from tasks.runtime import reset_engine_client

    engine = MemoryClient(worker_settings)
    reset_engine_client(engine)
    with start_worker(
        celery_app,
        pool="solo",
        queues=list(QUEUES),
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=20,
    ) as w:
        yield w
    reset_engine_client(None)
    engine.close()


@pytest.fixture
def engine(worker_settings: Settings) -> Iterator[MemoryClient]:
    with MemoryClient(worker_settings) as c:
        yield c
