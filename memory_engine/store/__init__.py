"""The only door to Redis: every command and Lua script the engine sends goes through this package.

- :mod:`~memory_engine.store.memory`: :class:`MemoryStore`, the per-memory operations (append, read,
  replace, clear, delete, snapshot, commit, indexes) and their scripts;
- :mod:`~memory_engine.store.lane`: the append's lean EVALSHA path over pooled connections;
- :mod:`~memory_engine.store.locks`: the memory lock (owner token, renewal, fencing);
- :mod:`~memory_engine.store.connections`: building redis-py clients from settings;
- ``lua/``: the scripts, each with a KEYS/ARGV header.
"""

from memory_engine.core.append import AppendOutcome, PendingMessage
from memory_engine.store.memory import (
    FLUSH_MARKER_UNPUBLISHED,
    CommitResult,
    ContextWindow,
    MemoryStore,
    summary_from_hash,
    translate_errors,
)

__all__ = [
    "FLUSH_MARKER_UNPUBLISHED",
    "AppendOutcome",
    "CommitResult",
    "ContextWindow",
    "MemoryStore",
    "PendingMessage",
    "summary_from_hash",
    "translate_errors",
]
