"""``simple_fifo``: drop the oldest removable units until the memory is at the flush target.

Compozy's FIFO kept the newest ``max_messages * 0.5`` messages by count only (or dropped a quarter
without ``max_messages``) and recounted tokens with a different estimator than append. Here the
target is ``resource.flush_targets()`` for tokens *and* messages, token sums are the counts stored
at append, and tool calls leave together with their results.

Cost: O(n) time and space for n messages, planned on the snapshot's columns (seq, tokens, system
flag and tool-unit links read from the stored headers, :mod:`memory_engine.core.columns`):
no message is decoded, and without tool calls the plan is one walk over three lists (~0.2 ms for
1,000 messages). No extra Redis work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from memory_engine.core.units import plan_oldest_drops

if TYPE_CHECKING:
    from memory_engine.core.plans import FlushPlan, Snapshot
    from memory_engine.resources import MemoryResource

__all__ = ["SimpleFifoStrategy"]


class SimpleFifoStrategy:
    """Drop whole units oldest first (by the seq of their first message) until within target."""

    name: str = "simple_fifo"

    def plan(self, snapshot: Snapshot, resource: MemoryResource) -> FlushPlan:
        """Plan a FIFO flush of ``snapshot``; never names a system message."""
        return plan_oldest_drops(self.name, snapshot, resource)
