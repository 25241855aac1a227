"""Encryption at rest against a real Redis and the in-process Celery worker (docs/encryption.md):
raw Redis holds no plaintext, every read path decrypts, a wrong or missing key is a typed error,
crypto-shredding one project, and key rotation under concurrent appends losing nothing."""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr

from memory_engine.aio import AsyncMemoryClient
from memory_engine.client import Memory, MemoryClient
from memory_engine.core.commands import rewrap_calls
from memory_engine.crypto import KeyRing
from memory_engine.errors import DecryptionError
from memory_engine.settings import Settings
from memory_engine.task_contract import TASK_REENCRYPT
from tests.builders import fifo, hybrid, resource_yaml, resources_yaml
from tests.fixtures_worker import WORKER_RESOURCES, broker_url_for, wait_for
from tests.integration.accounting import Ledger, assert_all_accounted

SECRET = "zebra-orchid-4471"  # never expected in raw Redis
TOOL_SECRET = "argument-walrus-88"
META_SECRET = "meta-heron-19"
ROTATIONS_UNDER_LOAD = 20
MEMORIES = 6
HISTORY = 40


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def _settings(
    redis_url: str, resources_dir: Path, prefix: str, keys: str | None, active: str | None
) -> Settings:
    return Settings(
        redis_url=redis_url,  # type: ignore[arg-type]
        broker_url=broker_url_for(redis_url, 1),  # type: ignore[arg-type]
        key_prefix=prefix,
        resources_dir=resources_dir,
        socket_timeout_s=5.0,
        flush_marker_ttl_s=60,
        encryption_keys=SecretStr(keys) if keys is not None else None,
        encryption_active_key=active,
    )


@pytest.fixture
def prefix() -> str:
    return f"enc{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def resources_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The worker's test resources plus two larger ones (rotation under load: long enough
    lists that a rotation's read and swap of one memory overlap flushes and clears)."""
    d = tmp_path_factory.mktemp("enc-resources")
    (d / "resources.yaml").write_text(
        resources_yaml(
            WORKER_RESOURCES,
            resource_yaml("enc-fifo", max_messages=60, flushing=fifo(), key_prefix="ef"),
            resource_yaml(
                "enc-hybrid",
                type="token_based",
                max_tokens=1500,
                flushing=hybrid(120),
                key_prefix="eh",
            ),
        )
    )
    return d


@pytest.fixture
def make_client(redis_url: str, resources_dir: Path, prefix: str) -> Iterator[Any]:
    built: list[MemoryClient] = []

    def make(keys: str | None, active: str | None = None) -> MemoryClient:
        client = MemoryClient(_settings(redis_url, resources_dir, prefix, keys, active))
        built.append(client)
        return client

    yield make
    for client in built:
        client.close()


def ctx(project: str = "p1") -> dict[str, Any]:
    return {"project": {"id": project}, "workflow": {"input": {"conv": uuid.uuid4().hex[:10]}}}


def _conversation(m: Memory, n: int) -> None:
    m.append({"role": "system", "content": "be brief"})
    m.append(
        {
            "role": "assistant",
            "content": "",
            "name": "helper",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": f'{{"q": "{TOOL_SECRET}"}}'},
                }
            ],
        }
    )
    m.append({"role": "tool", "content": f"found {SECRET}", "tool_call_id": "call_1"})
    for i in range(n):
        m.append(
            {"role": "user", "content": f"{SECRET} number {i}", "metadata": {"note": META_SECRET}}
        )


def _raw_bytes(r: redis.Redis, m: Memory) -> bytes:
    """Everything Redis holds for the memory's list and summary: elements, hash fields, DUMPs."""
    parts: list[bytes] = list(r.lrange(m.keys.msgs, 0, -1))
    for key in (m.keys.msgs, m.keys.summary, m.keys.meta):
        parts.append(r.dump(key) or b"")
    for field, value in r.hgetall(m.keys.summary).items():
        parts += [field, value]
    return b"\n".join(parts)


def test_redis_holds_no_plaintext_and_every_read_decrypts(
    make_client: Any, redis_client: redis.Redis
) -> None:
    client = make_client(f"k1:{_key()}")
    m = client.memory("hybrid-small", ctx())
    _conversation(m, 12)
    result = m.flush()  # hybrid: folds the oldest messages into a summary (rule-based)
    assert result.summarized > 0
    stored = _raw_bytes(redis_client, m)
    assert b"enc:v1:k1:" in stored
    for secret in (SECRET, TOOL_SECRET, META_SECRET, "helper", "lookup", "be brief"):
        assert secret.encode() not in stored, secret
    assert b'"r":"user"' in stored  # roles, seqs and token counts stay in clear

    messages = m.read()
    assert all(SECRET in x.content for x in messages if x.role.value == "user")
    assert all(x.metadata == {"note": META_SECRET} for x in messages if x.role.value == "user")
    page = m.read_page(0, 3)
    assert page.messages == messages[:3]
    window = m.context()
    summary = [x for x in window if x.metadata.get("summary")]
    assert summary and SECRET in summary[0].content  # the decrypted summary text
    assert m.client.store.summary(m.keys) is not None
    assert SECRET in m.client.store.summary(m.keys).text  # type: ignore[union-attr]
    stats = m.stats()
    assert stats.summary_tokens > 0 and stats.message_count == len(messages)

    async def read_async() -> list[str]:
        async with AsyncMemoryClient(client.settings) as aclient:
            am = aclient.memory_by_id(m.memory_id, "hybrid-small")
            await am.append({"role": "user", "content": f"async {SECRET}"})
            return [x.content for x in await am.read()]

    contents = asyncio.run(read_async())
    assert contents[-1] == f"async {SECRET}"
    assert f"async {SECRET}".encode() not in b"".join(redis_client.lrange(m.keys.msgs, 0, -1))


def test_a_wrong_or_missing_key_is_a_typed_error_never_garbage(make_client: Any) -> None:
    right = make_client(f"k1:{_key()}")
    m = right.memory("hybrid-small", ctx())
    _conversation(m, 12)
    m.flush()
    wrong = make_client(f"k1:{_key()}")  # same id, other key material
    none = make_client(None)
    for reader, reason in ((wrong, "authentication failed"), (none, "no encryption keys")):
        other = reader.memory_by_id(m.memory_id, "hybrid-small")
        for read in (other.read, lambda o=other: o.read_page(0, 5), other.context):
            with pytest.raises(DecryptionError, match=reason) as caught:
                read()
            message = str(caught.value)
            assert m.memory_id in message and "enc:v1" not in message and SECRET not in message
        with pytest.raises(DecryptionError):
            reader.store.summary(other.keys)
        # Planning needs no plaintext: stats still work.
        assert other.stats().message_count == m.stats().message_count
    # A summarizing flush reads the plaintext of what it folds: refused, nothing changed.
    before = right.memory_by_id(m.memory_id, "hybrid-small").read()
    with pytest.raises(DecryptionError):
        wrong.memory_by_id(m.memory_id, "hybrid-small").flush(strategy="hybrid_summary")
    assert right.memory_by_id(m.memory_id, "hybrid-small").read() == before


def test_crypto_shredding_one_project_leaves_the_others_readable(make_client: Any) -> None:
    main, acme = _key(), _key()
    both = make_client(f"main:{main},acme/1:{acme}", "main")
    shredded_acme = both.memory("fifo-small", ctx("acme"))
    globex = both.memory("fifo-small", ctx("globex"))
    for m in (shredded_acme, globex):
        m.append({"role": "user", "content": SECRET})
    after = make_client(f"main:{main}", "main")  # acme/1 deleted from the key ring
    with pytest.raises(DecryptionError, match="not in the key ring") as caught:
        after.memory_by_id(shredded_acme.memory_id, "fifo-small").read()
    assert caught.value.key_id == "acme/1"
    assert [x.content for x in after.memory_by_id(globex.memory_id, "fifo-small").read()] == [
        SECRET
    ]


def test_the_swap_never_resurrects_what_moved(make_client: Any, redis_client: redis.Redis) -> None:
    k1 = _key()
    old = make_client(f"k1:{k1}")
    m = old.memory("fifo-small", ctx())
    for i in range(5):
        m.append({"role": "user", "content": f"m{i}"})
    new_ring = KeyRing({"k1": base64.b64decode(k1), "k2": os.urandom(32)}, "k2")
    raw = redis_client.lrange(m.keys.msgs, 0, -1)
    (argv,) = rewrap_calls(raw, None, m.memory_id, new_ring, chunk=100)
    m.clear()  # everything read is gone before the swap
    m.append({"role": "user", "content": "after the clear"})
    reply = old.store._call_script("test", "reencrypt", (m.keys.msgs, m.keys.summary), argv)
    assert reply == [0, 5]  # nothing swapped, five missed
    assert [x.content for x in m.read()] == ["after the clear"]


def test_rotation_under_load_loses_nothing(
    make_client: Any, celery_worker: Any, celery_app: Any
) -> None:
    from tasks.runtime import engine_client, reset_engine_client

    k1, k2 = _key(), _key()
    before = make_client(f"k1:{k1}", "k1")
    rotated = make_client(f"k1:{k1},k2:{k2}", "k2")  # the new configuration, everywhere
    only_k2 = make_client(f"k2:{k2}", "k2")  # the old key deleted after the rotation
    resources = ["enc-fifo", "enc-hybrid"]
    # spread over projects and strategies
    memories = [before.memory(resources[i % 2], ctx(f"proj{i % 3}")) for i in range(MEMORIES)]
    ledger = Ledger()
    counter = itertools.count()

    def append(client: MemoryClient, m: Memory) -> None:
        content = f"{SECRET}-{next(counter)}"
        started = ledger.now_ns()
        result = client.memory_by_id(m.memory_id, m.resource.id).append(
            {"role": "user", "content": content}
        )
        assert result.first_seq is not None
        ledger.acked(m.memory_id, content, result.first_seq, started, ledger.now_ns())

    previous = engine_client()
    reset_engine_client(before)  # the worker runs the old configuration first
    stop = threading.Event()
    errors: list[BaseException] = []

    def appender(offset: int) -> None:
        try:
            for i in itertools.count(offset):
                if stop.is_set():
                    return
                # A rolling deploy: every other append comes from a process that still runs
                # the old configuration, so every rotation run below has work to race with.
                append(rotated if i % 2 else before, memories[i % len(memories)])
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    def compactor() -> None:
        # Inline flushes and clears in this process, concurrent with the task in the worker:
        # they move and remove elements the rotation has read.
        try:
            for i in itertools.count():
                if stop.is_set():
                    return
                m = rotated.memory_by_id(memories[i % len(memories)].memory_id, resources[i % 2])
                if i % 5 == 4:
                    started = ledger.now_ns()
                    m.clear()
                    ledger.wiped(m.memory_id, "clear", started, ledger.now_ns())
                else:
                    m.flush()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=appender, args=(n * 7,)) for n in range(3)]
    threads.append(threading.Thread(target=compactor))
    try:
        for m in memories:  # history under the old key, flushed and summarized by the worker
            for _ in range(HISTORY):
                append(before, m)
        for m in memories:
            wait_for(
                lambda m=m: (
                    not before.memory_by_id(m.memory_id, m.resource.id).stats().flush_pending
                ),
                what=f"flush of {m.memory_id}",
            )
        reset_engine_client(rotated)  # the new configuration, in the worker too
        for t in threads:
            t.start()
        wait_for(lambda: ledger.acked_count > MEMORIES * HISTORY * 2, what="appends under load")
        runs = [
            _task_result(celery_app, rotated.producer.send(TASK_REENCRYPT, {}))
            for _ in range(ROTATIONS_UNDER_LOAD)
        ]
        stop.set()
        for t in threads:
            t.join(30)
        assert not errors, errors
        assert all(run["done"] and run["unreadable"] == 0 for run in runs)
        assert sum(run["rewrapped"] for run in runs) >= MEMORIES
        # Drain the flushes the load requested, then read everything with k2 alone.
        for m in memories:
            wait_for(
                lambda m=m: (
                    not rotated.memory_by_id(m.memory_id, m.resource.id).stats().flush_pending
                ),
                what=f"flush of {m.memory_id}",
            )
        # The quiet pass after the rollout: what the old-config appends wrote, and what kept
        # moving under load, goes under k2.
        final = _task_result(celery_app, rotated.producer.send(TASK_REENCRYPT, {}))
        assert final["missed"] == 0
        for m in memories:
            handle = only_k2.memory_by_id(m.memory_id, m.resource.id)
            for message in handle.read():
                assert message.content.startswith(SECRET)
            handle.context()
        assert_all_accounted(only_k2, ledger)
    finally:
        stop.set()
        reset_engine_client(previous)


def _task_result(app: Any, task_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
    value: dict[str, Any] = app.AsyncResult(task_id).get(timeout=timeout_s)
    while value.get("continued_as"):
        value = app.AsyncResult(value["continued_as"]).get(timeout=timeout_s)
    return value
