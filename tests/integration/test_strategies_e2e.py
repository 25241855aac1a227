"""Strategies end to end: a real worker, a loopback LLM, and the real store.

- hybrid_summary: appends cross the threshold, the worker's memory.flush hands the plan to
  memory.summarize, which calls the LLM (a real HTTP server speaking the OpenAI API) and commits the
  summary; context() returns it plus the recent messages within budget; a thread appending all the
  while loses nothing.
- LRU and token-aware LRU choose measurably different messages than FIFO on crafted access patterns.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from memory_engine.client import MemoryClient
from memory_engine.engine.context import SUMMARY_NOTICE
from memory_engine.settings import Settings
from memory_engine.tooling.loopback_llm import FakeLLMServer, running_llm_server
from tests.fixtures_worker import wait_for

from .helpers import client_with, ctx, resource


@pytest.fixture
def llm() -> Iterator[FakeLLMServer]:
    with running_llm_server() as server:
        yield server


@pytest.fixture
def llm_engine(
    worker_settings: Settings, llm: FakeLLMServer, celery_worker: Any
) -> Iterator[MemoryClient]:
    """The in-process worker's engine, switched to the loopback LLM for this test."""
    from tasks.runtime import engine_client, reset_engine_client

    previous = engine_client()
    llm_settings = worker_settings.replace(
        summarizer_provider="openai",
        summarizer_base_url=llm.openai_base_url,
        summarizer_model="summary-model",
        summarizer_api_key="sk-test-not-a-secret",
        summarizer_timeout_s=5.0,
    )
    engine = MemoryClient(llm_settings)
    reset_engine_client(engine)
    try:
        yield engine
    finally:
        reset_engine_client(previous)
        engine.close()


def test_hybrid_summary_through_worker_and_llm_loses_nothing(
    llm_engine: MemoryClient, llm: FakeLLMServer
) -> None:
    m = llm_engine.memory(
        "hybrid-small", {"project": {"id": "p1"}, "workflow": {"input": {"conv": uuid.uuid4().hex}}}
    )
    m.append({"role": "system", "content": "You are a careful support agent."})
    acked: list[str] = []
    stop = threading.Event()

    def appender() -> None:
        i = 0
        while not stop.is_set() and i < 400:
            text = f"turn {i}: customer asks about order ORD-{1000 + i} and refund policy details"
            m.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
            acked.append(text)
            i += 1

    t = threading.Thread(target=appender)
    t.start()
    # at least two summaries committed while appends continue
    wait_for(
        lambda: m.stats().summary_point > 0 and m.stats().summarized_count >= 20,
        timeout=60,
        what="summaries",
    )
    stop.set()
    t.join()
    wait_for(lambda: not m.stats().flush_pending, timeout=60, what="last flush")

    chat = [r for r in llm.requests if r.path.endswith("/chat/completions")]
    assert chat, "the LLM was called"
    assert chat[-1].headers["authorization"] == "Bearer sk-test-not-a-secret"
    assert chat[-1].json["max_tokens"] == 80
    s = m.stats()
    summary = llm_engine.store.summary(m.keys)
    assert (
        summary is not None
        and summary.source == "openai"
        and summary.summary_point == s.summary_point
    )
    # Accounting: every acknowledged message is in the list or covered by the summary point.
    stored = {x.content: x.seq for x in m.read()}
    assert all(x.seq > s.summary_point for x in m.read() if x.role.value != "system")
    # Appends outpace the LLM here, so the hard limit (max_tokens) also evicts: every acknowledged
    # message is in the list, folded into the summary, or evicted and counted (system excluded).
    assert s.summarized_count + s.evicted_count + s.message_count - 1 == len(acked)
    kept = [a for a in acked if a in stored]
    assert acked[-len(kept) :] == kept  # the survivors are the newest, in order
    # context: system + summary + recent, within budget
    window = m.context()
    assert window[0].content == "You are a careful support agent."
    assert window[1].metadata.get("summary") is True
    # Quoted (the notice, then the text between tags), cut to the budget's share when larger.
    assert window[1].content.startswith(SUMMARY_NOTICE + "\n<conversation_summary>\n")
    inner = window[1].content.split("\n<conversation_summary>\n", 1)[1]
    inner = inner.removesuffix("\n</conversation_summary>")
    assert inner and summary.text.startswith(inner)
    assert sum(w.token_count or 0 for w in window) <= 600


def test_llm_failure_falls_back_and_loses_nothing(
    llm_engine: MemoryClient, llm: FakeLLMServer
) -> None:
    llm.mode = "error500"
    m = llm_engine.memory(
        "hybrid-small", {"project": {"id": "p1"}, "workflow": {"input": {"conv": uuid.uuid4().hex}}}
    )
    for i in range(60):
        m.append({"role": "user", "content": f"message {i} about ORD-{i} and some more words here"})
    wait_for(lambda: m.stats().summary_point > 0, timeout=30, what="fallback summary")
    wait_for(lambda: not m.stats().flush_pending, timeout=30, what="flush done")
    summary = llm_engine.store.summary(m.keys)
    assert summary is not None and summary.source == "rule_based_fallback"
    s = m.stats()
    assert s.summarized_count + s.evicted_count + s.message_count == 60


@pytest.fixture
def strategies_client(settings: Settings) -> Iterator[MemoryClient]:
    common = {"type": "message_count_based", "max_messages": 20, "max_tokens": None}
    with client_with(
        settings,
        {
            **resource("fifo", flushing={"type": "simple_fifo", "summarize_threshold": 1.0}),
            **common,
        },
        {**resource("lru", flushing={"type": "lru", "summarize_threshold": 1.0}), **common},
        {
            **resource("tlru", flushing={"type": "token_aware_lru", "summarize_threshold": 1.0}),
            **common,
        },
        broker_url="redis://127.0.0.1:1/0",  # no worker: the flushes under test run inline
        socket_connect_timeout_s=0.2,
    ) as c:
        yield c


def _fill(c: MemoryClient, rid: str, contents: list[str]) -> Any:
    m = c.memory(rid, ctx(uuid.uuid4().hex))
    m.append_many([{"role": "user", "content": x} for x in contents])
    return m


def test_lru_keeps_what_the_app_reread_while_fifo_drops_it(strategies_client: MemoryClient) -> None:
    contents = [f"fact {i}" for i in range(20)]
    fifo = _fill(strategies_client, "fifo", contents)
    lru = _fill(strategies_client, "lru", contents)
    # The app re-reads the three oldest messages (pinned facts) on both memories.
    fifo.read_page(0, 3)
    lru.read_page(0, 3)
    fifo.flush()
    lru.flush()
    fifo_kept = [x.content for x in fifo.read()]
    lru_kept = [x.content for x in lru.read()]
    assert len(fifo_kept) == len(lru_kept) == 10
    assert fifo_kept == contents[10:]
    assert lru_kept[:3] == contents[:3]  # the re-read facts survive, in order
    assert set(lru_kept) != set(fifo_kept)


def test_token_aware_lru_drops_a_large_stale_message_before_small_ones(settings: Settings) -> None:
    common = {"max_tokens": 2000}
    with client_with(
        settings,
        resource("lru-t", flushing={"type": "lru", "summarize_threshold": 1.0}, **common),
        resource(
            "tlru-t", flushing={"type": "token_aware_lru", "summarize_threshold": 1.0}, **common
        ),
    ) as c:
        contents = [f"small note {i}: " + "detail " * 12 for i in range(20)]  # ~20 tokens each
        contents[12] = "huge pasted log " + "line of output " * 230  # ~700 tokens
        kept = {}
        for rid in ("lru-t", "tlru-t"):
            m = _fill(c, rid, contents)
            m.read_page(0, 20)  # everything used once...
            m.read_page(13, 7)  # ...then the newest small notes again
            assert m.stats().token_count > 1000  # above the flush target (50 % of 2000)
            m.flush()
            kept[rid] = [x.content for x in m.read()]
            assert m.stats().token_count <= 1000
        # LRU drops the oldest-used small notes and keeps the big log;
        # token-aware LRU evicts the big stale log alone and keeps every small note.
        assert contents[12] in kept["lru-t"] and len(kept["lru-t"]) <= 17
        assert contents[12] not in kept["tlru-t"] and len(kept["tlru-t"]) == 19


def test_lru_eviction_with_a_fifo_flush_drops_the_least_recently_used(settings: Settings) -> None:
    # eviction.policy lru needs uses even when the flushing strategy (simple_fifo) does not.
    common = {"type": "message_count_based", "max_messages": 10, "max_tokens": None}
    with client_with(
        settings,
        resource("fifo-evict", **common),
        resource("lru-evict", eviction={"policy": "lru"}, **common),
        broker_url="redis://127.0.0.1:1/0",  # no worker: the evictions under test run inline
        socket_connect_timeout_s=0.2,
    ) as c:
        contents = [f"fact {i}" for i in range(14)]
        kept = {}
        for rid in ("fifo-evict", "lru-evict"):
            m = _fill(c, rid, contents[:10])
            m.read_page(0, 3)  # the app re-reads the three oldest facts
            m.append_many([{"role": "user", "content": x} for x in contents[10:]])
            assert m.stats().message_count == 14  # over max_messages: eviction's job
            m.evict()
            kept[rid] = [x.content for x in m.read()]
        assert kept["fifo-evict"] == contents[4:]
        # lru evicts the four least recently used: facts 3 to 6, never used since appended.
        assert kept["lru-evict"] == contents[:3] + contents[7:]


def test_context_records_uses_for_lru_eviction_only(settings: Settings, redis_client: Any) -> None:
    common = {"type": "message_count_based", "max_messages": 10, "max_tokens": None}
    with client_with(
        settings,
        resource("fifo-ctx", **common),
        resource("lru-ctx", eviction={"policy": "lru"}, **common),
    ) as c:
        used = {}
        for rid in ("fifo-ctx", "lru-ctx"):
            m = _fill(c, rid, [f"fact {i}" for i in range(5)])
            assert len(m.context()) == 5
            used[rid] = redis_client.zcard(m.keys.used)
        assert used == {"fifo-ctx": 0, "lru-ctx": 5}
