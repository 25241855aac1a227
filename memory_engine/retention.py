"""What a memory keeps beyond its budget: the hard ceiling every append enforces, and the
archive of what flushes, evictions, the ceiling, ``clear()`` and ``replace()`` remove
(sections ``ceiling`` and ``archive`` of a resource; docs/strategies.md, docs/data-protection.md).
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated, Final

from pydantic import Field, model_validator

from memory_engine.schema import Duration, FrozenSection, PositiveInt, RuleProblems

__all__ = [
    "DEFAULT_ARCHIVE_TTL_S",
    "DEFAULT_CEILING_FACTOR",
    "ArchiveConfig",
    "CeilingAction",
    "CeilingConfig",
]


DEFAULT_CEILING_FACTOR: Final[float] = 4.0
"""Default hard ceiling: this multiple of ``max_messages`` and of the token budget."""


class CeilingAction(StrEnum):
    EVICT = "evict"
    REFUSE = "refuse"


class CeilingConfig(FrozenSection):
    """The hard ceiling that every append enforces itself (``lua/append.lua``), whether or not a
    worker flushes: ``factor`` x ``max_messages`` messages and ``factor`` x the token budget
    (tokens of the stored messages; the summary is bounded by ``summary_tokens``), unless
    ``max_messages`` / ``max_tokens`` here set a ceiling explicitly (at least the limit). Beyond
    it, ``on_exceed: evict`` removes the oldest non-system messages (an assistant tool call with
    the results that follow it) and counts them in ``evicted``; ``on_exceed: refuse`` refuses the
    append with :class:`~memory_engine.errors.MemoryFull`, with nothing written."""

    factor: Annotated[float, Field(ge=1, le=1000)] = DEFAULT_CEILING_FACTOR
    max_messages: PositiveInt | None = None
    max_tokens: PositiveInt | None = None
    on_exceed: CeilingAction = CeilingAction.EVICT

    def limits(self, max_tokens: int | None, max_messages: int | None) -> tuple[int, int]:
        """``(tokens, messages)`` ceilings for a memory with these limits; 0 = no ceiling."""

        def one(explicit: int | None, limit: int | None) -> int:
            if explicit is not None:
                return explicit
            return 0 if limit is None else math.floor(limit * self.factor)

        return one(self.max_tokens, max_tokens), one(self.max_messages, max_messages)


DEFAULT_ARCHIVE_TTL_S: Final[float] = 30 * 24 * 3600.0
"""How long an archive is kept after its last write, by default (``archive.ttl``)."""
# A Celery task name as applications write them: dotted Python-like identifiers.
_TASK_NAME = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$"
_QUEUE_NAME = r"^[A-Za-z0-9_.:\-]{1,200}$"


class ArchiveConfig(FrozenSection):
    """Where removed messages go (``docs/data-protection.md``). ``enabled``: every message a
    flush, an eviction, the hard ceiling, ``clear()`` or ``replace()`` removes is moved, in the
    same script, to the memory's archive LIST (its own sliding ``ttl``, 0 = none; at most
    ``max_messages``, oldest dropped first). ``on_remove_task``: a Celery task (by name) sent
    ``{"memory_id", "first_seq", "last_seq", "reason"}`` once per committed flush or eviction,
    on ``on_remove_queue`` (default: Celery's default queue, ``celery``)."""

    enabled: bool = False
    ttl: Duration = DEFAULT_ARCHIVE_TTL_S
    max_messages: PositiveInt | None = None
    on_remove_task: Annotated[str, Field(pattern=_TASK_NAME, max_length=200)] | None = None
    on_remove_queue: Annotated[str, Field(pattern=_QUEUE_NAME)] | None = None

    @model_validator(mode="after")
    def _rules(self) -> ArchiveConfig:
        problems = RuleProblems()
        if not self.enabled:
            for name in ("ttl", "max_messages"):
                if name in self.model_fields_set:
                    problems.add(name, "only used when the archive is enabled", getattr(self, name))
        if self.on_remove_queue is not None and self.on_remove_task is None:
            problems.add("on_remove_queue", "only used with on_remove_task", self.on_remove_queue)
        problems.raise_any(type(self).__name__)
        return self

    @property
    def ttl_s(self) -> int:
        """Archive TTL in whole seconds; 0 = no expiry of its own."""
        return math.ceil(self.ttl)
