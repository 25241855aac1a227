"""The per-memory commands' decisions without I/O (``memory_engine/core/commands.py``), driven
with canned replies: what both the sync and the async store rely on."""

from __future__ import annotations

import json

import pytest

from memory_engine.core.append import PendingMessage
from memory_engine.core.commands import (
    INDEX_REFRESH_MAX_S,
    IndexMemo,
    decode_archive,
    decode_context_reply,
    decode_flush_marker,
    decode_replace_reply,
    index_writes,
    page_of,
    record_use_call,
    replace_call,
    stats_from_metadata,
)
from memory_engine.errors import MemoryErased
from memory_engine.keys import KeySpace
from memory_engine.resources import parse_resource

RESOURCE = parse_resource(
    {
        "resource": "memory",
        "id": "conv",
        "type": "message_count_based",
        "max_messages": 10,
        "persistence": {"ttl": "1h"},
        "default_key_template": "conv:{{ workflow.input.conv }}",
    }
)
KEYS = KeySpace("t").memory("p1:conv:a")


def _wire(seq: int, role: str, content: str) -> bytes:
    return json.dumps({"s": seq, "t": 3, "r": role, "c": content, "ts": 1}).encode()


def test_index_memo_is_due_first_then_after_the_refresh_interval() -> None:
    memo = IndexMemo()
    assert memo.due("m", 1000.0, 3600)
    memo.remember("m", 1000.0)
    assert not memo.due("m", 1000.0 + INDEX_REFRESH_MAX_S - 1, 3600)
    assert memo.due("m", 1000.0 + INDEX_REFRESH_MAX_S, 3600)
    assert not memo.due("m", 1005.0, 100) and memo.due("m", 1010.0, 100)  # ttl / 10
    assert memo.due("m", 999.0, 3600)  # a time before the last write


def test_index_writes_skip_the_expiry_index_without_a_ttl() -> None:
    ks = KeySpace("t")
    assert index_writes(ks, "m", 5.0, 0) == [(ks.access_index, {"m": 5.0})]
    assert index_writes(ks, "m", 5.0, 10)[1] == (ks.expiry_index, {"m": 15.0})


def test_replace_arguments_and_reply() -> None:
    keys, args = replace_call(
        KEYS,
        [PendingMessage("a", 2, True), PendingMessage("b", 3)],
        resource_id="conv",
        ttl_s=60,
        now=1.5,
    )
    assert keys == (KEYS.msgs, KEYS.meta, KEYS.summary, KEYS.used, KEYS.archive)
    assert args == ("1.5", "conv", 60_000, 2, 1, "", "a", 2, "b", 3)
    assert decode_replace_reply([2, 5, 7, 1, 2]) == (2, 5, 7)
    with pytest.raises(MemoryErased):
        decode_replace_reply([-1], "acme:c1")


def test_archive_entries_decode_with_their_reason_and_time() -> None:
    raw = _wire(4, "user", "hi")
    entry = raw[:-1] + b',"why":"flushed","at":1700000000.5}'
    (message,) = decode_archive([entry], "acme:c1")
    assert message.seq == 4 and message.content == "hi"
    assert message.metadata["archive"] == {"reason": "flushed", "archived_at": 1700000000.5}


def test_flush_marker_status_and_record_use() -> None:
    assert [decode_flush_marker(s) for s in (-1, 0, 1, b"1")] == [None, False, True, True]
    assert record_use_call(KEYS, [], 60, 1.0) is None
    assert record_use_call(KEYS, [3, 4], -1, 1.0) == ((KEYS.meta, KEYS.used), ("1.0", 0, "3", "4"))


def test_context_reply_and_page() -> None:
    reply = [
        [b"text", b"sum", b"summary_point", b"2"],
        3,
        [_wire(4, "user", "hi")],
        [_wire(1, "system", "s")],
    ]
    window = decode_context_reply(reply, KEYS.memory_id)
    assert window.summary == {"text": "sum", "summary_point": "2"}
    assert window.tail_start == 3
    assert [m.seq for m in window.tail] == [4] and [m.seq for m in window.systems] == [1]
    page = page_of(window.tail, 5, 3, 1)
    assert page.has_more and page.total == 5
    assert not page_of(window.tail, 4, 3, 1).has_more


def test_stats_from_metadata() -> None:
    meta = {"message_count": "8", "token_count": "40", "seq": "12", "epoch": "2", "flushed": "4"}
    summary = {"text": "s", "token_count": "9", "summary_point": "4"}
    stats = stats_from_metadata(RESOURCE, "p1:conv:a", meta, 3590, True, summary)
    assert (stats.message_count, stats.last_seq, stats.flushed_count) == (8, 12, 4)
    assert stats.budget_used == 0.8 and stats.summary_tokens == 9 and stats.flush_pending
    empty = stats_from_metadata(RESOURCE, "p1:conv:a", {}, -2, False, {})
    assert (empty.message_count, empty.ttl_s, empty.summary_point) == (0, -2, 0)
