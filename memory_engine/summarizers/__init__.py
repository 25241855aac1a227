"""Summarizers: fold messages into a memory's running summary.

:func:`build_summarizer` turns :class:`~memory_engine.settings.Settings` into a summarizer:

- ``MEMORY_SUMMARIZER_PROVIDER=rule_based`` (the default): :class:`RuleBasedSummarizer`, offline.
- ``openai`` or ``anthropic``: the LLM summarizer wrapped in :class:`FallbackSummarizer`, which
  answers with the rule-based summary (source ``"rule_based_fallback"``) whenever the LLM call
  fails or returns junk. A flush therefore always gets a usable summary, and that fallback keeps
  the previous summary whole (``RuleBasedSummarizer(keep_previous=True)``): an outage adds less
  of the new material, it never loses the compressed history.

The LLM summarizer sits behind a circuit breaker (:class:`GuardedSummarizer`, one breaker per
endpoint, state shared through Redis when :func:`build_summarizer` is given a client): after
``MEMORY_BREAKER_FAIL_MAX`` consecutive failures every flush gets the rule-based summary at once,
without waiting for the endpoint's timeout, until a trial call after
``MEMORY_BREAKER_RESET_TIMEOUT_S`` succeeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from memory_engine.breakers import SharedCircuitBreaker, breaker_name, build_breaker
from memory_engine.errors import ConfigError, SummarizerError
from memory_engine.settings import Settings
from memory_engine.summarizers.base import (
    FALLBACK_SOURCE,
    FallbackSummarizer,
    Summarizer,
    SummaryText,
    check_summary_text,
)
from memory_engine.summarizers.llm import (
    DEFAULT_ANTHROPIC_BASE_URL,
    DEFAULT_OPENAI_BASE_URL,
    AnthropicSummarizer,
    OpenAIChatSummarizer,
)
from memory_engine.summarizers.prompt import SYSTEM_PROMPT, Prompt, build_prompt
from memory_engine.summarizers.rule_based import RuleBasedSummarizer

if TYPE_CHECKING:
    from memory_engine.messages import Message
    from memory_engine.store.connections import RedisClient
    from memory_engine.tokens import TokenCounter

__all__ = [
    # interface and results
    "Summarizer",
    "SummaryText",
    "FALLBACK_SOURCE",
    "check_summary_text",
    # implementations
    "AnthropicSummarizer",
    "FallbackSummarizer",
    "GuardedSummarizer",
    "OpenAIChatSummarizer",
    "RuleBasedSummarizer",
    "DEFAULT_ANTHROPIC_BASE_URL",
    "DEFAULT_OPENAI_BASE_URL",
    # prompt
    "Prompt",
    "SYSTEM_PROMPT",
    "build_prompt",
    # factory
    "build_summarizer",
]

# Official endpoints always need a key; a self-hosted OpenAI-compatible server may not.
_KEYED_HOSTS = frozenset({"api.openai.com", "api.anthropic.com"})


class GuardedSummarizer:
    """A summarizer behind a circuit breaker. Only :class:`SummarizerError` counts as a failure;
    while the breaker is open, :meth:`summarize` raises :class:`SummarizerError` at once without a
    request, so :class:`FallbackSummarizer` answers with the rule-based summary immediately."""

    def __init__(self, inner: Summarizer, breaker: SharedCircuitBreaker) -> None:
        self.inner = inner
        self.breaker = breaker
        self.name = inner.name

    def __repr__(self) -> str:
        return f"GuardedSummarizer(inner={self.inner!r}, breaker={self.breaker.name!r})"

    def close(self) -> None:
        """Close the wrapped summarizer's resources (its HTTP client)."""
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()

    def summarize(
        self,
        previous: str | None,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        counter: TokenCounter,
    ) -> SummaryText:
        return self.breaker.call_or_raise(
            self.inner.summarize,
            previous,
            messages,
            max_tokens=max_tokens,
            counter=counter,
            error_type=SummarizerError,
        )


def _base_url(settings: Settings, default: str) -> str:
    raw = settings.summarizer_base_url
    if raw is None:
        return default
    url = raw.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            "must be an http(s) URL such as http://localhost:11434/v1, got "
            + (repr(url) if url else "an empty value"),
            field="MEMORY_SUMMARIZER_BASE_URL",
        )
    return url


def build_summarizer(settings: Settings, redis: RedisClient | None = None) -> Summarizer:
    """The summarizer the settings ask for.

    ``rule_based`` -> :class:`RuleBasedSummarizer`. ``openai``/``anthropic`` ->
    ``FallbackSummarizer(GuardedSummarizer(<LLM summarizer>, <breaker>),
    RuleBasedSummarizer(keep_previous=True))``;
    the breaker is named ``summarizer.<provider>@<host>`` and keeps its state in ``redis`` (shared
    by every process with the same key prefix) or, without one, in this process. The base URL
    defaults to https://api.openai.com/v1 or https://api.anthropic.com. Raises
    :class:`ConfigError` when the model is missing, the base URL is blank or not http(s), or an
    official endpoint has no key.
    """
    provider = settings.summarizer_provider
    if provider == "rule_based":
        return RuleBasedSummarizer()
    model = (settings.summarizer_model or "").strip()
    if not model:
        raise ConfigError(
            f"required when MEMORY_SUMMARIZER_PROVIDER={provider}",
            field="MEMORY_SUMMARIZER_MODEL",
        )
    default = DEFAULT_OPENAI_BASE_URL if provider == "openai" else DEFAULT_ANTHROPIC_BASE_URL
    base_url = _base_url(settings, default)
    api_key = settings.summarizer_api_key
    if api_key is not None and not api_key.get_secret_value().strip():
        api_key = None  # MEMORY_SUMMARIZER_API_KEY= (set but empty) means no key
    if api_key is None and urlsplit(base_url).hostname in _KEYED_HOSTS:
        raise ConfigError(
            f"required for {base_url} (MEMORY_SUMMARIZER_PROVIDER={provider})",
            field="MEMORY_SUMMARIZER_API_KEY",
        )
    primary: Summarizer
    if provider == "openai":
        primary = OpenAIChatSummarizer(
            base_url, model, api_key=api_key, timeout_s=settings.summarizer_timeout_s
        )
    else:
        primary = AnthropicSummarizer(
            base_url, model=model, api_key=api_key, timeout_s=settings.summarizer_timeout_s
        )
    breaker = build_breaker(
        breaker_name("summarizer", provider, base_url),
        settings,
        failures=(SummarizerError,),
        redis=redis,
    )
    # The fallback stands in for an LLM that will be back: it keeps the LLM's summary whole.
    fallback = RuleBasedSummarizer(keep_previous=True)
    return FallbackSummarizer(GuardedSummarizer(primary, breaker), fallback)
