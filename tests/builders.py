"""Message builders shared by the pure strategy and eviction tests."""

from __future__ import annotations

from collections.abc import Sequence

from memory_engine.messages import Message, Role


def msg(
    seq: int,
    role: str = "user",
    tokens: int = 10,
    *,
    created_at: float | None = None,
    content: str = "",
    calls: Sequence[str] = (),
    answers: str | None = None,
) -> Message:
    return Message(
        role=Role(role),
        content=content or f"message {seq}",
        seq=seq,
        token_count=tokens,
        created_at=float(seq) if created_at is None else created_at,
        tool_calls=[
            {"id": c, "type": "function", "function": {"name": "f", "arguments": "{}"}}
            for c in calls
        ]
        or None,
        tool_call_id=answers,
    )
