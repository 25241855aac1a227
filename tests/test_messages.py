"""The stored wire format (memory_engine/messages.py): the direct formatting of a plain message
must give exactly the bytes the JSON encoder gives, and every stored form must decode back."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from memory_engine.messages import Message, Role

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
