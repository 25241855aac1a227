"""Provider-aware token counting (memory_engine/token_providers/): real loopback HTTP, real Redis.

The Anthropic count-tokens API is played by tests/llm_server.py (its count is the number of
whitespace-separated words) or, where counts must differ from tiktoken's, by ``ScaledCountServer``
below (``factor * words + framing``).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from memory_engine.breakers import BreakerState
from memory_engine.client import MemoryClient
from memory_engine.errors import ConfigError
from memory_engine.messages import Message
from memory_engine.registry import ResourceRegistry
from memory_engine.resources import TokenProviderConfig, parse_resource
from memory_engine.settings import Settings
from memory_engine.token_providers import (
    AnthropicTokenCounter,
    CounterRegistry,
    ProviderTokenCounter,
    TokenCount,
    TokenProviderError,
    TokenSource,
    build_token_counter,
    count_message_with_source,
    estimate_tokens,
    estimate_truncate,
)
from memory_engine.tokens import (
    MESSAGE_OVERHEAD_TOKENS,
    NAME_OVERHEAD_TOKENS,
    TokenCounter,
    compact_json,
    counter_for,
)
from memory_engine.tooling.loopback_llm import FakeLLMServer

KEY = "sk-ant-api03-test-9f8e7d6c5b4a"
KEY_ENV = "MEMORY_TEST_ANTHROPIC_KEY"
MODEL = "claude-3-5-haiku-20241022"
TEXT = "order ORD-1234-XYZ shipped to Lisbon"  # 5 words, many more tiktoken tokens
LOCAL = counter_for(MODEL)


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY_ENV


@pytest.fixture
def provider_settings(settings: Settings) -> Settings:
    return settings.replace(
        breaker_fail_max=2, breaker_reset_timeout_s=3600.0, token_count_timeout_s=0.5
    )


def anthropic(
    endpoint: str | None,
    settings: Settings,
    client: redis.Redis | None,
    api_key_env: str | None = KEY_ENV,
) -> ProviderTokenCounter:
    config = TokenProviderConfig(
        provider="anthropic", model=MODEL, endpoint=endpoint, api_key_env=api_key_env
    )
    return build_token_counter(config, MODEL, settings, redis=client)


def remote_of(counter: ProviderTokenCounter) -> AnthropicTokenCounter:
    assert isinstance(counter.remote, AnthropicTokenCounter)
    return counter.remote


def count_requests(server: FakeLLMServer) -> list[Any]:
    return [r for r in server.recorded() if r.path == "/v1/messages/count_tokens"]


# --- the Anthropic API ---------------------------------------------------------------------------


def test_content_is_counted_by_the_api(
    llm_server: FakeLLMServer, key_env: str, provider_settings: Settings, redis_client: redis.Redis
) -> None:
    counter = anthropic(llm_server.anthropic_base_url, provider_settings, redis_client)
    assert counter.count_content(TEXT) == TokenCount(5, TokenSource.ANTHROPIC_API)
    calibration, request = count_requests(llm_server)
    assert calibration.json["messages"] == [{"role": "user", "content": "."}]
    assert request.json == {"model": MODEL, "messages": [{"role": "user", "content": TEXT}]}
    assert request.headers["x-api-key"] == KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert LOCAL.count_text(TEXT) != 5, "the text must tell the API and tiktoken apart"


def test_the_message_convention_holds_for_the_provider(
    llm_server: FakeLLMServer, key_env: str, provider_settings: Settings, redis_client: redis.Redis
) -> None:
    counter = anthropic(llm_server.anthropic_base_url, provider_settings, redis_client)
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    message = Message(role="assistant", content=TEXT, name="agent-7", tool_calls=calls)
    expected = (
        5
        + MESSAGE_OVERHEAD_TOKENS
        + LOCAL.count_text("agent-7")
        + NAME_OVERHEAD_TOKENS
        + LOCAL.count_text(compact_json(calls))
    )
    assert counter.count_message_detailed(message) == TokenCount(
        expected, TokenSource.ANTHROPIC_API
    )
    assert counter.count_message(message) == expected
    tool = Message(role="tool", content="done", tool_call_id="c1")
    assert counter.count_message(tool) == 1 + MESSAGE_OVERHEAD_TOKENS + LOCAL.count_text("c1")
    # Only content goes to the provider; every other field is counted locally.
    sent = [r.json["messages"][0]["content"] for r in count_requests(llm_server)]
    assert sent == [".", TEXT, "done"]


def test_counts_are_cached_by_digest(
    llm_server: FakeLLMServer, key_env: str, provider_settings: Settings, redis_client: redis.Redis
) -> None:
    counter = anthropic(llm_server.anthropic_base_url, provider_settings, redis_client)
    for _ in range(3):
        assert counter.count_content(TEXT).source is TokenSource.ANTHROPIC_API
    assert len(count_requests(llm_server)) == 2  # calibration + one count
    remote = remote_of(counter)
    assert remote.cache_size() == 1
    assert all(isinstance(k, bytes) and len(k) == 16 for k in remote._cache)


def test_api_framing_is_subtracted(
    key_env: str, provider_settings: Settings, redis_client: redis.Redis
) -> None:
    with scaled_count_server(factor=1, framing=7) as url:
        counter = anthropic(url, provider_settings, redis_client)
        assert counter.count_content("one two three") == TokenCount(3, TokenSource.ANTHROPIC_API)


def test_a_custom_endpoint_without_key_env_sends_no_key(
    llm_server: FakeLLMServer, provider_settings: Settings, redis_client: redis.Redis
) -> None:
    counter = anthropic(llm_server.anthropic_base_url, provider_settings, redis_client, None)
    assert counter.count_content(TEXT).source is TokenSource.ANTHROPIC_API
    assert all("x-api-key" not in r.headers for r in count_requests(llm_server))


def test_blank_text_is_counted_locally(
    llm_server: FakeLLMServer, key_env: str, provider_settings: Settings, redis_client: redis.Redis
) -> None:
    counter = anthropic(llm_server.anthropic_base_url, provider_settings, redis_client)
    assert counter.count_content("") == TokenCount(0, TokenSource.TIKTOKEN)
    assert counter.count_content(" \n ").source is TokenSource.TIKTOKEN
    assert count_requests(llm_server) == []


# --- fallback chain and breaker ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["error500", "error401", "malformed", "hang"])
def test_a_failing_api_falls_back_to_tiktoken(
    mode: str,
    llm_server: FakeLLMServer,
    key_env: str,
    provider_settings: Settings,
    redis_client: redis.Redis,
) -> None:
    llm_server.mode = mode
    counter = anthropic(llm_server.anthropic_base_url, provider_settings, redis_client)
    assert counter.count_content(TEXT) == TokenCount(LOCAL.count_text(TEXT), TokenSource.TIKTOKEN)
    with pytest.raises(TokenProviderError):
        remote_of(counter).count(TEXT)


def test_connection_refused_falls_back(
    key_env: str, provider_settings: Settings, redis_client: redis.Redis
) -> None:
    with scaled_count_server() as url:
        pass  # stopped: nothing listens on its port any more
    counter = anthropic(url, provider_settings, redis_client)
    assert counter.count_content(TEXT).source is TokenSource.TIKTOKEN


def test_non_integer_counts_are_refused(
    key_env: str, provider_settings: Settings, redis_client: redis.Redis
) -> None:
    for bad in ('{"input_tokens": "5"}', '{"input_tokens": -1}', '{"input_tokens": true}', "[]"):
        with scaled_count_server(raw_reply=bad) as url:
            counter = anthropic(url, provider_settings.replace(breaker_fail_max=100), None)
            assert counter.count_content(TEXT).source is TokenSource.TIKTOKEN, bad


def test_the_breaker_opens_then_counts_make_no_request_then_it_closes(
    llm_server: FakeLLMServer,
    key_env: str,
    provider_settings: Settings,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    llm_server.mode = "error500"
    counter = anthropic(
        llm_server.anthropic_base_url,
        provider_settings.replace(breaker_reset_timeout_s=0.3),
        redis_client,
    )
    breaker = remote_of(counter).breaker
    assert breaker is not None and breaker.name == f"tokens.anthropic@127.0.0.1:{llm_server.port}"
    for _ in range(2):  # breaker_fail_max failed requests
        assert counter.count_content(TEXT).source is TokenSource.TIKTOKEN
    assert breaker.current is BreakerState.OPEN
    sent = len(llm_server.recorded())
    llm_server.mode = "ok"  # back, but the breaker does not know yet
    assert counter.count_content(TEXT + " again").source is TokenSource.TIKTOKEN
    assert len(llm_server.recorded()) == sent, "an open breaker must not let requests through"
    deadline_rounds = 500
    while counter.count_content(TEXT).source is not TokenSource.ANTHROPIC_API:
        deadline_rounds -= 1
        assert deadline_rounds > 0, "the breaker never closed"
        threading.Event().wait(0.02)
    assert breaker.current is BreakerState.CLOSED
    messages = [r.getMessage() for r in caplog.records]
    assert sum("fall back to tiktoken" in m for m in messages) == 1, "one warning per outage"
    assert any("come from its API again" in m for m in messages)
    assert counter.source_counts()["tiktoken"] >= 3


def test_a_missing_key_falls_back_without_a_request_or_a_breaker_failure(
    monkeypatch: pytest.MonkeyPatch, provider_settings: Settings, redis_client: redis.Redis
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    counter = anthropic(None, provider_settings, redis_client)  # the official endpoint
    assert counter.count_content(TEXT).source is TokenSource.TIKTOKEN
    with pytest.raises(TokenProviderError, match=f"{KEY_ENV} is not set"):
        remote_of(counter).count(TEXT)
    breaker = remote_of(counter).breaker
    assert breaker is not None and breaker.fail_counter == 0
    keyless = anthropic(None, provider_settings, redis_client, api_key_env=None)
    with pytest.raises(TokenProviderError, match="api_key_env"):
        remote_of(keyless).count(TEXT)


def test_the_key_never_appears_in_logs_reprs_or_errors(
    llm_server: FakeLLMServer,
    key_env: str,
    provider_settings: Settings,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    llm_server.mode = "error401"  # the fake echoes the credential it received in its error body
    counter = anthropic(llm_server.anthropic_base_url, provider_settings, redis_client)
    for text in (TEXT, TEXT + "!", TEXT + "?"):  # through failures and the open breaker
        counter.count_content(text)
    assert count_requests(llm_server)[0].headers["x-api-key"] == KEY  # it was really sent
    with pytest.raises(TokenProviderError) as info:
        remote_of(counter).count(TEXT)
    llm_server.mode = "error401"
    direct = AnthropicTokenCounter(
        MODEL, endpoint=llm_server.anthropic_base_url, api_key_env=KEY_ENV, timeout_s=1
    )
    with pytest.raises(TokenProviderError) as echoed:
        direct.count(TEXT)
    direct.close()
    assert "**********" in str(echoed.value)
    texts = [caplog.text, repr(counter), str(counter), repr(counter.remote)]
    texts += [str(info.value), repr(info.value), str(echoed.value), repr(echoed.value)]
    texts += [record.getMessage() for record in caplog.records]
    assert all(KEY not in text for text in texts)
    assert KEY_ENV in repr(counter.remote)  # the variable's name is fine to show


def test_a_key_echoed_across_the_excerpt_cut_is_scrubbed(
    llm_server: FakeLLMServer,
    monkeypatch: pytest.MonkeyPatch,
    provider_settings: Settings,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # Long enough to straddle the 200-character excerpt of the error body that echoes it.
    long_key = "sk-ant-straddle-" + "".join(f"{i:04x}" for i in range(70))
    monkeypatch.setenv(KEY_ENV, long_key)
    llm_server.mode = "error401"
    counter = anthropic(llm_server.anthropic_base_url, provider_settings, redis_client)
    counter.count_content(TEXT)  # falls back to tiktoken and logs why
    direct = AnthropicTokenCounter(
        MODEL, endpoint=llm_server.anthropic_base_url, api_key_env=KEY_ENV, timeout_s=1
    )
    with pytest.raises(TokenProviderError, match="HTTP 401") as info:
        direct.count(TEXT)
    direct.close()
    assert all(r.headers["x-api-key"] == long_key for r in count_requests(llm_server))
    assert "bad key" in str(info.value) and "**********" in str(info.value)
    texts = [str(info.value), caplog.text, *(r.getMessage() for r in caplog.records)]
    pieces = [long_key[i : i + 8] for i in range(len(long_key) - 7)]
    assert not any(piece in text for piece in pieces for text in texts)


# --- other providers -----------------------------------------------------------------------------


def test_openai_is_exact_tiktoken(provider_settings: Settings) -> None:
    counter = build_token_counter(
        TokenProviderConfig(provider="openai", model="gpt-4"), "gpt-4", provider_settings
    )
    message = Message(role="user", content=TEXT, name="u1")
    assert counter.count_message_detailed(message) == TokenCount(
        counter_for("gpt-4").count_message(message), TokenSource.TIKTOKEN
    )
    assert counter.remote is None


def test_other_providers_use_the_documented_estimate(provider_settings: Settings) -> None:
    counter = build_token_counter(
        TokenProviderConfig(provider="mistral", model="mistral-large"),
        "mistral-large",
        provider_settings,
    )
    text = "héllo wörld, ünïcode"  # 24 utf-8 bytes
    assert counter.count_content(text) == TokenCount(6, TokenSource.ESTIMATE)
    assert counter.count_text(text) == 6
    assert counter.count_message(Message(role="user", content=text)) == 6 + MESSAGE_OVERHEAD_TOKENS
    assert counter.truncate(text, 2) == "héllo w"


def test_anthropic_needs_a_model(provider_settings: Settings) -> None:
    with pytest.raises(ConfigError, match=r"token_provider\.model"):
        build_token_counter(
            TokenProviderConfig(provider="anthropic"), None, provider_settings, redis=None
        )


def test_a_broken_tiktoken_falls_back_to_the_estimate(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(TokenCounter):
        def count_text(self, text: str) -> int:
            raise RuntimeError("encoding files corrupt")

        def truncate(self, text: str, max_tokens: int) -> str:
            raise RuntimeError("encoding files corrupt")

    counter = ProviderTokenCounter("openai", None, tiktoken_counter=Broken())
    assert counter.count_content("abcdefgh") == TokenCount(2, TokenSource.ESTIMATE)
    assert counter.count_content("abcd") == TokenCount(1, TokenSource.ESTIMATE)
    assert counter.truncate("abcdefgh", 1) == "abcd"
    assert caplog.text.count("tiktoken failed") == 1


@given(st.text(max_size=300), st.integers(min_value=0, max_value=80))
@hypothesis_settings(max_examples=300)
def test_estimate_truncate_is_the_longest_fitting_prefix(text: str, max_tokens: int) -> None:
    cut = estimate_truncate(text, max_tokens)
    assert text.startswith(cut)
    assert estimate_tokens(cut) <= max_tokens
    if cut != text:
        assert estimate_tokens(text[: len(cut) + 1]) > max_tokens


def test_estimate_is_ceil_of_bytes_over_four() -> None:
    for text in ["", "a", "abcd", "abcde", "€", "🙂🙂", "\ud800"]:
        assert estimate_tokens(text) == math.ceil(len(text.encode("utf-8", "surrogatepass")) / 4)


def test_a_plain_counter_reports_tiktoken() -> None:
    message = Message(role="user", content=TEXT)
    assert count_message_with_source(LOCAL, message) == TokenCount(
        LOCAL.count_message(message), TokenSource.TIKTOKEN
    )


# --- through the client --------------------------------------------------------------------------


def provider_resource(endpoint: str, **fields: Any) -> Any:
    data: dict[str, Any] = {
        "resource": "memory",
        "id": "claude-memory",
        "type": "token_based",
        "max_tokens": 100_000,
        "flushing": {"type": "hybrid_summary", "summary_tokens": 200},
        "token_provider": {
            "provider": "anthropic",
            "model": MODEL,
            "endpoint": endpoint,
            "api_key_env": KEY_ENV,
        },
        "default_key_template": "c:{{ workflow.input.conv }}",
    }
    data.update(fields)
    return parse_resource({k: v for k, v in data.items() if v is not None})


def test_the_client_counts_appends_with_the_provider(
    llm_server: FakeLLMServer, key_env: str, provider_settings: Settings, redis_client: redis.Redis
) -> None:
    resource = provider_resource(llm_server.anthropic_base_url)
    plain = provider_resource("http://unused.invalid", id="plain", token_provider=None)
    registry = ResourceRegistry([resource, plain])
    with MemoryClient(provider_settings, registry=registry) as client:
        counter = client.counter_for(resource)
        assert isinstance(counter, ProviderTokenCounter)
        assert client.counter_for(resource) is counter
        assert client.counter_for(plain) is counter_for(plain.tokenizer_model)
        memory = client.memory(resource.id, {"workflow": {"input": {"conv": "c1"}}})
        result = memory.append({"role": "user", "content": TEXT})
        assert result.token_count == 5 + MESSAGE_OVERHEAD_TOKENS
        stored = Message.from_wire(redis_client.lindex(memory.keys.msgs, 0) or b"{}")
        assert stored.token_count == 5 + MESSAGE_OVERHEAD_TOKENS
        llm_server.mode = "error500"  # the append still succeeds, counted by tiktoken
        result = memory.append({"role": "assistant", "content": TEXT + " today"})
        local = LOCAL.count_text(TEXT + " today") + MESSAGE_OVERHEAD_TOKENS
        assert result.token_count == 5 + MESSAGE_OVERHEAD_TOKENS + local
        counters = client.__dict__["_token_counters"]
        assert isinstance(counters, CounterRegistry)
        counters.close()


@pytest.mark.timeout(60)
def test_context_truncates_a_summary_counted_higher_than_tiktoken(
    key_env: str, provider_settings: Settings
) -> None:
    """The provider counts 3 tokens a word, well above tiktoken: trimming the summary to the
    window must still end, within the budget."""
    with scaled_count_server(factor=3, framing=2) as url:
        resource = provider_resource(url)
        with MemoryClient(provider_settings, registry=ResourceRegistry([resource])) as client:
            memory = client.memory(resource.id, {"workflow": {"input": {"conv": "c2"}}})
            for i in range(12):
                memory.append(
                    {
                        "role": "user",
                        "content": f"fact {i}: the customer ORD-{i} asked about item {i}",
                    }
                )
            result = memory.flush()
            assert result.summary_source == "rule_based"
            summary_tokens = memory.stats().summary_tokens
            window = memory.context(max_tokens=summary_tokens // 2)
            summaries = [m for m in window if m.metadata.get("summary")]
            assert len(summaries) == 1 and summaries[0].metadata.get("truncated")
            assert sum(m.token_count or 0 for m in window) <= summary_tokens // 2


# --- a count server whose counts differ from tiktoken's ------------------------------------------


class _ScaledHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ScaledServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.server.raw_reply is not None:
            data = self.server.raw_reply.encode()
        else:
            words = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
            tokens = self.server.factor * words + self.server.framing
            data = json.dumps({"input_tokens": tokens}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _ScaledServer(ThreadingHTTPServer):
    daemon_threads = True
    factor = 1
    framing = 0
    raw_reply: str | None = None


@contextmanager
def scaled_count_server(
    factor: int = 1, framing: int = 0, raw_reply: str | None = None
) -> Iterator[str]:
    """A loopback count-tokens endpoint answering ``factor * words + framing``; yields its URL."""
    server = _ScaledServer(("127.0.0.1", 0), _ScaledHandler)
    server.factor, server.framing, server.raw_reply = factor, framing, raw_reply
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
