"""The engine's exception tree: one root, a docstring per class saying when it is raised.

Foreign exceptions (redis-py, pydantic, yaml, jinja2, httpx) are translated at the boundary with
``raise ... from`` so callers only ever need to catch :class:`MemoryEngineError` or one of its
subclasses.
"""

from __future__ import annotations

__all__ = [
    "BrokerUnavailable",
    "ConfigError",
    "CorruptMessage",
    "DecryptionError",
    "FlushConflict",
    "FlushAlreadyRunning",
    "KeyTemplateError",
    "LockError",
    "LockLost",
    "MemoryEngineError",
    "MemoryErased",
    "MemoryFull",
    "MessageValidationError",
    "MigrationError",
    "RedactionError",
    "ResourceMismatch",
    "ResourceNotFound",
    "StoreUnavailable",
    "StoreError",
    "SummarizerError",
    "TransientError",
]


class MemoryEngineError(Exception):
    """Root of every error the engine raises on purpose."""


class TransientError(MemoryEngineError):
    """Marker base for errors worth retrying (a Celery task retries these with backoff)."""


# --- configuration --------------------------------------------------------------------------


class ConfigError(MemoryEngineError):
    """Settings or a resource definition are invalid: bad YAML, an unknown field, a rule broken.

    The message names the file (when there is one) and the dotted field path.
    """

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None):
        self.source = source
        self.field = field
        prefix = ""
        if source:
            prefix += f"{source}: "
        if field:
            prefix += f"{field}: "
        super().__init__(prefix + message)


class MigrationError(ConfigError):
    """``resources migrate`` met something in a Compozy resource file it cannot translate (a Go
    template function or pipeline, ``in_memory`` persistence, a literal API key), or the
    translation does not validate. The message names the field and says why."""


class ResourceNotFound(ConfigError):
    """``registry.get(id)`` was asked for an id that no loaded resource declares."""

    def __init__(self, resource_id: str, known: list[str]):
        self.resource_id = resource_id
        self.known = sorted(known)
        listed = ", ".join(self.known) if self.known else "(none loaded)"
        super().__init__(f"memory resource {resource_id!r} not found; known ids: {listed}")


class ResourceMismatch(MemoryEngineError):
    """A task (or a command) named a memory with a resource other than the one the memory was
    created with (its metadata's ``resource_id``). Refused before anything changed: a memory is
    only ever flushed, summarized or evicted under its own resource's policy."""


class KeyTemplateError(MemoryEngineError):
    """A key template could not be rendered (missing variable, sandbox violation) or its result is
    not a valid key (empty, too long, forbidden characters). Never falls back to a shared key."""


# --- input ----------------------------------------------------------------------------------


class MessageValidationError(MemoryEngineError):
    """A message is malformed, empty, oversized, or a batch is too large. Nothing was written."""


class MemoryFull(MessageValidationError):
    """The append would take the memory beyond its hard ceiling and its resource says
    ``ceiling.on_exceed: refuse`` (flushes are not keeping up, e.g. no worker runs). Nothing was
    written; the append may succeed once a flush has made room."""


class MemoryErased(MemoryEngineError):
    """The memory's data subject was erased moments ago (``erase_subject``): the memory holds a
    tombstone for ``MEMORY_ERASURE_TOMBSTONE_TTL_S`` and refuses appends and replaces, so that a
    write in flight during the erasure cannot recreate it. Nothing was written."""


class RedactionError(MessageValidationError):
    """Redaction could not run to completion (a pattern timed out). The message was refused and
    nothing was stored: the engine never stores content it could not redact."""


# --- store ----------------------------------------------------------------------------------


class StoreError(MemoryEngineError):
    """Redis answered with an error the engine did not expect (script error, wrong type)."""


class CorruptMessage(StoreError):
    """A stored message cannot be decoded (not JSON, a field missing or of the wrong type, or
    nested deeper than the engine accepts, as data written before that limit can be). Names the
    memory and the message's ``seq`` (``None`` when even that is unreadable), never the content;
    a flush can skip or quarantine that one element instead of failing forever."""

    def __init__(self, memory_id: str | None, seq: int | None, reason: str):
        self.memory_id = memory_id
        self.seq = seq
        self.reason = reason
        where = f"memory {memory_id}" if memory_id is not None else "a memory"
        super().__init__(f"stored message seq={seq} of {where} cannot be decoded: {reason}")


class DecryptionError(StoreError):
    """A stored message or summary is encrypted (docs/encryption.md) and cannot be decrypted:
    no key ring is configured, its key id is not in the key ring (a deleted key: a
    crypto-shredded project), or authentication failed (a wrong key, a tampered ciphertext, or
    one moved from another memory). Names the memory, the message's ``seq`` (``None`` for a
    summary, or when unreadable) and the key id; never the ciphertext nor any plaintext.
    Nothing is returned in place of the data: a read raises, it never yields garbage."""

    def __init__(
        self, memory_id: str | None, seq: int | None, key_id: str | None, reason: str
    ) -> None:
        self.memory_id = memory_id
        self.seq = seq
        self.key_id = key_id
        self.reason = reason
        where = f"memory {memory_id}" if memory_id is not None else "a memory"
        what = f"stored message seq={seq}" if seq is not None else "stored data"
        key = f" (key {key_id!a})" if key_id is not None else ""
        super().__init__(f"{what} of {where} cannot be decrypted{key}: {reason}")


class StoreUnavailable(StoreError, TransientError):
    """Redis could not be reached or did not answer within the configured timeout.

    For an append this means the outcome is unknown only if the timeout hit after the command was
    sent; the append script is atomic, so the memory is never half-written.
    """


class BrokerUnavailable(StoreUnavailable):
    """A task could not be published: the Celery broker did not answer within the publish
    timeout, or (``breaker_open``) its circuit breaker is open after a recent failure and the
    broker was not tried at all. An append that crossed its threshold still succeeded; the
    flush is published later by the marker sweep."""

    def __init__(self, message: str, *, breaker_open: bool = False) -> None:
        self.breaker_open = breaker_open
        super().__init__(message)


# --- flush, locks ---------------------------------------------------------------------------


class LockError(MemoryEngineError):
    """A memory's lock could not be acquired or released."""


class FlushAlreadyRunning(LockError):
    """Another flush of the same memory holds its lock. Not a failure: the caller exits quietly."""


class LockLost(LockError):
    """The lock expired or was taken over while work ran; the holder must not commit (fencing)."""


class FlushConflict(MemoryEngineError):
    """A flush commit found the memory changed under it (epoch moved: clear, replace or another
    flush). Nothing was changed by the commit; the flush may be planned again."""


class SummarizerError(TransientError):
    """The summarizer failed (HTTP error, timeout, refusal, empty or truncated reply). The flush
    falls back to the rule-based summarizer; a good previous summary is never replaced by this."""
