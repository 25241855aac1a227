"""``Memory.context()``: the prompt window built from a memory within a token budget.

Token allocation (``token_allocation`` of the resource; shares of the budget B):

- ``system``: system messages, oldest first, while they fit in ``B * system``;
- ``long_term``: the running summary, as one system message whose ``metadata`` has
  ``{"summary": true, "summary_point": ..., "covered": ...}``; truncated to its share if larger;
- ``user_defined``: named buckets reserved for the caller (retrieved documents, tool output it
  adds itself): subtracted from B and never filled from memory;
- ``short_term``: the newest messages, walking back from the end by whole units (a tool call is
  never split from its results) until the next unit does not fit; it stops there, so the window
  has no gaps. Whatever the system and long-term shares did not use flows to short-term.

Without ``token_allocation`` the system messages and the summary come first and the newest
messages fill the rest. Every figure uses the stored per-message token counts, so the window never
exceeds the budget under the same counter. A tool result whose call is not among the candidates (an
orphan, or one whose call lies before the part read) is never put in the window alone: a provider
would reject it.

Reads are bounded by the budget, not by the memory's length: one script (``lua/context.lua``)
returns the summary, the shortest tail whose non-system messages exceed the budget (the window's
newest messages cannot reach past it) and the system messages before that tail, reading the
tokens and role of each element from its first fields, sized by the memory's average message so
one ``LRANGE`` usually covers it. Only what comes back is decoded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memory_engine.core.units import group_units
from memory_engine.messages import Message, Role

if TYPE_CHECKING:
    from memory_engine.engine.handle import MemoryHandle

__all__ = ["build_context"]


def build_context(memory: MemoryHandle, max_tokens: int | None = None) -> list[Message]:
    resource = memory.resource
    budget = max_tokens if max_tokens is not None else resource.effective_max_tokens
    keys = memory.keys
    store = memory.client.store
    read_budget = None if budget is None else max(0, budget)
    while True:
        found = store.context_window(keys, read_budget)
        systems = {m.seq: m for m in found.systems}
        systems.update((m.seq, m) for m in found.tail if m.is_system)
        window, exhausted = _select(
            memory, budget, sorted(systems.values(), key=_seq), found.tail, found.summary
        )
        # Every unit of a partial tail fitting is only possible when skipped orphan tool results
        # made up the excess: read further back (rare; the read doubles each time).
        if not exhausted or found.tail_start == 0 or read_budget is None:
            break
        read_budget = read_budget * 2 + 1
    if resource.records_uses:
        store.record_use(keys, [m.seq for m in window if m.seq is not None], resource.ttl_s)
    return window


def _seq(m: Message) -> int:
    return m.seq or 0


def _select(
    memory: MemoryHandle,
    budget: int | None,
    systems: list[Message],
    tail: list[Message],
    summary: dict[str, Any],
) -> tuple[list[Message], bool]:
    """The window, and whether every candidate unit fitted (the walk never stopped)."""
    resource = memory.resource
    summary_msg = _summary_message(summary)
    if budget is None:
        units = group_units([m for m in tail if not m.is_system])
        kept = [m for unit in units if not _is_orphan_result(unit) for m in unit]
        chosen = sorted({m.seq: m for m in (*systems, *kept)}.values(), key=_seq)
        return _assemble(chosen, summary_msg), True

    alloc = resource.token_allocation
    reserved = int(budget * sum(alloc.user_defined.values())) if alloc else 0
    available = max(0, budget - reserved)
    system_cap = int(budget * alloc.system) if alloc else available
    long_cap = int(budget * alloc.long_term) if alloc else available

    used = 0
    chosen_systems: list[Message] = []
    for m in systems:
        cost = m.token_count or 0
        if used + cost > min(system_cap, available):
            break
        chosen_systems.append(m)
        used += cost

    if summary_msg is not None:
        cost = summary_msg.token_count or 0
        room = min(long_cap, available - used)
        if cost > room:
            summary_msg = _truncate_summary(memory, summary_msg, room)
        if summary_msg is not None:
            used += summary_msg.token_count or 0

    # Short-term: its own share plus whatever the system and long-term shares left unused.
    remaining = available - used
    system_seqs = {m.seq for m in systems}
    recent: list[Message] = []
    candidates = [m for m in tail if m.seq not in system_seqs]
    exhausted = True
    for unit in reversed(group_units(candidates)):
        if _is_orphan_result(unit):
            continue
        cost = sum(m.token_count or 0 for m in unit)
        if cost > remaining:
            exhausted = False
            break
        recent.extend(unit)
        remaining -= cost
    chosen = sorted([*chosen_systems, *recent], key=_seq)
    return _assemble(chosen, summary_msg), exhausted


def _is_orphan_result(unit: tuple[Message, ...]) -> bool:
    """A tool result alone: its call is not among the candidates (never declared, or before
    the part of the list that was read). Alone in a window it would be rejected by a provider."""
    return len(unit) == 1 and unit[0].role is Role.TOOL


def _summary_message(summary: dict[str, Any]) -> Message | None:
    text = summary.get("text")
    if not text:
        return None
    return Message(
        role=Role.SYSTEM,
        content=text,
        token_count=int(summary.get("token_count", 0)),
        metadata={
            "summary": True,
            "summary_point": int(summary.get("summary_point", 0)),
            "covered": int(summary.get("covered", 0)),
            "source": summary.get("source", ""),
        },
    )


def _truncate_summary(memory: MemoryHandle, msg: Message, room: int) -> Message | None:
    counter = memory.client.counter_for(memory.resource)
    overhead = counter.count_message(Message(role=Role.SYSTEM, content="x")) - counter.count_text(
        "x"
    )
    if room <= overhead:
        return None
    budget = room - overhead
    text = counter.truncate(msg.content, budget)
    while text:
        cost = counter.count_message(Message(role=Role.SYSTEM, content=text))
        if cost <= room:
            return msg.model_copy(
                update={
                    "content": text,
                    "token_count": cost,
                    "metadata": {**msg.metadata, "truncated": True},
                }
            )
        # Shrink the budget every round: a provider-aware counter measures content differently
        # from its truncate(), so cutting to the same budget again could return the same text.
        budget -= max(1, cost - room)
        text = counter.truncate(text, max(0, budget))
    return None


def _assemble(chosen: list[Message], summary_msg: Message | None) -> list[Message]:
    """Leading system messages, then the summary (it covers what came before the rest), then the
    remaining messages in seq order."""
    if summary_msg is None:
        return chosen
    lead = 0
    while lead < len(chosen) and chosen[lead].is_system:
        lead += 1
    return [*chosen[:lead], summary_msg, *chosen[lead:]]
