"""What the engine's operations need of a client and of a memory, as protocols.

Flush, eviction, ``context()`` and maintenance are written against these, not against
:class:`memory_engine.client.MemoryClient`: the clients sit above the engine and call down into
it, so the engine never imports a client (no cycle), and the sync and async clients can hand it
the same shapes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from memory_engine.keys import KeySpace, MemoryKeys
    from memory_engine.messages import MemoryStats
    from memory_engine.producer import TaskProducer
    from memory_engine.registry import ResourceRegistry
    from memory_engine.resources import MemoryResource
    from memory_engine.settings import Settings
    from memory_engine.store import MemoryStore
    from memory_engine.summarizers import Summarizer
    from memory_engine.tokens import TokenCounter

__all__ = ["EngineClient", "MemoryHandle"]


class EngineClient(Protocol):
    """The services one engine operation uses: the store, the key space, settings, counters."""

    settings: Settings
    store: MemoryStore
    keyspace: KeySpace
    registry: ResourceRegistry
    producer: TaskProducer

    @property
    def summarizer(self) -> Summarizer: ...

    def counter_for(self, resource: MemoryResource) -> TokenCounter: ...

    def memory_by_id(self, memory_id: str, resource_id: str) -> MemoryHandle: ...


class MemoryHandle(Protocol):
    """One resolved memory: its id, resource and keys, and the client it belongs to."""

    key: str
    resource: MemoryResource
    keys: MemoryKeys

    @property
    def client(self) -> EngineClient: ...

    def stats(self) -> MemoryStats: ...

    def request_flush(self) -> bool: ...

    def publish_unpublished_flush(self) -> bool: ...
