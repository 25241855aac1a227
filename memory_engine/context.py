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
exceeds the budget under the same counter. Reads are bounded by the budget, not by the memory's
length: the tail is fetched in growing chunks and the head only while system messages are missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from memory_engine.messages import Message, Role
from memory_engine.resources import FlushingType
from memory_engine.store import translate_errors
from memory_engine.strategies.units import group_units

if TYPE_CHECKING:
    from memory_engine.client import Memory

__all__ = ["build_context"]

INITIAL_TAIL = 64
HEAD_CHUNK = 32
_LRU = {FlushingType.LRU, FlushingType.TOKEN_AWARE_LRU}


def _decode(raw: Sequence[bytes | str]) -> list[Message]:
    return [Message.from_wire(r) for r in raw]


def build_context(memory: Memory, max_tokens: int | None = None) -> list[Message]:
    resource = memory.resource
    budget = max_tokens if max_tokens is not None else resource.effective_max_tokens
    keys = memory.keys
    r = memory.client.redis
    with translate_errors("context"):
        pipe = r.pipeline(transaction=True)
        pipe.hmget(keys.meta, "message_count", "system_count")
        pipe.hgetall(keys.summary)
        pipe.lrange(keys.msgs, 0, HEAD_CHUNK - 1)
        pipe.lrange(keys.msgs, -INITIAL_TAIL, -1)
        (count_raw, system_raw), summary_raw, head_raw, tail_raw = pipe.execute()
    total = int(count_raw or 0)
    system_count = int(system_raw or 0)
    head, tail = _decode(head_raw), _decode(tail_raw)
    summary = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in summary_raw.items()
    }

    def tail_tokens() -> int:
        return sum(m.token_count or 0 for m in tail)

    # Grow the tail until it covers the budget or the whole list (bounded by the budget).
    while len(tail) < total and (budget is None or tail_tokens() < budget):
        want = min(total, max(INITIAL_TAIL, len(tail) * 2))
        with translate_errors("context"):
            grown = _decode(r.lrange(keys.msgs, -want, -1))
        if len(grown) <= len(tail):
            break  # the list shrank under us (a flush): what we have is the whole tail
        tail = grown
    # Find the system messages: usually at the head (flushes never remove them).
    systems = {m.seq: m for m in (*head, *tail) if m.is_system}
    fetched = len(head)
    while len(systems) < system_count and fetched < total - len(tail):
        with translate_errors("context"):
            chunk = _decode(r.lrange(keys.msgs, fetched, fetched + HEAD_CHUNK * 4 - 1))
        fetched += len(chunk)
        systems.update({m.seq: m for m in chunk if m.is_system})
        if not chunk:
            break

    window = _select(memory, budget, sorted(systems.values(), key=_seq), tail, summary)
    if resource.flushing.type in _LRU:
        memory.client.store.record_use(
            keys, [m.seq for m in window if m.seq is not None], resource.ttl_s
        )
    return window


def _seq(m: Message) -> int:
    return m.seq or 0


def _select(
    memory: Memory,
    budget: int | None,
    systems: list[Message],
    tail: list[Message],
    summary: dict[str, Any],
) -> list[Message]:
    resource = memory.resource
    summary_msg = _summary_message(summary)
    if budget is None:
        chosen = sorted({m.seq: m for m in (*systems, *tail)}.values(), key=_seq)
        return _assemble(chosen, summary_msg)

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
    for unit in reversed(group_units(candidates)):
        cost = sum(m.token_count or 0 for m in unit)
        if cost > remaining:
            break
        recent.extend(unit)
        remaining -= cost
    chosen = sorted([*chosen_systems, *recent], key=_seq)
    return _assemble(chosen, summary_msg)


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


def _truncate_summary(memory: Memory, msg: Message, room: int) -> Message | None:
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
