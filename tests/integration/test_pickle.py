"""No pickle anywhere (DESIGN §5): a worker refuses a pickled task message and runs a JSON one.

The messages are published with kombu directly (not through Celery's producer, which would
refuse to serialize with pickle under our configuration), in Celery's task protocol 2, to the
queue of a real ``celery -A worker worker`` subprocess. The pickled one carries a payload that
would create a directory if it were ever unpickled.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue

from memory_engine.client import MemoryClient
from memory_engine.task_contract import QUEUE_FLUSH, TASK_FLUSH
from tests.fixtures_worker import wait_for

from .helpers import ctx
from .procs import memory_env, private_broker, running, settings_from_env, worker_process

pytestmark = pytest.mark.slow


class Canary:
    """Unpickling this calls ``os.mkdir(path)``: proof of code execution if it ever happens."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.path),))


def publish(broker_url: str, kwargs: dict[str, Any], serializer: str) -> str:
    """One ``memory.flush`` message in task protocol 2, published with kombu."""
    task_id = str(uuid.uuid4())
    exchange = Exchange(QUEUE_FLUSH, "direct")
    headers = {
        "lang": "py",
        "task": TASK_FLUSH,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "timelimit": [None, None],
        "argsrepr": "()",
        "kwargsrepr": repr(sorted(kwargs)),
        "origin": "test_pickle",
        "ignore_result": False,
    }
    body = ((), kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None})
    with Connection(broker_url) as conn:
        conn.Producer().publish(
            body,
            exchange=exchange,
            routing_key=QUEUE_FLUSH,
            declare=[Queue(QUEUE_FLUSH, exchange, routing_key=QUEUE_FLUSH)],
            serializer=serializer,
            headers=headers,
            correlation_id=task_id,
        )
    return task_id


broker_url = pytest.fixture(private_broker)


def test_worker_refuses_pickled_task_and_runs_json_one(
    redis_url: str, broker_url: str, worker_resources_dir: Path, tmp_path: Path
) -> None:
    broker = redis.Redis.from_url(broker_url)
    env = memory_env(
        redis_url=redis_url,
        broker_url=broker_url,
        key_prefix=f"pk{uuid.uuid4().hex[:6]}",
        resources_dir=worker_resources_dir,
    )
    worker = worker_process(env, tmp_path / "worker.log", queues=QUEUE_FLUSH, name="pickle")
    canary = tmp_path / "unpickled"
    with running(worker), MemoryClient(settings_from_env(env)) as client:
        worker.start().wait_for_log(r"ready\.")
        memory = client.memory("fifo-small", ctx(uuid.uuid4().hex[:10]))
        for i in range(7):  # below the threshold: nothing else enqueues a flush
            memory.append({"role": "user", "content": f"m{i}"})
        before = memory.stats()
        kwargs = {"memory_id": memory.key, "resource_id": "fifo-small"}

        pickled = publish(broker_url, {**kwargs, "canary": Canary(canary)}, "pickle")
        worker.wait_for_log(r"ContentDisallowed|Refusing to deserialize untrusted content")
        wait_for(
            lambda: broker.llen(QUEUE_FLUSH) == 0 and broker.hlen("unacked") == 0,
            what="the pickled message to be discarded",
        )
        assert not canary.exists(), "the pickled payload was deserialized"
        assert memory.stats() == before
        assert f"Task {TASK_FLUSH}[{pickled}] succeeded" not in worker.logs()

        accepted = publish(broker_url, kwargs, "json")
        worker.wait_for_log(rf"Task {TASK_FLUSH}\[{accepted}\] succeeded")
        after = memory.stats()
        assert (after.message_count, after.flushed_count) == (5, 2)
