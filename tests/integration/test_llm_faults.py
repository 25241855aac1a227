"""Faults of what a flush or an append depends on, with real servers and processes.

- The LLM summarizer endpoint down (its server stopped: connection refused) or hanging
  (``tests/llm_server.py`` mode ``hang``): the circuit breaker opens after
  ``breaker_fail_max`` failures; while it is open every flush gets the rule-based summary at once
  and the LLM server receives no request; every flush commits and no message is lost; once the
  reset timeout has passed a trial call goes out, and the breaker closes when the server answers.
- The same through a real ``celery -A worker worker`` subprocess: a breaker this process opened
  makes the worker's ``memory.summarize`` fall back without calling the LLM (shared state).
- Privacy under failure: an append whose redaction times out is refused with
  :class:`RedactionError` and nothing of it reaches Redis.

"After the reset timeout" is played by a second client of the same Redis and key prefix whose
``breaker_reset_timeout_s`` is short: the breaker's state is shared, its reset timeout is each
process's own setting. The first client keeps an hour-long timeout, so the "still open" checks
cannot race the clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from memory_engine.breakers import (
    breaker_states,
    subscribe_breaker_state,
    unsubscribe_breaker_state,
)
from memory_engine.client import Memory, MemoryClient
from memory_engine.engine.flush import FlushStatus
from memory_engine.errors import RedactionError
from memory_engine.keys import KeySpace
from memory_engine.settings import Settings
from memory_engine.summarizers import FALLBACK_SOURCE
from memory_engine.task_contract import QUEUE_FLUSH, QUEUE_SUMMARIZE
from memory_engine.tooling.loopback_llm import FakeLLMServer, running_llm_server
from tests.builders import resource_yaml
from tests.fixtures_worker import broker_url_for, wait_for

from .helpers import client_with, ctx, resource
from .procs import memory_env, running, settings_from_env, worker_process

FAIL_MAX = 2
HYBRID = resource(
    "llm-hybrid",
    max_tokens=100_000,  # never crossed: every flush here is run explicitly
    flushing={"type": "hybrid_summary", "summary_tokens": 80},
)


@pytest.fixture
def llm() -> Iterator[FakeLLMServer]:
    with running_llm_server() as server:
        yield server


@pytest.fixture
def transitions() -> Iterator[list[tuple[str, str]]]:
    seen: list[tuple[str, str]] = []

    def record(name: str, state: str) -> None:
        seen.append((name, state))

    subscribe_breaker_state(record)
    yield seen
    unsubscribe_breaker_state(record)


def llm_settings(settings: Settings, llm: FakeLLMServer, **changes: Any) -> Settings:
    return settings.replace(
        summarizer_provider="openai",
        summarizer_base_url=llm.openai_base_url,
        summarizer_model="fake-1",
        summarizer_timeout_s=0.5,
        breaker_fail_max=FAIL_MAX,
        breaker_reset_timeout_s=3600.0,
        **changes,
    )


class Conversation:
    """A memory plus everything acknowledged in it."""

    def __init__(self, memory: Memory) -> None:
        self.memory = memory
        self.acked: dict[int, str] = {}
        self.turn = 0

    def say(self, count: int = 4) -> None:
        for _ in range(count):
            content = f"turn {self.turn}: the customer asked about order ORD-{1000 + self.turn}"
            role = "user" if self.turn % 2 == 0 else "assistant"
            result = self.memory.append({"role": role, "content": content})
            assert result.first_seq is not None
            self.acked[result.first_seq] = content
            self.turn += 1

    def flush(self) -> str:
        """Add turns, flush inline, check the commit and the accounting; the summary's source."""
        self.say()
        result = self.memory.flush()
        assert result.status is FlushStatus.COMMITTED and result.summarized > 0, result
        self.assert_nothing_lost()
        assert result.summary_source is not None
        return result.summary_source

    def assert_nothing_lost(self) -> None:
        stats = self.memory.stats()
        kept = {m.seq: m.content for m in self.memory.read()}
        for seq, content in self.acked.items():
            if seq in kept:
                assert kept[seq] == content, f"message {seq} changed"
            else:
                assert seq <= stats.summary_point, f"message {seq} vanished"
        assert stats.last_seq == stats.message_count + stats.summarized_count, stats
        assert stats.summary_tokens > 0


def states(client: MemoryClient) -> dict[str, str]:
    return breaker_states(client.redis, client.keyspace)


def recover(settings: Settings, conv: str) -> None:
    """A process whose reset timeout is short: its next flush is the trial call."""
    with client_with(settings.replace(breaker_reset_timeout_s=0.2), HYBRID) as other:
        talk = Conversation(other.memory("llm-hybrid", ctx(conv)))
        wait_for(lambda: talk.flush() == "openai", timeout=20, what="a successful trial call")


# --- the summarizer endpoint down or hanging ---------------------------------------------------


def test_llm_down_opens_the_breaker_flushes_fall_back_and_it_closes_when_back(
    settings: Settings, llm: FakeLLMServer, transitions: list[tuple[str, str]]
) -> None:
    config = llm_settings(settings, llm)
    name, port = f"summarizer.openai@127.0.0.1:{llm.port}", llm.port
    # Another client shows the LLM works. (Not this one: the fake server keeps serving a
    # keep-alive connection opened before it stopped, which a crashed server would not.)
    with client_with(config, HYBRID) as probe:
        assert Conversation(probe.memory("llm-hybrid", ctx("probe"))).flush() == "openai"
    with client_with(config, HYBRID) as client:
        talk = Conversation(client.memory("llm-hybrid", ctx("down")))
        llm.stop()  # connection refused from now on
        llm.reset()
        for _ in range(FAIL_MAX):
            assert talk.flush() == FALLBACK_SOURCE
        assert states(client) == {name: "open"}

        llm.start(port=port)  # back at the same URL, but the breaker does not know yet
        assert talk.flush() == FALLBACK_SOURCE
        assert llm.recorded() == [], "an open breaker must not call the LLM"

        recover(config, "down-trial")
        assert states(client) == {name: "closed"}
        assert talk.flush() == "openai"  # this process notices the shared state
        assert len(llm.recorded()) == 2  # the trial call and this one
    mine = [state for n, state in transitions if n == name]
    assert mine.index("open") < mine.index("half-open") < len(mine) - 1 - mine[::-1].index("closed")


def test_llm_hanging_opens_the_breaker_then_flushes_do_not_wait(
    settings: Settings, llm: FakeLLMServer
) -> None:
    llm.mode = "hang"
    config = llm_settings(settings, llm)
    with client_with(config, HYBRID) as client:
        talk = Conversation(client.memory("llm-hybrid", ctx("hang")))
        for _ in range(FAIL_MAX):  # each waits for summarizer_timeout_s, then falls back
            assert talk.flush() == FALLBACK_SOURCE
        assert len(llm.recorded()) == FAIL_MAX
        assert states(client) == {f"summarizer.openai@127.0.0.1:{llm.port}": "open"}

        for _ in range(3):
            assert talk.flush() == FALLBACK_SOURCE
        assert len(llm.recorded()) == FAIL_MAX, "no request while the breaker is open"

        llm.mode = "ok"
        recover(config, "hang-trial")
        assert talk.flush() == "openai"


def test_llm_errors_count_but_a_success_in_between_resets(
    settings: Settings, llm: FakeLLMServer
) -> None:
    config = llm_settings(settings, llm)
    with client_with(config, HYBRID) as client:
        talk = Conversation(client.memory("llm-hybrid", ctx("flaky")))
        for _ in range(3):
            llm.mode = "error500"
            assert talk.flush() == FALLBACK_SOURCE
            llm.mode = "ok"
            assert talk.flush() == "openai"
        assert set(states(client).values()) == {"closed"}


# An LLM summary close to the cap of 80 tokens: the memory's compressed history.
HISTORY = "\n".join(
    [
        *(
            f"Customer C-{i} reported order ORD-{4000 + i} lost on 2024-03-{10 + i}; refund agreed."
            for i in range(2)
        ),
        "Open task: the assistant must call the carrier DHL.",
    ]
)


def test_an_llm_outage_keeps_the_previous_summary_whole(
    settings: Settings, llm: FakeLLMServer
) -> None:
    config = llm_settings(settings, llm)
    with client_with(config, HYBRID) as client:
        talk = Conversation(client.memory("llm-hybrid", ctx("outage")))
        counter = client.counter_for(talk.memory.resource)
        assert 50 < counter.count_text(HISTORY) < 80
        llm.reply = HISTORY
        assert talk.flush() == "openai"
        summary_key = talk.memory.keys.summary
        assert client.redis.hget(summary_key, "text") == HISTORY.encode()

        llm.mode = "error500"
        texts = []
        for _ in range(3):  # the LLM fails, then the breaker is open: the rule-based fallback
            assert talk.flush() == FALLBACK_SOURCE
            texts.append(client.redis.hget(summary_key, "text").decode())
        for text in texts:
            assert text.startswith(HISTORY + "\n"), "the outage lost the compressed history"
            assert counter.count_text(text) <= 80
        # What fitted of the new turns came after it, and stays once written.
        assert "ORD-100" in texts[0][len(HISTORY) :]
        assert texts[1].startswith(texts[0]) and texts[2].startswith(texts[1])


# --- through a real worker process -------------------------------------------------------------


@pytest.mark.slow
def test_a_worker_falls_back_at_once_when_another_process_opened_the_breaker(
    redis_url: str, llm: FakeLLMServer, tmp_path: Path
) -> None:
    resources_dir = tmp_path / "resources"
    resources_dir.mkdir()
    (resources_dir / "faults.yaml").write_text(
        resource_yaml(
            "llm-hybrid",
            type="token_based",
            max_tokens=100000,
            flushing={"type": "hybrid_summary", "summary_tokens": 80},
            key_prefix="conv",
        )
    )
    llm.mode = "hang"
    env = memory_env(
        redis_url=redis_url,
        broker_url=broker_url_for(redis_url, 12),
        key_prefix=f"llmf{uuid.uuid4().hex[:6]}",
        resources_dir=resources_dir,
        summarizer_provider="openai",
        summarizer_base_url=llm.openai_base_url,
        summarizer_model="fake-1",
        summarizer_timeout_s=600,  # the worker would wait ten minutes on this LLM
        breaker_fail_max=FAIL_MAX,
        breaker_reset_timeout_s=3600,
    )
    queues = f"{QUEUE_FLUSH},{QUEUE_SUMMARIZE}"
    worker = worker_process(env, tmp_path / "worker.log", queues=queues, name="llm-faults")
    # This process shares the worker's Redis, prefix and breaker, but gives up on the LLM fast.
    mine = settings_from_env(env).replace(summarizer_timeout_s=0.3)
    with running(worker), MemoryClient(mine) as client:
        worker.start()
        talk = Conversation(client.memory("llm-hybrid", ctx("worker")))
        for _ in range(FAIL_MAX):
            assert talk.flush() == FALLBACK_SOURCE
        assert list(states(client).values()) == ["open"]
        asked = len(llm.recorded())

        worker.wait_for_log(r"ready\.")
        talk.say()
        before = talk.memory.stats().summary_point
        assert talk.memory.request_flush()
        wait_for(
            lambda: (
                talk.memory.stats().summary_point > before and not talk.memory.stats().flush_pending
            ),
            timeout=60,
            what="the worker's summarizing flush to commit",
        )
        summary = client.redis.hgetall(talk.memory.keys.summary)
        assert summary[b"source"] == FALLBACK_SOURCE.encode()
        assert len(llm.recorded()) == asked, "the worker must not call an LLM known to be down"
        talk.assert_nothing_lost()
        assert "summarize" in worker.logs()


# --- privacy under failure ---------------------------------------------------------------------

# Accepted by the load-time ReDoS screen (no nested or overlapping repeats) yet quadratic on a long
# run of letters with no digits after it: each start position scans to the end of the run.
SLOW_PATTERN = r"[a-z]+\d{4}"
CRAFTED = "a" * 40_000


def test_a_redaction_timeout_refuses_the_append_and_stores_nothing(
    settings: Settings, redis_client: redis.Redis
) -> None:
    private = resource(
        "private",
        privacy_policy={"redact_patterns": [SLOW_PATTERN]},
    )
    with client_with(settings, private) as client:  # the default 50 ms budget per pattern
        memory = client.memory("private", ctx("secret"))
        with pytest.raises(RedactionError, match="pattern #0"):
            memory.append({"role": "user", "content": CRAFTED})
        prefix = KeySpace(settings.key_prefix).prefix
        assert list(redis_client.scan_iter(f"{prefix}*")) == [], "nothing may reach Redis"

        stored = memory.append({"role": "user", "content": "my account is acct1234, thanks"})
        assert stored.redacted == 1
        before = redis_client.lrange(memory.keys.msgs, 0, -1)
        meta_before = redis_client.hgetall(memory.keys.meta)
        with pytest.raises(RedactionError):
            memory.append_many(
                [
                    {"role": "user", "content": "a harmless line"},
                    {"role": "assistant", "content": CRAFTED},
                ]
            )
        assert redis_client.lrange(memory.keys.msgs, 0, -1) == before, "all or nothing"
        assert redis_client.hgetall(memory.keys.meta) == meta_before
        assert b"acct1234" not in b"".join(before) and b"[REDACTED]" in b"".join(before)
        assert not any(CRAFTED[:100].encode() in value for value in before)
