"""Flush strategies: properties over generated conversations, plus crafted access patterns."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_engine.core.units import Unit, first_seq, seq_of, unit_last_used, unit_seqs
from memory_engine.errors import ConfigError
from memory_engine.messages import Message, Role
from memory_engine.resources import FlushingType, MemoryResource
from memory_engine.strategies import (
    FlushPlan,
    HybridSummaryStrategy,
    LruStrategy,
    SimpleFifoStrategy,
    Snapshot,
    Strategy,
    Summary,
    TokenAwareLruStrategy,
    get_strategy,
    group_units,
    strategy_names,
)
from memory_engine.strategies.hybrid import unit_cuts
from memory_engine.strategies.token_lru import gds_priorities
from tests.builders import msg

ALL_STRATEGIES: list[Strategy] = [
    SimpleFifoStrategy(),
    LruStrategy(),
    TokenAwareLruStrategy(),
    HybridSummaryStrategy(),
]
DROPPING = [s for s in ALL_STRATEGIES if s.name != "hybrid_summary"]


# ---- builders -------------------------------------------------------------------------------


def snap(
    messages: Sequence[Message],
    last_used: Mapping[int, float] | None = None,
    summary: Summary | None = None,
) -> Snapshot:
    return Snapshot(
        key="test:memory",
        messages=tuple(messages),
        epoch=1,
        last_seq=max((m.seq or 0 for m in messages), default=0),
        token_count=sum(m.token_count or 0 for m in messages),
        summary=summary,
        last_used=dict(last_used or {}),
    )


def resource(
    *,
    type: str = "buffer",
    max_tokens: int | None = None,
    max_messages: int | None = None,
    target_percent: float = 0.5,
    summarize_oldest_percent: float | None = None,
    summary_tokens: int | None = None,
    flushing_type: str = "simple_fifo",
) -> MemoryResource:
    flushing: dict[str, Any] = {"type": flushing_type, "target_percent": target_percent}
    # The resource schema accepts these two only for hybrid_summary (and requires summary_tokens).
    if summarize_oldest_percent is not None:
        flushing["summarize_oldest_percent"] = summarize_oldest_percent
    if summary_tokens is not None:
        flushing["summary_tokens"] = summary_tokens
    data: dict[str, Any] = {"resource": "memory", "id": "test", "type": type, "flushing": flushing}
    if max_tokens is not None:
        data["max_tokens"] = max_tokens
    if max_messages is not None:
        data["max_messages"] = max_messages
    return MemoryResource.model_validate(data)


def summary_after(plan: FlushPlan, res: MemoryResource, previous: Summary | None) -> int:
    """The summary tokens a plan must count after it: a new summary at its budget when it folds
    anything (the previous summary's size without a budget), else the previous summary."""
    before = previous.token_count if previous else 0
    if not plan.summarize:
        return before
    budget = res.flushing.summary_tokens
    return before if budget is None else budget


# ---- generators -----------------------------------------------------------------------------


@st.composite
def conversations(draw: st.DrawFn) -> tuple[list[Message], dict[int, float]]:
    """A random conversation: system/user/assistant, tool calls with (possibly late or missing)
    results, orphan results; increasing seqs with gaps; uses recorded for a random subset."""
    n = draw(st.integers(0, 28))
    messages: list[Message] = []
    declared: list[str] = []
    seq = draw(st.integers(1, 4))
    clock = 1_000.0
    next_call = 0
    for _ in range(n):
        kind = draw(
            st.sampled_from(["system", "user", "assistant", "call", "result", "result", "orphan"])
        )
        tokens = draw(st.integers(1, 500))
        fields: dict[str, Any] = {}
        role = kind
        if kind == "call":
            role = "assistant"
            k = draw(st.integers(1, 3))
            ids = [f"call_{next_call + i}" for i in range(k)]
            next_call += k
            declared.extend(ids)
            fields["calls"] = ids
        elif kind == "result":
            role = "tool"
            fields["answers"] = draw(st.sampled_from(declared)) if declared else "nobody"
        elif kind == "orphan":
            role = "tool"
            fields["answers"] = f"orphan_{seq}"
        messages.append(msg(seq, role, tokens, created_at=clock, **fields))
        seq += draw(st.integers(1, 3))
        clock += draw(st.floats(0.0, 60.0))
    seqs = [seq_of(m) for m in messages]
    used: set[int] = draw(st.sets(st.sampled_from(seqs))) if seqs else set()
    last_used = {s: draw(st.floats(1_000.0, clock + 500.0)) for s in sorted(used)}
    return messages, last_used


summaries = st.builds(
    lambda tokens: Summary(text="earlier", token_count=tokens, summary_point=0, covered_count=3),
    st.integers(1, 400),
)


@st.composite
def resources(draw: st.DrawFn) -> MemoryResource:
    kind = draw(st.sampled_from(["token_based", "message_count_based", "buffer"]))
    max_tokens = draw(st.integers(50, 8_000)) if kind != "message_count_based" else None
    max_messages = draw(st.integers(2, 40)) if kind != "token_based" else None
    if kind == "buffer" and draw(st.booleans()):
        # A buffer may set only one of the two limits.
        if draw(st.booleans()):
            max_tokens = None
        else:
            max_messages = None
    # Any strategy may run on any resource (flush(strategy=...)), so the configured type is drawn
    # independently of the strategy under test.
    flushing_type = draw(st.sampled_from([t.value for t in FlushingType]))
    hybrid = flushing_type == FlushingType.HYBRID_SUMMARY
    return resource(
        type=kind,
        max_tokens=max_tokens,
        max_messages=max_messages,
        target_percent=draw(st.sampled_from([0.1, 0.25, 0.5, 0.6, 0.75])),
        summarize_oldest_percent=(
            draw(st.sampled_from([0.1, 0.3, 0.5, 0.7, 1.0])) if hybrid else None
        ),
        summary_tokens=draw(st.integers(1, (max_tokens or 2_000) // 4)) if hybrid else None,
        flushing_type=flushing_type,
    )


# ---- invariants checked for every plan --------------------------------------------------------


def check_invariants(plan: FlushPlan, snapshot: Snapshot, res: MemoryResource) -> None:
    by_seq = {m.seq: m for m in snapshot.messages}
    removed = plan.removed
    assert removed <= by_seq.keys(), "named a seq that is not in the snapshot"
    assert not plan.drop & frozenset(plan.summarize)
    assert len(set(plan.summarize)) == len(plan.summarize)
    assert list(plan.summarize) == sorted(plan.summarize)
    assert not any(by_seq[s].is_system for s in removed), "named a system message"
    # Tool units whole, checked without group_units: a result goes iff the call it answers goes.
    declared_by: dict[str, int] = {}
    for m in snapshot.messages:
        if m.role is Role.TOOL and m.tool_call_id in declared_by:
            assert (m.seq in removed) == (declared_by[m.tool_call_id] in removed)
        for call in m.tool_calls or ():
            declared_by[call["id"]] = seq_of(m)
    for unit in group_units(snapshot.messages):
        seqs = unit_seqs(unit)
        assert seqs <= removed or not seqs & removed

    kept = [m for m in snapshot.messages if m.seq not in removed]
    kept_tokens = sum(m.token_count or 0 for m in kept)
    previous = snapshot.summary.token_count if snapshot.summary else 0
    after = summary_after(plan, res, snapshot.summary)
    assert plan.tokens_before == sum(m.token_count or 0 for m in snapshot.messages) + previous
    assert plan.summary_tokens_before == previous
    assert plan.summary_tokens_after == after
    assert plan.messages_before == len(snapshot.messages)
    assert plan.tokens_after == kept_tokens + after
    assert plan.messages_after == len(kept)
    target_tokens, target_messages = res.flush_targets()
    assert (plan.target_tokens, plan.target_messages) == (target_tokens, target_messages)

    # Reachable without touching system messages: then the survivors must be within target.
    system = [m for m in snapshot.messages if m.is_system]
    # What is left when everything removable is removed: system messages and the summary (for
    # hybrid, the new one when there was anything to fold).
    floor_tokens = sum(m.token_count or 0 for m in system) + previous
    if plan.strategy == "hybrid_summary" and len(system) < len(snapshot.messages):
        budget = res.flushing.summary_tokens
        floor_tokens += 0 if budget is None else budget - previous
    reachable = (target_tokens is None or floor_tokens <= target_tokens) and (
        target_messages is None or len(system) <= target_messages
    )
    within = (target_tokens is None or plan.tokens_after <= target_tokens) and (
        target_messages is None or plan.messages_after <= target_messages
    )
    if reachable:
        assert within, plan.reason
    else:
        assert "unreachable" in plan.reason
        # It removed everything it may.
        assert len(removed) == len(snapshot.messages) - len(system)


@pytest.mark.parametrize("strategy", ALL_STRATEGIES, ids=lambda s: s.name)
@settings(max_examples=150, deadline=None)
@given(data=conversations(), res=resources(), summary=st.none() | summaries)
def test_plan_invariants(
    strategy: Strategy,
    data: tuple[list[Message], dict[int, float]],
    res: MemoryResource,
    summary: Summary | None,
) -> None:
    messages, last_used = data
    snapshot = snap(messages, last_used, summary)
    plan = strategy.plan(snapshot, res)
    assert plan.strategy == strategy.name
    check_invariants(plan, snapshot, res)
    # Deterministic: the same input, and the same uses in another dict order, give the same plan.
    assert strategy.plan(snapshot, res) == plan
    shuffled = list(last_used.items())
    random.Random(0).shuffle(shuffled)
    assert strategy.plan(snap(messages, dict(shuffled), summary), res) == plan
    if strategy.name == "hybrid_summary":
        assert not plan.drop
    else:
        assert not plan.summarize


@settings(max_examples=150, deadline=None)
@given(data=conversations(), res=resources())
def test_drop_orders(data: tuple[list[Message], dict[int, float]], res: MemoryResource) -> None:
    """Each dropping strategy removes a prefix of its own order: nothing kept ranks first."""
    messages, last_used = data
    snapshot = snap(messages, last_used)
    units = [u for u in group_units(messages) if not u[0].is_system]
    priority = gds_priorities(group_units(messages), last_used)
    keys: dict[str, Callable[[Unit], tuple[float, ...]]] = {
        "simple_fifo": lambda u: (first_seq(u),),
        "lru": lambda u: (unit_last_used(u, last_used), first_seq(u)),
        "token_aware_lru": lambda u: (
            priority[first_seq(u)],
            unit_last_used(u, last_used),
            first_seq(u),
        ),
    }
    for strategy in DROPPING:
        plan = strategy.plan(snapshot, res)
        key = keys[strategy.name]
        dropped = [key(u) for u in units if unit_seqs(u) <= plan.drop]
        kept = [key(u) for u in units if not unit_seqs(u) & plan.drop]
        if dropped and kept:
            assert max(dropped) < min(kept), strategy.name
        # Greedy stop: one unit fewer and the memory would still be over target.
        if dropped:
            last = next(
                u for u in sorted(units, key=key, reverse=True) if unit_seqs(u) <= plan.drop
            )
            target_tokens, target_messages = res.flush_targets()
            tokens_then = plan.tokens_after + sum(m.token_count or 0 for m in last)
            messages_then = plan.messages_after + len(last)
            assert (target_tokens is not None and tokens_then > target_tokens) or (
                target_messages is not None and messages_then > target_messages
            )


@settings(max_examples=150, deadline=None)
@given(data=conversations(), res=resources())
def test_hybrid_folds_a_prefix_of_at_least_the_share(
    data: tuple[list[Message], dict[int, float]], res: MemoryResource
) -> None:
    messages, _ = data
    plan = HybridSummaryStrategy().plan(snap(messages), res)
    foldable = [m.seq for m in messages if not m.is_system]
    assert list(plan.summarize) == foldable[: len(plan.summarize)]
    cuts = unit_cuts(messages)
    if cuts:
        share = res.flushing.summarize_oldest_percent * len(foldable)
        closest = min(cuts, key=lambda c: abs(c - share))
        assert len(plan.summarize) >= closest >= cuts[0]
        assert len(plan.summarize) in cuts
    else:
        assert plan.is_noop


# ---- units ----------------------------------------------------------------------------------


def test_group_units_joins_calls_with_their_results() -> None:
    messages = [
        msg(1, "system"),
        msg(2, "user"),
        msg(3, "assistant", calls=["a", "b"]),
        msg(4, "tool", answers="a"),
        msg(5, "tool", answers="b"),
        msg(6, "tool", answers="zzz"),  # orphan: a unit of one
        msg(7, "assistant", calls=["c"]),
        msg(8, "user"),
        msg(9, "tool", answers="c"),  # late result still joins its call
    ]
    units = [[m.seq for m in u] for u in group_units(messages)]
    assert units == [[1], [2], [3, 4, 5], [6], [7, 9], [8]]


def test_get_strategy_names_match_the_resource_enum() -> None:
    assert set(strategy_names()) == {t.value for t in FlushingType}
    for flushing_type in FlushingType:
        assert get_strategy(flushing_type).name == flushing_type.value
        assert get_strategy(flushing_type.value).name == flushing_type.value


def test_get_strategy_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        get_strategy("most_recently_used")
    for name in strategy_names():
        assert name in str(info.value)


# ---- crafted access patterns ----------------------------------------------------------------


def test_lru_drops_what_was_not_read_while_fifo_drops_the_oldest() -> None:
    # Ten equal messages; context() recently returned the four oldest (say, pinned facts).
    messages = [msg(1, "system", 10)] + [msg(s, "user", 10) for s in range(2, 12)]
    used = {2: 100.0, 3: 100.0, 4: 100.0, 5: 100.0}
    res = resource(type="message_count_based", max_messages=10)  # target: 5 messages
    fifo = SimpleFifoStrategy().plan(snap(messages, used), res)
    lru = LruStrategy().plan(snap(messages, used), res)
    assert fifo.drop == {2, 3, 4, 5, 6, 7}
    assert lru.drop == {6, 7, 8, 9, 10, 11}
    assert lru.messages_after == fifo.messages_after == 5


def test_lru_without_uses_is_fifo() -> None:
    messages = [msg(s, "user", 10 * s) for s in range(1, 12)]
    res = resource(type="token_based", max_tokens=400)
    assert LruStrategy().plan(snap(messages), res).drop == (
        SimpleFifoStrategy().plan(snap(messages), res).drop
    )


def test_lru_unit_is_as_recent_as_its_most_recent_message() -> None:
    messages = [
        msg(1, "assistant", calls=["x"]),
        msg(2, "tool", answers="x"),
        msg(3, "user"),
        msg(4, "user"),
    ]
    res = resource(type="message_count_based", max_messages=4)  # target: 2
    plan = LruStrategy().plan(snap(messages, {2: 50.0}), res)
    assert plan.drop == {3, 4}


def test_token_aware_lru_drops_a_large_stale_unit_before_small_recent_ones() -> None:
    # seq 2 is an old 400-token tool dump nobody read; 3..7 are small and were used recently.
    messages = [
        msg(1, "system", 20),
        msg(2, "assistant", 10, calls=["dump"]),
        msg(3, "tool", 400, answers="dump"),
        *[msg(s, "user", 30) for s in range(4, 9)],
        msg(9, "user", 30),
    ]
    used = {s: 100.0 + s for s in range(4, 9)}
    res = resource(type="token_based", max_tokens=800)  # target: 400 tokens; total 610
    lru = LruStrategy().plan(snap(messages, used), res)
    token_lru = TokenAwareLruStrategy().plan(snap(messages, used), res)
    fifo = SimpleFifoStrategy().plan(snap(messages, used), res)
    assert token_lru.drop == {2, 3}
    assert token_lru.tokens_after == 200
    # FIFO and LRU also start with the dump here (it is the oldest); see the next test for where
    # they part ways.
    assert fifo.drop == lru.drop == {2, 3}


def test_token_aware_lru_differs_from_fifo_and_lru() -> None:
    # seq 2: small and the oldest; seq 3: large, used a while ago; 4..9: small, used recently.
    messages = [
        msg(2, "user", 20),
        msg(3, "user", 400),
        *[msg(s, "user", 20) for s in range(4, 10)],
    ]
    used = {3: 50.0, **{s: 100.0 + s for s in range(4, 10)}}
    res = resource(type="token_based", max_tokens=1_000)  # target: 500; total 540
    fifo = SimpleFifoStrategy().plan(snap(messages, used), res).drop
    lru = LruStrategy().plan(snap(messages, used), res).drop
    token_lru = TokenAwareLruStrategy().plan(snap(messages, used), res).drop
    assert fifo == {2, 3}  # oldest first: the small seq 2, then still over, seq 3
    assert lru == {2, 3}  # seq 2 (never used, created at 2.0) is the least recent
    assert token_lru == {3}  # the large stale message alone frees enough
    assert token_lru != fifo and token_lru != lru

    # And with recency reversed against FIFO: LRU keeps the old-but-used seq 2.
    used2 = {2: 500.0, 3: 50.0, **{s: 100.0 + s for s in range(4, 10)}}
    res2 = resource(type="message_count_based", max_messages=10)  # target: 5 of 8
    fifo2 = SimpleFifoStrategy().plan(snap(messages, used2), res2).drop
    lru2 = LruStrategy().plan(snap(messages, used2), res2).drop
    assert fifo2 == {2, 3, 4}
    assert lru2 == {3, 4, 5}


def test_token_aware_lru_with_equal_sizes_is_lru() -> None:
    messages = [msg(s, "user", 25) for s in range(1, 13)]
    used = {1: 90.0, 5: 80.0, 7: 95.0, 12: 10.0}
    res = resource(type="token_based", max_tokens=300)
    assert TokenAwareLruStrategy().plan(snap(messages, used), res).drop == (
        LruStrategy().plan(snap(messages, used), res).drop
    )


def test_unreachable_target_drops_everything_but_system() -> None:
    messages = [msg(1, "system", 900), msg(2, "user", 10), msg(3, "assistant", 10)]
    res = resource(type="token_based", max_tokens=1_000)  # target 500 < system alone
    for strategy in DROPPING:
        plan = strategy.plan(snap(messages), res)
        assert plan.drop == {2, 3}
        assert "unreachable" in plan.reason


def test_within_target_is_a_noop() -> None:
    messages = [msg(1, "user", 10), msg(2, "user", 10)]
    res = resource(type="token_based", max_tokens=1_000)
    for strategy in DROPPING:
        plan = strategy.plan(snap(messages), res)
        assert plan.is_noop
        assert plan.tokens_after == plan.tokens_before == 20


# ---- hybrid ---------------------------------------------------------------------------------


def hybrid(**kwargs: Any) -> MemoryResource:
    kwargs.setdefault("summary_tokens", 100)
    return resource(flushing_type="hybrid_summary", **kwargs)


def test_hybrid_folds_the_oldest_half_of_non_system_messages() -> None:
    messages = [msg(1, "system", 50)] + [
        msg(s, "user" if s % 2 else "assistant", 20) for s in range(2, 12)
    ]
    plan = HybridSummaryStrategy().plan(
        snap(messages), hybrid(type="token_based", max_tokens=2_000)
    )
    assert plan.summarize == (2, 3, 4, 5, 6)
    assert not plan.drop
    assert plan.tokens_after == 50 + 5 * 20 + 100
    assert plan.summary_tokens_after == 100
    assert plan.messages_after == 6


def test_hybrid_rounds_to_whole_units() -> None:
    # 6 non-system messages, 50% = 3, but 3..5 are one tool unit: the cut can be 2 or 5, not 3.
    messages = [
        msg(1, "user"),
        msg(2, "user"),
        msg(3, "assistant", calls=["a", "b"]),
        msg(4, "tool", answers="a"),
        msg(5, "tool", answers="b"),
        msg(6, "user"),
    ]
    res = hybrid(type="message_count_based", max_messages=100)
    assert HybridSummaryStrategy().plan(snap(messages), res).summarize == (1, 2)


def test_hybrid_never_leaves_an_unfolded_message_behind_the_summary_point() -> None:
    # The call at 2 is answered at 4, after the user message 3: folding {2, 4} alone would leave
    # 3 below the summary point, so the cut takes 2..4 whole.
    messages = [
        msg(1, "user"),
        msg(2, "assistant", calls=["a"]),
        msg(3, "user"),
        msg(4, "tool", answers="a"),
        msg(5, "user"),
        msg(6, "user"),
    ]
    res = hybrid(type="message_count_based", max_messages=100)  # 50% of 6: 3, closest cut 4
    assert unit_cuts(messages) == [1, 4, 5, 6]
    assert HybridSummaryStrategy().plan(snap(messages), res).summarize == (1, 2, 3, 4)


def test_hybrid_folds_at_least_one_unit() -> None:
    messages = [msg(1, "assistant", calls=["a"]), msg(2, "tool", answers="a"), msg(3, "user")]
    res = hybrid(type="message_count_based", max_messages=100, summarize_oldest_percent=0.1)
    assert HybridSummaryStrategy().plan(snap(messages), res).summarize == (1, 2)


def test_hybrid_extends_the_fold_to_reach_the_target() -> None:
    # The newest messages are large: folding 50% by count leaves 3 x 300 tokens > 500 target.
    messages = [msg(s, "user", 10) for s in range(1, 4)] + [
        msg(s, "user", 300) for s in range(4, 7)
    ]
    res = hybrid(type="token_based", max_tokens=1_000, summary_tokens=50)
    plan = HybridSummaryStrategy().plan(snap(messages), res)
    assert plan.summarize == (1, 2, 3, 4, 5)
    assert plan.tokens_after == 300 + 50
    assert "extended" in plan.reason


def test_hybrid_with_a_previous_summary_plans_over_messages_only() -> None:
    previous = Summary(text="earlier", token_count=80, summary_point=10, covered_count=10)
    messages = [msg(s, "user", 10) for s in range(11, 21)]
    res = hybrid(type="token_based", max_tokens=10_000)
    plan = HybridSummaryStrategy().plan(snap(messages, summary=previous), res)
    assert plan.summarize == (11, 12, 13, 14, 15)
    assert plan.tokens_before == 100 + 80
    assert plan.tokens_after == 50 + 100  # the new summary replaces the old one
    assert (plan.summary_tokens_before, plan.summary_tokens_after) == (80, 100)


def test_hybrid_on_a_resource_without_summary_tokens_budgets_the_previous_summary() -> None:
    previous = Summary(text="earlier", token_count=80, summary_point=10, covered_count=10)
    messages = [msg(s, "user", 10) for s in range(11, 21)]
    res = resource(type="token_based", max_tokens=10_000)  # configured for simple_fifo
    plan = HybridSummaryStrategy().plan(snap(messages, summary=previous), res)
    assert plan.summarize == (11, 12, 13, 14, 15)
    assert plan.tokens_after == 50 + 80


def test_hybrid_without_foldable_messages_is_a_noop() -> None:
    res = resource(type="token_based", max_tokens=100)
    plan = HybridSummaryStrategy().plan(snap([msg(1, "system", 90)]), res)
    assert plan.is_noop
    assert "unreachable" in plan.reason


def test_drop_strategies_count_the_summary_toward_the_target() -> None:
    # 400 list tokens + a 200-token summary against a 500 target: 100 must go, not 0.
    previous = Summary(text="earlier", token_count=200, summary_point=0, covered_count=4)
    messages = [msg(s, "user", 50) for s in range(1, 9)]
    res = resource(type="token_based", max_tokens=1_000)
    for strategy in DROPPING:
        plan = strategy.plan(snap(messages, summary=previous), res)
        assert plan.drop == {1, 2}, strategy.name
        assert plan.tokens_after == 500
