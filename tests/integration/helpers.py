"""Helpers for integration tests: resources built inline, clients over the private Redis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from memory_engine.client import MemoryClient
from memory_engine.registry import ResourceRegistry
from memory_engine.resources import parse_resource
from memory_engine.settings import Settings


def resource(rid: str = "conv", **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "resource": "memory",
        "id": rid,
        "type": "token_based",
        "max_tokens": 100_000,
        "persistence": {"ttl": "1h"},
        "default_key_template": "conv:{{ workflow.input.conv }}",
    }
    data.update(fields)
    return data


def client_with(settings: Settings, *resources: dict[str, Any], **overrides: Any) -> MemoryClient:
    registry = ResourceRegistry([parse_resource(r) for r in resources])
    if overrides:
        settings = settings.replace(**overrides)
    return MemoryClient(settings, registry=registry)


def ctx(conv: str, project: str = "p1") -> dict[str, Any]:
    return {"project": {"id": project}, "workflow": {"input": {"conv": conv}}}


def socket_writes(mc: MemoryClient, action: Callable[[], object]) -> int:
    """Run ``action``; return how many socket writes the client's connections made (a pipeline or
    one command is one write: this is how tests count round trips)."""
    conn = mc.redis.connection_pool.get_connection()
    mc.redis.connection_pool.release(conn)
    sends = 0
    original = type(conn).send_packed_command

    def counting(self: redis.Connection, command: object, check_health: bool = True) -> None:
        nonlocal sends
        sends += 1
        original(self, command, check_health)

    type(conn).send_packed_command = counting  # type: ignore[method-assign]
    try:
        action()
    finally:
        type(conn).send_packed_command = original  # type: ignore[method-assign]
    return sends
