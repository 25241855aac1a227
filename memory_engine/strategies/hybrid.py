"""``hybrid_summary``: fold the oldest messages into the running summary; drop nothing.

The plan names, in ``summarize`` (seq order), the oldest ``flushing.summarize_oldest_percent`` of
the non-system messages, by count. The count is rounded to whole units (the cut closest to the
exact share; a tie goes to the smaller cut) and is at least one unit, so a tool call is never
summarized without its results. When that share leaves the memory above the flush target
(``resource.flush_targets()``), the cut moves forward unit by unit until it is within target or
every non-system message is folded (the reason says which).

The folded messages are always a prefix of the non-system messages in seq order: the summary then
covers every non-system message up to its summary point, and nothing older stays behind it. (A
tool result separated from its call by other messages can make a unit non-contiguous; the cut
simply never falls inside one.)

Token accounting (as for every plan, see :class:`FlushPlan`): the message list plus the running
summary. ``tokens_before`` counts the previous summary, if any; ``tokens_after`` counts what stays
in the list plus ``flushing.summary_tokens``, the budget of the new running summary that replaces
both the previous summary and the folded messages; the targets are checked against that figure.
Without ``summary_tokens`` (hybrid run on a resource configured for another strategy) the previous
summary's size stands in for the budget, or 0 when there is none. A previous summary is not
re-planned: what it covers has already left the list.

Compozy's hybrid kept the first and last message, built a rule-based summary of the middle, and then
its flush handler kept the three newest stored messages: the summary was never written and the first
message was lost. Here the summarizer runs outside any lock and the commit removes exactly the seqs
named after writing the summary.

Cost of planning: O(n) time and space for n messages, on the snapshot's columns (no message is
decoded; :mod:`memory_engine.core.columns`); the work is the summarizer call that follows
(an LLM request on the ``memory.summarize`` queue, or the rule-based fallback), which decodes
only the folded messages.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from itertools import accumulate
from typing import TYPE_CHECKING

from memory_engine.core.columns import Columns, columns_of
from memory_engine.core.plans import FlushPlan

if TYPE_CHECKING:
    from memory_engine.core.plans import Snapshot
    from memory_engine.messages import Message
    from memory_engine.resources import MemoryResource

__all__ = ["HybridSummaryStrategy", "unit_cuts"]


def unit_cuts(messages: Sequence[Message]) -> list[int]:
    """Every k > 0 such that the first k non-system messages of ``messages`` are whole units.

    ``messages`` is the snapshot's list in seq order; the last cut is the number of non-system
    messages (an empty list when there are none).
    """
    return _cuts(columns_of(messages))


def _cuts(columns: Columns) -> list[int]:
    system = columns.system
    foldable = len(system) - sum(system)
    if columns.single_units:  # every message is a unit: every prefix is a cut
        return list(range(1, foldable + 1))
    # System messages are units of one and never members of another unit, so skipping them
    # keeps every unit's members in the walk.
    head_of = {m: head for head, members in columns.members.items() for m in members}
    seen: dict[int, int] = {}
    open_units = 0  # units with some but not all messages in the prefix
    cuts: list[int] = []
    k = 0
    for index, is_system in enumerate(system):
        if is_system:
            continue
        k += 1
        head = head_of.get(index, index)
        count = seen.get(head, 0) + 1
        seen[head] = count
        if count == 1:
            open_units += 1
        if count == len(columns.unit_indices(head)):
            open_units -= 1
        if open_units == 0:
            cuts.append(k)
    return cuts


def _closest_cut(cuts: Sequence[int], share: float) -> int:
    # The cut closest to ``share``; a tie goes to the smaller cut. ``cuts`` ascend.
    above = bisect_left(cuts, share)  # cuts[above] >= share
    if above == 0:
        return cuts[0]
    if above == len(cuts):
        return cuts[-1]
    lower, upper = cuts[above - 1], cuts[above]
    return upper if upper - share < share - lower else lower


class HybridSummaryStrategy:
    """Fold the oldest share of non-system messages (whole units) into the summary; drop nothing."""

    name: str = "hybrid_summary"

    def plan(self, snapshot: Snapshot, resource: MemoryResource) -> FlushPlan:
        """Plan a summarizing flush of ``snapshot``; never names a system message."""
        target_tokens, target_messages = resource.flush_targets()
        previous = snapshot.summary.token_count if snapshot.summary else 0
        budget = resource.flushing.summary_tokens
        budget = previous if budget is None else budget
        columns = columns_of(snapshot.messages)
        list_tokens = sum(columns.tokens)
        count = len(columns.seqs)
        foldable = [i for i, is_system in enumerate(columns.system) if not is_system]
        prefix_tokens = [0, *accumulate(columns.tokens[i] for i in foldable)]

        def tokens_after(cut: int) -> int:
            # Folding nothing keeps the previous summary; folding anything writes a new one.
            return list_tokens - prefix_tokens[cut] + (budget if cut else previous)

        def within(cut: int) -> bool:
            return (target_tokens is None or tokens_after(cut) <= target_tokens) and (
                target_messages is None or count - cut <= target_messages
            )

        cuts = _cuts(columns)
        if not cuts:
            cut = 0
            reason = "no non-system messages to summarize"
            if not within(cut):
                reason += "; target unreachable: only system messages and the summary remain"
        else:
            percent = resource.flushing.summarize_oldest_percent
            cut = _closest_cut(cuts, percent * len(foldable))
            reason = (
                f"folded the oldest {cut} of {len(foldable)} non-system messages "
                f"({percent:.0%} rounded to whole units)"
            )
            if not within(cut):
                share_cut = cut
                cut = next((c for c in cuts if c > share_cut and within(c)), cuts[-1])
                if cut > share_cut:
                    reason += f"; extended to {cut} to reach the flush target"
                if not within(cut):
                    reason += "; target unreachable: only system messages and the summary remain"
        return FlushPlan(
            strategy=self.name,
            summarize=tuple(columns.seqs[i] for i in foldable[:cut]),
            tokens_before=list_tokens + previous,
            tokens_after=tokens_after(cut),
            messages_before=count,
            messages_after=count - cut,
            target_tokens=target_tokens,
            target_messages=target_messages,
            reason=reason,
            summary_tokens_before=previous,
            summary_tokens_after=budget if cut else previous,
        )
