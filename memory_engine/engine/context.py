"""``Memory.context()`` over the sync store: reads the window's raw material and hands it to
:class:`memory_engine.core.context.ContextRequest`, which owns every rule (token allocation, tool
pairs, the quoted summary). The async client drives the same request over ``redis.asyncio``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from memory_engine.core.context import (
    SUMMARY_NOTICE,
    SUMMARY_TAG,
    ContextRequest,
    quote_summary,
)

if TYPE_CHECKING:
    from memory_engine.engine.handle import MemoryHandle
    from memory_engine.messages import Message

__all__ = ["SUMMARY_NOTICE", "SUMMARY_TAG", "build_context", "quote_summary"]


def build_context(memory: MemoryHandle, max_tokens: int | None = None) -> list[Message]:
    resource = memory.resource
    keys = memory.keys
    store = memory.client.store
    request = ContextRequest(resource, memory.client.counter_for(resource), max_tokens)
    while (window := request.select(store.context_window(keys, request.read_budget))) is None:
        pass
    used = request.used_seqs(window)
    if used is not None:
        store.record_use(keys, used, resource.ttl_s)
    return window
