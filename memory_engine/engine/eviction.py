"""Hard-limit eviction policies for the ``memory.evict`` task: which seqs must go *now*.

A flush aims at the flush target, below the limits, and may summarize. Eviction is the backstop
when a memory is over ``max_tokens`` or ``max_messages`` itself (a flush failed, the summarizer is
down, a burst outran the worker): it removes just enough, by the resource's ``eviction.policy``, for
what remains to be at or under both limits. Evicted messages are counted as evicted by the named
policy, so every message stays accounted for.

Rules shared with the flush strategies (:mod:`memory_engine.core.units`): system messages are
never evicted; a tool call and its results leave together; only seqs of the given messages are
returned. When the limits cannot be met without system messages, every other message is evicted.

Policies:

``fifo``
    Oldest unit first (by the seq of its first message). O(n) time and space, no extra Redis work.
``lru``
    Least recently used unit first; a unit's last use is the latest use of its messages, and a
    message never used counts as used at its ``created_at``; ties go to the oldest seq. O(n log n)
    time, O(n) space; needs uses recorded by ``context()`` (one ZADD of O(k log n) per call).
``priority``
    Lowest priority first, oldest first within a priority: tool units (calls, results, orphan
    results) are low, user and assistant messages are medium, or high when their content contains
    one of ``priority_keywords`` (case-insensitive substring). O(n·w) time for w keywords (the
    content scan) plus O(n log n) for the sort, O(n) space, no extra Redis work.

Compozy implemented these three policies but never called them; its LRU keyed access times by a hash
of role and content in process memory, so identical messages shared one clock and nothing survived a
restart. Here the uses come from the store, keyed by seq.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from enum import IntEnum
from typing import TYPE_CHECKING

from memory_engine.core.units import (
    Unit,
    drop_until_target,
    first_seq,
    group_units,
    is_removable,
    is_tool_unit,
    total_tokens,
    unit_last_used,
)
from memory_engine.errors import ConfigError
from memory_engine.messages import Message, Role
from memory_engine.resources import DEFAULT_PRIORITY_KEYWORDS

if TYPE_CHECKING:
    from memory_engine.resources import EvictionPolicyType

__all__ = [
    "Priority",
    "eviction_order",
    "policy_names",
    "select_evictions",
    "unit_priority",
]


class Priority(IntEnum):
    """How much the ``priority`` policy wants to keep a unit; lower values are evicted first."""

    LOW = 1  # tool calls and tool results: bulky, and re-runnable by the agent
    MEDIUM = 2  # plain user and assistant messages
    HIGH = 3  # user and assistant messages mentioning a priority keyword
    NEVER = 4  # system messages: never evicted


def unit_priority(unit: Unit, keywords: Sequence[str] = DEFAULT_PRIORITY_KEYWORDS) -> Priority:
    """The ``priority`` policy's class for one unit (see :class:`Priority`)."""
    if not is_removable(unit):
        return Priority.NEVER
    if is_tool_unit(unit):
        return Priority.LOW
    # An empty keyword would match every message; it carries no preference, so it is ignored.
    wanted = [k.casefold() for k in keywords if k]
    for message in unit:
        if message.role in (Role.USER, Role.ASSISTANT):
            content = message.content.casefold()
            if any(k in content for k in wanted):
                return Priority.HIGH
    return Priority.MEDIUM


def _fifo(units: list[Unit], _used: Mapping[int, float], _kw: Sequence[str]) -> list[Unit]:
    return units


def _lru(units: list[Unit], used: Mapping[int, float], _kw: Sequence[str]) -> list[Unit]:
    return sorted(units, key=lambda u: (unit_last_used(u, used), first_seq(u)))


def _priority(units: list[Unit], _used: Mapping[int, float], kw: Sequence[str]) -> list[Unit]:
    return sorted(units, key=lambda u: (unit_priority(u, kw), first_seq(u)))


_ORDERS: dict[str, Callable[[list[Unit], Mapping[int, float], Sequence[str]], list[Unit]]] = {
    "fifo": _fifo,
    "lru": _lru,
    "priority": _priority,
}


def policy_names() -> tuple[str, ...]:
    """The policy names :func:`select_evictions` accepts (``EvictionPolicyType`` values), sorted."""
    return tuple(sorted(_ORDERS))


def eviction_order(
    messages: Sequence[Message],
    *,
    policy: EvictionPolicyType | str,
    last_used: Mapping[int, float] | None = None,
    priority_keywords: Sequence[str] = DEFAULT_PRIORITY_KEYWORDS,
) -> list[Unit]:
    """The removable units of ``messages`` (seq order) in the order ``policy`` evicts them.

    Raises :class:`ConfigError` naming the valid policies when ``policy`` is unknown.
    """
    try:
        order = _ORDERS[str(policy)]
    except KeyError:
        valid = ", ".join(policy_names())
        raise ConfigError(
            f"unknown eviction policy {policy!r}; valid: {valid}", field="eviction.policy"
        ) from None
    units = [u for u in group_units(messages) if is_removable(u)]
    return order(units, last_used or {}, priority_keywords)


def select_evictions(
    messages: Sequence[Message],
    *,
    policy: EvictionPolicyType | str,
    max_tokens: int | None,
    max_messages: int | None,
    last_used: Mapping[int, float] | None = None,
    priority_keywords: Sequence[str] = DEFAULT_PRIORITY_KEYWORDS,
) -> frozenset[int]:
    """Seqs to evict from ``messages`` (seq order) so the rest is within both hard limits.

    A limit of ``None`` is no constraint; with both ``None``, or already within them, nothing is
    evicted. Whole units leave in the policy's order and the selection stops as soon as the rest
    fits, so it never evicts more than the order requires. System messages are never selected;
    if the limits cannot be met without them, every other message is selected.
    """
    units = eviction_order(
        messages, policy=policy, last_used=last_used, priority_keywords=priority_keywords
    )
    result = drop_until_target(
        units,
        tokens=total_tokens(messages),
        messages=len(messages),
        target_tokens=max_tokens,
        target_messages=max_messages,
    )
    return result.dropped
