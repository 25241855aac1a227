"""Hard-limit eviction policies: properties over generated conversations, plus crafted examples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_engine.core.units import first_seq, seq_of, unit_seqs
from memory_engine.engine.eviction import (
    Priority,
    eviction_order,
    policy_names,
    select_evictions,
    unit_priority,
)
from memory_engine.errors import ConfigError
from memory_engine.messages import Message, Role
from memory_engine.resources import DEFAULT_PRIORITY_KEYWORDS, EvictionPolicyType
from memory_engine.strategies import group_units
from tests.builders import msg

POLICIES = [p.value for p in EvictionPolicyType]


@st.composite
def conversations(draw: st.DrawFn) -> tuple[list[Message], dict[int, float]]:
    """Random conversations (the same shape as in test_strategies, kept local so the two test
    modules stay independent): tool calls with late, duplicate or missing results, orphan
    results, increasing seqs with gaps, uses recorded for a random subset."""
    n = draw(st.integers(0, 28))
    messages: list[Message] = []
    declared: list[str] = []
    seq, clock = draw(st.integers(1, 4)), 1_000.0
    for _ in range(n):
        kind = draw(st.sampled_from(["system", "user", "assistant", "call", "result", "orphan"]))
        fields: dict[str, Any] = {"content": draw(st.sampled_from(["", "an ERROR", "key point"]))}
        role = {"call": "assistant", "result": "tool", "orphan": "tool"}.get(kind, kind)
        if kind == "call":
            ids = [f"c{seq}_{i}" for i in range(draw(st.integers(1, 3)))]
            declared.extend(ids)
            fields["calls"] = ids
        elif kind == "result":
            fields["answers"] = draw(st.sampled_from(declared)) if declared else "nobody"
        elif kind == "orphan":
            fields["answers"] = f"orphan_{seq}"
        messages.append(msg(seq, role, draw(st.integers(1, 500)), created_at=clock, **fields))
        seq += draw(st.integers(1, 3))
        clock += draw(st.floats(0.0, 60.0))
    seqs = [seq_of(m) for m in messages]
    used: set[int] = draw(st.sets(st.sampled_from(seqs))) if seqs else set()
    return messages, {s: draw(st.floats(1_000.0, clock + 500.0)) for s in sorted(used)}


limits = st.tuples(st.none() | st.integers(0, 6_000), st.none() | st.integers(0, 30))
keywords = st.lists(st.sampled_from(["error", "KEY", "urgent", "message 1"]), max_size=3)


def within(messages: Sequence[Message], max_tokens: int | None, max_messages: int | None) -> bool:
    tokens = sum(m.token_count or 0 for m in messages)
    return (max_tokens is None or tokens <= max_tokens) and (
        max_messages is None or len(messages) <= max_messages
    )


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=200, deadline=None)
@given(data=conversations(), bounds=limits, words=keywords)
def test_eviction_invariants(
    policy: str,
    data: tuple[list[Message], dict[int, float]],
    bounds: tuple[int | None, int | None],
    words: list[str],
) -> None:
    messages, last_used = data
    max_tokens, max_messages = bounds

    def select() -> frozenset[int]:
        return select_evictions(
            messages,
            policy=policy,
            max_tokens=max_tokens,
            max_messages=max_messages,
            last_used=last_used,
            priority_keywords=words,
        )

    evicted = select()
    assert select() == evicted  # deterministic
    by_seq = {m.seq: m for m in messages}
    assert evicted <= by_seq.keys()
    assert not any(by_seq[s].is_system for s in evicted)
    for unit in group_units(messages):
        assert unit_seqs(unit) <= evicted or not unit_seqs(unit) & evicted
    remaining = [m for m in messages if m.seq not in evicted]
    system = [m for m in messages if m.is_system]
    if within(system, max_tokens, max_messages):
        assert within(remaining, max_tokens, max_messages)
    else:
        assert remaining == system
    if within(messages, max_tokens, max_messages):
        assert not evicted

    # Evicted units are a prefix of the policy's order, and the last one was needed.
    order = eviction_order(messages, policy=policy, last_used=last_used, priority_keywords=words)
    flags = [unit_seqs(u) <= evicted for u in order]
    assert flags == sorted(flags, reverse=True)
    taken = [u for u, f in zip(order, flags, strict=True) if f]
    if taken:
        assert not within(remaining + list(taken[-1]), max_tokens, max_messages)


def test_policy_names_match_the_resource_enum() -> None:
    assert set(policy_names()) == set(POLICIES)


def test_unknown_policy_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        select_evictions([], policy="random", max_tokens=1, max_messages=None)
    for name in policy_names():
        assert name in str(info.value)


def test_no_limits_evicts_nothing() -> None:
    messages = [msg(s, "user", 100) for s in range(1, 5)]
    for policy in POLICIES:
        assert not select_evictions(messages, policy=policy, max_tokens=None, max_messages=None)


def test_fifo_evicts_oldest_units_whole() -> None:
    messages = [
        msg(1, "system", 5),
        msg(2, "assistant", 5, calls=["a"]),
        msg(3, "user", 5),
        msg(4, "tool", 5, answers="a"),
        msg(5, "user", 5),
    ]
    # Two messages must go; the oldest unit is {2, 4}.
    got = select_evictions(messages, policy="fifo", max_tokens=None, max_messages=3)
    assert got == {2, 4}


def test_lru_and_fifo_differ_on_a_crafted_pattern() -> None:
    messages = [msg(s, "user", 10) for s in range(1, 9)]
    used = {1: 100.0, 2: 100.0, 3: 100.0}  # the oldest three were just read
    fifo = select_evictions(messages, policy="fifo", max_tokens=50, max_messages=None)
    lru = select_evictions(
        messages, policy=EvictionPolicyType.LRU, max_tokens=50, max_messages=None, last_used=used
    )
    assert fifo == {1, 2, 3}
    assert lru == {4, 5, 6}


def test_priority_keeps_keyword_messages_over_plain_ones() -> None:
    messages = [
        msg(1, "system", 10),
        msg(2, "user", 10, content="The deploy FAILED with an Error"),
        msg(3, "assistant", 10, content="I see, let me check."),
        msg(4, "user", 10, content="This is urgent"),
        msg(5, "assistant", 10, content="Looking now."),
    ]
    got = select_evictions(messages, policy="priority", max_tokens=None, max_messages=3)
    assert got == {3, 5}
    # FIFO would have taken the keyword message.
    assert select_evictions(messages, policy="fifo", max_tokens=None, max_messages=3) == {2, 3}


def test_priority_drops_tool_units_first() -> None:
    messages = [
        msg(1, "user", 10, content="plain question"),
        msg(2, "assistant", 10, content="important: calling a tool", calls=["t1"]),
        msg(3, "tool", 300, answers="t1"),
        msg(4, "tool", 20, answers="ghost"),  # orphan result: low too
        msg(5, "assistant", 10, content="plain answer"),
    ]
    got = select_evictions(messages, policy="priority", max_tokens=None, max_messages=3)
    assert got == {2, 3}  # the oldest low unit is enough
    got = select_evictions(messages, policy="priority", max_tokens=None, max_messages=2)
    assert got == {2, 3, 4}
    got = select_evictions(messages, policy="priority", max_tokens=None, max_messages=1)
    assert got == {1, 2, 3, 4}  # then medium, oldest first


def test_unit_priority_classes() -> None:
    units = group_units(
        [
            msg(1, "system", content="important system rule"),
            msg(2, "user", content="a KEY fact"),
            msg(3, "user", content="hello"),
            msg(4, "assistant", calls=["x"], content="error handling"),
            msg(5, "tool", answers="x"),
        ]
    )
    got = {first_seq(u): unit_priority(u, DEFAULT_PRIORITY_KEYWORDS) for u in units}
    assert got == {1: Priority.NEVER, 2: Priority.HIGH, 3: Priority.MEDIUM, 4: Priority.LOW}


def test_empty_keywords_match_nothing() -> None:
    (unit,) = group_units([msg(1, "user", content="anything")])
    assert unit_priority(unit, ["", ""]) is Priority.MEDIUM


def test_system_messages_are_never_evicted_even_when_over_the_limit() -> None:
    messages = [msg(1, "system", 500), msg(2, "user", 10), msg(3, "system", 500)]
    for policy in POLICIES:
        got = select_evictions(messages, policy=policy, max_tokens=100, max_messages=1)
        assert got == {2}


def test_role_enum_covers_the_priority_classes() -> None:
    # A new role would need a priority decision; fail loudly rather than default silently.
    assert {r.value for r in Role} == {"system", "user", "assistant", "tool"}
