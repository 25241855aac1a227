"""The per-memory commands other than the append and the flush commit, without I/O: the keys and
arguments the sync and async stores send (replace, clear, flush marker, record use, delete, the
index writes an append carries, when an append carries them) and what their replies mean (pages,
stats, context windows, summaries). Each store sends these its own way; the rules exist once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from memory_engine.core.context import ContextWindow
from memory_engine.core.plans import Summary
from memory_engine.crypto import Purpose, key_id_of, open_text
from memory_engine.errors import MemoryErased
from memory_engine.messages import MemoryStats, Message, Page, check_int_argument, rewrap_wire

if TYPE_CHECKING:
    from memory_engine.core.append import PendingMessage
    from memory_engine.crypto import KeyRing
    from memory_engine.keys import KeySpace, MemoryKeys
    from memory_engine.resources import MemoryResource

__all__ = [
    "FLUSH_MARKER_UNPUBLISHED",
    "INDEX_MEMO_MAX_ENTRIES",
    "INDEX_REFRESH_MAX_S",
    "IndexMemo",
    "clear_call",
    "decode_archive",
    "erase_call",
    "subject_index_ttl_s",
    "context_call",
    "decode_context_reply",
    "decode_flush_marker",
    "decode_hash",
    "decode_messages",
    "decode_replace_reply",
    "flush_marker_call",
    "index_writes",
    "memory_key_names",
    "open_summary_hash",
    "page_of",
    "pop_call",
    "decode_pop_reply",
    "record_use_call",
    "replace_call",
    "rewrap_calls",
    "seal_summary_text",
    "stats_from_metadata",
    "summary_from_hash",
]

FLUSH_MARKER_UNPUBLISHED = "unpublished"
"""Flush-marker value that says the marker's ``memory.flush`` task could not be published (the
broker was down): the marker sweep publishes it (``MemoryStore.claim_unpublished_flush``)."""

INDEX_REFRESH_MAX_S = 60.0
"""Longest time an append leaves a memory's index scores unrefreshed (``ttl / 10`` if shorter)."""
INDEX_MEMO_MAX_ENTRIES = 100_000
"""Bound of the per-store memo of index writes; when full it is emptied (each memory then pays
one index write again)."""

ScriptCall = tuple[tuple[str, ...], tuple[Any, ...]]
"""A script's KEYS and ARGV, in the order its header documents."""


# ---- the append's index hints ---------------------------------------------------------------


class IndexMemo:
    """When an append carries its memory's index writes (``store/memory.py`` docstring): on a
    memory's first append through this store, then at most once per
    ``min(INDEX_REFRESH_MAX_S, ttl / 10)``.

    A plain dict: single operations are atomic under the GIL (and an event loop runs one task at
    a time); a race costs one redundant ``ZADD``, never a missing one."""

    def __init__(self) -> None:
        self._indexed_at: dict[str, float] = {}

    def due(self, memory_id: str, now: float, ttl_s: int) -> bool:
        last = self._indexed_at.get(memory_id)
        if last is None:
            return True
        refresh_s = min(INDEX_REFRESH_MAX_S, ttl_s / 10) if ttl_s > 0 else INDEX_REFRESH_MAX_S
        # A `now` before the last write (an explicit time in the past) re-indexes too.
        return not 0.0 <= now - last < refresh_s

    def forget(self, memory_id: str) -> None:
        """The memory's next append carries its index writes again (it was refused as erased)."""
        self._indexed_at.pop(memory_id, None)

    def remember(self, memory_id: str, now: float) -> None:
        memo = self._indexed_at
        if len(memo) >= INDEX_MEMO_MAX_ENTRIES:
            memo.clear()
        memo[memory_id] = now


def index_writes(
    keyspace: KeySpace, memory_id: str, now: float, ttl_s: int
) -> list[tuple[str, dict[str, float]]]:
    """The ``ZADD`` s (index key, ``{member: score}``) that index a memory written at ``now``."""
    writes = [(keyspace.access_index, {memory_id: now})]
    if ttl_s > 0:
        writes.append((keyspace.expiry_index, {memory_id: now + ttl_s}))
    return writes


def subject_index_ttl_s(ttl_s: int) -> int | None:
    """TTL of a subject's SET of memory ids as an append of a memory with ``ttl_s`` extends it
    (``EXPIRE NX`` then ``EXPIRE GT``: it only grows): the memory's TTL plus the longest time an
    append leaves index writes unrefreshed, so the SET outlives every memory it lists. ``None``
    (``PERSIST``) for a memory without expiry."""
    if ttl_s <= 0:
        return None
    return ttl_s + int(INDEX_REFRESH_MAX_S) + 1


# ---- archive -------------------------------------------------------------------------------


def decode_archive(raw: Sequence[Any], memory_id: str) -> list[Message]:
    """Archive elements as messages: each is a stored element plus ``why`` (the reason) and
    ``at`` (unix s), returned in ``metadata["archive"] = {"reason", "archived_at"}``."""
    out: list[Message] = []
    for element in raw:
        message = Message.from_wire(element, memory_id=memory_id)
        try:
            extra = json.loads(element)
            info = {"reason": str(extra.get("why", "")), "archived_at": float(extra.get("at", 0))}
        except (ValueError, TypeError):  # from_wire decoded it: not reached for stored data
            info = {"reason": "", "archived_at": 0.0}
        metadata = {**message.metadata, "archive": info}
        out.append(message.model_copy(update={"metadata": metadata}))
    return out


def erase_call(keys: MemoryKeys, now: float, tombstone_ttl_s: int) -> ScriptCall:
    """KEYS and ARGV of ``lua/erase.lua`` (its reply: keys deleted)."""
    return (
        keys.msgs,
        keys.meta,
        keys.summary,
        keys.used,
        keys.flush,
        keys.lock,
        keys.archive,
    ), (repr(now), tombstone_ttl_s * 1000)


# ---- writes ------------------------------------------------------------------------------


def replace_call(
    keys: MemoryKeys,
    messages: Sequence[PendingMessage],
    *,
    resource_id: str,
    ttl_s: int,
    now: float,
    archive: str = "",
) -> ScriptCall:
    """KEYS and ARGV of ``lua/replace.lua``."""
    args: list[Any] = [
        repr(now),
        resource_id,
        ttl_s * 1000,
        len(messages),
        sum(1 for m in messages if m.is_system),
        archive,
    ]
    for m in messages:
        args.extend((m.body, m.token_count))
    return (keys.msgs, keys.meta, keys.summary, keys.used, keys.archive), tuple(args)


def decode_replace_reply(reply: Sequence[Any], memory_id: str = "") -> tuple[int, int, int]:
    """``lua/replace.lua``'s reply as (count, tokens, epoch); :class:`MemoryErased` when the
    memory holds an erasure tombstone."""
    if len(reply) == 1:
        raise MemoryErased(f"memory {memory_id} was erased moments ago: nothing was replaced")
    count, tokens, epoch, _first, _last = reply
    return int(count), int(tokens), int(epoch)


def clear_call(keys: MemoryKeys, now: float, archive: str = "") -> ScriptCall:
    """KEYS and ARGV of ``lua/clear.lua`` (its reply: cleared count, epoch)."""
    return (keys.msgs, keys.meta, keys.summary, keys.used, keys.archive), (repr(now), archive)


def pop_call(keys: MemoryKeys, now: float) -> ScriptCall:
    """KEYS and ARGV of ``lua/pop.lua`` (its reply: the newest element, or nil)."""
    return (keys.msgs, keys.meta, keys.used), (repr(now),)


def decode_pop_reply(reply: Any, memory_id: str) -> Message | None:
    """``lua/pop.lua``'s reply: the popped message, or ``None`` (nothing to pop)."""
    if reply is None or reply is False or reply == 0:
        return None
    return Message.from_wire(reply, memory_id=memory_id)


def memory_key_names(keys: MemoryKeys) -> tuple[str, ...]:
    """Every key of one memory (what ``delete`` removes), its archive included."""
    return (keys.msgs, keys.meta, keys.summary, keys.used, keys.flush, keys.lock, keys.archive)


def flush_marker_call(keys: MemoryKeys, ttl_s: int, now: float) -> ScriptCall:
    """KEYS and ARGV of ``lua/flush_marker.lua``."""
    return (keys.meta, keys.flush), (repr(now), ttl_s * 1000)


def decode_flush_marker(status: Any) -> bool | None:
    """True: this call set the marker; False: a flush was already pending; None: no memory."""
    value = int(status)
    if value < 0:
        return None
    return value == 1


def record_use_call(
    keys: MemoryKeys, seqs: Sequence[int], ttl_s: int, now: float
) -> ScriptCall | None:
    """KEYS and ARGV of ``lua/record_use.lua``; ``None`` when there is nothing to record."""
    if not seqs:
        return None
    return (keys.meta, keys.used), (repr(now), max(ttl_s, 0), *(str(s) for s in seqs))


# ---- reads -------------------------------------------------------------------------------


def decode_hash(raw: dict[Any, Any]) -> dict[str, str]:
    """A hash reply (bytes or str) as text."""
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else str(v)
        )
        for k, v in raw.items()
    }


def decode_messages(
    raw: Sequence[Any], memory_id: str, keyring: KeyRing | None = None
) -> list[Message]:
    return [Message.from_wire(r, memory_id=memory_id, keyring=keyring) for r in raw]


def open_summary_hash(
    data: dict[str, str], memory_id: str, keyring: KeyRing | None
) -> dict[str, str]:
    """A summary hash with its ``text`` in clear (encryption at rest: the stored text is an
    envelope). :class:`~memory_engine.errors.DecryptionError` when it cannot be opened."""
    text = data.get("text")
    if not text:
        return data
    opened = open_text(text, memory_id, Purpose.SUMMARY, keyring)
    return data if opened is text else {**data, "text": opened}


def seal_summary_text(text: str, memory_id: str, keyring: KeyRing | None) -> str:
    """The summary text as stored: an envelope when a key ring is configured."""
    if keyring is None or not text:
        return text
    return keyring.seal(text.encode("utf-8"), memory_id, Purpose.SUMMARY)


def summary_from_hash(
    data: dict[str, str], memory_id: str = "", keyring: KeyRing | None = None
) -> Summary | None:
    if not data.get("text"):
        return None
    data = open_summary_hash(data, memory_id, keyring)
    return Summary(
        text=data["text"],
        token_count=int(data.get("token_count", 0)),
        summary_point=int(data.get("summary_point", 0)),
        covered_count=int(data.get("covered", 0)),
        source=data.get("source", ""),
        updated_at=float(data["updated_at"]) if data.get("updated_at") else None,
    )


def rewrap_calls(
    raw: Sequence[bytes | str],
    summary_text: bytes | str | None,
    memory_id: str,
    keyring: KeyRing,
    *,
    chunk: int,
) -> list[tuple[Any, ...]]:
    """ARGV of the ``lua/reencrypt.lua`` calls that put ``memory_id``'s list (``raw``, as read)
    and summary text under the key ``keyring`` chooses for it now, ``chunk`` elements per call
    (the summary rides with the first); ``[]`` when everything already is. Raises
    :class:`~memory_engine.errors.DecryptionError` for what the ring cannot open."""
    triples: list[tuple[int, bytes | str, bytes]] = []
    for position, element in enumerate(raw):
        new = rewrap_wire(element, memory_id, keyring)
        if new is not None:
            triples.append((position, element, new))
    summary_swap: tuple[bytes | str, str] | None = None
    if summary_text:
        text = summary_text.decode("utf-8") if isinstance(summary_text, bytes) else summary_text
        if key_id_of(text) != keyring.key_id_for(memory_id):
            plain = keyring.open_text(text, memory_id, Purpose.SUMMARY)
            summary_swap = (summary_text, seal_summary_text(plain, memory_id, keyring))
    calls: list[tuple[Any, ...]] = []
    for start in range(0, max(len(triples), 1 if summary_swap else 0), chunk):
        part = triples[start : start + chunk]
        argv: list[Any] = [len(part)]
        for position, old, new in part:
            argv.extend((position, old, new))
        if start == 0 and summary_swap is not None:
            argv.extend(summary_swap)
        else:
            argv.extend(("", ""))
        calls.append(tuple(argv))
    return calls


def context_call(keys: MemoryKeys, budget: int | None) -> ScriptCall:
    """KEYS and ARGV of ``lua/context.lua`` (``budget`` None: the whole list)."""
    return (keys.msgs, keys.meta, keys.summary), (-1 if budget is None else budget,)


def decode_context_reply(
    reply: Sequence[Any], memory_id: str, keyring: KeyRing | None = None
) -> ContextWindow:
    summary_raw, start, tail, systems = reply
    summary = decode_hash(dict(zip(summary_raw[::2], summary_raw[1::2], strict=True)))
    return ContextWindow(
        summary=open_summary_hash(summary, memory_id, keyring),
        tail_start=int(start),
        tail=decode_messages(tail, memory_id, keyring),
        systems=decode_messages(systems, memory_id, keyring),
    )


def check_page_arguments(offset: object, limit: object) -> None:
    check_int_argument("offset", offset, 0)
    check_int_argument("limit", limit, 1)


def page_of(messages: list[Message], total: int, offset: int, limit: int) -> Page:
    return Page(
        messages=messages,
        total=total,
        offset=offset,
        limit=limit,
        has_more=offset + len(messages) < total,
    )


def stats_from_metadata(
    resource: MemoryResource,
    memory_id: str,
    meta: dict[str, str],
    ttl_s: int,
    flush_pending: bool,
    summary: dict[str, str],
) -> MemoryStats:
    """``stats()`` from the store's metadata read (meta hash, TTL, marker, summary hash)."""
    count = int(meta.get("message_count", 0))
    tokens = int(meta.get("token_count", 0))
    summary_tokens = int(summary.get("token_count", 0)) if summary.get("text") else 0
    max_tokens = resource.effective_max_tokens
    max_messages = resource.max_messages
    used: list[float] = []
    if max_tokens:
        used.append((tokens + summary_tokens) / max_tokens)
    if max_messages:
        used.append(count / max_messages)
    return MemoryStats(
        key=memory_id,
        resource_id=resource.id,
        message_count=count,
        token_count=tokens,
        ttl_s=ttl_s,
        epoch=int(meta.get("epoch", 0)),
        last_seq=int(meta.get("seq", 0)),
        max_tokens=max_tokens,
        max_messages=max_messages,
        budget_used=round(max(used), 4) if used else None,
        flush_pending=flush_pending,
        summary_point=int(summary.get("summary_point", 0)),
        summary_tokens=summary_tokens,
        evicted_count=int(meta.get("evicted", 0)),
        summarized_count=int(meta.get("summarized", 0)),
        flushed_count=int(meta.get("flushed", 0)),
        archived_count=int(meta.get("archived", 0)),
        last_flush_at=float(meta["last_flush_at"]) if meta.get("last_flush_at") else None,
        created_at=float(meta["created_at"]) if meta.get("created_at") else None,
        updated_at=float(meta["updated_at"]) if meta.get("updated_at") else None,
    )
