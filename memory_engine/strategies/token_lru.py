"""``token_aware_lru``: cost-aware eviction in the GreedyDual-Size family.

LRU treats every unit alike, so to free 1,000 tokens it may drop ten small recent exchanges
while a single 1,000-token tool dump nobody has read since it arrived stays. GreedyDual-Size (Cao
and Irani, 1997) gives each cached object the priority ``H = L + cost / size``, where ``L`` is a
clock that rises as the cache evicts and is stamped on an object when it is used, and evicts the
lowest ``H``: among objects used at about the same time the largest goes first, and recency still
wins over a long enough gap.

A flush sees a snapshot, not the stream of hits and evictions that drives ``L``, so the clock is
rebuilt from the use order. For the m removable units of the snapshot:

* ``last_use(u)``: the latest use of any message of ``u`` (``Snapshot.last_used``, a never-used
  message counting as used at its ``created_at``), exactly as for ``lru``;
* ``clock(u) = rank(u) / (m - 1)``, where ``rank`` is the unit's 0-based position when the units are
  sorted by ``(last_use, first seq)`` (0 for the least recently used; ``clock = 0`` when ``m = 1``).
  A rank, not a timestamp, so one ancient message cannot squeeze every other clock value together;
* ``size(u) = max(1, tokens of u)`` and ``cost = 1``, measured in units of the smallest removable
  unit: ``value(u) = min_size / size(u)``, in ``(0, 1]`` like the clock;

**priority(u) = clock(u) + min_size / size(u)**, and units are dropped lowest priority first (ties:
least recently used, then oldest seq) until the memory is within the flush target.

Consequences a caller may rely on: with equal sizes the order is exactly LRU; with equal recency the
largest unit goes first; the smallest unit gets one full clock width of protection, so a unit k
times larger than the smallest is dropped before it unless its clock is at least ``1 - 1/k``
ahead (it was used that much later in the use order). With no recorded uses the clock is
creation order, so this is FIFO weighted by size: not Compozy's token-budgeted FIFO (which popped
the oldest messages until under a token total, whatever their size).

Cost: O(n log n) time (two sorts of the units), O(n) space; the same Redis work as ``lru`` (one ZADD
per ``context()`` call recording uses, O(k log n) for k returned messages).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from memory_engine.core.units import (
    Unit,
    first_seq,
    group_units,
    is_removable,
    plan_drops,
    unit_last_used,
    unit_tokens,
)

if TYPE_CHECKING:
    from memory_engine.core.plans import FlushPlan, Snapshot
    from memory_engine.resources import MemoryResource

__all__ = ["TokenAwareLruStrategy", "gds_priorities"]


def gds_priorities(units: Sequence[Unit], last_used: Mapping[int, float]) -> dict[int, float]:
    """Priority of each removable unit, keyed by its first seq (see the module docstring).

    System units are left out: they are never removed, so they take no rank on the clock.
    """
    removable = [u for u in units if is_removable(u)]
    if not removable:
        return {}
    by_use = sorted(removable, key=lambda u: (unit_last_used(u, last_used), first_seq(u)))
    span = max(1, len(by_use) - 1)
    min_size = min(max(1, unit_tokens(u)) for u in removable)
    return {
        first_seq(u): rank / span + min_size / max(1, unit_tokens(u))
        for rank, u in enumerate(by_use)
    }


class TokenAwareLruStrategy:
    """Drop whole units lowest GreedyDual-Size priority first until within target."""

    name: str = "token_aware_lru"

    def plan(self, snapshot: Snapshot, resource: MemoryResource) -> FlushPlan:
        """Plan a size-aware LRU flush of ``snapshot``; never names a system message."""
        last_used = snapshot.last_used
        units = group_units(snapshot.messages)
        priority = gds_priorities(units, last_used)
        order = sorted(
            (u for u in units if is_removable(u)),
            key=lambda u: (priority[first_seq(u)], unit_last_used(u, last_used), first_seq(u)),
        )
        return plan_drops(
            self.name, snapshot, resource, order, "lowest recency + 1/size priority first"
        )
