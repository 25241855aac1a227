"""Flush strategies: pure planners from a :class:`Snapshot` to a :class:`FlushPlan`.

=================== ====================================================================
``simple_fifo``     drop the oldest units until within the flush target
``lru``             drop the least recently used units (uses recorded by ``context()``)
``token_aware_lru`` drop by GreedyDual-Size priority: large stale units before small recent
``hybrid_summary``  fold the oldest share of messages into the running summary
=================== ====================================================================

Every strategy keeps system messages, keeps tool calls with their results, and names only seqs of
the snapshot. :func:`get_strategy` builds one by its resource name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from memory_engine.core.plans import FlushPlan, Snapshot, Strategy, Summary
from memory_engine.core.units import Unit, group_units
from memory_engine.errors import ConfigError
from memory_engine.strategies.fifo import SimpleFifoStrategy
from memory_engine.strategies.hybrid import HybridSummaryStrategy
from memory_engine.strategies.lru import LruStrategy
from memory_engine.strategies.token_lru import TokenAwareLruStrategy

if TYPE_CHECKING:
    from memory_engine.resources import FlushingType

__all__ = [
    # interface
    "FlushPlan",
    "Snapshot",
    "Strategy",
    "Summary",
    # strategies
    "HybridSummaryStrategy",
    "LruStrategy",
    "SimpleFifoStrategy",
    "TokenAwareLruStrategy",
    "get_strategy",
    "strategy_names",
    # units
    "Unit",
    "group_units",
]

# Keys are the ``flushing.type`` values of a resource (``FlushingType``).
_STRATEGIES: dict[str, type[Strategy]] = {
    SimpleFifoStrategy.name: SimpleFifoStrategy,
    LruStrategy.name: LruStrategy,
    TokenAwareLruStrategy.name: TokenAwareLruStrategy,
    HybridSummaryStrategy.name: HybridSummaryStrategy,
}


def strategy_names() -> tuple[str, ...]:
    """The names :func:`get_strategy` accepts, sorted."""
    return tuple(sorted(_STRATEGIES))


def get_strategy(name: FlushingType | str) -> Strategy:
    """A strategy instance for ``name`` (a ``FlushingType`` or its string value).

    Raises :class:`ConfigError` naming the valid strategies when ``name`` is unknown.
    """
    try:
        factory = _STRATEGIES[str(name)]
    except KeyError:
        valid = ", ".join(strategy_names())
        raise ConfigError(
            f"unknown flush strategy {name!r}; valid: {valid}", field="flushing.type"
        ) from None
    return factory()
