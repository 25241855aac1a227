"""The operations the HTTP API and the MCP tools share, on one :class:`AsyncMemoryClient`.

Tenant isolation lives here: every operation takes the *token's* project and a key, and the
memory it touches is ``<project>:<key>``, built by :func:`memory_engine.keys.memory_id_for`.
No path or body value can name another project: the project id has no ``:``, so whatever the key
holds (``..``, ``other:key``, an encoded separator once decoded) stays inside the token's
namespace. Keys are checked with the rules rendered keys follow, plus the HTTP path's own: no
empty, ``.`` or ``..`` segment, and a last segment that is not one of the API's verbs.

Data subjects (export, erasure) are scoped the same way: the subject is looked up in the token's
project only, so the same subject string in another project is neither exported nor erased.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from memory_engine.aio import AsyncMemory, AsyncMemoryClient
from memory_engine.core.plans import FlushResult, FlushStatus
from memory_engine.core.subjects import ErasureReport
from memory_engine.errors import FlushAlreadyRunning, KeyTemplateError
from memory_engine.keys import KEY_MAX_LENGTH, memory_id_for, render_key, validate_key
from memory_engine.messages import AppendResult, MemoryStats, Message, Page
from memory_engine.server.errors import MemoryNotFound, ProjectMismatch, SubjectsNotConfigured
from memory_engine.server.tracing import set_attributes, span

__all__ = ["RESERVED_LAST_SEGMENTS", "SUBJECT_MAX_CHARS", "MemoryService", "check_http_key"]

RESERVED_LAST_SEGMENTS = frozenset({"messages", "stats", "context", "flush", "archive"})
"""A key cannot end with one of these segments: ``/v1/memories/r/a/messages`` must mean key
``a``'s messages, never key ``a/messages``."""

SUBJECT_MAX_CHARS = KEY_MAX_LENGTH
"""Longest data subject the API accepts in a body: the longest the engine hashes (a subject is
an identifier, e.g. a user id; only its salted hash is ever stored)."""


def _json_line(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def check_http_key(key: str) -> str:
    """:func:`memory_engine.keys.validate_key`, plus the rules a path segment needs."""
    validate_key(key)
    segments = key.split("/")
    if any(s in ("", ".", "..") for s in segments):
        raise KeyTemplateError("key has an empty, '.' or '..' path segment")
    if len(segments) > 1 and segments[-1] in RESERVED_LAST_SEGMENTS:
        raise KeyTemplateError(f"a key cannot end with '/{segments[-1]}'")
    return key


class MemoryService:
    """The API's operations. ``project`` always comes from the caller's credentials."""

    def __init__(self, client: AsyncMemoryClient) -> None:
        self.client = client

    def memory(self, project: str, resource_id: str, key: str) -> AsyncMemory:
        """The handle on ``<project>:<key>`` under ``resource_id`` (no I/O)."""
        memory_id = memory_id_for(project, check_http_key(key))
        return self.client.memory_by_id(memory_id, resource_id)

    async def _existing_stats(self, memory: AsyncMemory) -> MemoryStats:
        stats = await memory.stats()
        if stats.ttl_s == -2:  # no key of the memory exists
            raise MemoryNotFound(f"memory {memory.key!a} does not exist")
        return stats

    async def append(
        self, project: str, resource_id: str, key: str, messages: Sequence[dict[str, Any]]
    ) -> AppendResult:
        memory = self.memory(project, resource_id, key)
        with span(
            "memory.append",
            kind="CLIENT",
            db__system__name="redis",
            db__operation__name="EVALSHA",
            memory__project=project,
            memory__resource_id=resource_id,
            memory__batch_size=len(messages),
        ) as current:
            result = await memory.append_many(messages)
            set_attributes(
                current,
                memory__appended=result.appended,
                memory__flush_requested=result.flush_requested,
            )
            return result

    async def read_page(
        self, project: str, resource_id: str, key: str, offset: int, limit: int
    ) -> Page:
        memory = self.memory(project, resource_id, key)
        page = await memory.read_page(offset, limit)
        if page.total == 0:
            await self._existing_stats(memory)
        return page

    async def replace(
        self, project: str, resource_id: str, key: str, messages: Sequence[dict[str, Any]]
    ) -> int:
        return await self.memory(project, resource_id, key).replace(messages)

    async def clear(self, project: str, resource_id: str, key: str) -> int:
        memory = self.memory(project, resource_id, key)
        cleared = await memory.clear()
        if cleared == 0:
            await self._existing_stats(memory)
        return cleared

    async def delete(self, project: str, resource_id: str, key: str) -> None:
        memory = self.memory(project, resource_id, key)
        if not await memory.delete():
            raise MemoryNotFound(f"memory {memory.key!a} does not exist")

    async def stats(self, project: str, resource_id: str, key: str) -> MemoryStats:
        return await self._existing_stats(self.memory(project, resource_id, key))

    async def context(
        self, project: str, resource_id: str, key: str, max_tokens: int | None
    ) -> list[Message]:
        memory = self.memory(project, resource_id, key)
        window = await memory.context(max_tokens)
        if not window:
            await self._existing_stats(memory)
        return window

    async def flush(
        self, project: str, resource_id: str, key: str, strategy: str | None, dry_run: bool
    ) -> FlushResult:
        memory = self.memory(project, resource_id, key)
        await self._existing_stats(memory)
        with span("memory.flush", memory__project=project, memory__resource_id=resource_id):
            result = await memory.flush(strategy, dry_run)
        if result.status == FlushStatus.ALREADY_RUNNING:
            raise FlushAlreadyRunning(f"a flush of memory {memory.key!a} is already running")
        return result

    async def read_archive(
        self, project: str, resource_id: str, key: str, offset: int, limit: int
    ) -> Page:
        """The memory's archive (what compaction, clear and replace removed), oldest first; 404
        when neither the memory nor an archive of it exists."""
        memory = self.memory(project, resource_id, key)
        page = await memory.read_archive(offset, limit)
        if page.total == 0:
            await self._existing_stats(memory)
        return page

    def _require_subject_salt(self) -> None:
        # Checked here so that the API answers with its own typed error: the engine's
        # ConfigError is a server fault (500), and this one is a deployment choice.
        if self.client.settings.subject_salt is None:
            raise SubjectsNotConfigured(
                "data subjects are not enabled on this server (MEMORY_SUBJECT_SALT is not set)"
            )

    async def export_subject(self, project: str, subject: str) -> AsyncIterator[bytes]:
        """The subject's memories in the token's project as JSON Lines (one memory a line).

        The first memory is read before this returns, so that an error (store down, no salt)
        is still an error status; an error after it ends the stream early."""
        self._require_subject_salt()
        records = self.client.export_subject(subject, project)
        with span("memory.subject_export", memory__project=project):
            first = await anext(records, None)

        async def lines() -> AsyncIterator[bytes]:
            if first is None:
                return
            yield _json_line(first)
            async for record in records:
                yield _json_line(record)

        return lines()

    async def erase_subject(self, project: str, subject: str) -> ErasureReport:
        """Erase every memory of the subject in the token's project (and only there)."""
        self._require_subject_salt()
        with span("memory.subject_erase", memory__project=project) as current:
            report = await self.client.erase_subject(subject, project)
            set_attributes(current, memory__erased=report.memories)
            return report

    def resolve(self, project: str, resource_id: str, context: dict[str, Any]) -> str:
        """Render ``resource_id``'s key template in ``context`` with the token's project (the
        key inside the project). A context naming another project is refused."""
        resource = self.client.registry.get(resource_id)
        if not resource.default_key_template:
            raise KeyTemplateError(f"resource {resource_id!r} has no default_key_template")
        given = context.get("project")
        if isinstance(given, dict) and "id" in given and given["id"] != project:
            raise ProjectMismatch("the context names another project than the token's")
        if given is not None and not isinstance(given, dict):
            raise KeyTemplateError("context 'project' must be a mapping")
        ctx = {**context, "project": {**(given or {}), "id": project}}
        memory_id = render_key(resource.default_key_template, ctx, default_project_id=project)
        key = memory_id.split(":", 1)[1]
        return check_http_key(key)

    def resources(self) -> list[dict[str, Any]]:
        out = []
        for rid in sorted(self.client.registry.ids()):
            r = self.client.registry.get(rid)
            out.append(
                {
                    "id": r.id,
                    "type": str(getattr(r.type, "value", r.type)),
                    "description": r.description,
                    "max_tokens": r.max_tokens,
                    "max_messages": r.max_messages,
                    "ttl_s": r.ttl_s,
                    "default_key_template": r.default_key_template,
                }
            )
        return out
