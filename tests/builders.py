"""Builders shared by tests: messages for the pure strategy and eviction tests, and resource
YAML for every test that needs a resource."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

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


def resource_yaml(
    resource_id: str,
    *,
    type: str = "message_count_based",
    max_messages: int | None = None,
    max_tokens: int | None = None,
    flushing: dict[str, Any] | None = None,
    ttl: str = "1h",
    key_prefix: str | None = None,
    **fields: Any,
) -> str:
    """One resource document as YAML: the builder every test that needs a resource uses (tests
    of the YAML parser itself write their text inline). The key template renders
    ``<key_prefix or id>:{{ workflow.input.conv }}``; ``fields`` are other resource fields."""
    doc: dict[str, Any] = {"resource": "memory", "id": resource_id, "type": type}
    if max_messages is not None:
        doc["max_messages"] = max_messages
    if max_tokens is not None:
        doc["max_tokens"] = max_tokens
    if flushing is not None:
        doc["flushing"] = flushing
    doc.update(fields)
    doc["persistence"] = {"ttl": ttl}
    doc["default_key_template"] = f"{key_prefix or resource_id}:{{{{ workflow.input.conv }}}}"
    return yaml.safe_dump(doc, sort_keys=False)


def resources_yaml(*documents: str) -> str:
    """Several resource documents in one YAML stream."""
    return "---\n".join(documents)


def fifo(threshold: float = 0.8) -> dict[str, Any]:
    return {"type": "simple_fifo", "summarize_threshold": threshold}


def hybrid(summary_tokens: int, threshold: float = 0.8) -> dict[str, Any]:
    return {
        "type": "hybrid_summary",
        "summarize_threshold": threshold,
        "summary_tokens": summary_tokens,
    }
