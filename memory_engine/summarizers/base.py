"""The summarizer interface, reply validation, and the fallback wrapper.

A summarizer is *progressive*: it builds the new summary from the previous summary plus the
messages the previous one does not cover yet, never from the whole transcript, so the cost of one
call stays flat however long a memory grows.

The rule a flush relies on: a failed or junk reply never becomes a summary. LLM summarizers raise
:class:`~memory_engine.errors.SummarizerError` instead of returning junk, and
:class:`FallbackSummarizer` turns any such error into a rule-based summary, so it always returns a
usable text when there was input.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from memory_engine.errors import SummarizerError

if TYPE_CHECKING:
    from memory_engine.messages import Message
    from memory_engine.tokens import TokenCounter

__all__ = [
    "FALLBACK_SOURCE",
    "FallbackSummarizer",
    "Summarizer",
    "SummaryText",
    "check_summary_text",
    "has_content",
]

logger = logging.getLogger(__name__)

FALLBACK_SOURCE = "rule_based_fallback"

# Replies that mean "no summary": a model told "return nothing if nothing to add" or a proxy that
# answers with a placeholder. Compared after lower-casing and stripping quotes and punctuation.
_PLACEHOLDERS = frozenset(
    {
        "none",
        "n/a",
        "na",
        "null",
        "nil",
        "undefined",
        "empty",
        "nothing",
        "nothing to add",
        "nothing to summarize",
        "nothing new",
        "no summary",
        "no new information",
        "no changes",
        "unchanged",
        "same as before",
        "tbd",
        "todo",
    }
)
# We ask for the third person, so a first-person opening is a refusal or a meta-comment.
_REFUSAL_RE = re.compile(
    r"^(?:i\s+(?:cannot|can\s*not|can't|am\s+unable|am\s+not\s+able|won't|will\s+not|"
    r"apologi[sz]e)|i'm\s+(?:unable|sorry|not\s+able)|i\s+am\s+sorry|"
    r"sorry,?\s+(?:but\s+)?i\b|as\s+an\s+ai\b|unfortunately,?\s+i\b)",
    re.IGNORECASE,
)
# A first line such as "Here is the updated summary:" or a lone "Summary:" heading adds nothing;
# drop it rather than fail. An inline "Summary: The user ..." is left alone.
_PREAMBLE_RE = re.compile(
    r"^\s*(?:here(?:'s|\s+is)\b[^\n]{0,60}\bsummary\b[^\n]{0,20}:[ \t]*\n?|"
    r"(?:updated\s+|new\s+)?summary\s*:[ \t]*\n)",
    re.IGNORECASE,
)
_STRIP_CHARS = " \t\r\n\"'`*_.!-:;()[]{}"


@dataclass(frozen=True)
class SummaryText:
    """A summary as a summarizer produced it, before it is stored.

    ``source`` says who wrote it: ``"openai"``, ``"anthropic"``, ``"rule_based"`` or
    ``"rule_based_fallback"`` (the LLM failed and the rule-based summarizer stood in).
    ``token_count`` is measured with the counter the caller passed.
    """

    text: str
    token_count: int
    source: str


class Summarizer(Protocol):
    """Progressive summarizer.

    ``summarize`` returns the previous summary updated with ``messages`` in at most ``max_tokens``
    tokens as ``counter`` counts them. It never returns junk: an implementation that cannot produce
    a usable text raises :class:`SummarizerError`. Text is empty only when there was no input at
    all (no previous summary and no message with content).
    """

    name: str

    def summarize(
        self,
        previous: str | None,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        counter: TokenCounter,
    ) -> SummaryText: ...


def has_content(message: Message) -> bool:
    """True when a message contributes something to a summary (text or tool calls)."""
    return bool(message.content.strip()) or bool(message.tool_calls)


def check_summary_text(text: str | None, *, source: str) -> str:
    """Return a usable summary text, or raise :class:`SummarizerError`.

    Strips whitespace and a "Here is the summary:" preamble; rejects empty text, placeholders such
    as ``NONE`` or ``N/A``, and refusals such as "I cannot ...". The error message quotes at most
    a short prefix of the reply.
    """
    if text is None:
        raise SummarizerError(f"{source} summarizer returned no text")
    text = text.strip()
    # Match on a copy with curly apostrophes made straight (same length, so offsets agree), but
    # return the text as written.
    probe = text.replace("\u2019", "'")
    preamble = _PREAMBLE_RE.match(probe)
    start = preamble.end() if preamble else 0
    cleaned, probe = text[start:].strip(), probe[start:].strip()
    if not cleaned:
        raise SummarizerError(f"{source} summarizer returned an empty summary")
    normalized = " ".join(cleaned.strip(_STRIP_CHARS).lower().split())
    if not normalized or normalized in _PLACEHOLDERS:
        raise SummarizerError(
            f"{source} summarizer returned a placeholder instead of a summary: {cleaned[:40]!r}"
        )
    if _REFUSAL_RE.match(probe):
        raise SummarizerError(f"{source} summarizer refused: {cleaned[:80]!r}")
    return cleaned


class FallbackSummarizer:
    """Call ``primary``; when it raises :class:`SummarizerError` (or returns junk), log a warning
    and return ``fallback``'s summary with source ``"rule_based_fallback"``.

    ``primary`` is any :class:`Summarizer` (an LLM summarizer, or one wrapped in a circuit breaker),
    ``fallback`` must not need the network (the rule-based summarizer). When no message has content
    the primary is not called: there is nothing for an LLM to add.
    """

    def __init__(self, primary: Summarizer, fallback: Summarizer) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = primary.name

    def close(self) -> None:
        """Close whichever of the two summarizers holds resources (an HTTP client)."""
        for summarizer in (self.primary, self.fallback):
            close = getattr(summarizer, "close", None)
            if callable(close):
                close()

    def __repr__(self) -> str:
        return f"FallbackSummarizer(primary={self.primary!r}, fallback={self.fallback!r})"

    def summarize(
        self,
        previous: str | None,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        counter: TokenCounter,
    ) -> SummaryText:
        if not any(has_content(m) for m in messages):
            return self.fallback.summarize(
                previous, messages, max_tokens=max_tokens, counter=counter
            )
        try:
            result = self.primary.summarize(
                previous, messages, max_tokens=max_tokens, counter=counter
            )
            # Re-check whatever the primary returned: a wrapper around it may not validate.
            text = check_summary_text(result.text, source=self.primary.name)
            tokens = counter.count_text(text)
            if tokens > max_tokens:
                raise SummarizerError(
                    f"{self.primary.name} summary has {tokens} tokens, over the cap of {max_tokens}"
                )
        except SummarizerError as exc:
            logger.warning(
                "summarizer %s failed, using the rule-based fallback: %s", self.primary.name, exc
            )
            backup = self.fallback.summarize(
                previous, messages, max_tokens=max_tokens, counter=counter
            )
            return SummaryText(
                text=backup.text, token_count=backup.token_count, source=FALLBACK_SOURCE
            )
        if text == result.text and tokens == result.token_count:
            return result
        return SummaryText(text=text, token_count=tokens, source=result.source)
