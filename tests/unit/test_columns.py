"""Planning columns: stored elements read as headers, decoded only on demand, and the FIFO and
hybrid planners on columns agreeing with the unit-tuple algorithms they replaced."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from memory_engine.core.columns import (
    StoredMessages,
    columns_of,
    messages_with_seqs,
    position_of_seq,
    seq_runs,
)
from memory_engine.core.units import (
    first_seq,
    message_tokens,
    plan_drops,
    seq_of,
    total_tokens,
)
from memory_engine.messages import Message, Role
from memory_engine.resources import MemoryResource
from memory_engine.strategies import (
    FlushPlan,
    HybridSummaryStrategy,
    SimpleFifoStrategy,
    Snapshot,
    Summary,
    group_units,
)

# ---- builders -------------------------------------------------------------------------------


def msg(
    seq: int,
    role: str = "user",
    tokens: int = 10,
    *,
    calls: Sequence[str] = (),
    answers: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> Message:
    return Message(
        role=Role(role),
        content=f"message {seq} with \"quotes\" and a 'k': that is not a key",
        seq=seq,
        token_count=tokens,
        created_at=1_000.0 + seq,
        tool_calls=[
            {"id": c, "type": "function", "function": {"name": "f", "arguments": "{}"}}
            for c in calls
        ]
        or None,
        tool_call_id=answers,
        metadata=metadata or {},
    )


def stored(messages: Sequence[Message]) -> StoredMessages:
    """What the store's snapshot holds: the elements as Redis returns them (bytes)."""
    return StoredMessages([m.to_wire().encode() for m in messages])


def snapshot(messages: Sequence[Message], summary: Summary | None = None) -> Snapshot:
    columns = columns_of(messages)  # not the messages: iterating stored ones decodes them
    return Snapshot(
        key="test:memory",
        messages=messages,
        epoch=1,
        last_seq=max(columns.seqs, default=0),
        token_count=sum(columns.tokens),
        summary=summary,
    )


def resource(data: dict[str, Any]) -> MemoryResource:
    return MemoryResource.model_validate({"resource": "memory", "id": "test", **data})


@st.composite
def conversations(draw: st.DrawFn) -> list[Message]:
    """System/user/assistant messages, tool calls with results (possibly late, missing or
    orphaned), a ``k`` key hidden in metadata now and then; increasing seqs with gaps."""
    messages: list[Message] = []
    declared: list[str] = []
    seq = draw(st.integers(1, 4))
    for index in range(draw(st.integers(0, 30))):
        kind = draw(
            st.sampled_from(["system", "user", "assistant", "call", "result", "orphan", "meta"])
        )
        tokens = draw(st.integers(0, 300))
        if kind == "call":
            ids = [f"call_{index}_{i}" for i in range(draw(st.integers(1, 3)))]
            declared.extend(ids)
            messages.append(msg(seq, "assistant", tokens, calls=ids))
        elif kind == "result":
            answers = draw(st.sampled_from(declared)) if declared else "nobody"
            messages.append(msg(seq, "tool", tokens, answers=answers))
        elif kind == "orphan":
            messages.append(msg(seq, "tool", tokens, answers=f"orphan_{seq}"))
        elif kind == "meta":
            messages.append(msg(seq, "assistant", tokens, metadata={"k": 1, "i": "x"}))
        else:
            messages.append(msg(seq, kind, tokens))
        seq += draw(st.integers(1, 3))
    return messages


@st.composite
def resources(draw: st.DrawFn) -> MemoryResource:
    max_tokens = draw(st.one_of(st.none(), st.integers(50, 6_000)))
    max_messages = draw(st.one_of(st.none(), st.integers(2, 30)))
    if max_tokens is None and max_messages is None:
        max_messages = 10
    data: dict[str, Any] = {
        "type": "buffer",
        "flushing": {
            "type": "hybrid_summary",
            "target_percent": draw(st.sampled_from([0.1, 0.25, 0.5, 0.75])),
            "summarize_oldest_percent": draw(st.sampled_from([0.1, 0.3, 0.5, 0.7, 1.0])),
            "summary_tokens": draw(st.integers(1, (max_tokens or 2_000) // 4)),
        },
    }
    if max_tokens is not None:
        data["max_tokens"] = max_tokens
    if max_messages is not None:
        data["max_messages"] = max_messages
    return resource(data)


summaries = st.one_of(
    st.none(),
    st.builds(
        lambda tokens: Summary(text="earlier", token_count=tokens, summary_point=0),
        st.integers(1, 400),
    ),
)


# ---- reference: the unit-tuple hybrid planner the columns version replaced --------------------


def reference_hybrid(snap: Snapshot, res: MemoryResource) -> FlushPlan:
    target_tokens, target_messages = res.flush_targets()
    previous = snap.summary.token_count if snap.summary else 0
    budget = res.flushing.summary_tokens
    budget = previous if budget is None else budget
    messages = list(snap.messages)
    list_tokens = total_tokens(messages)
    count = len(messages)
    foldable = [m for m in messages if not m.is_system]
    prefix = [0]
    for m in foldable:
        prefix.append(prefix[-1] + message_tokens(m))
    unit_of: dict[int, int] = {}
    size: list[int] = []
    for index, unit in enumerate(group_units(messages)):
        size.append(len(unit))
        for m in unit:
            unit_of[seq_of(m)] = index
    seen, open_units, cuts = [0] * len(size), 0, []
    for k, m in enumerate(foldable, start=1):
        index = unit_of[seq_of(m)]
        open_units += seen[index] == 0
        seen[index] += 1
        open_units -= seen[index] == size[index]
        if open_units == 0:
            cuts.append(k)

    def after(cut: int) -> int:
        return list_tokens - prefix[cut] + (budget if cut else previous)

    def within(cut: int) -> bool:
        return (target_tokens is None or after(cut) <= target_tokens) and (
            target_messages is None or count - cut <= target_messages
        )

    cut = 0
    if cuts:
        share = res.flushing.summarize_oldest_percent * len(foldable)
        cut = min(cuts, key=lambda c: abs(c - share))
        if not within(cut):
            cut = next((c for c in cuts if c > cut and within(c)), cuts[-1])
    return FlushPlan(
        strategy="hybrid_summary",
        summarize=tuple(seq_of(m) for m in foldable[:cut]),
        tokens_before=list_tokens + previous,
        tokens_after=after(cut),
        messages_before=count,
        messages_after=count - cut,
    )


# ---- columns ----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(conversations())
def test_stored_columns_equal_the_decoded_ones(messages: list[Message]) -> None:
    from_headers = columns_of(stored(messages))
    from_messages = columns_of(tuple(messages))
    assert from_headers == from_messages
    assert list(from_headers.seqs) == [m.seq for m in messages]
    # The unit structure is group_units' own.
    units = [
        tuple(from_headers.seqs[i] for i in from_headers.unit_indices(head))
        for head in range(len(messages))
        if head not in from_headers.absorbed
    ]
    assert units == [tuple(seq_of(m) for m in u) for u in group_units(messages)]


def test_plain_snapshot_is_planned_without_decoding_a_message() -> None:
    messages = [msg(1, "system")] + [msg(s, "user" if s % 2 else "assistant") for s in range(2, 60)]
    elements = stored(messages)
    columns = columns_of(elements)
    assert columns.single_units
    assert columns.system[0] and not any(columns.system[1:])
    res = resource({"type": "message_count_based", "max_messages": 40})
    plan = SimpleFifoStrategy().plan(snapshot(elements), res)
    assert plan.drop and elements.decoded == 0
    hybrid = resource(
        {
            "type": "message_count_based",
            "max_messages": 40,
            "flushing": {"type": "hybrid_summary", "summary_tokens": 50},
        }
    )
    assert HybridSummaryStrategy().plan(snapshot(elements), hybrid).summarize
    assert elements.decoded == 0


def test_only_messages_that_can_link_a_unit_are_decoded() -> None:
    messages = [msg(s) for s in range(1, 40)]
    messages[10] = msg(11, "assistant", calls=["c1"])
    messages[12] = msg(13, "tool", answers="c1")
    elements = stored(messages)
    columns = columns_of(elements)
    assert columns.members == {10: (10, 12)} and columns.absorbed == {12}
    assert elements.decoded == 2


def test_a_k_key_in_metadata_costs_a_decode_not_a_wrong_unit() -> None:
    messages = [msg(1, "assistant", metadata={"k": {"k": 1}}), msg(2, "tool", answers="x")]
    elements = stored(messages)
    assert columns_of(elements).single_units
    assert elements.decoded == 2


def test_elements_of_another_layout_fall_back_to_decoding() -> None:
    messages = [
        msg(1),
        msg(2, "system"),
        msg(3, "assistant", calls=["a"]),
        msg(4, "tool", answers="a"),
    ]
    # Same JSON, fields in another order: no header match, so the columns come from decoding.
    reordered = [
        f'{{"r":"{m.role.value}","s":{m.seq},"t":{m.token_count},"c":"x"'.encode()
        + (b',"k":[{"id":"a"}]' if m.tool_calls else b"")
        + (b',"i":"a"' if m.tool_call_id else b"")
        + b"}"
        for m in messages
    ]
    elements = StoredMessages(reordered)
    assert columns_of(elements) == columns_of(tuple(messages))
    assert elements.decoded == len(messages)


def test_str_elements_are_planned_too() -> None:
    messages = [msg(1, "system"), msg(2), msg(3)]
    elements = StoredMessages([m.to_wire() for m in messages])
    assert columns_of(elements) == columns_of(tuple(messages))


def test_stored_messages_behave_as_a_sequence() -> None:
    messages = [msg(s) for s in range(1, 6)]
    elements = stored(messages)
    assert len(elements) == 5
    assert elements[1] == messages[1] and elements[-1] == messages[-1]
    assert elements[1:3] == messages[1:3]
    assert list(elements) == messages
    assert elements.decoded == 5
    assert messages_with_seqs(stored(messages), [2, 4]) == [messages[1], messages[3]]


def test_positions_and_runs() -> None:
    columns = columns_of(tuple(msg(s) for s in (2, 3, 5, 9)))
    assert [position_of_seq(columns, s) for s in (2, 5, 9, 4, 1, 10)] == [0, 2, 3, None, None, None]
    assert seq_runs([]) == []
    assert seq_runs([7]) == [(7, 7)]
    assert seq_runs([5, 1, 2, 3, 9, 8, 2]) == [(1, 3), (5, 5), (8, 9)]


# ---- planners on columns agree with the algorithms on unit tuples -----------------------------


@settings(max_examples=400, deadline=None)
@given(conversations(), resources(), summaries)
def test_fifo_on_columns_equals_the_unit_tuple_plan(
    messages: list[Message], res: MemoryResource, summary: Summary | None
) -> None:
    snap = snapshot(tuple(messages), summary)
    units = sorted(group_units(messages), key=first_seq)
    expected = plan_drops("simple_fifo", snap, res, units, "oldest first")
    assert SimpleFifoStrategy().plan(snap, res) == expected
    assert SimpleFifoStrategy().plan(snapshot(stored(messages), summary), res) == expected


@settings(max_examples=400, deadline=None)
@given(conversations(), resources(), summaries)
def test_hybrid_on_columns_equals_the_unit_tuple_plan(
    messages: list[Message], res: MemoryResource, summary: Summary | None
) -> None:
    expected = reference_hybrid(snapshot(tuple(messages), summary), res)
    for messages_form in (tuple(messages), stored(messages)):
        plan = HybridSummaryStrategy().plan(snapshot(messages_form, summary), res)
        assert (
            plan.summarize,
            plan.tokens_before,
            plan.tokens_after,
            plan.messages_before,
            plan.messages_after,
        ) == (
            expected.summarize,
            expected.tokens_before,
            expected.tokens_after,
            expected.messages_before,
            expected.messages_after,
        )
