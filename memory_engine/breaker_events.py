"""Circuit breaker states and the process-wide registry of callbacks that hear about them.

Apart from :mod:`memory_engine.breakers` so that observers (the metrics module) can subscribe
without importing pybreaker (which pulls in tornado when it is installed): ``import
memory_engine`` and an append stay light. The state values are pybreaker's state names
(``tests/unit/test_breakers.py`` checks that they stay equal).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from enum import StrEnum

__all__ = [
    "BreakerState",
    "BreakerStateCallback",
    "on_breaker_state",
    "subscribe_breaker_state",
    "unsubscribe_breaker_state",
]

logger = logging.getLogger("memory_engine.breakers")


class BreakerState(StrEnum):
    """A breaker's state; the values are pybreaker's ``STATE_*`` names."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


BreakerStateCallback = Callable[[str, str], None]
"""``callback(name, state)``; ``state`` is a :class:`BreakerState` value."""

# A registry rather than an import of the metrics module: the library must work without metrics,
# and this module must not depend on the exporter.
_state_callbacks: list[BreakerStateCallback] = []
_callbacks_lock = threading.Lock()


def subscribe_breaker_state(callback: BreakerStateCallback) -> None:
    """Have ``callback(name, state)`` called on every breaker state this process observes.

    Called once when a breaker is built (its current state) and on each transition after. The
    callback runs on the thread that made the guarded call, so it must be quick and must not
    raise (an exception is logged and ignored). Subscribing twice is a no-op.
    """
    with _callbacks_lock:
        if callback not in _state_callbacks:
            _state_callbacks.append(callback)


def unsubscribe_breaker_state(callback: BreakerStateCallback) -> None:
    """Stop calling ``callback``; unknown callbacks are ignored."""
    with _callbacks_lock:
        if callback in _state_callbacks:
            _state_callbacks.remove(callback)


def on_breaker_state(name: str, state: str) -> None:
    """Tell every subscribed callback that breaker ``name`` is now in ``state``."""
    with _callbacks_lock:
        callbacks = list(_state_callbacks)
    for callback in callbacks:
        try:
            callback(name, state)
        except Exception:
            logger.exception("breaker state callback %r failed for breaker %s", callback, name)
