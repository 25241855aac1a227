"""Malformed items pushed raw into a queue do not stop a real worker (``worker/poison.py``).

Each poison shape is pushed with redis-py the way a confused producer or an attacker with broker
access would; then a valid flush must still run, the worker must still be alive, the log must
name the queue and the reason but never the item's content, and the items must be kept in the
capped dead-letter list on the broker.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from memory_engine.client import MemoryClient
from memory_engine.task_contract import QUEUE_FLUSH, TASK_FLUSH
from tests.fixtures_worker import wait_for
from tests.integration.helpers import ctx
from tests.integration.procs import (
    memory_env,
    private_broker,
    running,
    settings_from_env,
    worker_process,
)
from worker.poison import DEAD_LETTER_MAX_ITEMS, DEAD_LETTER_QUEUE, poison_reason

pytestmark = pytest.mark.slow

broker_url = pytest.fixture(private_broker)

MARK = f"poison-content-{uuid.uuid4().hex}"
"""In every poison item: it must never reach the worker log."""


def _envelope(body: str, *, body_encoding: str = "base64", task: str | None = TASK_FLUSH) -> str:
    """A kombu envelope for ``task`` around ``body`` (already encoded)."""
    headers = {"lang": "py", "id": str(uuid.uuid4()), "kwargsrepr": MARK}
    if task is not None:
        headers["task"] = task
    return json.dumps(
        {
            "body": body,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {
                "correlation_id": str(uuid.uuid4()),
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": QUEUE_FLUSH},
                "priority": 0,
                "body_encoding": body_encoding,
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


TRANSPORT_POISON = {
    "not JSON": f"not json {MARK}",
    "invalid base64 body": _envelope(f"!!{MARK}!!*"),
    "JSON but not an object": json.dumps([MARK]),
    "no delivery tag": json.dumps({"body": MARK, "properties": {}}),
    "unknown body encoding": _envelope(MARK, body_encoding="rot13"),
}
"""Items kombu cannot turn into a message: screened at the transport and dead-lettered."""

CELERY_POISON = {
    "body not JSON": _envelope(_b64(f"not json {MARK}")),
    "unknown task": _envelope(_b64(json.dumps([[MARK], {}, {}])), task=f"nope.{MARK[:8]}"),
    "no task header, body not JSON": _envelope(_b64(f"not json {MARK}"), task=None),
}
"""Valid envelopes whose content Celery rejects: dropped by Celery, logged without content."""


@pytest.fixture
def broker(broker_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(broker_url)
    yield client
    client.close()


def test_poison_messages_are_dead_lettered_and_the_worker_keeps_consuming(
    redis_url: str,
    broker_url: str,
    broker: redis.Redis,
    worker_resources_dir: Path,
    tmp_path: Path,
) -> None:
    env = memory_env(
        redis_url=redis_url,
        broker_url=broker_url,
        key_prefix=f"po{uuid.uuid4().hex[:6]}",
        resources_dir=worker_resources_dir,
    )
    worker = worker_process(env, tmp_path / "worker.log", queues=QUEUE_FLUSH, name="poisoned")
    with running(worker), MemoryClient(settings_from_env(env)) as client:
        worker.start().wait_for_log(r"ready\.")
        for item in [*TRANSPORT_POISON.values(), *CELERY_POISON.values()]:
            broker.lpush(QUEUE_FLUSH, item)

        def all_popped() -> bool:
            assert worker.alive, f"the worker died:\n{worker.tail()}"
            return broker.llen(QUEUE_FLUSH) == 0

        wait_for(all_popped, what="the worker to pop every item")

        memory = client.memory("fifo-small", ctx(uuid.uuid4().hex[:10]))
        for i in range(8):  # the 8th append crosses the threshold: one memory.flush
            memory.append({"role": "user", "content": f"message {i}"})
        wait_for(
            lambda: memory.stats().flushed_count > 0,
            what=f"the valid flush after the poison:\n{worker.tail()}",
        )
        assert worker.alive, worker.tail()

        log = worker.logs()
        assert "Unrecoverable error" not in log
        assert MARK not in log, "a poison item's content reached the log"
        screened = log.count(f"dropped a malformed message from queue {QUEUE_FLUSH}")
        assert screened == len(TRANSPORT_POISON), log
        assert log.count("dropped a task message:") == len(CELERY_POISON), log
        assert "Traceback" not in log

        dead = [json.loads(raw) for raw in broker.lrange(DEAD_LETTER_QUEUE, 0, -1)]
        assert len(dead) == len(TRANSPORT_POISON)
        assert {d["queue"] for d in dead} == {QUEUE_FLUSH}
        assert all(MARK in d["item"] and d["reason"] for d in dead)
        assert broker.llen(DEAD_LETTER_QUEUE) <= DEAD_LETTER_MAX_ITEMS


def test_poison_reason_accepts_what_kombu_publishes() -> None:
    from kombu.transport.virtual.base import Channel

    codecs = Channel.codecs
    channel = type("C", (), {"decode_body": lambda self, b, e: codecs[e].decode(b) if e else b})()
    valid = _envelope(base64.b64encode(b'[[], {"memory_id": "p:k"}, {}]').decode())
    assert poison_reason(valid, channel) is None
    for name, item in TRANSPORT_POISON.items():
        assert poison_reason(item, channel), name
    for name, item in CELERY_POISON.items():
        assert poison_reason(item, channel) is None, name
