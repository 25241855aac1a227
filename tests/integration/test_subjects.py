"""Data subjects (issue 16): memories indexed by (project, subject hash); export as JSON-ready
dicts (round-trip through JSONL); erasure of everything of one subject, proved by a full SCAN
(in the test only); an erasure racing appenders never leaves data of the subject unfindable.
Real Redis."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from memory_engine.aio import AsyncMemoryClient
from memory_engine.client import MemoryClient
from memory_engine.errors import ConfigError, KeyTemplateError, MemoryErased
from memory_engine.keys import subject_hash
from memory_engine.messages import Message
from memory_engine.settings import Settings
from tests.builders import fifo, resource_yaml
from tests.fixtures_worker import wait_for

SALT = "test-salt-not-secret"
RESOURCES = resource_yaml(
    "chat",
    max_messages=10,
    flushing=fifo(),
    archive={"enabled": True, "ttl": "1h"},
    subject_template="{{ workflow.input.user }}",
)


def settings_for(redis_url: str, key_prefix: str, tmp_path: Path, **extra: Any) -> Settings:
    (tmp_path / "chat.yaml").write_text(RESOURCES)
    return Settings(
        redis_url=redis_url,  # type: ignore[arg-type]
        broker_url=redis_url.rsplit("/", 1)[0] + "/3",  # type: ignore[arg-type]
        key_prefix=key_prefix,
        resources_dir=tmp_path,
        socket_timeout_s=5.0,
        subject_salt=SALT,  # type: ignore[arg-type]
        **extra,
    )


@pytest.fixture
def subj(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[MemoryClient]:
    with MemoryClient(settings_for(redis_url, key_prefix, tmp_path)) as c:
        yield c


def ctx(user: str, conv: str, project: str | None = None) -> dict[str, Any]:
    context: dict[str, Any] = {"workflow": {"input": {"user": user, "conv": conv}}}
    if project is not None:
        context["project"] = {"id": project}
    return context


def populate(client: MemoryClient, user: str, project: str, convs: int, n: int = 12) -> list[str]:
    ids = []
    for c in range(convs):
        memory = client.memory("chat", ctx(user, f"{user}-{project}-{c}", project))
        for i in range(n):
            memory.append({"role": "user", "content": f"{user} says {i} in {c}"})
        memory.flush()  # something in the summary-free archive too
        ids.append(memory.key)
    return ids


def scan_all(r: redis.Redis, prefix: str) -> dict[str, bytes]:
    """Every key of the test's prefix with its DUMP-free content as bytes (test only)."""
    found: dict[str, bytes] = {}
    for key in r.scan_iter(match=f"{prefix}:*", count=1000):
        kind = r.type(key)
        if kind == b"list":
            value = b"\n".join(r.lrange(key, 0, -1))
        elif kind == b"hash":
            value = b"\n".join(k + b"=" + v for k, v in r.hgetall(key).items())
        elif kind == b"set":
            value = b"\n".join(sorted(r.smembers(key)))
        elif kind == b"zset":
            value = b"\n".join(m for m, _ in r.zrange(key, 0, -1, withscores=True))
        else:
            value = r.get(key) or b""
        found[key.decode()] = value
    return found


def test_erasure_removes_one_subject_and_nothing_else(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    settings = settings_for(redis_url, key_prefix, tmp_path, erasure_tombstone_ttl_s=1)
    with MemoryClient(settings) as client:
        alice_a = populate(client, "alice", "pa", 6)
        alice_b = populate(client, "alice", "pb", 3)
        bob_a = populate(client, "bob", "pa", 5)
        before = scan_all(client.redis, key_prefix)
        assert any(b"alice says" in v for v in before.values())

        report = client.erase_subject("alice", project_id="pa")
        assert report.memories == 6
        # msgs, meta, archive of each memory, and the subject's index
        assert report.keys_deleted == 6 * 3 + 1
        assert report.subject_hash == subject_hash("alice", SALT)

        after = scan_all(client.redis, key_prefix)
        # Tombstones (no content, short-lived) are all that is left of the erased memories.
        for key, value in after.items():
            if any(mid in key for mid in alice_a):
                assert key.endswith(":meta") and b"erased=1" in value and b"says" not in value
            else:
                assert not any(mid.encode() in value for mid in alice_a), key
        for key, value in after.items():
            if "{pb:" not in key:
                assert b"alice says" not in value, key
        # Everything of the others is still there, untouched.
        for key, value in before.items():
            if any(mid in key for mid in alice_a) or ":idx:" in key or ":subject:" in key:
                continue
            assert after.get(key) == value, key
        access = client.redis.zrange(client.keyspace.access_index, 0, -1)
        assert {m.decode() for m in access} == set(alice_b + bob_a)
        for mid in alice_b + bob_a:
            assert client.memory_by_id(mid, "chat").stats().message_count > 0
        # The audit record: hash and counts, no subject, no content.
        (record,) = client.subjects.erasures(10)
        assert "alice" not in record and json.loads(record)["memories"] == 6
        # Once the tombstones expire, a full SCAN finds nothing of alice in project pa.
        wait_for(
            lambda: (
                not any(
                    any(mid in k for mid in alice_a) for k in scan_all(client.redis, key_prefix)
                )
            ),
            timeout=5,
            what="tombstones to expire",
        )
        final = scan_all(client.redis, key_prefix)
        digest = report.subject_hash
        assert not any(digest in k for k in final if ":pa:" in k or "{pa:" in k)
        assert list(client.export_subject("alice", "pa")) == []
        assert len(list(client.export_subject("alice", "pb"))) == 3


def test_append_to_an_erased_memory_is_refused_until_the_tombstone_expires(
    subj: MemoryClient,
) -> None:
    memory = subj.memory("chat", ctx("carol", "c1"))
    memory.append({"role": "user", "content": "hello"})
    subj.erase_subject("carol")  # None: the client's default project
    with pytest.raises(MemoryErased):
        memory.append({"role": "user", "content": "again"})
    with pytest.raises(MemoryErased):
        memory.replace([{"role": "user", "content": "again"}])
    assert subj.redis.hgetall(memory.keys.meta).keys() == {b"erased", b"erased_at"}
    # The refused append took back its index writes.
    assert not subj.redis.exists(memory.subject_index or "")
    assert subj.redis.zscore(subj.keyspace.access_index, memory.key) is None


def test_export_round_trips_through_jsonl(subj: MemoryClient, tmp_path: Path) -> None:
    populate(subj, "dave", "p1", 3)
    exported = list(subj.export_subject("dave", "p1"))
    assert len(exported) == 3
    first = exported[0]
    assert set(first) == {
        "memory_id", "project_id", "resource_id", "stats", "summary", "messages", "archive"
    }  # fmt: skip
    assert first["project_id"] == "p1" and first["resource_id"] == "chat"
    assert len(first["messages"]) + len(first["archive"]) == 12
    assert first["stats"]["archived_count"] == len(first["archive"])
    path = tmp_path / "dave.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in exported))
    back = [json.loads(line) for line in path.read_text().splitlines()]
    assert back == exported
    messages = [Message.model_validate(m) for m in back[0]["messages"]]
    memory = subj.memory_by_id(back[0]["memory_id"], "chat")
    assert messages == memory.read()
    archived = [Message.model_validate(m) for m in back[0]["archive"]]
    assert archived == memory.read_archive(limit=100).messages
    # Another project's subject of the same name is another subject.
    assert list(subj.export_subject("dave", "p2")) == []


def test_subject_template_fails_closed_and_needs_the_salt(
    subj: MemoryClient, redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    with pytest.raises(KeyTemplateError):
        subj.memory("chat", {"workflow": {"input": {"conv": "c1"}}})  # no user
    with pytest.raises(KeyTemplateError):
        subj.memory("chat", ctx("", "c1"))
    unsalted = settings_for(redis_url, key_prefix, tmp_path).replace(subject_salt=None)
    with MemoryClient(unsalted) as c:
        with pytest.raises(ConfigError, match="MEMORY_SUBJECT_SALT"):
            c.memory("chat", ctx("erin", "c1"))
        with pytest.raises(ConfigError):
            c.erase_subject("erin")
    # The raw subject is in no key.
    memory = subj.memory("chat", ctx("frank@example.com", "c1"))
    memory.append({"role": "user", "content": "x"})
    assert memory.subject_index is not None and "frank" not in memory.subject_index
    assert subj.redis.ttl(memory.subject_index) > 3600  # outlives the memory's 1h TTL


def test_erasure_racing_appenders_leaves_nothing_unfindable(subj: MemoryClient) -> None:
    """Appenders create and fill memories of one subject while it is erased. Afterwards nothing
    appended before the erasure began survives, and everything that survives is listed under
    the subject, so a second erasure (appenders stopped) leaves nothing at all."""
    stop = threading.Event()
    before_erasure: list[str] = []
    refused = acked_after = 0
    lock = threading.Lock()
    erasing = threading.Event()
    done = threading.Event()

    def appender(worker: int) -> None:
        nonlocal refused, acked_after
        conv = 0
        while not stop.is_set():
            memory = subj.memory("chat", ctx("gina", f"w{worker}-{conv}"))
            for i in range(5):
                started_before = not erasing.is_set()
                try:
                    memory.append({"role": "user", "content": f"gina {worker} {conv} {i}"})
                except MemoryErased:
                    with lock:
                        refused += 1
                    break
                with lock:
                    if started_before and not erasing.is_set():
                        before_erasure.append(memory.key)
                    elif done.is_set():
                        acked_after += 1
            conv += 1

    threads = [threading.Thread(target=appender, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(before_erasure) > 40, what="appends before the erasure")
        erasing.set()
        first = subj.erase_subject("gina")
        done.set()
        # Let the appenders run on after the erasure returned, then stop them.
        wait_for(lambda: acked_after > 20, what="appends after the erasure")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert first.memories > 0
    index = subj.keyspace.subject_index("default", subject_hash("gina", SALT))
    listed = {m.decode() for m in subj.redis.smembers(index)}
    for key in subj.redis.scan_iter(match=f"{subj.keyspace.prefix}:{{default:*}}:msgs"):
        memory_id = key.decode().split("{", 1)[1].split("}", 1)[0]
        assert memory_id in listed, f"{memory_id} holds data of the subject but is not indexed"
    survivors_before = [
        mid for mid in set(before_erasure) if subj.redis.exists(subj.keyspace.memory(mid).msgs)
    ]
    assert not survivors_before, survivors_before[:5]
    subj.erase_subject("gina")
    assert not list(subj.redis.scan_iter(match=f"{subj.keyspace.prefix}:{{default:*}}:msgs"))
    assert not subj.redis.exists(index)


def test_async_client_exports_and_erases(redis_url: str, key_prefix: str, tmp_path: Path) -> None:
    async def run() -> None:
        async with AsyncMemoryClient(settings_for(redis_url, key_prefix, tmp_path)) as c:
            memory = c.memory("chat", ctx("hank", "a1"))
            for i in range(9):
                await memory.append({"role": "user", "content": f"hank {i}"})
            await memory.flush()
            page = await memory.read_archive()
            assert page.total == 4 and page.messages[0].seq == 1
            exported = [r async for r in c.export_subject("hank")]
            assert [r["memory_id"] for r in exported] == [memory.memory_id]
            report = await c.erase_subject("hank")
            assert report.memories == 1
            with pytest.raises(MemoryErased):
                await memory.append({"role": "user", "content": "again"})

    asyncio.run(run())
