"""A snapshot's messages as planning columns, read from the stored form without decoding them all.

Planning a flush needs four facts per message: its ``seq``, its stored token count, whether it is a
system message, and which tool unit it belongs to (:mod:`memory_engine.core.units`).
Decoding every element of a 1,000-message snapshot into a :class:`Message` took ~7 ms, more than
the rest of a FIFO flush together, and a FIFO flush never looks at a message's content.

:class:`StoredMessages` holds the raw list elements the snapshot read and decodes a message only
when someone asks for it (the summarizer asks for the folded ones; FIFO asks for none). Its
:class:`Columns` come from each element's header: the wire format (:mod:`memory_engine.messages`)
writes ``s`` (seq) first and ``t`` (token count) second, which the Lua scripts rely on too, and
``r`` (role) third, so one anchored regex reads ``{"s":17,"t":12,"r":"user"``. Only the elements
that can link a unit are decoded: tool results and assistant messages that contain ``"k":``
(the tool-call field). That test has no false negatives: inside JSON strings a quote is escaped,
so the four bytes ``"k":`` only occur where an object has a key ``k``; a ``k`` key nested in
metadata merely costs one decode. An element whose header does not match (a format change) makes
the whole column set come from decoded messages: slower, never wrong.

For a plain tuple of messages (tests, callers that build snapshots by hand) the columns are
computed from the messages, so every strategy plans the same way on both kinds of snapshot.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast, overload

from memory_engine.messages import Message, Role

if TYPE_CHECKING:
    from memory_engine.crypto import KeyRing

__all__ = [
    "Columns",
    "StoredMessages",
    "columns_of",
    "list_tokens",
    "messages_with_seqs",
    "position_of_seq",
    "seq_runs",
]

# Anchored at the element's start: these are the top-level fields, never a nested object's.
_HEADER = re.compile(rb'\{"s":(\d+),"t":(\d+),"r":"([a-z]+)"')
_TOOL_CALLS_KEY = b'"k":'
_SYSTEM = Role.SYSTEM.value.encode()
_TOOL = Role.TOOL.value.encode()
_ASSISTANT = Role.ASSISTANT.value.encode()


@dataclass(frozen=True, slots=True)
class Columns:
    """Per-message planning facts in list order (which is seq order).

    ``members`` maps the index of a multi-message unit's first message to the indices of all its
    messages (in order); ``absorbed`` holds the indices of the non-first members. Every other
    message is a unit of its own, so with no tool calls both are empty and planning is a walk
    over three lists.
    """

    seqs: Sequence[int]
    tokens: Sequence[int]
    system: Sequence[bool]
    members: dict[int, tuple[int, ...]] = field(default_factory=dict)
    absorbed: frozenset[int] = frozenset()

    @property
    def single_units(self) -> bool:
        """True when every unit is one message (no tool call has a result in the snapshot)."""
        return not self.members

    def unit_indices(self, head: int) -> tuple[int, ...]:
        """The indices of the unit whose first message is at ``head``."""
        return self.members.get(head) or (head,)


def _call_ids(message: Message) -> list[str]:
    ids: list[str] = []
    for call in message.tool_calls or ():
        call_id = call.get("id")
        if isinstance(call_id, str) and call_id:
            ids.append(call_id)
    return ids


def _link_units(
    linkers: Sequence[int], message_at: Callable[[int], Message]
) -> tuple[dict[int, tuple[int, ...]], frozenset[int]]:
    """Unit structure from the messages that can link one (see ``group_units``, which this
    mirrors: a tool result joins the unit of the latest assistant message declaring its id)."""
    open_calls: dict[str, int] = {}  # call id -> index of the declaring assistant message
    joined: dict[int, list[int]] = {}
    absorbed: set[int] = set()
    for index in linkers:
        message = message_at(index)
        if message.role is Role.TOOL and message.tool_call_id in open_calls:
            head = open_calls[message.tool_call_id]
            joined.setdefault(head, [head]).append(index)
            absorbed.add(index)
            continue
        if message.role is Role.ASSISTANT:
            for call_id in _call_ids(message):
                open_calls[call_id] = index
    return {head: tuple(idx) for head, idx in joined.items()}, frozenset(absorbed)


def _columns_from_messages(messages: Sequence[Message]) -> Columns:
    seqs: list[int] = []
    tokens: list[int] = []
    system: list[bool] = []
    linkers: list[int] = []
    for index, message in enumerate(messages):
        if message.seq is None:
            raise ValueError(f"message without seq cannot be planned over: {message.role.value}")
        seqs.append(message.seq)
        tokens.append(message.token_count or 0)
        system.append(message.role is Role.SYSTEM)
        if message.role is Role.TOOL or (message.role is Role.ASSISTANT and message.tool_calls):
            linkers.append(index)
    if not linkers:
        return Columns(seqs, tokens, system)
    members, absorbed = _link_units(linkers, lambda index: messages[index])
    return Columns(seqs, tokens, system, members, absorbed)


class StoredMessages(Sequence[Message]):
    """The elements of a memory's list as read by a snapshot, decoded into :class:`Message` on
    first access (and cached). Indexing and iteration behave as for a tuple of messages."""

    __slots__ = ("_columns", "_decoded", "_keyring", "_memory_id", "_raw")

    def __init__(
        self,
        raw: Sequence[bytes | str],
        *,
        memory_id: str | None = None,
        keyring: KeyRing | None = None,
    ) -> None:
        # memory_id and keyring: encrypted elements open for their memory (the headers the
        # columns come from stay in clear, so planning decrypts nothing).
        self._raw = raw
        self._memory_id = memory_id
        self._keyring = keyring
        self._decoded: list[Message | None] = [None] * len(raw)
        self._columns: Columns | None = None

    def __len__(self) -> int:
        return len(self._raw)

    @overload
    def __getitem__(self, index: int) -> Message: ...

    @overload
    def __getitem__(self, index: slice) -> list[Message]: ...

    def __getitem__(self, index: int | slice) -> Message | list[Message]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self._raw)))]
        message = self._decoded[index]
        if message is None:
            message = Message.from_wire(
                self._raw[index], memory_id=self._memory_id, keyring=self._keyring
            )
            self._decoded[index] = message
        return message

    def __iter__(self) -> Iterator[Message]:
        for index in range(len(self._raw)):
            yield self[index]

    def __repr__(self) -> str:
        return f"StoredMessages({len(self._raw)} elements, {self.decoded} decoded)"

    @property
    def decoded(self) -> int:
        """How many elements have been decoded so far (planning a plain list decodes none)."""
        return sum(1 for m in self._decoded if m is not None)

    @property
    def columns(self) -> Columns:
        """The planning columns, from the element headers (computed once)."""
        if self._columns is None:
            self._columns = self._header_columns() or _columns_from_messages(self)
        return self._columns

    def _header_columns(self) -> Columns | None:
        if self._raw and not isinstance(self._raw[0], bytes):
            return None  # a client decoding replies to str: plan from decoded messages
        raw_elements = cast(Sequence[bytes], self._raw)
        seqs: list[int] = []
        tokens: list[int] = []
        roles: list[bytes] = []
        add_seq, add_tokens, add_role = seqs.append, tokens.append, roles.append
        match = _HEADER.match
        for raw in raw_elements:
            header = match(raw)
            if header is None:
                return None
            seq, token_count, role = header.groups()
            add_seq(int(seq))
            add_tokens(int(token_count))
            add_role(role)
        system = [role == _SYSTEM for role in roles]
        # One search over the whole list first: most snapshots hold no tool call at all.
        if _TOOL not in roles and _TOOL_CALLS_KEY not in b"".join(raw_elements):
            return Columns(seqs, tokens, system)
        linkers = [
            index
            for index, role in enumerate(roles)
            if role == _TOOL or (role == _ASSISTANT and _TOOL_CALLS_KEY in raw_elements[index])
        ]
        members, absorbed = _link_units(linkers, lambda index: self[index])
        return Columns(seqs, tokens, system, members, absorbed)


def columns_of(messages: Sequence[Message]) -> Columns:
    """The planning columns of ``messages`` (a snapshot's list, in seq order).

    Raises :class:`ValueError` for a message the store never numbered (``seq`` is None).
    """
    if isinstance(messages, StoredMessages):
        return messages.columns
    return _columns_from_messages(messages)


def list_tokens(messages: Sequence[Message]) -> int:
    """Sum of the stored token counts of ``messages`` (a missing count is 0)."""
    if isinstance(messages, StoredMessages):
        return sum(messages.columns.tokens)
    return sum(m.token_count or 0 for m in messages)


def position_of_seq(columns: Columns, seq: int) -> int | None:
    """The list index of ``seq`` (seqs ascend along the list), or None when it is not there."""
    seqs = columns.seqs
    index = bisect_left(seqs, seq)
    if index < len(seqs) and seqs[index] == seq:
        return index
    return None


def messages_with_seqs(messages: Sequence[Message], seqs: Sequence[int]) -> list[Message]:
    """The messages of ``messages`` whose seq is in ``seqs``, in list order; decodes only those."""
    wanted = set(seqs)
    columns = columns_of(messages)
    return [messages[i] for i, seq in enumerate(columns.seqs) if seq in wanted]


def seq_runs(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """``seqs`` as runs of consecutive integers, ``(first, last)`` inclusive, ascending.

    A flush names a prefix of the list, which is one run (seqs are consecutive unless messages
    were removed from the middle before), so the commit sends two numbers instead of hundreds.
    """
    runs: list[tuple[int, int]] = []
    ordered = sorted(set(seqs))
    if not ordered:
        return runs
    first = last = ordered[0]
    for seq in ordered[1:]:
        if seq != last + 1:
            runs.append((first, last))
            first = seq
        last = seq
    runs.append((first, last))
    return runs
