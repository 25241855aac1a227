"""Store operations against the private Redis: every write, read and invariant of DESIGN §3-4."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from memory_engine.client import MemoryClient
from memory_engine.errors import ConfigError, MemoryFull, MessageValidationError, StoreUnavailable
from memory_engine.messages import Message
from memory_engine.registry import ResourceRegistry
from memory_engine.resources import parse_resource
from memory_engine.settings import Settings
from memory_engine.store.memory import INDEX_REFRESH_MAX_S
from memory_engine.tokens import counter_for

from .accounting import Ledger, assert_all_accounted
from .helpers import client_with, ctx, resource, socket_writes


@pytest.fixture
def mc(settings: Settings) -> Iterator[MemoryClient]:
    with client_with(
        settings,
        resource("conv"),
        resource(
            "private",
            privacy_policy={
                "redact_patterns": [r"[\w.+-]+@[\w-]+\.[\w.]+"],
                "non_persistable_message_types": ["System"],
                "default_redaction_string": "[EMAIL]",
            },
        ),
        resource("forever", persistence={"ttl": "0"}),
    ) as c:
        yield c


def raw_list(r: redis.Redis, mc: MemoryClient, key: str) -> list[Message]:
    return [Message.from_wire(x) for x in r.lrange(mc.keyspace.memory(key).msgs, 0, -1)]


def test_append_then_read_round_trip(mc: MemoryClient) -> None:
    m = mc.memory("conv", ctx("a"))
    r1 = m.append({"role": "user", "content": "Hello there"})
    r2 = m.append(Message(role="assistant", content="Hi! How can I help?", name="bot"))
    assert (r1.stored, r1.message_count, r1.first_seq) == (True, 1, 1)
    assert (r2.message_count, r2.last_seq) == (2, 2)
    got = m.read()
    assert [(x.seq, x.role.value, x.content) for x in got] == [
        (1, "user", "Hello there"),
        (2, "assistant", "Hi! How can I help?"),
    ]
    counter = counter_for(None)
    expected = [
        counter.count_message(Message(role="user", content="Hello there")),
        counter.count_message(Message(role="assistant", content="Hi! How can I help?", name="bot")),
    ]
    assert [x.token_count for x in got] == expected
    assert r2.token_count == sum(expected)
    assert got[1].name == "bot"


def test_append_result_reports_the_message_tokens_and_the_memory_total(mc: MemoryClient) -> None:
    m = mc.memory("conv", ctx("message-tokens"))
    counter = counter_for(None)
    first = Message(role="user", content="Hello there, how are you today?")
    second = [Message(role="assistant", content="Fine."), Message(role="user", content="Good!")]
    r1 = m.append(first)
    r2 = m.append_many(second)
    assert r1.message_tokens == r1.token_count == counter.count_message(first)
    assert r2.message_tokens == sum(counter.count_message(x) for x in second)
    assert r2.token_count == r1.token_count + r2.message_tokens == m.stats().token_count


def test_append_many_is_all_or_none(mc: MemoryClient, redis_client: redis.Redis) -> None:
    m = mc.memory("conv", ctx("batch"))
    m.append({"role": "user", "content": "first"})
    with pytest.raises(MessageValidationError, match="message 2"):
        m.append_many(
            [
                {"role": "user", "content": "ok"},
                {"role": "assistant", "content": "ok"},
                {"role": "robot", "content": "bad role"},
            ]
        )
    assert m.stats().message_count == 1
    assert redis_client.llen(m.keys.msgs) == 1
    res = m.append_many([{"role": "user", "content": f"m{i}"} for i in range(5)])
    assert (res.appended, res.message_count, res.first_seq, res.last_seq) == (5, 6, 2, 6)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"role": "user", "content": ""}, "empty"),
        ({"role": "user", "content": "   "}, "empty"),
        ({"role": "user"}, "content"),
        ({"role": "user", "content": 12}, "content"),
        ({"role": "user", "content": "x", "extra": 1}, "extra"),
        ({"role": "tool", "content": "result"}, "tool_call_id"),
        ({"role": "user", "content": "x" * 70_000}, "max_message_bytes"),
        ({"role": "user", "content": "bad \ud800 surrogate"}, "UTF-8"),
        ({"role": "user", "content": "x", "metadata": {"obj": object()}}, "metadata"),
        ("just a string", "Message or a dict"),
    ],
)
def test_malformed_messages_are_rejected_and_nothing_is_written(
    mc: MemoryClient, redis_client: redis.Redis, bad: object, match: str
) -> None:
    m = mc.memory("conv", ctx("bad"))
    with pytest.raises(MessageValidationError, match=match):
        m.append(bad)  # type: ignore[arg-type]
    assert redis_client.exists(m.keys.msgs, m.keys.meta) == 0


def test_batch_limits(settings: Settings) -> None:
    with client_with(settings, resource("conv"), max_batch_messages=3, max_batch_bytes=2048) as c:
        m = c.memory("conv", ctx("lim"))
        with pytest.raises(MessageValidationError, match="max_batch_messages"):
            m.append_many([{"role": "user", "content": "x"}] * 4)
        with pytest.raises(MessageValidationError, match="max_batch_bytes"):
            m.append_many([{"role": "user", "content": "y" * 900}] * 3)
        assert m.stats().message_count == 0


def test_redaction_happens_before_storage(mc: MemoryClient, redis_client: redis.Redis) -> None:
    m = mc.memory("private", ctx("priv"))
    res = m.append(
        {
            "role": "user",
            "content": "mail me at jane.doe@example.com or j@x.org",
            "metadata": {"reply_to": "jane.doe@example.com", "tags": ["vip"]},
        }
    )
    assert res.redacted == 3
    stored = redis_client.lrange(m.keys.msgs, 0, -1)
    assert b"example.com" not in stored[0] and b"x.org" not in stored[0]
    [message] = m.read()
    assert message.content == "mail me at [EMAIL] or [EMAIL]"
    assert message.metadata == {"reply_to": "[EMAIL]", "tags": ["vip"]}


def test_non_persistable_roles_are_not_stored(mc: MemoryClient, redis_client: redis.Redis) -> None:
    m = mc.memory("private", ctx("np"))
    res = m.append({"role": "SYSTEM", "content": "internal prompt"})
    assert (res.stored, res.appended, res.skipped) == (False, 0, 1)
    assert redis_client.exists(m.keys.msgs) == 0
    res = m.append_many([{"role": "system", "content": "x"}, {"role": "user", "content": "kept"}])
    assert (res.stored, res.appended, res.skipped) == (True, 1, 1)
    assert [x.content for x in m.read()] == ["kept"]


def test_read_page(mc: MemoryClient) -> None:
    m = mc.memory("conv", ctx("page"))
    m.append_many([{"role": "user", "content": f"m{i}"} for i in range(7)])
    p = m.read_page(0, 3)
    assert ([x.content for x in p.messages], p.total, p.has_more) == (["m0", "m1", "m2"], 7, True)
    p = m.read_page(6, 3)
    assert ([x.content for x in p.messages], p.has_more) == (["m6"], False)
    p = m.read_page(10, 3)
    assert (p.messages, p.total, p.has_more) == ([], 7, False)
    with pytest.raises(MessageValidationError):
        m.read_page(-1, 3)


def test_sliding_ttl_on_every_key(mc: MemoryClient, redis_client: redis.Redis) -> None:
    m = mc.memory("conv", ctx("ttl"))
    m.append({"role": "user", "content": "one"})
    for k in (m.keys.msgs, m.keys.meta):
        assert 3500 < redis_client.ttl(k) <= 3600
        redis_client.expire(k, 10)
    m.append({"role": "user", "content": "two"})
    for k in (m.keys.msgs, m.keys.meta):
        assert redis_client.ttl(k) > 3500
    assert m.stats().ttl_s > 3500
    score = redis_client.zscore(mc.keyspace.expiry_index, m.key)
    assert score is not None and score > 0


def test_append_slides_the_ttl_of_the_summary_and_the_use_set(
    settings: Settings, redis_client: redis.Redis
) -> None:
    hybrid = resource(
        "hybrid", flushing={"type": "hybrid_summary", "summary_tokens": 40}, max_tokens=400
    )
    lru = resource("lru", flushing={"type": "lru"})
    with client_with(settings, hybrid, lru) as c:
        h = c.memory("hybrid", ctx("slide-h"))
        h.append_many(
            [{"role": "user", "content": f"question {i} about ORD-{i}"} for i in range(20)]
        )
        assert h.flush().summarized > 0
        u = c.memory("lru", ctx("slide-u"))
        u.append({"role": "user", "content": "one"})
        u.context()
        for key in (h.keys.summary, u.keys.used):
            assert redis_client.exists(key)
            redis_client.expire(key, 10)
        h.append({"role": "user", "content": "more"})
        u.append({"role": "user", "content": "more"})
        for key in (h.keys.summary, u.keys.used):
            assert redis_client.ttl(key) > 3500, key
        # Keys a memory does not have are not created by the refresh.
        assert redis_client.exists(h.keys.used, u.keys.summary) == 0


def test_ttl_zero_means_no_expiry(mc: MemoryClient, redis_client: redis.Redis) -> None:
    m = mc.memory("forever", ctx("f"))
    m.append({"role": "user", "content": "one"})
    assert redis_client.ttl(m.keys.msgs) == -1
    assert m.stats().ttl_s == -1
    assert redis_client.zscore(mc.keyspace.expiry_index, m.key) is None


def test_replace_keeps_ttl_bumps_epoch_and_continues_seq(
    mc: MemoryClient, redis_client: redis.Redis
) -> None:
    m = mc.memory("conv", ctx("rep"))
    m.append_many([{"role": "user", "content": f"m{i}"} for i in range(3)])
    redis_client.expire(m.keys.meta, 500)
    redis_client.expire(m.keys.msgs, 500)
    before = m.stats()
    assert (
        m.replace([{"role": "user", "content": "fresh"}, {"role": "assistant", "content": "start"}])
        == 2
    )
    after = m.stats()
    assert after.epoch == before.epoch + 1
    assert 400 < redis_client.ttl(m.keys.msgs) <= 500
    assert [(x.seq, x.content) for x in m.read()] == [(4, "fresh"), (5, "start")]
    assert after.message_count == 2
    assert after.token_count == sum(x.token_count or 0 for x in m.read())
    assert int(redis_client.hget(m.keys.meta, "replaced") or 0) == 3


def test_clear_and_delete(mc: MemoryClient, redis_client: redis.Redis) -> None:
    m = mc.memory("conv", ctx("clr"))
    m.append_many([{"role": "user", "content": f"m{i}"} for i in range(4)])
    assert m.clear() == 4
    s = m.stats()
    assert (s.message_count, s.token_count, s.epoch, s.last_seq) == (0, 0, 1, 4)
    assert m.read() == []
    m.append({"role": "user", "content": "after"})
    assert m.read()[0].seq == 5
    assert m.delete() is True
    assert redis_client.exists(m.keys.meta, m.keys.msgs) == 0
    assert redis_client.zscore(mc.keyspace.access_index, m.key) is None
    assert m.stats().ttl_s == -2


def test_a_deleted_memory_leaves_nothing_behind(
    mc: MemoryClient, redis_client: redis.Redis
) -> None:
    m = mc.memory("conv", ctx("gone"))
    m.append_many([{"role": "user", "content": f"m{i}"} for i in range(3)])
    seqs = [x.seq for x in m.read() if x.seq is not None]
    assert m.delete() is True
    # Late callers: a flush request and a read's use record arriving after the delete.
    assert m.request_flush() is False
    mc.store.record_use(m.keys, seqs, ttl_s=3600)
    left = list(redis_client.scan_iter(match=f"*{{{m.key}}}*", count=1000))
    assert left == []
    for index in (mc.keyspace.pending_index, mc.keyspace.access_index, mc.keyspace.expiry_index):
        assert redis_client.zscore(index, m.key) is None
    # A memory recreated under the same key starts clean, and requests work on it again.
    m.append({"role": "user", "content": "again"})
    assert redis_client.exists(m.keys.used) == 0
    assert m.request_flush() is True
    assert redis_client.zscore(mc.keyspace.pending_index, m.key) is not None
    mc.store.record_use(m.keys, [4], ttl_s=3600)
    assert redis_client.zrange(m.keys.used, 0, -1) == [b"4"]


def test_stats_reports_budget(mc: MemoryClient) -> None:
    m = mc.memory("conv", ctx("st"))
    res = m.append({"role": "user", "content": "hello " * 50})
    s = m.stats()
    assert s.message_count == 1 and s.token_count == res.token_count
    assert s.max_tokens == 100_000
    assert s.budget_used == round(res.token_count / 100_000, 4)
    assert s.flush_pending is False and s.resource_id == "conv"


def _commands_and_writes(
    mc: MemoryClient, redis_url: str, key: str, action: Callable[[], object]
) -> tuple[list[str], int]:
    """Run ``action``; return the commands MONITOR saw naming ``key`` (not those run inside a
    script) and how many socket writes the client's connections made."""
    monitor_client = redis.Redis.from_url(redis_url)
    seen: list[str] = []
    ready = threading.Event()
    done = threading.Event()

    def watch() -> None:
        with monitor_client.monitor() as mon:
            ready.set()
            for cmd in mon.listen():
                text = cmd["command"]
                if "rt-end-marker" in text:
                    break
                if key in text and cmd.get("client_type") != "lua":
                    seen.append(text.split(" ", 1)[0].strip('"').upper())
        done.set()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    assert ready.wait(5)
    sends = socket_writes(mc, action)
    monitor_client.ping()
    monitor_client.get("rt-end-marker")
    assert done.wait(5)
    monitor_client.close()
    return seen, sends


def test_append_is_one_round_trip(mc: MemoryClient, redis_url: str) -> None:
    warm = mc.memory("conv", ctx("rt-warm"))
    warm.append({"role": "user", "content": "warm up: scripts loaded, connection open"})
    m = mc.memory("conv", ctx("rt"))
    # The first append of a memory also writes its two index entries, in the same socket write.
    seen, sends = _commands_and_writes(
        mc, redis_url, m.key, lambda: m.append({"role": "user", "content": "first"})
    )
    assert (seen, sends) == (["EVALSHA", "ZADD", "ZADD"], 1)
    # The next ones, within the index refresh interval, are the script alone.
    seen, sends = _commands_and_writes(
        mc, redis_url, m.key, lambda: m.append({"role": "user", "content": "second"})
    )
    assert (seen, sends) == (["EVALSHA"], 1)
    assert [x.content for x in m.read()] == ["first", "second"]


def test_index_entries_are_refreshed_after_the_interval(
    mc: MemoryClient, redis_client: redis.Redis
) -> None:
    m = mc.memory("conv", ctx("refresh"))
    store, ks = mc.store, mc.keyspace
    args = {"resource_id": "conv", "ttl_s": 3600, "token_threshold": 0, "message_threshold": 0}
    pending = m._prepare([{"role": "user", "content": "x"}])[0]
    store.append(m.keys, pending, marker_ttl_s=60, now=1_000.0, **args)
    assert redis_client.zscore(ks.access_index, m.key) == 1_000.0
    assert redis_client.zscore(ks.expiry_index, m.key) == 1_000.0 + 3600
    store.append(m.keys, pending, marker_ttl_s=60, now=1_000.0 + INDEX_REFRESH_MAX_S - 1, **args)
    assert redis_client.zscore(ks.access_index, m.key) == 1_000.0  # within the interval: kept
    later = 1_000.0 + INDEX_REFRESH_MAX_S
    store.append(m.keys, pending, marker_ttl_s=60, now=later, **args)
    assert redis_client.zscore(ks.access_index, m.key) == later
    assert redis_client.zscore(ks.expiry_index, m.key) == later + 3600
    # A short TTL refreshes at a tenth of it.
    short = {**args, "ttl_s": 100}
    store.append(m.keys, pending, marker_ttl_s=60, now=later + 10, **short)
    assert redis_client.zscore(ks.expiry_index, m.key) == later + 10 + 100
    # An explicit time in the past is not "recent": it is written too.
    store.append(m.keys, pending, marker_ttl_s=60, now=500.0, **args)
    assert redis_client.zscore(ks.access_index, m.key) == 500.0


def test_memory_deleted_elsewhere_is_indexed_again_on_its_next_append(
    mc: MemoryClient, settings: Settings, redis_client: redis.Redis
) -> None:
    m = mc.memory("conv", ctx("recreated"))
    m.append({"role": "user", "content": "one"})
    with client_with(settings, resource("conv")) as other:
        assert other.memory("conv", ctx("recreated")).delete() is True
    assert redis_client.zscore(mc.keyspace.access_index, m.key) is None
    # This client indexed the memory a moment ago, but the script reports that it created the
    # metadata again, so the entries are written at once.
    res = m.append({"role": "user", "content": "two"})
    assert (res.message_count, res.first_seq) == (1, 1)
    assert redis_client.zscore(mc.keyspace.access_index, m.key) is not None
    assert redis_client.zscore(mc.keyspace.expiry_index, m.key) is not None


def test_scripts_reload_after_script_flush(mc: MemoryClient, redis_client: redis.Redis) -> None:
    m = mc.memory("conv", ctx("noscript"))
    m.append({"role": "user", "content": "a"})
    redis_client.script_flush()
    m.append({"role": "user", "content": "b"})
    assert [x.content for x in m.read()] == ["a", "b"]


@pytest.fixture
def index_read_only(
    settings: Settings, redis_client: redis.Redis, key_prefix: str
) -> Iterator[Settings]:
    """Settings whose Redis user may write the memories' keys but only read the index keys (so
    every index ZADD/ZREM fails with NOPERM after the memory's script has run)."""
    user, password = f"noindex-{key_prefix}", uuid.uuid4().hex
    redis_client.execute_command(
        "ACL", "SETUSER", user, "reset", "on", f">{password}", "+@all", "&*",
        f"~{key_prefix}:{{*", f"%R~{key_prefix}:idx:*",
    )  # fmt: skip
    url = urlsplit(settings.redis_dsn())
    netloc = f"{user}:{password}@{url.hostname}:{url.port}"
    try:
        limited = urlunsplit(url._replace(netloc=netloc))
        yield settings.replace(redis_url=limited, broker_url=settings.redis_dsn())
    finally:
        redis_client.execute_command("ACL", "DELUSER", user)


def test_index_failures_after_a_write_are_logged_not_raised(
    index_read_only: Settings, mc: MemoryClient, caplog: pytest.LogCaptureFixture
) -> None:
    """An error means "nothing changed": a write whose per-memory part was applied returns
    normally when only its index commands (hints) fail; a caller retrying on an error would
    otherwise store an append twice."""
    ledger = Ledger()
    with client_with(index_read_only, resource("conv")) as c, caplog.at_level("WARNING"):
        m = c.memory("conv", ctx("hints"))
        for content in ("one", "two"):  # the first append writes its index entries: refused
            started = ledger.now_ns()
            res = m.append({"role": "user", "content": content})
            assert res.first_seq is not None
            ledger.acked(m.key, content, res.first_seq, started, ledger.now_ns())
        started = ledger.now_ns()
        assert m.replace([{"role": "user", "content": "replacement"}]) == 1
        ledger.wiped(m.key, "replace", started, ledger.now_ns(), ("replacement",))
        assert [x.content for x in m.read()] == ["replacement"]
        assert m.request_flush() is True  # the marker is set; its pending entry is refused
        c.store.clear_flush_marker(m.keys)
        assert m.clear() == 1
        assert_all_accounted(mc, ledger)
        assert m.delete() is True
        assert m.stats().ttl_s == -2
    failed = [r.getMessage() for r in caplog.records if "index update(s) failed" in r.message]
    for what in ("append", "replace", "index pending flush", "clear flush marker", "delete"):
        assert any(text.startswith(f"{what} of memory p1:conv:hints:") for text in failed), what


def test_redis_down_raises_store_unavailable(settings: Settings) -> None:
    down = settings.replace(redis_url="redis://127.0.0.1:1/0", socket_connect_timeout_s=0.5)
    with client_with(down, resource("conv")) as c:
        m = c.memory("conv", ctx("down"))
        with pytest.raises(StoreUnavailable):
            m.append({"role": "user", "content": "lost?"})
        with pytest.raises(StoreUnavailable):
            m.read()


@pytest.mark.parametrize(
    "options",
    [{"single_connection_client": True}, {"decode_responses": True}, {}],
    ids=["single-connection", "decoded-responses", "pooled"],
)
def test_append_works_on_any_injected_client(
    settings: Settings, redis_url: str, options: dict[str, bool]
) -> None:
    # A single-connection client takes redis-py's own path (memory_engine/resp.py cannot use
    # it); a client that decodes responses returns the script's reply as str.
    injected = redis.Redis.from_url(redis_url, **options)
    registry = ResourceRegistry([parse_resource(resource("conv"))])
    with MemoryClient(settings, redis=injected, registry=registry) as c:
        m = c.memory("conv", ctx("injected"))
        for i in range(3):
            assert m.append({"role": "user", "content": f"m{i}"}).last_seq == i + 1
        assert [x.content for x in m.read()] == ["m0", "m1", "m2"]
        assert [x.content for x in m.context()] == ["m0", "m1", "m2"]
    injected.close()


def assert_consistent(r: redis.Redis, mc: MemoryClient, key: str) -> list[Message]:
    keys = mc.keyspace.memory(key)
    items = [Message.from_wire(x) for x in r.lrange(keys.msgs, 0, -1)]
    meta = {k.decode(): v.decode() for k, v in r.hgetall(keys.meta).items()}
    assert int(meta.get("message_count", 0)) == len(items)
    assert int(meta.get("token_count", 0)) == sum(i.token_count or 0 for i in items)
    seqs = [i.seq or 0 for i in items]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    return items


def test_concurrent_appends_lose_nothing(mc: MemoryClient, redis_client: redis.Redis) -> None:
    m = mc.memory("conv", ctx("storm"))
    threads, per = 8, 500

    def worker(t: int) -> None:
        for i in range(per):
            m.append({"role": "user", "content": f"t{t}-m{i} " + "w" * (i % 17)})

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    items = assert_consistent(redis_client, mc, m.key)
    assert len(items) == threads * per
    assert {i.content.split(" ")[0] for i in items} == {
        f"t{t}-m{i}" for t in range(threads) for i in range(per)
    }  # type: ignore[union-attr]
    assert [i.seq for i in items] == list(range(1, threads * per + 1))
    # per-thread order is preserved
    for t in range(threads):
        mine = [
            int(i.content.split(" ")[0].split("-m")[1])
            for i in items
            if i.content.startswith(f"t{t}-")
        ]  # type: ignore[union-attr]
        assert mine == list(range(per))


def test_concurrent_appends_with_replace_and_clear_keep_metadata_exact(
    mc: MemoryClient, redis_client: redis.Redis
) -> None:
    m = mc.memory("conv", ctx("mixed"))
    stop = threading.Event()
    acked = [0] * 8

    def appender(t: int) -> None:
        for i in range(300):
            m.append({"role": "user", "content": f"t{t} m{i}"})
            acked[t] += 1

    def disruptor() -> None:
        n = 0
        while not stop.is_set():
            if n % 2:
                m.clear()
            else:
                m.replace([{"role": "system", "content": f"reset {n}"}])
            n += 1

    d = threading.Thread(target=disruptor)
    ts = [threading.Thread(target=appender, args=(t,)) for t in range(8)]
    d.start()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    stop.set()
    d.join()
    assert_consistent(redis_client, mc, m.key)
    meta = {
        k.decode(): int(float(v))
        for k, v in redis_client.hgetall(m.keys.meta).items()
        if k.decode() in {"seq", "message_count", "cleared", "replaced"}
    }
    # Accounting: every message ever stored is in the list, cleared, or replaced.
    assert meta["seq"] == meta["message_count"] + meta.get("cleared", 0) + meta.get("replaced", 0)
    assert sum(acked) == 8 * 300


def _orphans(messages: list[Message]) -> list[int]:
    """Seqs of tool calls without all their results, and of results without their call."""
    calls: dict[str, int] = {}
    answered: set[str] = set()
    bad = []
    for x in messages:
        for call in x.tool_calls or ():
            calls[call["id"]] = x.seq or 0
        if x.tool_call_id is not None:
            if x.tool_call_id in calls:
                answered.add(x.tool_call_id)
            else:
                bad.append(x.seq or 0)
    bad += [seq for cid, seq in calls.items() if cid not in answered]
    return sorted(bad)


def test_without_a_worker_the_ceiling_bounds_a_memory_with_exact_accounting(
    settings: Settings, redis_url: str
) -> None:
    """1,000 appends to a max_messages 20 resource with no worker: the append script itself keeps
    the memory under its ceiling (default 4 x 20), evicting the oldest messages (never a system
    message, never a tool call apart from its result) and counting every one."""
    idle_broker = redis_url.rsplit("/", 1)[0] + "/9"  # no worker consumes there
    chat = resource("chat", type="message_count_based", max_messages=20, max_tokens=None)
    ledger = Ledger()
    with client_with(settings, chat, broker_url=idle_broker) as c:
        m = c.memory("chat", ctx("no-worker"))
        assert m.resource.ceiling_limits() == (0, 80)
        evicted = 0

        def append(message: dict[str, object], content: str) -> None:
            nonlocal evicted
            started = ledger.now_ns()
            res = m.append({**message, "content": content})
            assert res.first_seq is not None and res.message_count <= 80
            ledger.acked(m.key, content, res.first_seq, started, ledger.now_ns())
            evicted += res.evicted

        append({"role": "system"}, "You are terse.")
        i = 1
        while i < 1000:
            if i % 10 == 0:  # a tool call and its result, in two appends
                call = {"id": f"call{i}", "type": "function", "function": {"name": "f"}}
                append({"role": "assistant", "tool_calls": [call]}, f"call {i}")
                append({"role": "tool", "tool_call_id": f"call{i}"}, f"result {i + 1}")
                i += 2
            else:
                append({"role": "user" if i % 2 else "assistant"}, f"message {i}")
                i += 1
        stats = m.stats()
        listed = m.read()
        assert stats.last_seq == 1000 and stats.message_count == len(listed) <= 80
        assert stats.evicted_count == evicted == 1000 - stats.message_count
        assert (stats.flushed_count, stats.summarized_count) == (0, 0)
        assert listed[0].content == "You are terse." and listed[-1].seq == 1000
        assert _orphans(listed) == []
        assert_all_accounted(c, ledger)


def test_a_refusing_ceiling_refuses_with_nothing_written(
    settings: Settings, redis_url: str, redis_client: redis.Redis
) -> None:
    strict = resource(
        "strict",
        type="message_count_based",
        max_messages=5,
        max_tokens=None,
        ceiling={"factor": 2, "on_exceed": "refuse"},
    )
    with pytest.raises(ConfigError, match=r"ceiling\.max_messages: must be at least"):
        parse_resource({**strict, "ceiling": {"max_messages": 4}})
    idle_broker = redis_url.rsplit("/", 1)[0] + "/9"
    with client_with(settings, strict, broker_url=idle_broker) as c:
        m = c.memory("strict", ctx("full"))
        m.append_many([{"role": "user", "content": f"m{i}"} for i in range(8)])
        before = (redis_client.lrange(m.keys.msgs, 0, -1), redis_client.hgetall(m.keys.meta))
        with pytest.raises(MemoryFull, match="nothing was written"):
            m.append_many([{"role": "user", "content": f"x{i}"} for i in range(3)])
        m.append_many([{"role": "user", "content": f"y{i}"} for i in range(2)])  # exactly 10
        full = (redis_client.lrange(m.keys.msgs, 0, -1), redis_client.hgetall(m.keys.meta))
        assert full[0][:8] == before[0] and len(full[0]) == 10
        with pytest.raises(MemoryFull):
            m.append({"role": "user", "content": "one too many"})
        assert (redis_client.lrange(m.keys.msgs, 0, -1), redis_client.hgetall(m.keys.meta)) == full
        s = m.stats()
        assert (s.message_count, s.last_seq, s.evicted_count) == (10, 10, 0)
