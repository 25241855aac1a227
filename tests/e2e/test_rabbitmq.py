"""RabbitMQ as the Celery broker (issue 15): real ``celery -A worker worker`` processes consume
from ``amqp://`` while results and RedBeat stay in Redis.

Every run gets a fresh vhost (``rabbitmqctl add_vhost`` + ``set_permissions``, deleted after), so
runs never share queues. The RabbitMQ of the machine is expected on 127.0.0.1:5672 (guest/guest,
``RABBITMQ_URL`` overrides the base URL); when it is unreachable the tests skip, and FAIL when the
``CI`` variable is set (CI must not silently skip them).

What they show: a worker consumes and flushes, with results in the (Redis) result backend; a
deduplicated trigger is one task per threshold crossing under concurrent appends; the engine's
queues are durable (``quorum`` when configured); a malformed message neither stops the worker
nor reaches its log; a worker SIGKILLed mid-task has its task redelivered to another worker as
soon as its connection closes (no visibility timeout is involved).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from celery import Celery
from kombu import Connection

from config.celery import build_celery_config
from memory_engine.client import MemoryClient
from memory_engine.producer import TaskProducer
from memory_engine.settings import Settings
from memory_engine.task_contract import (
    QUEUE_FLUSH,
    QUEUE_SUMMARIZE,
    QUEUES,
    TASK_CLEANUP,
    TASK_FLUSH,
)
from memory_engine.tooling.embedded_redis import EmbeddedRedis
from memory_engine.tooling.health import CheckStatus, check_health
from tests.builders import fifo, resource_yaml
from tests.fixtures_worker import wait_for
from tests.integration.helpers import ctx
from tests.integration.procs import (
    ServiceProcess,
    memory_env,
    running,
    settings_from_env,
    task_ids,
    worker_process,
)

pytestmark = pytest.mark.slow

RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
RABBITMQCTL_TIMEOUT_S = 60.0
ALL_QUEUES = ",".join(QUEUES)
MARK = f"amqp-poison-{uuid.uuid4().hex}"
"""In every poison message: it must never reach the worker log."""


# ---- RabbitMQ: reachability and one vhost per run ---------------------------------------------


def _unavailable(reason: str) -> None:
    message = f"RabbitMQ is needed for these tests: {reason}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set: RabbitMQ must run on the CI machine)")
    pytest.skip(f"{message}; start RabbitMQ on 127.0.0.1:5672 (guest/guest) or set RABBITMQ_URL")


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", *args],
        capture_output=True,
        text=True,
        timeout=RABBITMQCTL_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"rabbitmqctl {' '.join(args)}: {done.stderr or done.stdout}")
    return done.stdout


@pytest.fixture(scope="module")
def rabbitmq() -> str:
    parts = urlsplit(RABBITMQ_URL)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2).close()
    except OSError as exc:
        _unavailable(f"nothing listens on {parts.hostname}:{parts.port or 5672} ({exc})")
    if shutil.which("rabbitmqctl") is None:
        _unavailable("rabbitmqctl is not on PATH (it creates the test vhost)")
    return RABBITMQ_URL


@contextmanager
def fresh_vhost(base_url: str) -> Iterator[str]:
    """A new vhost the guest user may use; yields its broker URL; deleted on exit."""
    vhost = f"memory-engine-test-{uuid.uuid4().hex[:10]}"
    user = urlsplit(base_url).username or "guest"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield f"{base_url.rstrip('/')}/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


def list_queues(broker_url: str) -> dict[str, dict[str, Any]]:
    """``rabbitmqctl list_queues`` of the URL's vhost: name -> durable, type, messages."""
    vhost = urlsplit(broker_url).path.lstrip("/")
    out = rabbitmqctl(
        "list_queues", "-p", vhost, "name", "durable", "type", "messages", "--formatter", "json"
    )
    return {row["name"]: row for row in json.loads(out[out.index("[") :])}


@pytest.fixture(scope="module")
def amqp_url(rabbitmq: str) -> Iterator[str]:
    with fresh_vhost(rabbitmq) as url:
        yield url


# ---- one worker on the module's vhost ----------------------------------------------------------


@dataclass
class Service:
    env: dict[str, str]
    worker: ServiceProcess
    client: MemoryClient

    @property
    def settings(self) -> Settings:
        return self.client.settings

    def started(self) -> ServiceProcess:
        """The worker, started (and ready) if it was not yet."""
        if not self.worker.alive:
            self.worker.start().wait_for_log(r"ready\.")
        return self.worker


@pytest.fixture(scope="module")
def service(
    amqp_url: str,
    redis_url: str,
    worker_resources_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Service]:
    env = memory_env(
        redis_url=redis_url,
        broker_url=amqp_url,
        key_prefix=f"rq{uuid.uuid4().hex[:6]}",
        resources_dir=worker_resources_dir,
    )
    log = tmp_path_factory.mktemp("rabbit") / "worker.log"
    worker = worker_process(env, log, queues=ALL_QUEUES, name="rabbit", concurrency=2)
    with running(worker), MemoryClient(settings_from_env(env)) as client:
        yield Service(env, worker, client)


def test_one_task_per_crossing_then_a_worker_flushes_with_results_in_redis(
    service: Service, amqp_url: str
) -> None:
    client = service.client
    memories = [client.memory("fifo-small", ctx(f"c{i}-{uuid.uuid4().hex[:6]}")) for i in range(6)]

    # 5 threads x 2 appends on every memory at once: 10 messages each, the 8th crosses 0.8 x 10.
    def append_from_thread(thread: int) -> None:
        for memory in memories:
            for n in range(2):
                memory.append({"role": "user", "content": f"t{thread} m{n}"})

    threads = [threading.Thread(target=append_from_thread, args=(t,)) for t in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(m.stats().message_count == 10 and m.stats().flush_pending for m in memories)

    # Nothing consumes yet: the queue holds exactly one flush per memory.
    producer = TaskProducer(service.settings)
    try:
        assert producer.queue_depths()[QUEUE_FLUSH] == len(memories)
    finally:
        producer.close()
    queue = list_queues(amqp_url)[QUEUE_FLUSH]
    assert (queue["messages"], queue["durable"]) == (len(memories), True)

    service.started()
    wait_for(
        lambda: all(m.stats().flushed_count > 0 and not m.stats().flush_pending for m in memories),
        what=f"every memory to be flushed:\n{service.worker.tail()}",
    )
    flushed = task_ids(service.worker.logs(), TASK_FLUSH)
    assert len(flushed) == len(set(flushed)) == len(memories), flushed

    # The queues the worker declared are durable (they outlive a broker restart).
    queues = list_queues(amqp_url)
    assert {name: (q["durable"], q["type"]) for name, q in queues.items() if name in QUEUES} == {
        name: (True, "classic") for name in QUEUES
    }

    report = check_health(service.settings, ping_timeout_s=2.0)
    assert report.get("broker").status is CheckStatus.OK, report.as_dict()
    assert "amqp" in report.get("broker").detail.lower()
    assert report.get("workers").data["count"] == 1
    queues = report.get("queues")
    assert (queues.status, queues.data["total"]) == (CheckStatus.OK, 0), report.as_dict()
    assert report.get("beat").status is CheckStatus.UNKNOWN  # read from the data Redis
    assert report.healthy

    # Results live in Redis: by default the data Redis, since the broker is not Redis.
    conf = build_celery_config(service.settings)
    assert conf["result_backend"] == service.settings.redis_dsn()
    app = Celery("rabbit-test", set_as_current=False)
    app.conf.update(conf)
    try:
        result = app.send_task(TASK_CLEANUP, kwargs={"dry_run": True})
        outcome = result.get(timeout=20)
        assert isinstance(outcome, dict)
        assert client.redis.exists(f"celery-task-meta-{result.id}")
    finally:
        app.close()


# ---- malformed messages ------------------------------------------------------------------------

POISON: dict[str, dict[str, Any]] = {
    "not JSON, no task header": {"body": f"not json {MARK}".encode(), "type": "application/json"},
    "not JSON, task header": {
        "body": f"not json {MARK}".encode(),
        "type": "application/json",
        "task": TASK_FLUSH,
    },
    "invalid UTF-8": {"body": b"\xff\xfe" + MARK.encode(), "type": "application/json"},
    "pickle (refused)": {
        "body": pickle.dumps(((MARK,), {}, {})),
        "type": "application/x-python-serialize",
        "task": TASK_FLUSH,
    },
    "unknown content type": {"body": MARK.encode(), "type": "application/x-unknown"},
    "unknown task": {
        "body": json.dumps([[MARK], {}, {}]).encode(),
        "type": "application/json",
        "task": f"nope.{MARK[:12]}",
    },
}


def publish_raw(
    broker_url: str, queue: str, body: bytes, content_type: str, task: str | None
) -> None:
    """A raw message, as a confused producer (or anyone with broker access) would send it."""
    headers = {"task": task, "id": str(uuid.uuid4()), "kwargsrepr": MARK} if task else {}
    with Connection(broker_url) as conn:
        conn.Producer().publish(
            body,
            exchange=queue,
            routing_key=queue,
            content_type=content_type,
            content_encoding="binary",
            headers=headers,
        )


def test_malformed_messages_neither_stop_the_worker_nor_reach_its_log(
    service: Service, amqp_url: str
) -> None:
    service.started()
    for poison in POISON.values():
        publish_raw(amqp_url, QUEUE_FLUSH, poison["body"], poison["type"], poison.get("task"))

    def drained() -> bool:
        assert service.worker.alive, f"the worker died:\n{service.worker.tail()}"
        return bool(list_queues(amqp_url)[QUEUE_FLUSH]["messages"] == 0)

    wait_for(drained, timeout=30, what="the worker to take every poison message")

    memory = service.client.memory("fifo-small", ctx(uuid.uuid4().hex[:10]))
    for i in range(8):
        memory.append({"role": "user", "content": f"after the poison {i}"})
    wait_for(
        lambda: memory.stats().flushed_count > 0,
        what=f"a valid flush after the poison:\n{service.worker.tail()}",
    )
    assert service.worker.alive
    log = service.worker.logs()
    assert MARK not in log, "a poison message's content reached the log"
    assert "Unrecoverable error" not in log
    assert "Traceback" not in log
    # Celery rejects each one itself (without requeue); worker/poison.py's filter rewrites the
    # line. No transport-level screening is needed: py-amqp hands kombu frames, never raw JSON.
    assert log.count("dropped a task message:") == len(POISON), log


# ---- a SIGKILLed worker's task comes back at once ----------------------------------------------

CRASH_RESOURCES = resource_yaml(
    "crash-fifo", max_messages=10, flushing=fifo(), locking={"flush_ttl": "2s"}
)
PAUSE_MS = 60_000  # an upper bound; the pause is lifted explicitly
REDELIVERY_BOUND_S = 10.0
"""Far below any visibility timeout (the default is task_time_limit_s * 2 + 60 = 660 s)."""


def paused_writes(r: redis.Redis, command: str) -> list[str]:
    return [
        c["addr"] for c in r.client_list() if c.get("cmd") == command and "b" in c.get("flags", "")
    ]


def test_sigkilled_worker_task_is_redelivered_when_its_connection_closes(
    rabbitmq: str, tmp_path: Path
) -> None:
    resources = tmp_path / "resources"
    resources.mkdir()
    (resources / "crash.yaml").write_text(CRASH_RESOURCES)
    with fresh_vhost(rabbitmq) as broker_url, EmbeddedRedis() as data_server:
        data = redis.Redis.from_url(data_server.url)
        env = memory_env(
            redis_url=data_server.url,
            broker_url=broker_url,
            key_prefix=f"rk{uuid.uuid4().hex[:6]}",
            resources_dir=resources,
            socket_timeout_s=10,
        )
        first = worker_process(env, tmp_path / "w1.log", queues=QUEUE_FLUSH, name="kill-a")
        second = worker_process(env, tmp_path / "w2.log", queues=QUEUE_FLUSH, name="kill-b")
        with running(first, second), MemoryClient(settings_from_env(env)) as client:
            memory = client.memory("crash-fifo", ctx(uuid.uuid4().hex[:10]))
            for i in range(8):  # the 8th append crosses 0.8 x 10: one memory.flush, queued
                memory.append({"role": "user", "content": f"m{i}"})
            try:
                # The flush's first write (its lock) waits in Redis: the task is mid-run.
                data.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
                first.start()
                wait_for(lambda: paused_writes(data, "set"), what="the flush's lock write to wait")
                [task_id] = task_ids(first.logs(), TASK_FLUSH)
                second.start().wait_for_log(r"ready\.")
                assert not task_ids(second.logs(), TASK_FLUSH)

                killed_at = time.monotonic()
                first.kill()
                wait_for(
                    lambda: task_id in task_ids(second.logs(), TASK_FLUSH),
                    timeout=REDELIVERY_BOUND_S,
                    what=f"the flush redelivered to the other worker:\n{second.tail()}",
                )
                redelivered_after_s = time.monotonic() - killed_at
            finally:
                data.execute_command("CLIENT", "UNPAUSE")
            second.wait_for_log(rf"Task {TASK_FLUSH}\[{task_id}\] succeeded")
            stats = memory.stats()
            assert (stats.flushed_count, stats.message_count, stats.flush_pending) == (3, 5, False)
            assert [m.content for m in memory.read()] == [f"m{i}" for i in range(3, 8)]
            wait_for(
                lambda: list_queues(broker_url)[QUEUE_FLUSH]["messages"] == 0,
                what="the redelivered message to be acknowledged",
            )
            print(f"redelivered {redelivered_after_s:.2f} s after SIGKILL")
            assert redelivered_after_s < REDELIVERY_BOUND_S


# ---- quorum queues -----------------------------------------------------------------------------


def test_quorum_queue_type_is_declared_by_the_client(rabbitmq: str, redis_url: str) -> None:
    with fresh_vhost(rabbitmq) as broker_url:
        settings = Settings(
            redis_url=redis_url,  # type: ignore[arg-type]
            broker_url=broker_url,  # type: ignore[arg-type]
            broker_queue_type="quorum",
        )
        producer = TaskProducer(settings)
        try:
            producer.send(TASK_FLUSH, {"memory_id": "m", "resource_id": "r"})
            assert producer.breaker.name.startswith("broker.amqp@127.0.0.1:5672")
            # Exact (a passive declare); rabbitmqctl's message counts lag on quorum queues.
            assert producer.queue_depths()[QUEUE_FLUSH] == 1
        finally:
            producer.close()
        queue = list_queues(broker_url)[QUEUE_FLUSH]
        assert (queue["type"], queue["durable"]) == ("quorum", True)
        assert QUEUE_SUMMARIZE not in list_queues(broker_url)  # declared by whoever uses it
