"""A small catalogue of chat models and their context windows, in tokens.

Used to turn ``max_context_ratio`` into a token limit. The table is deliberately short: a model that
is not listed has no known window, and a resource that needs one is refused at load time instead of
guessing. Add a model here (one line) rather than teaching the config a ``model_context_size`` knob.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = [
    "CONTEXT_8K_TOKENS",
    "CONTEXT_16K_TOKENS",
    "CONTEXT_32K_TOKENS",
    "CONTEXT_128K_TOKENS",
    "CONTEXT_LLAMA_128K_TOKENS",
    "CONTEXT_200K_TOKENS",
    "CONTEXT_1M_TOKENS",
    "CONTEXT_GEMINI_1M_TOKENS",
    "CONTEXT_GEMINI_2M_TOKENS",
    "KNOWN_CONTEXT_WINDOWS",
    "context_window",
]

CONTEXT_8K_TOKENS: Final[int] = 8_192
CONTEXT_16K_TOKENS: Final[int] = 16_385
CONTEXT_32K_TOKENS: Final[int] = 32_768
CONTEXT_128K_TOKENS: Final[int] = 128_000
CONTEXT_LLAMA_128K_TOKENS: Final[int] = 131_072
CONTEXT_200K_TOKENS: Final[int] = 200_000
CONTEXT_1M_TOKENS: Final[int] = 1_047_576
CONTEXT_GEMINI_1M_TOKENS: Final[int] = 1_048_576
CONTEXT_GEMINI_2M_TOKENS: Final[int] = 2_097_152

# Keys are lower-case model names or family prefixes. Dated snapshots ("gpt-4o-2024-08-06",
# "claude-3-5-sonnet-20241022") resolve through the longest-prefix rule in context_window().
_WINDOWS: dict[str, int] = {
    # OpenAI
    "gpt-4o": CONTEXT_128K_TOKENS,
    "gpt-4o-mini": CONTEXT_128K_TOKENS,
    "chatgpt-4o-latest": CONTEXT_128K_TOKENS,
    "gpt-4-turbo": CONTEXT_128K_TOKENS,
    # The 128k previews are named "gpt-4-<date>-preview"; without these lines they would fall back
    # to the 8k "gpt-4" prefix and undercount the window 16 times.
    "gpt-4-1106-preview": CONTEXT_128K_TOKENS,
    "gpt-4-0125-preview": CONTEXT_128K_TOKENS,
    "gpt-4": CONTEXT_8K_TOKENS,
    "gpt-4-32k": CONTEXT_32K_TOKENS,
    "gpt-4.1": CONTEXT_1M_TOKENS,
    "gpt-4.1-mini": CONTEXT_1M_TOKENS,
    "gpt-4.1-nano": CONTEXT_1M_TOKENS,
    "gpt-3.5-turbo": CONTEXT_16K_TOKENS,
    "o1": CONTEXT_200K_TOKENS,
    "o1-mini": CONTEXT_128K_TOKENS,
    "o1-preview": CONTEXT_128K_TOKENS,
    "o3": CONTEXT_200K_TOKENS,
    "o3-mini": CONTEXT_200K_TOKENS,
    "o4-mini": CONTEXT_200K_TOKENS,
    # Anthropic
    "claude-3-opus": CONTEXT_200K_TOKENS,
    "claude-3-sonnet": CONTEXT_200K_TOKENS,
    "claude-3-haiku": CONTEXT_200K_TOKENS,
    "claude-3-5-sonnet": CONTEXT_200K_TOKENS,
    "claude-3-5-haiku": CONTEXT_200K_TOKENS,
    "claude-3-7-sonnet": CONTEXT_200K_TOKENS,
    "claude-sonnet-4": CONTEXT_200K_TOKENS,
    "claude-opus-4": CONTEXT_200K_TOKENS,
    "claude-haiku-4": CONTEXT_200K_TOKENS,
    # Google
    "gemini-1.5-pro": CONTEXT_GEMINI_2M_TOKENS,
    "gemini-1.5-flash": CONTEXT_GEMINI_1M_TOKENS,
    "gemini-2.0-flash": CONTEXT_GEMINI_1M_TOKENS,
    "gemini-2.5-pro": CONTEXT_GEMINI_1M_TOKENS,
    "gemini-2.5-flash": CONTEXT_GEMINI_1M_TOKENS,
    # Cohere
    "command-r": CONTEXT_128K_TOKENS,
    "command-r-plus": CONTEXT_128K_TOKENS,
    # Meta (Ollama-style names: "llama3:8b", "llama3.1:70b")
    "llama3": CONTEXT_8K_TOKENS,
    "llama3.1": CONTEXT_LLAMA_128K_TOKENS,
    "llama3.2": CONTEXT_LLAMA_128K_TOKENS,
    "llama3.3": CONTEXT_LLAMA_128K_TOKENS,
}

KNOWN_CONTEXT_WINDOWS: Final[Mapping[str, int]] = MappingProxyType(_WINDOWS)
"""Read-only view of the catalogue: model name or family prefix -> context window in tokens."""

# A prefix only counts when the name continues with one of these. Without this rule "gpt-4" would
# claim "gpt-4.5-preview" and "llama3" would claim "llama3.1", both with the wrong window; "." is
# therefore not a boundary.
_PREFIX_BOUNDARIES: Final[frozenset[str]] = frozenset("-:@")


def context_window(model: str) -> int | None:
    """Return the context window of ``model`` in tokens, or ``None`` when it is not catalogued.

    Matching is case-insensitive. A ``provider/`` prefix (``openai/gpt-4o``) is ignored. An exact
    name wins; otherwise the longest catalogued prefix followed by ``-``, ``:`` or ``@`` (dated
    snapshots, Ollama tags, Vertex versions) decides.
    """
    name = model.strip().lower().rsplit("/", 1)[-1]
    if not name:
        return None
    exact = _WINDOWS.get(name)
    if exact is not None:
        return exact
    best: str | None = None
    for prefix in _WINDOWS:
        if (
            len(name) > len(prefix)
            and name.startswith(prefix)
            and name[len(prefix)] in _PREFIX_BOUNDARIES
            and (best is None or len(prefix) > len(best))
        ):
            best = prefix
    return _WINDOWS[best] if best is not None else None
