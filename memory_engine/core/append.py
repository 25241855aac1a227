"""What an append decides, without I/O: the per-resource plan, validation, redaction and token
counts of a batch, the append script's arguments, and the meaning of its reply.

The sync store (:class:`memory_engine.store.MemoryStore`) and any other client send
:func:`script_arguments` to ``store/lua/append.lua`` and read the reply with
:func:`decode_reply`: the rules exist once. ``tests/unit/test_core_append.py`` drives them with
canned replies.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Required, TypedDict

from memory_engine.errors import MemoryErased, MemoryFull, MessageValidationError
from memory_engine.messages import AppendResult, Message, coerce_message

if TYPE_CHECKING:
    from memory_engine.crypto import Sealer
    from memory_engine.keys import MemoryKeys
    from memory_engine.privacy import Redactor
    from memory_engine.resources import MemoryResource
    from memory_engine.tokens import TokenCounter

__all__ = [
    "AppendOptions",
    "AppendOutcome",
    "AppendPlan",
    "BatchLimits",
    "PendingMessage",
    "PreparedBatch",
    "ScriptArguments",
    "append_result",
    "archive_argument",
    "check_message",
    "decode_reply",
    "prepare_batch",
    "script_arguments",
    "unstored_result",
]


class PendingMessage(NamedTuple):
    """A message ready to store: serialised body without ``seq``, and its token count.

    (This and :class:`AppendOutcome` are named tuples: built once per append, and a frozen
    dataclass costs twice as much to build.)"""

    body: str
    token_count: int
    is_system: bool = False


class AppendOutcome(NamedTuple):
    """What the append script reports."""

    first_seq: int
    last_seq: int
    message_count: int
    token_count: int
    flush_requested: bool
    epoch: int
    flush_deduplicated: bool = False  # at threshold, but a flush was already pending
    message_tokens: int = 0  # tokens of the messages this append stored
    evicted: int = 0  # oldest messages evicted to stay under the hard ceiling


@dataclass(frozen=True, slots=True)
class AppendPlan:
    """What every append of one resource needs and no append changes, resolved once per resource
    (the hot path: each lookup below costs a microsecond or two when repeated per append)."""

    resource: MemoryResource
    redactor: Redactor
    counter: TokenCounter
    token_threshold: int
    message_threshold: int
    ttl_s: int
    tracks_use: bool
    token_ceiling: int
    message_ceiling: int
    refuse_over_ceiling: bool
    archive: str = ""  # archive_argument(resource): '' = off

    def store_options(self, marker_ttl_s: int) -> AppendOptions:
        """The keyword arguments of ``MemoryStore.append`` / ``AsyncMemoryStore.append``."""
        return AppendOptions(
            resource_id=self.resource.id,
            ttl_s=self.ttl_s,
            token_threshold=self.token_threshold,
            message_threshold=self.message_threshold,
            marker_ttl_s=marker_ttl_s,
            tracks_use=self.tracks_use,
            token_ceiling=self.token_ceiling,
            message_ceiling=self.message_ceiling,
            refuse_over_ceiling=self.refuse_over_ceiling,
            archive=self.archive,
        )

    @classmethod
    def for_resource(
        cls, resource: MemoryResource, redactor: Redactor, counter: TokenCounter
    ) -> AppendPlan:
        from memory_engine.retention import CeilingAction

        token_threshold, message_threshold = resource.trigger_thresholds()
        token_ceiling, message_ceiling = resource.ceiling_limits()
        return cls(
            resource=resource,
            redactor=redactor,
            counter=counter,
            token_threshold=token_threshold,
            message_threshold=message_threshold,
            ttl_s=resource.ttl_s,
            tracks_use=resource.records_uses,
            token_ceiling=token_ceiling,
            message_ceiling=message_ceiling,
            refuse_over_ceiling=resource.ceiling.on_exceed is CeilingAction.REFUSE,
            archive=archive_argument(resource),
        )


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """Size limits of one append (settings ``max_message_bytes``, ``max_batch_*``)."""

    max_message_bytes: int
    max_batch_messages: int
    max_batch_bytes: int


class PreparedBatch(NamedTuple):
    """A validated, redacted and counted batch: what to store, and what was left out."""

    pending: list[PendingMessage]
    skipped: int  # non-persistable roles
    redacted: int  # redaction hits


def prepare_batch(
    messages: Sequence[Message | dict[str, Any]] | Iterable[Message | dict[str, Any]],
    plan: AppendPlan,
    limits: BatchLimits,
    *,
    now: float | None = None,
    allow_empty: bool = False,
    seal: Sealer | None = None,
) -> PreparedBatch:
    """Validate, redact and count ``messages``. Raises :class:`MessageValidationError` (nothing is
    written by anyone who calls this first).

    ``seal`` (the memory's key-ring sealer, encryption at rest): the bodies are encrypted, after
    redaction and token counting, which both see the plaintext. The size limits apply to the
    plaintext form, so switching encryption on refuses no message that was accepted before."""
    now = time.time() if now is None else now
    if isinstance(messages, (str, bytes, dict)) or not isinstance(messages, Iterable):
        raise MessageValidationError(
            f"append_many takes a sequence of messages, got {type(messages).__name__}"
        )
    items = messages if isinstance(messages, (list, tuple)) else list(messages)
    if not items and not allow_empty:
        raise MessageValidationError("no messages given")
    if len(items) > limits.max_batch_messages:
        raise MessageValidationError(
            f"batch of {len(items)} messages exceeds max_batch_messages={limits.max_batch_messages}"
        )
    redactor, counter = plan.redactor, plan.counter
    redacting = redactor.enabled
    max_bytes = limits.max_message_bytes
    pending: list[PendingMessage] = []
    skipped = redacted = total_bytes = 0
    for index, item in enumerate(items):
        try:
            message = coerce_message(item)
        except MessageValidationError as exc:
            raise MessageValidationError(f"message {index}: {exc}") from exc
        check_message(message, index, max_bytes)
        if not redactor.is_persistable(message.role.value):
            skipped += 1
            continue
        if redacting:
            message, hits = redactor.redact_message(message)
            redacted += hits
        try:
            tokens = counter.count_message(message)
            body = message.wire_body(tokens, now)
            # Strict: a lone surrogate in name/metadata/tool fields would otherwise fail
            # later, inside redis-py's encoder, as an untyped UnicodeEncodeError.
            size = len(body.encode("utf-8"))
        except (TypeError, ValueError, RecursionError) as exc:
            raise MessageValidationError(
                f"message {index}: metadata or tool_calls are not JSON-serialisable, are "
                f"nested too deeply, or hold text that is not valid UTF-8: {exc}"
            ) from exc
        if size > max_bytes:
            raise MessageValidationError(
                f"message {index} is {size} bytes stored; max_message_bytes={max_bytes}"
            )
        total_bytes += size
        if seal is not None:
            body = message.wire_body(tokens, now, seal)
        pending.append(PendingMessage(body, tokens, message.is_system))
    if total_bytes > limits.max_batch_bytes:
        raise MessageValidationError(
            f"batch is {total_bytes} bytes; max_batch_bytes={limits.max_batch_bytes}"
        )
    return PreparedBatch(pending, skipped, redacted)


def check_message(message: Message, index: int, max_bytes: int) -> None:
    """Content checks of one message: UTF-8, size, non-empty, a tool message names its call."""
    content = message.content
    try:
        encoded = content.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MessageValidationError(f"message {index}: content is not valid UTF-8 text") from exc
    if len(encoded) > max_bytes:
        raise MessageValidationError(
            f"message {index}: content is {len(encoded)} bytes; max_message_bytes={max_bytes}"
        )
    if not content.strip() and not message.tool_calls:
        raise MessageValidationError(
            f"message {index}: content is empty (only an assistant message with tool_calls may be)"
        )
    if message.role.value == "tool" and not message.tool_call_id:
        raise MessageValidationError(f"message {index}: a tool message needs tool_call_id")


def archive_argument(resource: MemoryResource) -> str:
    """The archive argument of the removing scripts (append, commit, clear, replace): ``''`` when
    the resource's archive is off (the scripts then do nothing more), else ``'ttl_ms:max'``."""
    archive = resource.archive
    if not archive.enabled:
        return ""
    return f"{archive.ttl_s * 1000}:{archive.max_messages or 0}"


class ScriptArguments(NamedTuple):
    """KEYS and ARGV of ``append.lua``: ``static`` is the same for every append of a memory and
    resource (a client may pack it once), ``dynamic`` changes per call."""

    keys: tuple[str, ...]
    static: tuple[Any, ...]
    dynamic: list[bytes]
    message_tokens: int


class AppendOptions(TypedDict, total=False):
    """What an append's script needs besides its messages: the resource's limits, thresholds,
    TTL and archive setting. ``AppendPlan.store_options`` builds it; both stores take it as
    keyword arguments and hand it to :func:`script_arguments`."""

    resource_id: Required[str]
    ttl_s: Required[int]
    token_threshold: Required[int]
    message_threshold: Required[int]
    marker_ttl_s: Required[int]
    tracks_use: bool
    token_ceiling: int
    message_ceiling: int
    refuse_over_ceiling: bool
    archive: str


def script_arguments(
    keys: MemoryKeys,
    messages: Sequence[PendingMessage],
    *,
    resource_id: str,
    ttl_s: int,
    token_threshold: int,
    message_threshold: int,
    marker_ttl_s: int,
    tracks_use: bool = False,
    token_ceiling: int = 0,
    message_ceiling: int = 0,
    refuse_over_ceiling: bool = False,
    now: float,
    archive: str = "",
) -> ScriptArguments:
    """The arguments ``append.lua``'s header documents, in its order."""
    n_system = tokens = 0
    encoded: list[bytes] = []
    for m in messages:
        encoded.append(m.body.encode("utf-8"))
        tokens += m.token_count
        n_system += m.is_system
    static = (
        ttl_s * 1000,
        resource_id,
        token_threshold,
        message_threshold,
        marker_ttl_s * 1000,
        1 if tracks_use else 0,
        token_ceiling,
        message_ceiling,
        "r" if refuse_over_ceiling else "e",
        archive,
    )
    dynamic = [repr(now).encode(), b"%d" % len(encoded), b"%d" % n_system, b"%d" % tokens]
    dynamic.extend(encoded)
    script_keys = (keys.msgs, keys.meta, keys.summary, keys.used, keys.flush, keys.archive)
    return ScriptArguments(script_keys, static, dynamic, tokens)


def split_ints(reply: bytes | str) -> list[int]:
    """A script's comma-separated integers (str when the client decodes responses)."""
    if isinstance(reply, bytes):
        return [int(x) for x in reply.split(b",")]
    return [int(x) for x in reply.split(",")]


def decode_reply(
    reply: bytes | str, memory_id: str, arguments: ScriptArguments
) -> tuple[AppendOutcome, bool]:
    """The append script's reply as an outcome and whether it created the memory. Raises
    :class:`MemoryFull` when the script refused the batch at the ceiling, :class:`MemoryErased`
    when the memory holds an erasure tombstone (nothing was written either way)."""
    if reply in (b"E", "E"):
        raise MemoryErased(
            f"memory {memory_id} was erased (erase_subject) moments ago and refuses writes "
            "until its tombstone expires (MEMORY_ERASURE_TOMBSTONE_TTL_S): nothing was written"
        )
    if reply[:1] in (b"R", "R"):
        count, total = split_ints(reply[2:])
        token_ceiling, message_ceiling = arguments.static[6], arguments.static[7]
        refused = int(arguments.dynamic[1])
        raise MemoryFull(
            f"memory {memory_id} is at its hard ceiling ({message_ceiling or '-'} messages, "
            f"{token_ceiling or '-'} tokens; it holds {count} messages, {total} tokens) and "
            f"its resource refuses appends beyond it: nothing was written ({refused} "
            f"message(s), {arguments.message_tokens} tokens refused)"
        )
    first, last, count, total, flush, epoch, created, evicted = split_ints(reply)
    outcome = AppendOutcome(
        first, last, count, total, flush == 1, epoch, flush == 2, arguments.message_tokens, evicted
    )
    return outcome, created == 1


def append_result(
    outcome: AppendOutcome, batch: PreparedBatch, *, flush_requested: bool
) -> AppendResult:
    """What the caller of an append gets back."""
    return AppendResult(
        stored=True,
        appended=len(batch.pending),
        message_count=outcome.message_count,
        token_count=outcome.token_count,
        message_tokens=outcome.message_tokens,
        evicted=outcome.evicted,
        first_seq=outcome.first_seq,
        last_seq=outcome.last_seq,
        flush_requested=flush_requested,
        redacted=batch.redacted,
        skipped=batch.skipped,
    )


def unstored_result(batch: PreparedBatch, message_count: int, token_count: int) -> AppendResult:
    """What the caller gets when nothing in the batch was persistable (no script ran): the
    memory's current counts (``stats()``), and how many messages were skipped."""
    return AppendResult(
        stored=False,
        appended=0,
        message_count=message_count,
        token_count=token_count,
        skipped=batch.skipped,
    )
