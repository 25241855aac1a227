"""Helpers for integration tests: resources built inline, clients over the private Redis."""

from __future__ import annotations

from typing import Any

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
