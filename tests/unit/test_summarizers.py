"""Summarizers: LLM clients against a real loopback provider, the rule-based summarizer, fallback,
the factory, and that the API key never leaks."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from memory_engine.errors import ConfigError, SummarizerError
from memory_engine.messages import Message, Role
from memory_engine.settings import Settings
from memory_engine.summarizers import (
    FALLBACK_SOURCE,
    AnthropicSummarizer,
    FallbackSummarizer,
    GuardedSummarizer,
    OpenAIChatSummarizer,
    RuleBasedSummarizer,
    Summarizer,
    SummaryText,
    build_prompt,
    build_summarizer,
    check_summary_text,
)
from memory_engine.summarizers.prompt import render_messages
from memory_engine.tokens import TokenCounter, counter_for
from memory_engine.tooling.loopback_llm import MODES, FakeLLMServer, running_llm_server

KEY = "sk-test-SECRET-0123456789abcdef"
FAILURE_MODES = ["error500", "error401", "malformed", "empty", "none", "truncated", "non_text"]
PROVIDERS = ["openai", "anthropic"]


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return counter_for(None)


def msg(role: str, content: str, **fields: Any) -> Message:
    return Message(role=Role(role), content=content, **fields)


CONVERSATION = [
    msg("user", "Hi there. My order ORD-1234 never arrived and I paid 59.90 EUR."),
    msg("assistant", "Sorry to hear that. Let me check the shipment for you."),
    msg(
        "assistant",
        "",
        tool_calls=[
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_order", "arguments": '{"order_id": "ORD-1234"}'},
            }
        ],
    ),
    msg("tool", '{"status": "lost", "carrier": "DHL"}', name="get_order", tool_call_id="call_1"),
    msg("assistant", "The parcel is lost. We decided to refund the full amount of 59.90 EUR."),
    msg("user", "Thanks. Can you also update my address? TODO: confirm the new postcode."),
]


def make(provider: str, server: FakeLLMServer, **kwargs: Any) -> OpenAIChatSummarizer:
    options: dict[str, Any] = {"model": "m-1", "api_key": SecretStr(KEY), "timeout_s": 5.0}
    options.update(kwargs)
    if provider == "openai":
        return OpenAIChatSummarizer(server.openai_base_url, **options)
    return AnthropicSummarizer(server.anthropic_base_url, **options)


@pytest.fixture(params=PROVIDERS)
def provider(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def llm(provider: str, llm_server: FakeLLMServer) -> Iterator[OpenAIChatSummarizer]:
    summarizer = make(provider, llm_server)
    yield summarizer
    summarizer.close()


# --- LLM summarizers: happy paths --------------------------------------------------------------


def test_openai_request_shape(llm_server: FakeLLMServer, counter: TokenCounter) -> None:
    with make("openai", llm_server) as summarizer:
        result = summarizer.summarize(
            "The user is Ann.", CONVERSATION, max_tokens=120, counter=counter
        )
    assert result.source == "openai"
    assert result.text.startswith("SUMMARY: ")
    assert result.token_count == counter.count_text(result.text) <= 120
    request = llm_server.last
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    body = request.json
    assert body["model"] == "m-1"
    assert body["max_tokens"] == 120
    assert body["temperature"] == 0
    system, user = body["messages"]
    assert system["role"] == "system" and "VERBATIM" in system["content"]
    assert "120 tokens" in system["content"]
    assert user["role"] == "user"
    assert "The user is Ann." in user["content"]
    assert "user: Hi there. My order ORD-1234 never arrived" in user["content"]
    assert 'assistant called tool get_order({"order_id": "ORD-1234"})' in user["content"]
    assert 'tool (get_order): {"status": "lost", "carrier": "DHL"}' in user["content"]


def test_anthropic_request_shape(llm_server: FakeLLMServer, counter: TokenCounter) -> None:
    with make("anthropic", llm_server) as summarizer:
        result = summarizer.summarize(None, CONVERSATION, max_tokens=80, counter=counter)
    assert result.source == "anthropic"
    assert result.text.startswith("SUMMARY: ")
    request = llm_server.last
    assert request.path == "/v1/messages"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
    body = request.json
    assert body["model"] == "m-1" and body["max_tokens"] == 80 and body["temperature"] == 0
    assert "VERBATIM" in body["system"]
    [turn] = body["messages"]
    assert turn["role"] == "user"
    assert "(no summary yet)" in turn["content"]
    assert "TODO: confirm the new postcode." in turn["content"]


def test_anthropic_base_url_with_v1_suffix(
    llm_server: FakeLLMServer, counter: TokenCounter
) -> None:
    with AnthropicSummarizer(llm_server.base_url + "/v1/", model="m", timeout_s=5) as s:
        s.summarize(None, CONVERSATION[:1], max_tokens=50, counter=counter)
    assert llm_server.last.path == "/v1/messages"
    assert "x-api-key" not in llm_server.last.headers


def test_openai_without_key_sends_no_auth(llm_server: FakeLLMServer, counter: TokenCounter) -> None:
    with OpenAIChatSummarizer(llm_server.openai_base_url, "llama3") as s:
        assert s.summarize(None, CONVERSATION, max_tokens=50, counter=counter).text
    assert "authorization" not in llm_server.last.headers


def test_connection_is_reused(
    llm: OpenAIChatSummarizer, llm_server: FakeLLMServer, counter: TokenCounter
) -> None:
    for _ in range(3):
        llm.summarize(None, CONVERSATION, max_tokens=60, counter=counter)
    assert len(llm_server.recorded()) == 3
    # One pooled keep-alive connection served every call.
    assert llm_server.connections == 1


def test_no_content_makes_no_request(
    llm: OpenAIChatSummarizer, llm_server: FakeLLMServer, counter: TokenCounter
) -> None:
    empty = [msg("user", "   "), msg("assistant", "")]
    result = llm.summarize("The user is Ann.", empty, max_tokens=50, counter=counter)
    assert result.text == "The user is Ann."
    assert llm.summarize(None, [], max_tokens=50, counter=counter).text == ""
    assert llm_server.recorded() == []


def test_custom_reply_and_preamble_is_dropped(
    llm: OpenAIChatSummarizer, llm_server: FakeLLMServer, counter: TokenCounter
) -> None:
    llm_server.reply = "Here is the updated summary:\nAnn reported ORD-1234 lost; refund agreed."
    result = llm.summarize(None, CONVERSATION, max_tokens=50, counter=counter)
    assert result.text == "Ann reported ORD-1234 lost; refund agreed."


def test_reply_over_cap_is_trimmed_to_whole_lines(
    llm: OpenAIChatSummarizer, llm_server: FakeLLMServer, counter: TokenCounter
) -> None:
    llm_server.reply = "Ann reported ORD-1234 lost.\n" + "Filler words here. " * 40
    result = llm.summarize(None, CONVERSATION, max_tokens=20, counter=counter)
    assert result.text == "Ann reported ORD-1234 lost."
    assert result.token_count <= 20


# --- LLM summarizers: failures -----------------------------------------------------------------


@pytest.mark.parametrize("mode", FAILURE_MODES)
def test_failure_modes_raise(
    mode: str, llm: OpenAIChatSummarizer, llm_server: FakeLLMServer, counter: TokenCounter
) -> None:
    llm_server.mode = mode
    with pytest.raises(SummarizerError) as info:
        llm.summarize("prev", CONVERSATION, max_tokens=50, counter=counter)
    assert KEY not in str(info.value)
    assert KEY not in repr(info.value)


@pytest.mark.parametrize(
    "reply", ["N/A", "none.", "  ", "I cannot help with that.", "I'm sorry, but I can't do this."]
)
def test_placeholder_and_refusal_replies_raise(
    reply: str, llm: OpenAIChatSummarizer, llm_server: FakeLLMServer, counter: TokenCounter
) -> None:
    llm_server.reply = reply
    with pytest.raises(SummarizerError):
        llm.summarize(None, CONVERSATION, max_tokens=50, counter=counter)


def test_status_is_named_and_key_echo_is_scrubbed(
    llm: OpenAIChatSummarizer, llm_server: FakeLLMServer, counter: TokenCounter
) -> None:
    llm_server.mode = "error401"
    with pytest.raises(SummarizerError, match="HTTP 401") as info:
        llm.summarize(None, CONVERSATION, max_tokens=50, counter=counter)
    assert "bad key" in str(info.value)  # the body is quoted ...
    assert KEY not in str(info.value)  # ... without the key it echoed
    llm_server.mode = "error500"
    llm_server.error_status = 503
    with pytest.raises(SummarizerError, match="HTTP 503"):
        llm.summarize(None, CONVERSATION, max_tokens=50, counter=counter)


# Long enough to straddle the 200-character excerpt of the error body that echoes it.
LONG_KEY = "sk-straddle-" + "".join(f"{i:04x}" for i in range(70))


def leaks(secret: str, text: str) -> bool:
    """True when any 8 consecutive characters of ``secret`` appear in ``text``."""
    return any(secret[i : i + 8] in text for i in range(len(secret) - 7))


def test_a_key_echoed_across_the_excerpt_cut_is_scrubbed_in_errors_and_logs(
    provider: str,
    llm_server: FakeLLMServer,
    counter: TokenCounter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    llm_server.mode = "error401"  # the body echoes the credential it received
    with make(provider, llm_server, api_key=SecretStr(LONG_KEY)) as summarizer:
        with pytest.raises(SummarizerError, match="HTTP 401") as info:
            summarizer.summarize(None, CONVERSATION, max_tokens=50, counter=counter)
        fallback = FallbackSummarizer(summarizer, RuleBasedSummarizer())
        assert fallback.summarize(None, CONVERSATION, max_tokens=50, counter=counter).text
    sent = llm_server.recorded()
    assert len(sent) == 2 and all(LONG_KEY in " ".join(r.headers.values()) for r in sent)
    message = str(info.value)
    assert "bad key" in message and "**********" in message
    texts = [message, repr(info.value), caplog.text, *(r.getMessage() for r in caplog.records)]
    assert "**********" in caplog.text  # the fallback's warning quoted the scrubbed error
    assert not any(leaks(LONG_KEY, text) for text in texts)


def test_connection_refused_raises(provider: str, counter: TokenCounter) -> None:
    with running_llm_server() as server:
        summarizer = make(provider, server, timeout_s=2.0)
    with summarizer, pytest.raises(SummarizerError) as info:
        summarizer.summarize(None, CONVERSATION, max_tokens=50, counter=counter)
    assert info.value.__cause__ is not None
    assert KEY not in str(info.value)


@pytest.mark.parametrize("mode", ["slow", "hang"])
def test_timeout_raises_within_about_the_timeout(
    mode: str, provider: str, llm_server: FakeLLMServer, counter: TokenCounter
) -> None:
    llm_server.mode = mode
    llm_server.delay_s = 2.0
    with make(provider, llm_server, timeout_s=0.3) as summarizer:
        started = time.monotonic()
        with pytest.raises(SummarizerError, match="timed out") as info:
            summarizer.summarize(None, CONVERSATION, max_tokens=50, counter=counter)
        elapsed = time.monotonic() - started
    assert elapsed < 1.9  # well before the slow reply (2 s) or never
    assert info.value.__cause__ is not None


# --- the key never leaks ------------------------------------------------------------------------


def test_key_absent_from_repr_errors_and_logs(
    provider: str,
    llm_server: FakeLLMServer,
    counter: TokenCounter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = Settings(
        summarizer_provider=provider,
        summarizer_base_url=(
            llm_server.openai_base_url if provider == "openai" else llm_server.anthropic_base_url
        ),
        summarizer_model="m-1",
        summarizer_api_key=SecretStr(KEY),
        summarizer_timeout_s=0.3,
    )
    summarizer = build_summarizer(settings)
    assert isinstance(summarizer, FallbackSummarizer)
    assert KEY not in repr(summarizer) and KEY not in str(summarizer)
    assert KEY not in repr(summarizer.primary) and KEY not in str(summarizer.primary)
    assert "**********" in repr(summarizer.primary)
    assert KEY not in summarizer.summarize(None, CONVERSATION, max_tokens=60, counter=counter).text
    for mode in [*FAILURE_MODES, "hang"]:
        llm_server.mode = mode
        result = summarizer.summarize(None, CONVERSATION, max_tokens=60, counter=counter)
        assert result.source == FALLBACK_SOURCE and KEY not in result.text
        with pytest.raises(SummarizerError) as info:
            summarizer.primary.summarize(None, CONVERSATION, max_tokens=60, counter=counter)
        assert KEY not in str(info.value) and KEY not in repr(info.value)
    assert any("fallback" in r.getMessage() for r in caplog.records)
    assert KEY not in caplog.text
    for record in caplog.records:
        assert KEY not in record.getMessage()


# --- fallback -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [*FAILURE_MODES, "hang"])
def test_fallback_returns_rule_based_text(
    mode: str,
    provider: str,
    llm_server: FakeLLMServer,
    counter: TokenCounter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    llm_server.mode = mode
    summarizer = FallbackSummarizer(
        make(provider, llm_server, timeout_s=0.3), RuleBasedSummarizer()
    )
    with caplog.at_level(logging.WARNING):
        result = summarizer.summarize(
            "Ann is a customer.", CONVERSATION, max_tokens=80, counter=counter
        )
    assert result.source == FALLBACK_SOURCE
    assert "Ann is a customer." in result.text
    assert "ORD-1234" in result.text
    assert result.token_count == counter.count_text(result.text) <= 80
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert provider in record.getMessage() and "fallback" in record.getMessage()


def test_fallback_passes_good_result_through(
    llm_server: FakeLLMServer, counter: TokenCounter
) -> None:
    summarizer = FallbackSummarizer(make("openai", llm_server), RuleBasedSummarizer())
    result = summarizer.summarize(None, CONVERSATION, max_tokens=80, counter=counter)
    assert result.source == "openai" and result.text.startswith("SUMMARY:")


class _Junk:
    """A primary that does not validate its own output (as a careless wrapper might)."""

    name = "junk"

    def __init__(self, text: str) -> None:
        self.text = text

    def summarize(
        self, previous: Any, messages: Any, *, max_tokens: int, counter: Any
    ) -> SummaryText:
        return SummaryText(self.text, 1, "junk")


@pytest.mark.parametrize("text", ["", "NONE", "I cannot summarize this.", "word " * 500])
def test_fallback_rejects_junk_from_any_primary(text: str, counter: TokenCounter) -> None:
    primary: Summarizer = _Junk(text)
    summarizer = FallbackSummarizer(primary, RuleBasedSummarizer())
    result = summarizer.summarize(None, CONVERSATION, max_tokens=60, counter=counter)
    assert result.source == FALLBACK_SOURCE and result.text


def test_fallback_skips_primary_without_content(
    llm_server: FakeLLMServer, counter: TokenCounter
) -> None:
    summarizer = FallbackSummarizer(make("openai", llm_server), RuleBasedSummarizer())
    result = summarizer.summarize(
        "Ann is a customer.", [msg("user", " ")], max_tokens=50, counter=counter
    )
    assert result.text == "Ann is a customer."
    assert llm_server.recorded() == []


# --- rule-based ---------------------------------------------------------------------------------


def test_rule_based_keeps_identifiers_and_decisions_verbatim(counter: TokenCounter) -> None:
    result = RuleBasedSummarizer().summarize(None, CONVERSATION, max_tokens=200, counter=counter)
    assert result.source == "rule_based"
    assert "user: Hi there. My order ORD-1234 never arrived and I paid 59.90 EUR." in result.text
    assert "We decided to refund the full amount of 59.90 EUR." in result.text
    assert 'assistant called tool get_order({"order_id": "ORD-1234"})' in result.text
    assert "TODO: confirm the new postcode." in result.text
    assert result.token_count == counter.count_text(result.text)


def test_rule_based_prefers_facts_under_pressure(counter: TokenCounter) -> None:
    chatter = [msg("user", "Hello, how are you doing today my friend?") for _ in range(3)]
    messages = [
        *chatter,
        msg("assistant", "Nice weather we are having, lovely sunshine all around."),
        msg("user", "Send the invoice INV-77 to [REDACTED] please."),
        msg("assistant", "We agreed the deadline is Friday."),
    ]
    result = RuleBasedSummarizer().summarize(None, messages, max_tokens=28, counter=counter)
    assert "user: Send the invoice INV-77 to [REDACTED] please." in result.text
    assert "assistant: We agreed the deadline is Friday." in result.text
    assert "weather" not in result.text and "Hello" not in result.text
    assert counter.count_text(result.text) <= 28


def test_rule_based_is_progressive(counter: TokenCounter) -> None:
    rb = RuleBasedSummarizer()
    first = rb.summarize(None, CONVERSATION[:2], max_tokens=100, counter=counter)
    second = rb.summarize(first.text, CONVERSATION[4:], max_tokens=100, counter=counter)
    assert "ORD-1234" in second.text  # only in the first batch
    assert "decided to refund" in second.text  # only in the second batch
    assert second.text.startswith(first.text.splitlines()[0])


def test_rule_based_compresses_an_llm_paragraph(counter: TokenCounter) -> None:
    previous = (
        "Ann contacted support about a late parcel and was friendly throughout the exchange. "
        "Her order is ORD-1234. The assistant will refund 59.90 EUR. "
        "They chatted about the weather and about holidays for a while without any outcome."
    )
    result = RuleBasedSummarizer().summarize(
        previous, [msg("user", "OK, thanks.")], max_tokens=30, counter=counter
    )
    assert "Her order is ORD-1234." in result.text
    assert "The assistant will refund 59.90 EUR." in result.text
    assert counter.count_text(result.text) <= 30


@pytest.mark.parametrize("max_tokens", [1, 2, 5, 17, 64])
def test_rule_based_respects_cap_and_is_never_empty(max_tokens: int, counter: TokenCounter) -> None:
    long = msg("user", "word " * 2000 + "ORD-9")
    result = RuleBasedSummarizer().summarize(
        "x " * 300, [long], max_tokens=max_tokens, counter=counter
    )
    assert result.text.strip()
    assert counter.count_text(result.text) <= max_tokens


def test_rule_based_empty_input_gives_empty_text(counter: TokenCounter) -> None:
    assert RuleBasedSummarizer().summarize(None, [], max_tokens=10, counter=counter).text == ""
    with pytest.raises(ValueError):
        RuleBasedSummarizer().summarize(None, CONVERSATION, max_tokens=0, counter=counter)


# A summary an LLM wrote, close to its cap: the memory's whole compressed history.
HISTORY = "\n".join(
    f"Customer C-{i} reported order ORD-{4000 + i} lost on 2024-03-{10 + i}; refund agreed."
    for i in range(4)
)


def test_keep_previous_keeps_the_whole_history_and_adds_what_fits(counter: TokenCounter) -> None:
    cap = counter.count_text(HISTORY) + 25
    new = [
        msg("user", f"Also ticket T-{i} for ORD-{i} is pending, please follow up.")
        for i in range(6)
    ]
    kept = RuleBasedSummarizer(keep_previous=True).summarize(
        HISTORY, new, max_tokens=cap, counter=counter
    )
    assert kept.text.startswith(HISTORY + "\n")  # whole and first
    assert "ORD-" in kept.text[len(HISTORY) :]  # and what fits of the new material after it
    assert kept.token_count == counter.count_text(kept.text) <= cap
    # The default (the rule-based summarizer as the primary) compresses the history to make room.
    plain = RuleBasedSummarizer().summarize(HISTORY, new, max_tokens=cap, counter=counter)
    assert not all(line in plain.text for line in HISTORY.splitlines())


@pytest.mark.parametrize("cap", [1, 8, 30])
def test_keep_previous_over_the_cap_cuts_the_history_by_priority(
    cap: int, counter: TokenCounter
) -> None:
    new = [msg("user", "New order ORD-9 arrived.")]
    result = RuleBasedSummarizer(keep_previous=True).summarize(
        HISTORY, new, max_tokens=cap, counter=counter
    )
    assert result.text.strip() and result.token_count <= cap
    assert "ORD-9 " not in result.text  # no new line joins a history already over the cap


_message = st.builds(
    msg,
    st.sampled_from(["user", "assistant", "tool", "system"]),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=300),
)


@settings(max_examples=150, deadline=None)
@given(
    previous=st.none() | st.text(max_size=400),
    messages=st.lists(_message, max_size=8),
    max_tokens=st.integers(1, 120),
)
def test_rule_based_properties(
    previous: str | None, messages: list[Message], max_tokens: int
) -> None:
    counter = counter_for(None)
    had_input = bool((previous or "").strip()) or any(m.content.strip() for m in messages)
    for rb in (RuleBasedSummarizer(), RuleBasedSummarizer(keep_previous=True)):
        result = rb.summarize(previous, messages, max_tokens=max_tokens, counter=counter)
        assert result.token_count == counter.count_text(result.text) <= max_tokens
        assert rb.summarize(previous, messages, max_tokens=max_tokens, counter=counter) == result
        assert bool(result.text.strip()) == had_input


# --- prompt and validation ----------------------------------------------------------------------


def test_prompt_rules_and_rendering() -> None:
    prompt = build_prompt("Prev {braces} kept.", CONVERSATION, 150)
    for rule in ["VERBATIM", "third person", "no preamble", "150 tokens", "unchanged"]:
        assert rule in prompt.system
    assert "Prev {braces} kept." in prompt.user
    lines = render_messages(
        [
            msg("user", "multi\nline   text"),
            msg("assistant", "", tool_calls=[{"name": "search", "input": {"q": "ORD-1"}}]),
        ]
    ).splitlines()
    assert lines == ["user: multi line text", 'assistant called tool search({"q":"ORD-1"})']


@pytest.mark.parametrize("text", ["NONE", "n/a", '"None."', "", "I can't do that", "As an AI, no"])
def test_check_summary_text_rejects(text: str) -> None:
    with pytest.raises(SummarizerError):
        check_summary_text(text, source="x")


def test_check_summary_text_accepts_third_person() -> None:
    assert (
        check_summary_text("  The user cannot log in.  ", source="x") == "The user cannot log in."
    )
    assert check_summary_text("None of the orders shipped.", source="x")


# --- the factory --------------------------------------------------------------------------------


def test_build_rule_based() -> None:
    assert isinstance(build_summarizer(Settings()), RuleBasedSummarizer)


@pytest.mark.parametrize(
    ("provider", "cls", "url"),
    [
        ("openai", OpenAIChatSummarizer, "https://api.openai.com/v1"),
        ("anthropic", AnthropicSummarizer, "https://api.anthropic.com"),
    ],
)
def test_build_llm_defaults(provider: str, cls: type, url: str) -> None:
    s = build_summarizer(
        Settings(
            summarizer_provider=provider,
            summarizer_model="m",
            summarizer_api_key=SecretStr(KEY),
            summarizer_timeout_s=7,
        )
    )
    assert isinstance(s, FallbackSummarizer) and isinstance(s.fallback, RuleBasedSummarizer)
    assert s.fallback.keep_previous  # an outage never costs the LLM's summary
    assert isinstance(s.primary, GuardedSummarizer)  # the LLM sits behind a circuit breaker
    llm = s.primary.inner
    assert type(llm) is cls
    assert llm.base_url == url and llm.timeout_s == 7 and s.name == provider


def test_build_from_environment(
    monkeypatch: pytest.MonkeyPatch, llm_server: FakeLLMServer, counter: TokenCounter
) -> None:
    monkeypatch.setenv("MEMORY_SUMMARIZER_PROVIDER", "openai")
    monkeypatch.setenv("MEMORY_SUMMARIZER_BASE_URL", llm_server.openai_base_url)
    monkeypatch.setenv("MEMORY_SUMMARIZER_MODEL", "qwen2.5")
    monkeypatch.setenv("MEMORY_SUMMARIZER_API_KEY", "")
    s = build_summarizer(Settings())
    assert s.summarize(None, CONVERSATION, max_tokens=40, counter=counter).source == "openai"
    assert llm_server.last.json["model"] == "qwen2.5"
    assert "authorization" not in llm_server.last.headers


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"summarizer_base_url": "http://h/v1"}, "MEMORY_SUMMARIZER_MODEL"),
        (
            {"summarizer_model": "  ", "summarizer_base_url": "http://h/v1"},
            "MEMORY_SUMMARIZER_MODEL",
        ),
        ({"summarizer_model": "m", "summarizer_base_url": ""}, "MEMORY_SUMMARIZER_BASE_URL"),
        (
            {"summarizer_model": "m", "summarizer_base_url": "localhost:8000"},
            "MEMORY_SUMMARIZER_BASE_URL",
        ),
        ({"summarizer_model": "m"}, "MEMORY_SUMMARIZER_API_KEY"),  # official host, no key
    ],
)
def test_build_config_errors(provider: str, fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        build_summarizer(Settings(summarizer_provider=provider, **fields))
    assert info.value.field == field


def test_fake_server_count_tokens(llm_server: FakeLLMServer) -> None:
    body = {"model": "m", "system": "be brief", "messages": [{"role": "user", "content": "a b c"}]}
    reply = httpx.post(llm_server.base_url + "/v1/messages/count_tokens", json=body, timeout=5)
    assert reply.status_code == 200 and reply.json() == {"input_tokens": 5}
    assert llm_server.last.path == "/v1/messages/count_tokens" and llm_server.last.json == body


def test_fake_server_modes_are_validated(llm_server: FakeLLMServer) -> None:
    assert {"ok", "slow", "hang", *FAILURE_MODES} <= MODES
    with pytest.raises(ValueError):
        llm_server.mode = "nope"
