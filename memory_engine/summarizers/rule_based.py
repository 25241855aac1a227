"""An extractive summarizer that needs no network: the fallback when an LLM is down or misbehaves.

Output is one line per source: the previous summary's lines first, then one line per new
message, ``role: first sentence + key facts``. A *unit* is a sentence; each unit gets a priority
(identifiers, decisions, open tasks). When everything does not fit in ``max_tokens``, the previous
summary keeps up to half of the budget, new lines get the rest, and within each the
lowest-priority units go first (older before newer on a tie); what is left is printed in its
original order.

``keep_previous=True`` (how :func:`~memory_engine.summarizers.build_summarizer` builds the fallback
of an LLM summarizer) changes the first rule: the previous summary is the memory's compressed
history, written by the LLM, so it is kept whole whenever it fits in ``max_tokens`` and new lines
get only what it leaves. An LLM outage then never costs the long-term memory; what does not fit
of the new material is what is lost. (A previous summary over the cap, after ``summary_tokens``
was lowered, is cut by priority like new lines; no new line is added then.)
Deterministic: same input, same output.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from memory_engine.summarizers.base import SummaryText, has_content
from memory_engine.summarizers.prompt import render_tool_call

if TYPE_CHECKING:
    from memory_engine.messages import Message
    from memory_engine.tokens import TokenCounter

__all__ = ["RuleBasedSummarizer", "line_priority"]

# A message contributes its first sentence plus at most this many other key-fact sentences.
MAX_FACTS_PER_MESSAGE = 3
# A previous-summary line longer than this is split into sentences so it can be compressed.
LONG_LINE_CHARS = 200
ELLIPSIS = "…"

_WS_RE = re.compile(r"\s+")
# A sentence ends at . ! ? followed by whitespace; "3.5" and "v1.2" stay whole.
_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+(?=\S)")
_IDENTIFIER_RE = re.compile(
    r"\d+(?:[.,:/-]\d+)*"  # numbers, amounts, dates, versions
    r"|\b[A-Za-z]{2,}[-_#]\w*\d"  # ORD-1234, INV_77, ticket#9
    r"|https?://|www\."  # URLs
    r"|[\w.+-]+@[\w-]+\.\w"  # e-mail addresses
    r"|\[[A-Z_ ]{3,}\]|<[A-Z_]{3,}>"  # redaction placeholders such as [REDACTED], <EMAIL>
    r"|\b[0-9a-f]{8,}\b",  # hashes, uuids
)
_DECISION_RE = re.compile(
    r"\b(?:decided|decides|decision|agreed|agrees|will|won't|must|shall|confirmed|confirms|"
    r"approved|approves|chose|chosen|settled|going to|plan(?:s|ned)? to)\b",
    re.IGNORECASE,
)
_TASK_RE = re.compile(
    r"\bTODO\b|\?|\b(?:need|needs|needed) to\b|\b(?:follow[- ]up|pending|action item|deadline|"
    r"remind|blocked|open question|due)\b",
    re.IGNORECASE,
)


def line_priority(text: str) -> int:
    """How much a sentence is worth keeping: +3 each for an identifier, a decision, an open task,
    +1 more when it holds several identifiers."""
    score = 0
    identifiers = len(_IDENTIFIER_RE.findall(text))
    if identifiers:
        score += 3 if identifiers == 1 else 4
    if _DECISION_RE.search(text):
        score += 3
    if _TASK_RE.search(text):
        score += 3
    return score


@dataclass(frozen=True)
class _Unit:
    group: int  # output line it belongs to
    order: int  # position in the whole output, for printing in order and breaking ties
    text: str
    priority: int
    previous: bool  # from the previous summary, not from a new message
    tokens: int


@dataclass(frozen=True)
class _Group:
    prefix: str  # "user: " for a message line, "" for a previous-summary line


def _one_line(text: str) -> str:
    return _WS_RE.sub(" ", text).strip()


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_RE.split(text) if s]


class RuleBasedSummarizer:
    """Extractive, deterministic, offline. Never returns empty text when there was input.

    ``keep_previous``: keep the previous summary whole when it fits, and add only what fits of
    the new messages after it (see the module docstring); the fallback of an LLM summarizer.
    """

    name = "rule_based"

    def __init__(self, *, keep_previous: bool = False) -> None:
        self.keep_previous = keep_previous

    def __repr__(self) -> str:
        return f"RuleBasedSummarizer(keep_previous={self.keep_previous})"

    def summarize(
        self,
        previous: str | None,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        counter: TokenCounter,
    ) -> SummaryText:
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        groups: list[_Group] = []
        units: list[_Unit] = []
        # One long sentence may take at most half the budget, so a huge message cannot crowd out
        # every other line.
        unit_cap = max(16, max_tokens // 2)

        def add(group: int, text: str, *, bonus: int = 0, previous: bool = False) -> None:
            # Kept whole, a previous line is never clipped to make room for others.
            cap = max_tokens if previous and self.keep_previous else unit_cap
            text = self._clip(text, cap, counter)
            units.append(
                _Unit(
                    group,
                    len(units),
                    text,
                    line_priority(text) + bonus,
                    previous,
                    counter.count_text(text),
                )
            )

        seen: set[str] = set()
        for line in (previous or "").splitlines():
            line = _one_line(line)
            if not line or line in seen:
                continue
            seen.add(line)
            groups.append(_Group(""))
            parts = _sentences(line) if len(line) > LONG_LINE_CHARS else [line]
            for part in parts:
                add(len(groups) - 1, part, previous=True)

        for message in messages:
            if not has_content(message):
                continue
            role = message.role.value
            label = f"{role} ({message.name})" if message.name else role
            content = _one_line(message.content)
            if content:
                sentences = _sentences(content)
                facts = sorted(
                    sentences[1:], key=lambda s: -line_priority(s)
                )  # stable: ties keep text order
                facts = [s for s in facts if line_priority(s) > 0][:MAX_FACTS_PER_MESSAGE]
                kept = [sentences[0], *(s for s in sentences[1:] if s in facts)]
                line = f"{label}: {' '.join(kept)}"
                if line not in seen:
                    seen.add(line)
                    groups.append(_Group(f"{label}: "))
                    for sentence in kept:
                        add(len(groups) - 1, sentence)
            for call in message.tool_calls or ():
                line = f"{role} called tool {render_tool_call(call)}"
                if line in seen:
                    continue
                seen.add(line)
                groups.append(_Group(""))
                # A tool call is an action taken: a little more than chit-chat even without ids.
                add(len(groups) - 1, line, bonus=1)

        if not units:
            return SummaryText(text="", token_count=0, source=self.name)
        text = self._pack(groups, units, max_tokens, counter)
        return SummaryText(text=text, token_count=counter.count_text(text), source=self.name)

    @staticmethod
    def _clip(text: str, max_tokens: int, counter: TokenCounter) -> str:
        if counter.count_text(text) <= max_tokens:
            return text
        cut = counter.truncate(text, max_tokens - 1).rstrip()
        # Prefer ending on a word boundary, unless that throws most of the text away.
        space = cut.rfind(" ")
        if space > len(cut) // 2:
            cut = cut[:space]
        return (cut + ELLIPSIS) if cut else text[:1]

    @staticmethod
    def _render(groups: list[_Group], units: Sequence[_Unit]) -> str:
        lines: dict[int, list[str]] = {}
        for unit in sorted(units, key=lambda u: u.order):
            lines.setdefault(unit.group, []).append(unit.text)
        return "\n".join(groups[g].prefix + " ".join(parts) for g, parts in lines.items())

    def _pack(
        self, groups: list[_Group], units: list[_Unit], max_tokens: int, counter: TokenCounter
    ) -> str:
        # Best first: higher priority, then newer (a fresh fact beats a stale one of equal rank).
        def rank(unit: _Unit) -> tuple[int, int]:
            return (-unit.priority, -unit.order)

        ranked = sorted(units, key=rank)
        chosen: list[_Unit] = []
        taken: set[int] = set()
        used = 0

        def take(candidates: Sequence[_Unit], limit: int) -> None:
            nonlocal used
            for unit in candidates:
                # +2 for the separator and a possible line prefix; checked exactly below.
                cost = unit.tokens + 2
                if unit.order not in taken and used + cost <= limit:
                    chosen.append(unit)
                    taken.add(unit.order)
                    used += cost

        # The exact check below drops from the end of this order.
        def order(unit: _Unit) -> tuple[int, ...]:
            if self.keep_previous:  # every new line goes before any line of the history
                return (0 if unit.previous else 1, *rank(unit))
            return rank(unit)

        previous = [u for u in ranked if u.previous]
        fresh = [u for u in ranked if not u.previous]
        if self.keep_previous:
            whole = self._render(groups, previous) if previous else ""
            whole_tokens = counter.count_text(whole) if whole else 0
            if whole_tokens <= max_tokens:
                chosen.extend(previous)
                taken.update(u.order for u in previous)
                used = whole_tokens + (1 if previous else 0)  # +1: the line break after it
            else:
                take(previous, max_tokens)
                fresh = []  # the history alone is over the cap: nothing new joins it
            take(fresh, max_tokens)
        else:
            # The previous summary is the memory's long-term part: it may keep up to half the
            # budget before new lines compete; new lines may then use all the rest; leftovers
            # go to anything.
            take(previous, max_tokens // 2)
            take(fresh, max_tokens)
            take(ranked, max_tokens)
        chosen.sort(key=order)
        text = self._render(groups, chosen)
        while chosen and counter.count_text(text) > max_tokens:
            chosen.pop()  # the last in that order: the lowest-ranked (new) unit chosen
            text = self._render(groups, chosen)
        if chosen:
            return text
        # Nothing fits whole: cut the best unit down so there is always something.
        best = ranked[0]
        clipped = self._clip(groups[best.group].prefix + best.text, max_tokens, counter)
        while clipped and counter.count_text(clipped) > max_tokens:
            clipped = clipped[:-1]
        # A cap of one or two tokens may not hold even one character of the input: an ellipsis
        # (one token) still says "something was here" without breaking the cap.
        return clipped or ELLIPSIS
