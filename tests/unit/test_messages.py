"""The stored wire format (memory_engine/messages.py): the direct formatting of a plain message
must give exactly the bytes the JSON encoder gives, and every stored form must decode back."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memory_engine.errors import CorruptMessage, MessageValidationError, StoreError
from memory_engine.messages import (
    MAX_NESTING_DEPTH,
    Message,
    Role,
    check_nesting_depth,
    coerce_message,
)

texts = st.text(min_size=1, max_size=300)  # any code point, lone surrogates, controls, quotes


def encoder_form(message: Message, tokens: int, created_at: float) -> str:
    body: dict[str, Any] = {
        "t": tokens,
        "r": message.role.value,
        "c": message.content,
        "ts": int(created_at * 1000),
    }
    for key, value in (
        ("n", message.name),
        ("i", message.tool_call_id),
        ("k", message.tool_calls),
        ("m", message.metadata),
    ):
        if value:
            body[key] = value
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


@given(
    role=st.sampled_from(list(Role)),
    content=texts,
    tokens=st.integers(min_value=0, max_value=10**9),
    created_at=st.floats(min_value=0, max_value=4e9),
)
def test_plain_message_body_is_what_the_encoder_writes(
    role: Role, content: str, tokens: int, created_at: float
) -> None:
    message = Message(role=role, content=content)
    assert message.wire_body(tokens, created_at) == encoder_form(message, tokens, created_at)


@given(
    content=texts,
    name=st.none() | texts,
    metadata=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=20), max_size=3),
)
def test_stored_form_decodes_back(content: str, name: str | None, metadata: dict[str, Any]) -> None:
    message = Message(
        role=Role.USER, content=content, name=name, metadata=metadata, seq=7, token_count=3
    )
    body = message.wire_body(3, 12.5)
    assert body == encoder_form(message, 3, 12.5)
    back = Message.from_wire(message.to_wire())
    assert (back.content, back.name, back.metadata, back.seq, back.token_count) == (
        content,
        name,
        metadata,
        7,
        3,
    )


# ---- nesting cap and corrupt stored elements ----------------------------------------------


def deep_list(depth: int) -> list[Any]:
    root: list[Any] = []
    node = root
    for _ in range(depth - 1):
        child: list[Any] = []
        node.append(child)
        node = child
    return root


def test_nesting_depth_counts_the_field_as_level_one() -> None:
    check_nesting_depth(deep_list(MAX_NESTING_DEPTH), "metadata")
    with pytest.raises(MessageValidationError, match="metadata is nested more than 32"):
        check_nesting_depth(deep_list(MAX_NESTING_DEPTH + 1), "metadata")


def test_nesting_check_never_recurses() -> None:
    # Far beyond the recursion limit, and a cycle: refused, not RecursionError or a hang.
    with pytest.raises(MessageValidationError):
        check_nesting_depth(deep_list(100_000), "tool_calls")
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    with pytest.raises(MessageValidationError):
        coerce_message({"role": "user", "content": "x", "metadata": cyclic})


def test_shared_containers_are_walked_once_per_depth() -> None:
    shared: list[Any] = []
    for _ in range(MAX_NESTING_DEPTH - 1):  # 2**31 paths, 31 containers
        shared = [shared, shared]
    check_nesting_depth(shared, "metadata")


def test_deep_message_object_is_refused_too() -> None:
    built = Message.model_construct(role=Role.USER, content="x", metadata={"a": deep_list(40)})
    with pytest.raises(MessageValidationError):
        coerce_message(built)


@pytest.mark.parametrize(
    ("raw", "seq"),
    [
        ('{"s":7,"t":1,"r":"user","c":"secret text", "broken', 7),
        ('{"s":8,"t":1,"r":"wizard","c":"secret text","ts":1}', 8),
        ('{"s":9,"t":1,"r":"user","ts":1}', 9),
        ('{"s":10,"t":1,"r":"user","c":["secret text"],"ts":1}', 10),
        ('{"s":11,"t":1,"r":"user","c":"secret text","m":"secret text"}', 11),
        ('{"s":12,"t":1,"r":"user","c":"x","m":' + "[" * 5000 + "]" * 5000 + "}", 12),
        ('{"s":13,"t":1,"r":"user","c":"x","m":{"a":' + "[" * 500 + "]" * 500 + "}}", 13),
        (b'{"s":14,"t":1,"r":"user","c":"\xff"}', 14),
        ('["secret text"]', None),
        ("not json at all: secret text", None),
    ],
)
def test_undecodable_stored_message_is_corrupt_message(raw: str | bytes, seq: int | None) -> None:
    with pytest.raises(CorruptMessage) as caught:
        Message.from_wire(raw, memory_id="p1:conv:c1")
    error = caught.value
    assert isinstance(error, StoreError)
    assert (error.memory_id, error.seq) == ("p1:conv:c1", seq)
    assert "p1:conv:c1" in str(error) and f"seq={seq}" in str(error)
    assert "secret" not in str(error) and "wizard" not in str(error)
    assert error.__cause__ is None  # foreign messages can quote stored data
