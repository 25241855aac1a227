"""The flush-strategy interface: a snapshot in, a plan out. Strategies are pure (no I/O).

A plan names *which* seqs leave the list (``drop``: gone, counted as flushed; ``summarize``: folded
into the running summary). Everything not named stays, in order, and everything appended after the
snapshot stays too: the commit script removes exactly the named seqs and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from collections.abc import Sequence

    from memory_engine.messages import Message
    from memory_engine.resources import MemoryResource

__all__ = ["FlushPlan", "FlushResult", "FlushStatus", "Snapshot", "Strategy", "Summary"]


@dataclass(frozen=True)
class Summary:
    """The running summary of a memory: covers every message with ``seq <= summary_point``."""

    text: str
    token_count: int
    summary_point: int
    covered_count: int = 0
    source: str = "rule_based"
    updated_at: float | None = None


@dataclass(frozen=True)
class Snapshot:
    """A consistent read of one memory: list, metadata epoch and summary from one MULTI.

    ``messages`` is the list in seq order: a tuple, or (from the store) a
    :class:`~memory_engine.core.columns.StoredMessages` that decodes a message only when it
    is read, so planners that need seqs and token counts only
    (:func:`~memory_engine.core.columns.columns_of`) never decode the list.
    """

    key: str
    messages: Sequence[Message]
    epoch: int
    last_seq: int
    token_count: int
    summary: Summary | None = None
    # seq -> last use time (seconds since epoch), recorded when context() returned the message.
    last_used: dict[int, float] = field(default_factory=dict)
    taken_at: float = 0.0


@dataclass(frozen=True)
class FlushPlan:
    """What a strategy decided: ``drop`` and ``summarize`` name seqs of the snapshot (disjoint).

    Token figures are the memory's cost in a prompt, the measure the flush trigger uses: the
    message list plus the running summary. ``summary_tokens_before`` / ``_after`` are the summary's
    part of them (after a ``hybrid_summary`` plan: the new summary's budget), so the list's own
    figure is ``tokens_after - summary_tokens_after``. Message counts are the list's.
    ``target_tokens`` / ``target_messages`` are the resource's flush targets (``None``: no limit).
    """

    strategy: str
    drop: frozenset[int] = frozenset()
    summarize: tuple[int, ...] = ()
    tokens_before: int = 0
    tokens_after: int = 0
    messages_before: int = 0
    messages_after: int = 0
    target_tokens: int | None = None
    target_messages: int | None = None
    reason: str = ""
    summary_tokens_before: int = 0
    summary_tokens_after: int = 0

    @property
    def removed(self) -> frozenset[int]:
        return self.drop | frozenset(self.summarize)

    @property
    def is_noop(self) -> bool:
        return not self.drop and not self.summarize


class Strategy(Protocol):
    """A flush strategy. ``plan`` must never name a system message, must keep an assistant
    message with ``tool_calls`` together with the tool results answering it, and must only
    name seqs present in the snapshot."""

    name: str

    def plan(self, snapshot: Snapshot, resource: MemoryResource) -> FlushPlan: ...


class FlushStatus(StrEnum):
    COMMITTED = "committed"
    NOOP = "noop"
    DRY_RUN = "dry_run"
    ALREADY_RUNNING = "already_running"
    HANDED_OFF = "handed_off"


class FlushResult(BaseModel):
    """What a flush or eviction did (or, with ``dry_run``, would do)."""

    model_config = ConfigDict(frozen=True)

    memory_id: str
    strategy: str
    status: FlushStatus
    dry_run: bool = False
    removed: int = 0
    dropped: int = 0
    summarized: int = 0
    evicted: int = 0
    message_count: int = 0
    token_count: int = 0
    tokens_before: int = 0
    tokens_removed: int = 0
    summary_point: int = 0
    summary_tokens: int = 0
    summary_source: str | None = None
    would_remove: list[int] = []
    reason: str = ""
