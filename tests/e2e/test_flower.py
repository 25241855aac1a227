"""A real Flower process (``celery -A worker flower``) watching a real worker subprocess.

Basic auth comes from ``MEMORY_FLOWER_USER``/``MEMORY_FLOWER_PASSWORD`` (worker/flower_auth.py);
without credentials and without ``MEMORY_FLOWER_UNAUTHENTICATED_DEV`` Flower must not start.
"""

from __future__ import annotations

import json
import secrets
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest

from memory_engine.client import MemoryClient
from memory_engine.task_contract import QUEUE_FLUSH, TASK_FLUSH
from memory_engine.tooling.embedded_redis import free_port
from tests.fixtures_worker import wait_for
from tests.integration.helpers import ctx
from tests.integration.procs import (
    flower_process,
    http_get,
    http_status,
    memory_env,
    private_broker,
    running,
    settings_from_env,
    worker_process,
)

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 30.0

broker_url = pytest.fixture(private_broker)


def _json(url: str, auth: tuple[str, str]) -> Any:
    status, body = http_get(url, auth)
    return json.loads(body) if status == 200 else None


def test_flower_lists_worker_and_flush_tasks_behind_basic_auth(
    redis_url: str, broker_url: str, worker_resources_dir: Path, tmp_path: Path
) -> None:
    auth = ("ops", secrets.token_hex(8))
    env = memory_env(
        redis_url=redis_url,
        broker_url=broker_url,
        key_prefix=f"fl{uuid.uuid4().hex[:6]}",
        resources_dir=worker_resources_dir,
        flower_user=auth[0],
        flower_password=auth[1],
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    flower = flower_process(env, tmp_path / "flower.log", port=port)
    worker = worker_process(env, tmp_path / "worker.log", queues=QUEUE_FLUSH, name="flowered")
    with running(flower, worker), MemoryClient(settings_from_env(env)) as client:
        flower.start()
        worker.start().wait_for_log(r"ready\.")
        wait_for(
            lambda: http_status(f"{base}/healthcheck") == 200,
            timeout=START_TIMEOUT_S,
            what=f"Flower on {base}:\n{flower.tail()}",
        )
        name = f"flowered@{socket.gethostname()}"
        # Task events are pub/sub: Flower sees only those sent after it subscribed. A worker
        # heartbeat event reaching its metrics proves the subscription is live (/metrics is
        # exempt from auth, as Flower documents).
        online = f'flower_worker_online{{worker="{name}"}} 1.0'.encode()
        wait_for(
            lambda: online in http_get(f"{base}/metrics")[1],
            timeout=START_TIMEOUT_S,
            what="Flower to receive the worker's events",
        )
        memory = client.memory("fifo-small", ctx(uuid.uuid4().hex[:10]))
        secret_words = [f"confidential-{uuid.uuid4().hex}" for _ in range(8)]
        for word in secret_words:  # the 8th append crosses the threshold: one memory.flush
            memory.append({"role": "user", "content": word})
        wait_for(lambda: memory.stats().flushed_count > 0, what="the flush to run")

        workers = wait_for(
            lambda: (_json(f"{base}/api/workers?refresh=1", auth) or {}).get(name),
            what=f"Flower to list the worker {name}",
        )
        assert QUEUE_FLUSH in json.dumps(workers.get("active_queues", []))

        def flush_tasks() -> list[dict[str, Any]]:
            tasks = _json(f"{base}/api/tasks?taskname={TASK_FLUSH}", auth) or {}
            return [t for t in tasks.values() if t.get("state") == "SUCCESS"]

        [task] = wait_for(flush_tasks, what="Flower to list the memory.flush task")
        assert memory.key in task["kwargs"] and "fifo-small" in task["kwargs"]
        status, listing = http_get(f"{base}/api/tasks", auth)
        _, info = http_get(f"{base}/api/task/info/{task['uuid']}", auth)
        assert status == 200
        for body in (listing, info):
            assert not any(word.encode() in body for word in secret_words), "content leaked"

        for url in (f"{base}/api/workers", f"{base}/api/tasks", f"{base}/"):
            assert http_get(url)[0] == 401, url
            assert http_get(url, (auth[0], "wrong"))[0] == 401, url
        # The password reaches Flower through the environment, never its command line or logs.
        assert auth[1] not in flower.logs() and auth[1] not in worker.logs()


def test_flower_refuses_to_start_without_credentials(
    redis_url: str, broker_url: str, tmp_path: Path
) -> None:
    env = memory_env(
        redis_url=redis_url,
        broker_url=broker_url,
        key_prefix=f"fl{uuid.uuid4().hex[:6]}",
    )
    flower = flower_process(env, tmp_path / "flower.log", port=free_port())
    with running(flower):
        flower.start()
        code = flower.wait(START_TIMEOUT_S)
    assert code != 0
    assert "refusing to start Flower without authentication" in flower.logs()
    assert "MEMORY_FLOWER_UNAUTHENTICATED_DEV" in flower.logs()
