"""Data subjects without I/O: what an export yields per memory, what an erasure reports and
records (``docs/data-protection.md``). The store reads and deletes; these decide the shapes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel, ConfigDict

from memory_engine.core.commands import (
    decode_archive,
    decode_messages,
    stats_from_metadata,
    summary_from_hash,
)

if TYPE_CHECKING:
    from memory_engine.resources import MemoryResource

__all__ = [
    "ERASURE_LOG_MAX_ENTRIES",
    "ERASURE_MAX_PASSES",
    "ErasureReport",
    "MemoryDump",
    "erasure_record",
    "export_record",
    "is_live_memory",
]

ERASURE_LOG_MAX_ENTRIES: Final[int] = 10_000
"""Erasure records kept in ``<prefix>:erasures`` (newest first; older ones are trimmed)."""
ERASURE_MAX_PASSES: Final[int] = 8
"""Most reads of a subject's index one erasure makes: it reads again until a read finds no
memory it has not erased yet (memories created while it ran)."""


class ErasureReport(BaseModel):
    """What :meth:`~memory_engine.client.MemoryClient.erase_subject` removed. ``memories``:
    memories that held data; ``keys_deleted``: Redis keys deleted (the subject's index
    included); ``finished_at``: unix time, seconds. No content and no raw subject."""

    model_config = ConfigDict(frozen=True)

    memories: int
    keys_deleted: int
    finished_at: float
    project_id: str
    subject_hash: str
    passes: int = 1


class MemoryDump(BaseModel):
    """One memory as the store read it in one MULTI, before it is shaped for export."""

    model_config = ConfigDict(frozen=True)

    memory_id: str
    messages: list[Any]
    meta: dict[str, str]
    summary: dict[str, str]
    archive: list[Any]
    ttl_s: int
    flush_pending: bool


def is_live_memory(meta: dict[str, str]) -> bool:
    """A memory with data: metadata, not an erasure tombstone."""
    return bool(meta) and "erased" not in meta and "created_at" in meta


def export_record(dump: MemoryDump, resource: MemoryResource | None) -> dict[str, Any]:
    """The JSON-ready dict ``export_subject`` yields for one memory: its id, project, resource,
    stats (``None`` when its resource is no longer loaded), summary, messages and archive (each
    archived message with ``metadata.archive = {"reason", "archived_at"}``)."""
    project_id = dump.memory_id.split(":", 1)[0]
    stats = None
    if resource is not None:
        stats = stats_from_metadata(
            resource, dump.memory_id, dump.meta, dump.ttl_s, dump.flush_pending, dump.summary
        ).model_dump(mode="json")
    summary = summary_from_hash(dump.summary)
    return {
        "memory_id": dump.memory_id,
        "project_id": project_id,
        "resource_id": dump.meta.get("resource_id"),
        "stats": stats,
        "summary": asdict(summary) if summary is not None else None,
        "messages": [
            m.model_dump(mode="json") for m in decode_messages(dump.messages, dump.memory_id)
        ],
        "archive": [
            m.model_dump(mode="json") for m in decode_archive(dump.archive, dump.memory_id)
        ],
    }


def erasure_record(report: ErasureReport) -> str:
    """The audit entry pushed to ``<prefix>:erasures``: subject hash, project, time, counts."""
    return json.dumps(report.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def live_ids(members: Sequence[Any], project_id: str) -> list[str]:
    """The index's members as memory ids of ``project_id`` (anything else is ignored)."""
    out = []
    for m in members:
        text = m.decode("utf-8", "replace") if isinstance(m, bytes) else str(m)
        if text.split(":", 1)[0] == project_id:
            out.append(text)
    return sorted(out)
