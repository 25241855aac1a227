"""Atomic units of a conversation: what a flush or an eviction may remove as one piece.

A *unit* is a tuple of messages that must stay or go together:

* an assistant message with ``tool_calls`` plus every later ``tool`` message whose
  ``tool_call_id`` answers one of its call ids (OpenAI shape: each call dict has an ``"id"``);
* any other message alone: user and plain assistant messages, system messages, and orphan tool
  results (a ``tool_call_id`` no earlier assistant message declared).

Providers reject a tool result without the call it answers and a call without its results, so
removing half a unit would leave a context the next model call cannot send. Tool results usually
follow their call immediately, but a result separated from its call by another message still joins
the call's unit: keeping the conversation sendable matters more than contiguity.

System messages are always units of one and are never removable: they carry the agent's
instructions, and the store keeps them whatever the strategy says.

Units are returned in order of their first message's ``seq``; inside a unit, messages keep seq
order. All helpers are pure and run in O(n) for n messages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from memory_engine.core.columns import Columns, columns_of, list_tokens
from memory_engine.core.plans import FlushPlan
from memory_engine.messages import Message, Role

if TYPE_CHECKING:
    from memory_engine.core.plans import Snapshot
    from memory_engine.resources import MemoryResource

__all__ = [
    "DropFn",
    "DropResult",
    "Unit",
    "drop_oldest",
    "drop_until_target",
    "first_seq",
    "group_units",
    "plan_drops",
    "plan_oldest_drops",
    "is_removable",
    "is_tool_unit",
    "message_tokens",
    "seq_of",
    "total_tokens",
    "unreachable_reason",
    "unit_last_used",
    "unit_seqs",
    "unit_tokens",
]

Unit = tuple[Message, ...]

# Larger than any token or message count: stands in for "no target" in tight loops.
_UNBOUNDED = 1 << 62


def seq_of(message: Message) -> int:
    """The message's ``seq``; raises :class:`ValueError` for a message the store never numbered."""
    if message.seq is None:
        raise ValueError(f"message without seq cannot be planned over: {message.role.value}")
    return message.seq


def message_tokens(message: Message) -> int:
    """The stored token count (0 when unknown, so a missing count never makes a plan fail)."""
    return message.token_count or 0


def total_tokens(messages: Iterable[Message]) -> int:
    """Sum of ``token_count`` over ``messages``."""
    return sum(message_tokens(m) for m in messages)


def unit_tokens(unit: Unit) -> int:
    """Sum of ``token_count`` over the unit's messages."""
    return total_tokens(unit)


def unit_seqs(unit: Unit) -> frozenset[int]:
    """The seqs of the unit's messages."""
    return frozenset(seq_of(m) for m in unit)


def first_seq(unit: Unit) -> int:
    """The seq of the unit's first (oldest) message: its position for FIFO ordering."""
    return seq_of(unit[0])


def is_removable(unit: Unit) -> bool:
    """False for a system message; every other unit may be dropped, summarized or evicted."""
    return not unit[0].is_system


def is_tool_unit(unit: Unit) -> bool:
    """True when the unit holds a tool call or a tool result (including orphan results)."""
    return any(m.role is Role.TOOL or m.tool_calls for m in unit)


def unit_last_used(unit: Unit, last_used: Mapping[int, float]) -> float:
    """When the unit was last used: the latest use of any of its messages.

    A message never used counts as used when it was created, so the access clock starts at creation
    and a never-used old message is staler than a recently created one.
    """
    return max(last_used.get(seq_of(m), m.created_at or 0.0) for m in unit)


def _call_ids(message: Message) -> list[str]:
    ids: list[str] = []
    for call in message.tool_calls or ():
        call_id = call.get("id")
        if isinstance(call_id, str) and call_id:
            ids.append(call_id)
    return ids


def group_units(messages: Sequence[Message]) -> list[Unit]:
    """Group ``messages`` (in seq order) into atomic units, ordered by their first seq.

    Every input message appears in exactly one unit. If two assistant messages declare the same
    call id, a later result answers the most recent declaration (ids should be unique; this keeps
    the grouping deterministic when they are not).
    """
    groups: list[list[Message]] = []
    # call id -> index in ``groups`` of the assistant message that declared it.
    open_calls: dict[str, int] = {}
    for message in messages:
        if message.role is Role.TOOL and message.tool_call_id in open_calls:
            groups[open_calls[message.tool_call_id]].append(message)
            continue
        groups.append([message])
        if message.role is Role.ASSISTANT:
            for call_id in _call_ids(message):
                open_calls[call_id] = len(groups) - 1
    return [tuple(group) for group in groups]


@dataclass(frozen=True)
class DropResult:
    """What :func:`drop_until_target` removed and what is left."""

    dropped: frozenset[int]
    tokens_after: int
    messages_after: int
    reached: bool
    units: int = 0  # how many units were dropped


def _within(
    tokens: int, count: int, target_tokens: int | None, target_messages: int | None
) -> bool:
    return (target_tokens is None or tokens <= target_tokens) and (
        target_messages is None or count <= target_messages
    )


def drop_until_target(
    units_in_order: Iterable[Unit],
    *,
    tokens: int,
    messages: int,
    target_tokens: int | None,
    target_messages: int | None,
) -> DropResult:
    """Remove whole units in the given order until ``tokens``/``messages`` are within both targets.

    ``tokens`` and ``messages`` are the totals before removal (system messages included); a target
    of ``None`` is no constraint. Non-removable units in the order are skipped, so callers may pass
    every unit. ``reached`` is False when the order ran out first (only system messages left).
    """
    dropped: list[int] = []
    units = 0
    for unit in units_in_order:
        if _within(tokens, messages, target_tokens, target_messages):
            break
        if not is_removable(unit):
            continue
        for message in unit:
            dropped.append(seq_of(message))
            tokens -= message_tokens(message)
        messages -= len(unit)
        units += 1
    return DropResult(
        dropped=frozenset(dropped),
        tokens_after=tokens,
        messages_after=messages,
        reached=_within(tokens, messages, target_tokens, target_messages),
        units=units,
    )


def drop_oldest(
    columns: Columns,
    *,
    tokens: int,
    messages: int,
    target_tokens: int | None,
    target_messages: int | None,
) -> DropResult:
    """:func:`drop_until_target` over every unit in seq order, on a snapshot's columns.

    The same result as ``drop_until_target(group_units(messages), ...)`` without building a
    unit tuple per message: with no tool calls in the snapshot it is one walk over three lists.
    """
    seqs, sizes, system = columns.seqs, columns.tokens, columns.system
    members, absorbed = columns.members, columns.absorbed
    # An absent target never binds: compare against a bound no count reaches.
    max_tokens = _UNBOUNDED if target_tokens is None else target_tokens
    max_messages = _UNBOUNDED if target_messages is None else target_messages
    dropped: list[int] = []
    units = 0
    if tokens > max_tokens or messages > max_messages:
        for index, seq in enumerate(seqs):
            if system[index] or index in absorbed:
                continue
            unit = members.get(index)
            if unit is None:
                dropped.append(seq)
                tokens -= sizes[index]
                messages -= 1
            else:
                for member in unit:
                    dropped.append(seqs[member])
                    tokens -= sizes[member]
                messages -= len(unit)
            units += 1
            if tokens <= max_tokens and messages <= max_messages:
                break
    return DropResult(
        dropped=frozenset(dropped),
        tokens_after=tokens,
        messages_after=messages,
        reached=tokens <= max_tokens and messages <= max_messages,
        units=units,
    )


DropFn = Callable[[int, int, "int | None", "int | None"], DropResult]
"""Runs a drop order: (tokens, messages, target_tokens, target_messages) -> what it removed."""


def plan_drops(
    name: str,
    snapshot: Snapshot,
    resource: MemoryResource,
    units_in_order: Sequence[Unit],
    order_description: str,
) -> FlushPlan:
    """The plan of a dropping strategy: remove units in ``units_in_order`` until at the target.

    Shared by every strategy that only drops (FIFO, LRU, token-aware LRU); they differ only in the
    order they pass. The running summary stays and counts toward the token target, as it does
    toward the flush trigger: leaving it out would let a flush stop above the trigger and fire
    again on the next append. ``order_description`` ("oldest first", ...) goes into the reason.
    """

    def drop(tokens: int, messages: int, tt: int | None, tm: int | None) -> DropResult:
        return drop_until_target(
            units_in_order, tokens=tokens, messages=messages, target_tokens=tt, target_messages=tm
        )

    return _drop_plan(name, snapshot, resource, drop, order_description)


def plan_oldest_drops(name: str, snapshot: Snapshot, resource: MemoryResource) -> FlushPlan:
    """:func:`plan_drops` with every unit in seq order (oldest first), planned on the
    snapshot's columns (:mod:`memory_engine.core.columns`): no message is decoded."""
    columns = columns_of(snapshot.messages)

    def drop(tokens: int, messages: int, tt: int | None, tm: int | None) -> DropResult:
        return drop_oldest(
            columns, tokens=tokens, messages=messages, target_tokens=tt, target_messages=tm
        )

    return _drop_plan(name, snapshot, resource, drop, "oldest first", sum(columns.tokens))


def _drop_plan(
    name: str,
    snapshot: Snapshot,
    resource: MemoryResource,
    drop: DropFn,
    order_description: str,
    list_total: int | None = None,
) -> FlushPlan:
    target_tokens, target_messages = resource.flush_targets()
    summary_tokens = snapshot.summary.token_count if snapshot.summary else 0
    tokens = (list_total if list_total is not None else list_tokens(snapshot.messages)) + (
        summary_tokens
    )
    count = len(snapshot.messages)
    if target_tokens is None and target_messages is None:
        result = DropResult(frozenset(), tokens, count, reached=True)
        reason = "no token or message limit set: nothing to flush"
    else:
        result = drop(tokens, count, target_tokens, target_messages)
        if not result.dropped:
            reason = "already within target" if result.reached else unreachable_reason(result)
        else:
            reason = (
                f"dropped {len(result.dropped)} messages in {result.units} units, "
                f"{order_description}"
            )
            reason += "" if result.reached else "; " + unreachable_reason(result)
    return FlushPlan(
        strategy=name,
        drop=result.dropped,
        tokens_before=tokens,
        tokens_after=result.tokens_after,
        messages_before=count,
        messages_after=result.messages_after,
        target_tokens=target_tokens,
        target_messages=target_messages,
        reason=reason,
        summary_tokens_before=summary_tokens,
        summary_tokens_after=summary_tokens,
    )


def unreachable_reason(result: DropResult) -> str:
    """The reason text of a plan that cannot reach its target (shared wording for callers)."""
    return (
        "target unreachable: only system messages and the summary remain "
        f"({result.tokens_after} tokens, {result.messages_after} messages)"
    )
