"""Token counts that say where they come from, the byte estimate, and the provider interface.

Sources, best first:

- ``anthropic_api``: the provider's own count-tokens API (exact for that provider's models);
- ``tiktoken``: a tiktoken encoding (exact for OpenAI models, an approximation for others);
- ``estimate``: ``ceil(utf-8 bytes / 4)``, the documented last resort. Four bytes per token is the
  usual rule of thumb for English text; it overestimates CJK and code less than it underestimates
  them, so budgets built on it should keep headroom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from memory_engine.errors import MemoryEngineError

__all__ = [
    "ESTIMATE_BYTES_PER_TOKEN",
    "RemoteTokenCounter",
    "TokenCount",
    "TokenProviderError",
    "TokenSource",
    "estimate_tokens",
    "estimate_truncate",
]

ESTIMATE_BYTES_PER_TOKEN = 4
"""UTF-8 bytes per token assumed by the estimate."""


class TokenSource(StrEnum):
    """Where a token count came from."""

    ANTHROPIC_API = "anthropic_api"
    TIKTOKEN = "tiktoken"
    ESTIMATE = "estimate"


@dataclass(frozen=True, slots=True)
class TokenCount:
    """A number of tokens and the :class:`TokenSource` that produced it."""

    value: int
    source: TokenSource


class TokenProviderError(MemoryEngineError):
    """A provider's count-tokens call failed (network, timeout, HTTP error, bad reply, missing key,
    open circuit breaker). Raised by remote counters only; the provider-aware counter catches it
    and falls back, so it never reaches an ``append`` caller. The message never holds the key."""


class RemoteTokenCounter(Protocol):
    """A provider API that counts the tokens of one text (the content of a user message)."""

    source: TokenSource

    def count(self, text: str) -> int:
        """Tokens of ``text`` as message content; raises :class:`TokenProviderError`."""
        ...

    def close(self) -> None:
        """Release network resources."""
        ...


def _utf8(text: str) -> bytes:
    # surrogatepass: a lone surrogate (from JSON "\ud800") must not break counting.
    return text.encode("utf-8", "surrogatepass")


def estimate_tokens(text: str) -> int:
    """``ceil(len(utf-8 bytes of text) / 4)``; 0 for an empty text."""
    return math.ceil(len(_utf8(text)) / ESTIMATE_BYTES_PER_TOKEN)


def estimate_truncate(text: str, max_tokens: int) -> str:
    """The longest prefix of ``text`` whose estimate is at most ``max_tokens`` (never splits a
    character; ``text`` itself when it fits)."""
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    budget = max_tokens * ESTIMATE_BYTES_PER_TOKEN
    raw = _utf8(text)
    if len(raw) <= budget:
        return text
    # Cut the bytes, then drop an incomplete trailing character; slice the original string by the
    # decoded length so the result is a true prefix.
    kept = raw[:budget].decode("utf-8", errors="ignore")
    return text[: len(kept)]
