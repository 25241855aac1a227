"""memory_engine: conversation memory for LLM agent workflows on Redis, flushed by Celery workers.

Workflow code imports only this package::

    from memory_engine import MemoryClient, Message

    with MemoryClient.from_env() as client:
        memory = client.memory("customer-support", {"workflow": {"input": {...}}})
        memory.append(Message(role="user", content="Where is my order ORD-1234?"))
        window = memory.context()

On an event loop, ``AsyncMemoryClient`` / ``AsyncMemory`` offer the same calls, awaited.
"""

from __future__ import annotations

from memory_engine.aio import AsyncMemory, AsyncMemoryClient
from memory_engine.client import Memory, MemoryClient
from memory_engine.core.plans import FlushResult, FlushStatus
from memory_engine.errors import (
    BrokerUnavailable,
    ConfigError,
    FlushAlreadyRunning,
    FlushConflict,
    KeyTemplateError,
    LockError,
    LockLost,
    MemoryEngineError,
    MemoryFull,
    MessageValidationError,
    RedactionError,
    ResourceNotFound,
    StoreError,
    StoreUnavailable,
    SummarizerError,
    TransientError,
)
from memory_engine.messages import AppendResult, MemoryStats, Message, Page, Role
from memory_engine.registry import ResourceRegistry
from memory_engine.resources import MemoryResource, parse_resource
from memory_engine.settings import Settings, load_settings

__all__ = [
    # client
    "Memory",
    "MemoryClient",
    # asyncio client (docs/async.md)
    "AsyncMemory",
    "AsyncMemoryClient",
    # values
    "AppendResult",
    "FlushResult",
    "FlushStatus",
    "MemoryStats",
    "Message",
    "Page",
    "Role",
    # configuration
    "MemoryResource",
    "ResourceRegistry",
    "Settings",
    "load_settings",
    "parse_resource",
    # errors
    "BrokerUnavailable",
    "ConfigError",
    "FlushAlreadyRunning",
    "FlushConflict",
    "KeyTemplateError",
    "LockError",
    "LockLost",
    "MemoryEngineError",
    "MemoryFull",
    "MessageValidationError",
    "RedactionError",
    "ResourceNotFound",
    "StoreError",
    "StoreUnavailable",
    "SummarizerError",
    "TransientError",
]

__version__ = "0.1.0"
