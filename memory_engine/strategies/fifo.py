"""``simple_fifo``: drop the oldest removable units until the memory is at the flush target.

Compozy's FIFO kept the newest ``max_messages * 0.5`` messages by count only (or dropped a quarter
without ``max_messages``) and recounted tokens with a different estimator than append. Here the
target is ``resource.flush_targets()`` for tokens *and* messages, token sums are the counts stored
at append, and tool calls leave together with their results.

Cost: O(n) time and space for n messages (units are already in seq order); no extra Redis work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from memory_engine.strategies.units import group_units, plan_drops

if TYPE_CHECKING:
    from memory_engine.resources import MemoryResource
    from memory_engine.strategies.base import FlushPlan, Snapshot

__all__ = ["SimpleFifoStrategy"]


class SimpleFifoStrategy:
    """Drop whole units oldest first (by the seq of their first message) until within target."""

    name: str = "simple_fifo"

    def plan(self, snapshot: Snapshot, resource: MemoryResource) -> FlushPlan:
        """Plan a FIFO flush of ``snapshot``; never names a system message."""
        units = group_units(snapshot.messages)
        return plan_drops(self.name, snapshot, resource, units, "oldest first")
