"""Summarizers: fold messages into a memory's running summary.

:func:`build_summarizer` turns :class:`~memory_engine.settings.Settings` into a summarizer:

- ``MEMORY_SUMMARIZER_PROVIDER=rule_based`` (the default): :class:`RuleBasedSummarizer`, offline.
- ``openai`` or ``anthropic``: the LLM summarizer wrapped in :class:`FallbackSummarizer`, which
  answers with the rule-based summary (source ``"rule_based_fallback"``) whenever the LLM call
  fails or returns junk. A flush therefore always gets a usable summary.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from memory_engine.errors import ConfigError
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

__all__ = [
    # interface and results
    "Summarizer",
    "SummaryText",
    "FALLBACK_SOURCE",
    "check_summary_text",
    # implementations
    "AnthropicSummarizer",
    "FallbackSummarizer",
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


def build_summarizer(settings: Settings) -> Summarizer:
    """The summarizer the settings ask for.

    ``rule_based`` -> :class:`RuleBasedSummarizer`. ``openai``/``anthropic`` ->
    ``FallbackSummarizer(<LLM summarizer>, RuleBasedSummarizer())``. The base URL defaults to
    https://api.openai.com/v1 or https://api.anthropic.com. Raises :class:`ConfigError` when the
    model is missing, the base URL is blank or not http(s), or an official endpoint has no key.
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
    return FallbackSummarizer(primary, RuleBasedSummarizer())
