"""No Redis password in what Flower and ``celery inspect conf`` show of a worker's configuration.

Celery masks configuration values by key name only (``celery.app.utils.filter_hidden_settings``);
``redbeat_redis_url`` and any custom key are shown as they are. Here the memory Redis and the
broker require a password, and the test reads a running worker's configuration the way an
operator would: Flower's API and worker page over HTTP, and ``celery -A worker inspect conf``.
"""

from __future__ import annotations

import json
import secrets
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from memory_engine.task_contract import QUEUE_FLUSH
from memory_engine.tooling.embedded_redis import EmbeddedRedis, free_port
from tests.fixtures_worker import broker_url_for, wait_for
from tests.integration.procs import (
    ServiceProcess,
    flower_process,
    http_get,
    http_status,
    memory_env,
    running,
    worker_process,
)

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 30.0
INSPECT_TIMEOUT_S = 60.0


@pytest.fixture
def protected_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server that refuses clients without its password (``--requirepass``)."""
    with EmbeddedRedis(password=f"pw-{secrets.token_hex(16)}") as server:
        yield server


def test_worker_configuration_shows_no_password_in_flower_or_inspect(
    protected_redis: EmbeddedRedis, worker_resources_dir: Path, tmp_path: Path
) -> None:
    password = protected_redis.password
    assert password is not None
    auth = ("ops", secrets.token_hex(8))
    env = memory_env(
        redis_url=protected_redis.url,
        broker_url=broker_url_for(protected_redis.url, 1),
        key_prefix=f"fs{uuid.uuid4().hex[:6]}",
        resources_dir=worker_resources_dir,
        flower_user=auth[0],
        flower_password=auth[1],
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    name = f"secretive@{socket.gethostname()}"
    flower = flower_process(env, tmp_path / "flower.log", port=port)
    worker = worker_process(env, tmp_path / "worker.log", queues=QUEUE_FLUSH, name="secretive")
    inspect = ServiceProcess(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker",
            "inspect",
            "conf",
            "-d",
            name,
            "--timeout",
            "10",
            "--json",
        ],
        env,
        tmp_path / "inspect.log",
    )
    with running(flower, worker, inspect):
        flower.start()
        worker.start().wait_for_log(r"ready\.")
        wait_for(
            lambda: http_status(f"{base}/healthcheck") == 200,
            timeout=START_TIMEOUT_S,
            what=f"Flower on {base}:\n{flower.tail()}",
        )

        def worker_conf() -> dict[str, object] | None:
            status, body = http_get(f"{base}/api/workers?refresh=1&workername={name}", auth)
            if status != 200:
                return None
            conf = json.loads(body).get(name, {}).get("conf")
            return {"body": body, "conf": conf} if conf else None

        found = wait_for(worker_conf, timeout=START_TIMEOUT_S, what="Flower to read the conf")
        conf, api_body = found["conf"], found["body"]
        # The keys that carry the Redis location are there (so the check below means something)
        # and none of them carries the password.
        for key in ("broker_url", "result_backend", "redbeat_redis_url"):
            assert f"127.0.0.1:{protected_redis.port}" in str(conf[key]), key
        assert password not in api_body.decode()
        assert conf["redbeat_redis_options"] == {"password": "********"}

        status, page = http_get(f"{base}/worker/{name}", auth)  # the worker page's Config tab
        assert status == 200 and b"redbeat_redis_url" in page
        assert password.encode() not in page

        inspect.start()
        assert inspect.wait(INSPECT_TIMEOUT_S) == 0, inspect.tail()
        shown = inspect.logs()
        assert "redbeat_redis_url" in shown, shown
        assert password not in shown

        assert password not in worker.logs() and password not in flower.logs()


def test_redbeat_and_result_backend_still_authenticate_with_the_password_moved_out(
    protected_redis: EmbeddedRedis, worker_resources_dir: Path
) -> None:
    from redbeat.schedulers import get_redis

    from memory_engine.settings import Settings
    from worker.app import create_app

    settings = Settings(
        redis_url=protected_redis.url,  # type: ignore[arg-type]
        broker_url=broker_url_for(protected_redis.url, 1),  # type: ignore[arg-type]
        resources_dir=worker_resources_dir,
    )
    app = create_app(settings)
    assert protected_redis.password not in app.conf.redbeat_redis_url
    assert get_redis(app).ping()
    app.backend.set("fs-probe", "1")
    assert app.backend.get("fs-probe") == b"1"
