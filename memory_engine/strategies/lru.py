"""``lru``: drop the least recently used units first until the memory is at the flush target.

A message is *used* when ``context()`` returns it; the client records the time in a per-memory
sorted set and the snapshot carries it as ``Snapshot.last_used`` (seq -> time). A message never
used counts as used at its ``created_at``: the access clock starts at creation, so a never-used old
message goes before one that was just appended, and with no uses at all LRU equals FIFO. A unit's
last use is the latest use of any of its messages (a tool result read recently keeps its call).
Ties are broken by seq, oldest first, so plans are deterministic.

Compozy's LRU kept access times in an in-process cache keyed by list index that nothing on the
read path updated and that was rebuilt per call, and the flush handler then kept the newest N
messages whatever LRU chose: it behaved as FIFO. Here the uses come from the store and the commit
removes exactly the seqs named.

Cost: O(n log n) time (one sort of the units) and O(n) space for n messages. Extra Redis work is
on the read path: one ZADD per ``context()`` call, O(k log n) for the k messages it returns, plus
reading the sorted set with the snapshot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from memory_engine.core.units import first_seq, group_units, plan_drops, unit_last_used

if TYPE_CHECKING:
    from memory_engine.core.plans import FlushPlan, Snapshot
    from memory_engine.resources import MemoryResource

__all__ = ["LruStrategy"]


class LruStrategy:
    """Drop whole units least recently used first (ties: oldest seq first) until within target."""

    name: str = "lru"

    def plan(self, snapshot: Snapshot, resource: MemoryResource) -> FlushPlan:
        """Plan an LRU flush of ``snapshot``; never names a system message."""
        last_used = snapshot.last_used
        units = sorted(
            group_units(snapshot.messages),
            key=lambda u: (unit_last_used(u, last_used), first_seq(u)),
        )
        return plan_drops(self.name, snapshot, resource, units, "least recently used first")
