"""Security: secrets stay secret, Redis AUTH works, tenants cannot reach each other's memory.

Secrets (``SecretStr`` settings: the Redis and broker URLs with a password, the summarizer API key,
the Flower password) are put in play for real: a private ``redis-server`` that requires the
password, the loopback LLM server (``tests/llm_server.py``) that records the key it receives (and,
in mode ``error401``, echoes it back in an error body, as some providers do), a flush through it
in-process with every log record captured at DEBUG, and a real worker process at DEBUG consuming
the same kind of task. Then the logs, the reprs and the raw broker message are searched for them.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from memory_engine.client import Memory, MemoryClient
from memory_engine.errors import KeyTemplateError, StoreError, StoreUnavailable
from memory_engine.keys import PROJECT_ID_PATTERN, KeySpace, project_of, render_key
from memory_engine.settings import Settings
from memory_engine.task_contract import QUEUE_FLUSH, QUEUES, TASK_EVICT, TASK_FLUSH, TASK_SUMMARIZE
from memory_engine.tooling.embedded_redis import EmbeddedRedis
from memory_engine.tooling.loopback_llm import FakeLLMServer, running_llm_server
from tests.builders import hybrid, resource_yaml
from tests.fixtures_worker import wait_for

from .helpers import client_with, ctx, resource
from .procs import memory_env, running, worker_process

REDIS_PASSWORD = "redis-pw-" + uuid.uuid4().hex
API_KEY = "sk-test-" + uuid.uuid4().hex
FLOWER_PASSWORD = "flower-pw-" + uuid.uuid4().hex
SECRETS = (REDIS_PASSWORD, API_KEY, FLOWER_PASSWORD)

HYBRID = resource(
    "hyb",
    max_tokens=300,
    flushing={"type": "hybrid_summary", "summarize_threshold": 0.8, "summary_tokens": 60},
)
HYBRID_YAML = resource_yaml(
    "hyb", type="token_based", max_tokens=300, flushing=hybrid(60), key_prefix="conv"
)


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret leaked into {where}"


@pytest.fixture(scope="module")
def auth_redis() -> Iterator[EmbeddedRedis]:
    """A private Redis that requires ``REDIS_PASSWORD`` (``requirepass``)."""
    with EmbeddedRedis(password=REDIS_PASSWORD) as server:
        yield server


def db_url(server: EmbeddedRedis, db: int, password: str | None = REDIS_PASSWORD) -> str:
    auth = f":{password}@" if password else ""
    return f"redis://{auth}127.0.0.1:{server.port}/{db}"


def secret_settings(server: EmbeddedRedis, llm: FakeLLMServer, broker_db: int) -> Settings:
    return Settings(
        redis_url=db_url(server, 0),  # type: ignore[arg-type]
        broker_url=db_url(server, broker_db),  # type: ignore[arg-type]
        key_prefix=f"sec{uuid.uuid4().hex[:6]}",
        summarizer_provider="openai",
        summarizer_base_url=llm.openai_base_url,
        summarizer_model="gpt-4o-mini",
        summarizer_api_key=API_KEY,  # type: ignore[arg-type]
        flower_user="admin",
        flower_password=FLOWER_PASSWORD,  # type: ignore[arg-type]
        socket_timeout_s=5.0,
    )


def fill_until_flush(memory: Memory, tag: str) -> list[str]:
    """Append until an append crosses the threshold and enqueues a flush; returns the contents."""
    contents = []
    for i in range(200):
        content = f"{tag} message {i} about the quarterly report and its numbers"
        contents.append(content)
        if memory.append(
            {"role": "user" if i % 2 else "assistant", "content": content}
        ).flush_requested:
            return contents
    raise AssertionError("no append crossed the flush threshold")


def captured_text(caplog: pytest.LogCaptureFixture) -> str:
    """Everything the records carry: formatted messages, raw args and tracebacks."""
    parts = [caplog.text]
    for record in caplog.records:
        parts += [record.getMessage(), repr(record.args), str(record.exc_info or "")]
    return "\n".join(parts)


def queued_messages(broker: redis.Redis, queue: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in broker.lrange(queue, 0, -1)]


# --- reprs ------------------------------------------------------------------------------------


def test_secrets_never_in_reprs_of_settings_client_or_connections(
    auth_redis: EmbeddedRedis,
) -> None:
    with running_llm_server() as llm:
        settings = secret_settings(auth_redis, llm, broker_db=3)
        with client_with(settings, HYBRID) as client:
            memory = client.memory("hyb", ctx("reprs"))
            shown = [
                repr(settings), str(settings), settings.model_dump_json(),
                repr(settings.model_dump()), repr(client), repr(client.redis),
                repr(client.redis.connection_pool), repr(memory), repr(client.summarizer),
                repr(client.producer),
            ]  # fmt: skip
            for text in shown:
                assert_no_secret(text, text[:60])
            # ...while the secrets are really there for the code that needs them.
            assert settings.redis_dsn() == db_url(auth_redis, 0)
            assert settings.summarizer_api_key is not None
            assert settings.summarizer_api_key.get_secret_value() == API_KEY


# --- logs and task arguments ----------------------------------------------------------------------


def test_secrets_never_in_logs_and_tasks_carry_ids_only(
    auth_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """Append across the threshold (publishes ``memory.flush`` to a broker DB no worker reads),
    inspect the raw broker message, then flush in-process through the LLM summarizer, once
    answered and once refused with the key echoed back; the key must reach the provider and
    appear in no log record."""
    caplog.set_level(logging.DEBUG)
    broker = redis.Redis.from_url(db_url(auth_redis, 4))
    broker.delete(*QUEUES)
    with (
        running_llm_server() as llm,
        client_with(secret_settings(auth_redis, llm, 4), HYBRID) as client,
    ):
        memory = client.memory("hyb", ctx("logs"))
        contents = fill_until_flush(memory, "confidential")

        [message] = queued_messages(broker, QUEUE_FLUSH)
        raw = json.dumps(message)
        body = json.loads(base64.b64decode(message["body"]))
        args, kwargs, _embed = body
        assert args == []
        assert kwargs == {"memory_id": memory.key, "resource_id": "hyb", "reason": "threshold"}
        assert message["headers"]["task"] == "memory.flush"
        assert message["content-type"] == "application/json"  # never pickle
        for text in (raw, json.dumps(body)):
            assert_no_secret(text, "the broker message")
            assert not any(c in text for c in contents), "message content in task arguments"

        first = memory.flush()
        assert first.summary_source == "openai"
        assert llm.last.headers["authorization"] == f"Bearer {API_KEY}"  # the key was in play

        llm.mode = "error401"  # the provider answers "bad key: <the key>"
        fill_until_flush(memory, "more")
        second = memory.flush()
        assert second.summary_source is not None and second.summary_source != "openai"
        assert llm.last.headers["authorization"] == f"Bearer {API_KEY}"

    logs = captured_text(caplog)
    assert memory.key in logs and "DEBUG" in caplog.text  # the flow did log, at every level
    assert "bad key" in logs  # the provider's echo of the key was logged, with the key masked
    assert_no_secret(logs, "the captured logs")
    broker.delete(*QUEUES)
    broker.close()


@pytest.mark.slow
def test_worker_process_logs_no_secrets_at_debug(auth_redis: EmbeddedRedis, tmp_path: Path) -> None:
    """A real ``celery -A worker worker`` with every secret in its environment and DEBUG logs
    runs a flush and its summarize (through the LLM, answered then refused with the key echoed):
    its whole output holds none of them."""
    resources_dir = tmp_path / "resources"
    resources_dir.mkdir()
    (resources_dir / "hyb.yaml").write_text(HYBRID_YAML)
    broker_url = db_url(auth_redis, 5)
    with running_llm_server() as llm:
        env = memory_env(
            redis_url=db_url(auth_redis, 0),
            broker_url=broker_url,
            key_prefix=f"secw{uuid.uuid4().hex[:6]}",
            resources_dir=resources_dir,
            summarizer_provider="openai",
            summarizer_base_url=llm.openai_base_url,
            summarizer_model="gpt-4o-mini",
            summarizer_api_key=API_KEY,
            flower_user="admin",
            flower_password=FLOWER_PASSWORD,
            log_level="DEBUG",
        )
        worker = worker_process(env, tmp_path / "worker.log", queues=",".join(QUEUES), name="sec")
        settings = Settings.model_validate({k[len("MEMORY_") :].lower(): v for k, v in env.items()})
        with running(worker), client_with(settings, HYBRID) as client:
            worker.start().wait_for_log(r"ready\.")
            for mode in ("ok", "error401"):
                llm.mode = mode
                memory = client.memory("hyb", ctx(f"worker-{mode}"))
                fill_until_flush(memory, mode)
                wait_for(lambda m=memory: m.stats().summary_point > 0, timeout=30, what="a summary")
            assert any(
                r.headers.get("authorization") == f"Bearer {API_KEY}" for r in llm.recorded()
            )
            worker.stop()
        logs = worker.logs()
    assert "memory.summarize" in logs and "DEBUG" in logs and "bad key" in logs
    assert_no_secret(logs, "the worker's log")


def test_connection_errors_do_not_echo_credentials(caplog: pytest.LogCaptureFixture) -> None:
    """Redis and the broker unreachable: the typed errors and the logged publish failure do not
    repeat the URL's password."""
    caplog.set_level(logging.DEBUG)
    dead = f"redis://:{REDIS_PASSWORD}@127.0.0.1:1"
    settings = Settings(
        redis_url=f"{dead}/0",  # type: ignore[arg-type]
        broker_url=f"{dead}/1",  # type: ignore[arg-type]
        socket_connect_timeout_s=0.5,
        socket_timeout_s=0.5,
    )
    with client_with(settings, HYBRID) as client:
        with pytest.raises(StoreUnavailable) as caught:
            client.memory("hyb", ctx("dead")).append({"role": "user", "content": "hi"})
        assert_no_secret(str(caught.value) + repr(caught.value.__cause__), "the error")
        with pytest.raises(StoreUnavailable) as published:
            client.producer.send("memory.flush", {"memory_id": "p:k", "resource_id": "hyb"})
        assert_no_secret(str(published.value) + repr(published.value.__cause__), "the error")
    assert_no_secret(captured_text(caplog), "the captured logs")


# --- Redis AUTH -------------------------------------------------------------------------------


def test_redis_auth_password_url_works_and_no_or_wrong_password_is_a_typed_error(
    auth_redis: EmbeddedRedis, settings: Settings
) -> None:
    good = settings.replace(redis_url=db_url(auth_redis, 0))
    with client_with(good, resource("conv")) as client:
        memory = client.memory("conv", ctx("auth"))
        memory.append({"role": "user", "content": "behind AUTH"})
        assert [m.content for m in memory.read()] == ["behind AUTH"]

    wrong_password = "not-" + REDIS_PASSWORD
    for url in (db_url(auth_redis, 0, password=None), db_url(auth_redis, 0, wrong_password)):
        with client_with(settings.replace(redis_url=url), resource("conv")) as client:
            memory = client.memory("conv", ctx("auth"))
            for call in (lambda m=memory: m.append({"role": "user", "content": "x"}), memory.read):
                with pytest.raises(StoreError) as caught:
                    call()
                # Permanent: not StoreUnavailable, whose TransientError base makes tasks retry.
                assert not isinstance(caught.value, StoreUnavailable)
                assert "credentials" in str(caught.value)
                assert wrong_password not in str(caught.value)
                assert isinstance(caught.value.__cause__, redis.AuthenticationError)


# --- tenant isolation -------------------------------------------------------------------------


def all_keys(memory: Memory) -> set[str]:
    k = memory.keys
    return {k.msgs, k.meta, k.summary, k.used, k.flush, k.lock}


def test_two_projects_with_the_same_template_and_input_get_disjoint_keys(
    client: MemoryClient,
) -> None:
    def workflow(project: str) -> dict[str, Any]:
        return {"project": {"id": project}, "workflow": {"input": {"session_id": "same-session"}}}

    a = client.memory("chat-window", workflow("tenant-a"))
    b = client.memory("chat-window", workflow("tenant-b"))
    assert a.resource.default_key_template == b.resource.default_key_template
    assert a.key != b.key
    assert (a.project_id, b.project_id) == ("tenant-a", "tenant-b")
    assert not all_keys(a) & all_keys(b)


def test_a_memory_of_project_a_never_reads_project_b(settings: Settings) -> None:
    with client_with(settings, resource("conv", max_tokens=100), HYBRID) as client:
        a = client.memory("conv", ctx("shared", project="A"))
        b = client.memory("conv", ctx("shared", project="B"))
        b.append({"role": "user", "content": "B's secret plan"})
        a.append({"role": "user", "content": "A's note"})
        # A template (or an input) that renders B's memory id lands inside A's namespace.
        forged = client.memory(
            "conv", ctx(b.key, project="A"), key_template="{{ workflow.input.conv }}"
        )
        assert forged.project_id == "A" and forged.key == f"A:{b.key}"
        for memory in (a, forged, client.memory_by_id(a.key, "conv")):
            seen = [m.content for m in memory.read()] + [m.content for m in memory.context()]
            assert "B's secret plan" not in seen
        assert forged.read() == []
        a.clear()
        a.delete()
        assert [m.content for m in b.read()] == ["B's secret plan"]
        assert b.stats().message_count == 1


project_ids = st.from_regex(PROJECT_ID_PATTERN, fullmatch=True)
context_values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["B:victim", "}:{B:victim", "{B}", "B", "..", "*", "a\nb", ":", "x" * 300]),
    st.integers(),
    st.none(),
    st.dictionaries(st.text(max_size=5), st.text(max_size=10), max_size=3),
)
templates = st.one_of(
    st.sampled_from(
        ["{{ workflow.input.conv }}", "conv:{{ workflow.input.conv }}", "{{ x }}",
         "{{ x }}:{{ y }}", "{{ project.id }}:{{ x }}", "B:{{ x }}", "{{ x|replace('A', 'B') }}",
         "{{ '%s' % x }}"]
    ),
    st.text(max_size=30),
)  # fmt: skip


@st.composite
def tenant_contexts(draw: st.DrawFn, project: str) -> dict[str, Any]:
    return {
        "project": {"id": project},
        "workflow": {"input": {"conv": draw(context_values)}},
        "x": draw(context_values),
        "y": draw(context_values),
    }


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), projects=st.lists(project_ids, min_size=2, max_size=2, unique=True))
@example(data=None, projects=["A", "B"])
def test_no_template_or_context_reaches_another_project(data: Any, projects: list[str]) -> None:
    """Two tenants, any templates, any inputs: each id lies in its own project, so ids (and every
    Redis key built from them) of different tenants never coincide."""
    project_a, project_b = projects
    if data is None:  # the explicit example: B's id smuggled through A's input
        template = "{{ workflow.input.conv }}"
        pairs = [
            (template, {"project": {"id": "A"}, "workflow": {"input": {"conv": "B:victim"}}}),
            (template, {"project": {"id": "B"}, "workflow": {"input": {"conv": "victim"}}}),
        ]
    else:
        pairs = [
            (data.draw(templates), data.draw(tenant_contexts(project_a))),
            (data.draw(templates), data.draw(tenant_contexts(project_b))),
        ]
    rendered = []
    for template, context in pairs:
        try:
            memory_id = render_key(template, context, default_project_id="dflt")
        except KeyTemplateError:
            continue
        assert project_of(memory_id) == context["project"]["id"]
        rendered.append(memory_id)
    if len(rendered) == 2:
        assert rendered[0] != rendered[1]
        space = KeySpace("mem")
        a, b = (space.memory(mid) for mid in rendered)
        assert not {a.msgs, a.meta, a.summary, a.flush, a.lock} & {
            b.msgs,
            b.meta,
            b.summary,
            b.flush,
            b.lock,
        }


# --- crafted task payloads (#11.16) ---------------------------------------------------------------


def refused_records(caplog: pytest.LogCaptureFixture, task_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "tasks.runtime" and task_id in r.getMessage()]


@pytest.mark.usefixtures("celery_worker")
@pytest.mark.parametrize("task", [TASK_FLUSH, TASK_SUMMARIZE, TASK_EVICT])
def test_a_task_naming_a_foreign_resource_is_refused_and_changes_nothing(
    engine: MemoryClient, celery_app: Celery, caplog: pytest.LogCaptureFixture, task: str
) -> None:
    """Another project's memory (tok-small: 300 tokens, below its threshold) named with a
    foreign resource (fifo-small: 10 messages) would be flushed down to 5 messages under it."""
    victim = engine.memory("tok-small", ctx(uuid.uuid4().hex[:10], project="victim"))
    for i in range(9):
        victim.append({"role": "user", "content": f"victim {i}"})
    before = victim.stats()
    assert before.message_count == 9 and not before.flush_pending
    caplog.set_level(logging.WARNING, logger="tasks.runtime")
    crafted = celery_app.send_task(
        task, kwargs={"memory_id": victim.key, "resource_id": "fifo-small"}
    )
    wait_for(
        lambda: crafted.state == "FAILURE" or victim.stats().message_count != 9,
        what="the crafted task to be refused",
    )
    assert crafted.state == "FAILURE"  # rejected without requeue: recorded, never retried
    assert "belongs to resource 'tok-small'" in str(crafted.result)
    after = victim.stats()
    assert [m.content for m in victim.read()] == [f"victim {i}" for i in range(9)]
    assert (after.epoch, after.flushed_count, after.evicted_count) == (
        before.epoch,
        before.flushed_count,
        before.evicted_count,
    )
    assert refused_records(caplog, crafted.id)


FORGED_IDS = [
    ":x",
    "victim",
    "victim:k}\nERROR forged line {x",
    "victim\n:k",
    "victim:k\r\n",
    "victim: k",
]


@pytest.mark.usefixtures("celery_worker")
@pytest.mark.parametrize("memory_id", FORGED_IDS)
def test_a_task_with_an_invalid_memory_id_is_refused_without_forging_a_log_line(
    engine: MemoryClient, celery_app: Celery, caplog: pytest.LogCaptureFixture, memory_id: str
) -> None:
    caplog.set_level(logging.WARNING, logger="tasks.runtime")
    crafted = celery_app.send_task(
        TASK_FLUSH, kwargs={"memory_id": memory_id, "resource_id": "fifo-small"}
    )
    wait_for(lambda: crafted.state == "FAILURE", what="the crafted task to be refused")
    assert "memory id" in str(crafted.result)
    records = refused_records(caplog, crafted.id)
    assert records, "the refusal is logged"
    for record in records:
        text = record.getMessage()
        assert "\n" not in text and "\r" not in text
    # Nothing was written under a key built from the forged id.
    written = [k.decode() for k in engine.redis.scan_iter(match=f"{engine.keyspace.prefix}:*")]
    assert not [
        k for k in written if "forged" in k or k.startswith(f"{engine.keyspace.prefix}:{{:x")
    ]


def test_a_failed_flush_log_line_cannot_be_forged_by_the_exception_text(
    client: MemoryClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The failure handler quotes the exception: its text cannot start a log line of its own."""
    from tasks import runtime
    from tasks.flush import FlushTask

    previous = runtime._state["client"]  # the in-process worker's, when it runs: put it back
    runtime.reset_engine_client(client)
    try:
        with caplog.at_level(logging.ERROR, logger="tasks.flush"):
            FlushTask().on_failure(
                RuntimeError("boom\nERROR forged line"), "t1", (), {"memory_id": "acme:k1"}, None
            )
    finally:
        runtime.reset_engine_client(previous)
    lines = [r.getMessage() for r in caplog.records if r.name == "tasks.flush"]
    assert lines and all("\n" not in line for line in lines), lines
