"""Value objects: messages and the results the client returns. Frozen; each owns its wire format.

Wire format of a stored message (one JSON string per LIST element), with short field names
because they are repeated in every element (docs/performance.md, memory per message). ``s``
(seq) is always the first field and ``t`` (token count) the second, so Lua scripts read both with
one ``string.match`` and never decode JSON::

    {"s":17,"t":12,"r":"user","c":"hi","ts":1732550000123, ...}

=====  ==============  ====================================================================
wire   field           notes
=====  ==============  ====================================================================
``s``  ``seq``         assigned by the append script, which splices ``{"s":N,`` in front
``t``  ``token_count`` the one per-message convention of :mod:`memory_engine.tokens`
``r``  ``role``        ``system`` / ``user`` / ``assistant`` / ``tool``
``c``  ``content``
``ts`` ``created_at``  integer milliseconds since the epoch
``n``  ``name``        optional
``i``  ``tool_call_id`` optional
``k``  ``tool_calls``  optional, provider (OpenAI) shape
``m``  ``metadata``    optional
``x``  (sealed)        encrypted form only: an envelope holding ``c``, ``n``, ``i``, ``k``, ``m``
=====  ==============  ====================================================================

Encrypted form (a key ring is configured, docs/encryption.md): the fields that carry what was
said (``c``, ``n``, ``i``, ``k``, ``m``) move, as one JSON object, into the AES-GCM envelope ``x``
(:mod:`memory_engine.crypto`, bound to the memory id); ``s``, ``t``, ``r`` and ``ts`` stay in
clear, so the scripts and the planners (``core/columns.py``) read the same header, and ``"k":1``
marks a message that has tool calls (the planners look for ``"k":`` to link tool units)::

    {"s":17,"t":12,"r":"assistant","x":"enc:v1:main:AAEC...","k":1,"ts":1732550000123}

An element with ``x`` is only ever decoded with the key ring; without it, or with the wrong key,
decoding raises :class:`DecryptionError`. An element without ``x`` is plaintext (written before
encryption was switched on; ``memory-engine keys rotate`` encrypts it).

Only this module reads or writes that format; everything else goes through :class:`Message`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from memory_engine.crypto import NO_KEY_RING, Purpose, Sealer, key_id_of
from memory_engine.errors import CorruptMessage, DecryptionError, MessageValidationError

if TYPE_CHECKING:
    from memory_engine.crypto import KeyRing

# One encoder for every message: json.dumps with keyword options builds a new one per call.
# allow_nan=False: NaN/Infinity are not JSON; other readers of the list would choke.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
# What _ENCODER does to a str (ensure_ascii=False): the C escape function when available.
_encode_string = json.encoder.encode_basestring
_MS_PER_S = 1000

MAX_NESTING_DEPTH: Final[int] = 32
"""Deepest nesting of lists and dicts accepted in ``metadata`` and ``tool_calls``, the field
itself being level 1 (``{"a": {"b": [1]}}`` is 3 deep). Well under Python's recursion limit, so
that redaction, JSON encoding and decoding (all recursive) can never hit it."""

# The seq of a stored element is always its first field (spliced by the append script): readable
# even when the rest of the element is not.
_WIRE_SEQ = re.compile(r'^\{"s":(\d+),')
_WIRE_SEQ_BYTES = re.compile(rb'^\{"s":(\d+),')

__all__ = [
    "MAX_NESTING_DEPTH",
    "AppendResult",
    "Message",
    "MemoryStats",
    "Page",
    "Role",
    "check_int_argument",
    "check_nesting_depth",
    "coerce_message",
    "rewrap_wire",
]


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class Message(BaseModel):
    """One conversation message; ``seq``, ``token_count``, ``created_at`` are set by the store."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    role: Role
    content: str
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    seq: int | None = None
    token_count: int | None = None
    created_at: float | None = None

    @field_validator("role", mode="before")
    @classmethod
    def _lower_role(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    # ---- wire format -------------------------------------------------------------------

    def wire_body(self, token_count: int, created_at: float, seal: Sealer | None = None) -> str:
        """The stored JSON object *without* ``s`` (seq): ``{"t":..,"r":..,"c":..,"ts":..}``.

        The append script turns it into ``{"s":N,"t":..}`` by splicing. With ``seal`` (a key
        ring's :meth:`~memory_engine.crypto.KeyRing.sealer` for the memory), the encrypted form
        (module docstring).
        """
        ts = int(created_at * _MS_PER_S)
        if seal is not None:
            return self._sealed_body(token_count, ts, seal)
        plain = not self.metadata and not self.tool_calls
        if plain and self.name is None and self.tool_call_id is None:
            # The common message, formatted directly: the same bytes as the encoder's output
            # (one C string escape instead of a dict walk; ~1 us less per append). The role is
            # one of Role's fixed values.
            content = _encode_string(self.content)
            return f'{{"t":{token_count:d},"r":"{self.role.value}","c":{content},"ts":{ts:d}}}'
        body: dict[str, Any] = {
            "t": token_count,
            "r": self.role.value,
            "c": self.content,
            "ts": ts,
        }
        if self.name is not None:
            body["n"] = self.name
        if self.tool_call_id is not None:
            body["i"] = self.tool_call_id
        if self.tool_calls:
            body["k"] = self.tool_calls
        if self.metadata:
            body["m"] = self.metadata
        return _ENCODER.encode(body)

    def _sealed_body(self, token_count: int, ts: int, seal: Sealer) -> str:
        inner: dict[str, Any] = {"c": self.content}
        if self.name is not None:
            inner["n"] = self.name
        if self.tool_call_id is not None:
            inner["i"] = self.tool_call_id
        if self.tool_calls:
            inner["k"] = self.tool_calls
        if self.metadata:
            inner["m"] = self.metadata
        # An envelope is ASCII without quotes or backslashes: no JSON escaping needed.
        envelope = seal(_ENCODER.encode(inner).encode("utf-8"))
        flag = ',"k":1' if self.tool_calls else ""
        return f'{{"t":{token_count:d},"r":"{self.role.value}","x":"{envelope}"{flag},"ts":{ts:d}}}'

    def to_wire(self) -> str:
        """Full stored form, for messages that already carry ``seq`` and ``token_count``."""
        if self.seq is None or self.token_count is None:
            raise ValueError("to_wire needs seq and token_count")
        body = self.wire_body(self.token_count, self.created_at or 0.0)
        return f'{{"s":{self.seq},{body[1:]}'

    @classmethod
    def from_wire(
        cls, raw: str | bytes, *, memory_id: str | None = None, keyring: KeyRing | None = None
    ) -> Message:
        """Decode a stored message. Stored data was validated when it was written, so this
        skips validation (decoding a 1,000-message snapshot dominated a flush otherwise) and
        checks only what would break its readers: a JSON object with a known role and text
        content, metadata and tool calls within :data:`MAX_NESTING_DEPTH`. Anything else raises
        :class:`CorruptMessage` naming ``memory_id`` and the element's seq.

        An encrypted element (``x``) is opened with ``keyring`` for ``memory_id``; no key ring,
        a missing key or a failed authentication raise :class:`DecryptionError` (memory, seq,
        key id), never a message."""
        try:
            data = json.loads(raw)
            if "x" in data:
                data = _opened(data, raw, memory_id, keyring)
            content = data["c"]
            if not isinstance(content, str):
                raise TypeError("content is not text")
            metadata = data.get("m") or {}
            tool_calls = data.get("k")
            if not isinstance(metadata, dict) or not isinstance(tool_calls, list | None):
                raise TypeError("metadata or tool_calls of the wrong type")
            if metadata:
                check_nesting_depth(metadata, "metadata")
            if tool_calls:
                check_nesting_depth(tool_calls, "tool_calls")
            ts = data.get("ts")
            return cls.model_construct(
                role=Role(data["r"]),
                content=content,
                name=data.get("n"),
                tool_call_id=data.get("i"),
                tool_calls=tool_calls,
                metadata=metadata,
                seq=data.get("s"),
                token_count=data.get("t"),
                created_at=ts / _MS_PER_S if ts is not None else None,
            )
        except (
            ValueError,  # not JSON (JSONDecodeError, UnicodeDecodeError), unknown role
            TypeError,
            KeyError,
            AttributeError,  # a JSON value that is not an object
            RecursionError,  # nested deeper than the decoder can go
            MessageValidationError,  # nested deeper than MAX_NESTING_DEPTH
        ) as exc:
            # The reason is the exception's type only: messages of some (KeyError, ValueError
            # of the role) would quote stored data.
            reason = (
                "nested too deeply"
                if isinstance(exc, MessageValidationError)
                else (type(exc).__name__)
            )
            raise CorruptMessage(memory_id, _wire_seq(raw), reason) from None

    @property
    def is_system(self) -> bool:
        return self.role is Role.SYSTEM

    def public(self) -> dict[str, Any]:
        """A provider-style dict (role, content, name, tool fields) without store bookkeeping."""
        out: dict[str, Any] = {"role": self.role.value, "content": self.content}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.tool_calls:
            out["tool_calls"] = self.tool_calls
        return out


def _opened(
    data: dict[str, Any], raw: str | bytes, memory_id: str | None, keyring: KeyRing | None
) -> dict[str, Any]:
    """``data`` (an encrypted element) with its sealed fields in place of ``x``. Raises
    :class:`DecryptionError`, or the errors ``from_wire`` reports as :class:`CorruptMessage`."""
    envelope = data["x"]
    if not isinstance(envelope, str) or "c" in data:
        raise TypeError("sealed field of the wrong type")
    if keyring is None:
        raise DecryptionError(memory_id, _wire_seq(raw), key_id_of(envelope), NO_KEY_RING)
    try:
        plaintext = keyring.open(envelope, memory_id or "", Purpose.MESSAGE)
    except DecryptionError as exc:
        raise DecryptionError(memory_id, _wire_seq(raw), exc.key_id, exc.reason) from None
    inner = json.loads(plaintext)
    if not isinstance(inner, dict) or not set(inner) <= _SEALED_FIELDS:
        raise TypeError("sealed fields of the wrong shape")
    opened = {k: v for k, v in data.items() if k not in ("x", "k")}
    opened.update(inner)
    return opened


_SEALED_FIELDS = frozenset(("c", "n", "i", "k", "m"))


def rewrap_wire(raw: bytes | str, memory_id: str, keyring: KeyRing) -> bytes | None:
    """A stored element under the key ``keyring`` now chooses for ``memory_id`` (key
    rotation), or ``None`` when it already is. A plaintext element comes back encrypted. The
    header (``s``, ``t``, ``r``) and ``ts`` are unchanged, byte for byte the same fields.
    Raises :class:`DecryptionError` (an envelope the ring cannot open) or
    :class:`CorruptMessage`."""
    target = keyring.key_id_for(memory_id)
    try:
        data = json.loads(raw)
        envelope = data.get("x")
        if envelope is not None:
            if not isinstance(envelope, str):
                raise TypeError("sealed field of the wrong type")
            if key_id_of(envelope) == target:
                return None
            try:
                plaintext = keyring.open(envelope, memory_id, Purpose.MESSAGE)
            except DecryptionError as exc:
                raise DecryptionError(memory_id, _wire_seq(raw), exc.key_id, exc.reason) from None
            data["x"] = keyring.seal(plaintext, memory_id, Purpose.MESSAGE, key_id=target)
            return _ENCODER.encode(data).encode("utf-8")
        if not isinstance(data.get("c"), str):
            raise TypeError("content is not text")
        inner = {k: data[k] for k in ("c", "n", "i", "k", "m") if k in data}
        sealed = keyring.seal(
            _ENCODER.encode(inner).encode("utf-8"), memory_id, Purpose.MESSAGE, key_id=target
        )
        out: dict[str, Any] = {}
        for field, value in data.items():
            if field == "c":
                out["x"] = sealed
                if data.get("k"):
                    out["k"] = 1
            elif field not in _SEALED_FIELDS:
                out[field] = value
        return _ENCODER.encode(out).encode("utf-8")
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise CorruptMessage(memory_id, _wire_seq(raw), type(exc).__name__) from None


def _wire_seq(raw: str | bytes) -> int | None:
    found = _WIRE_SEQ_BYTES.match(raw) if isinstance(raw, bytes) else _WIRE_SEQ.match(raw)
    return int(found.group(1)) if found else None


def check_nesting_depth(value: object, field: str, limit: int = MAX_NESTING_DEPTH) -> None:
    """Raise :class:`MessageValidationError` when lists/dicts in ``value`` nest deeper than
    ``limit`` (``value`` itself is level 1). Iterative, so any depth (or a cycle) is refused
    without recursion; a container shared by several parents is walked again only when reached
    deeper than before, so the walk is bounded by containers x ``limit``."""
    deepest: dict[int, int] = {}  # id(container) -> deepest level it was walked at
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Iterable[object] = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        if depth > limit:
            raise MessageValidationError(
                f"invalid message: {field} is nested more than {limit} levels deep"
            )
        if deepest.get(id(node), 0) >= depth:
            continue
        deepest[id(node)] = depth
        stack.extend(
            (child, depth + 1) for child in children if isinstance(child, dict | list | tuple)
        )


def check_int_argument(name: str, value: object, minimum: int) -> int:
    """``value`` when it is an ``int`` (not a bool) of at least ``minimum``, else
    :class:`MessageValidationError` naming the argument (instead of a raw ``TypeError`` from a
    comparison deeper down)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise MessageValidationError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise MessageValidationError(f"{name} must be >= {minimum}, got {value}")
    return value


def coerce_message(value: Message | dict[str, Any]) -> Message:
    """Accept a :class:`Message` or a plain dict, else raise :class:`MessageValidationError`.

    ``metadata`` and ``tool_calls`` are checked against :data:`MAX_NESTING_DEPTH` first, before
    anything recursive (validation, redaction, JSON encoding) touches them."""
    if isinstance(value, Message):
        if value.metadata:
            check_nesting_depth(value.metadata, "metadata")
        if value.tool_calls:
            check_nesting_depth(value.tool_calls, "tool_calls")
        return value
    if not isinstance(value, dict):
        raise MessageValidationError(
            f"a message must be a Message or a dict, got {type(value).__name__}"
        )
    for field in ("metadata", "tool_calls"):
        if field in value:
            check_nesting_depth(value[field], field)
    try:
        return Message.model_validate(value)
    except RecursionError as exc:
        raise MessageValidationError("invalid message: nested too deeply") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'message'}: {err['msg']}"
            for err in exc.errors()
        )
        raise MessageValidationError(f"invalid message: {problems}") from exc


class AppendResult(BaseModel):
    """What an append did.

    - ``stored``: False when every message had a non-persistable role (nothing was written);
    - ``appended``: how many messages this call stored (``skipped`` counts those not stored);
    - ``message_count`` / ``token_count``: the memory's totals *after* this append (its list, not
      counting the summary), i.e. what the next flush works on;
    - ``message_tokens``: the tokens of the message(s) this call stored, together (0 when nothing
      was stored);
    - ``first_seq`` / ``last_seq``: the seqs assigned to them (``None`` when nothing was stored);
    - ``evicted``: how many of the memory's oldest messages this append evicted to stay under the
      resource's hard ceiling (``ceiling``; counted in the memory's ``evicted_count``);
    - ``flush_requested``: this append crossed the flush threshold and published a flush;
    - ``redacted``: how many redaction pattern matches were replaced.
    """

    model_config = ConfigDict(frozen=True)

    stored: bool
    appended: int
    message_count: int
    token_count: int
    message_tokens: int = 0
    evicted: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    flush_requested: bool = False
    redacted: int = 0
    skipped: int = 0


class Page(BaseModel):
    model_config = ConfigDict(frozen=True)

    messages: list[Message]
    total: int
    offset: int
    limit: int
    has_more: bool


class MemoryStats(BaseModel):
    """Counts from metadata (O(1)); ``ttl_s`` is -1 without expiry, -2 when the memory is gone."""

    model_config = ConfigDict(frozen=True)

    key: str
    resource_id: str
    message_count: int
    token_count: int
    ttl_s: int
    epoch: int = 0
    last_seq: int = 0
    max_tokens: int | None = None
    max_messages: int | None = None
    budget_used: float | None = None
    flush_pending: bool = False
    summary_point: int = 0
    summary_tokens: int = 0
    evicted_count: int = 0
    summarized_count: int = 0
    flushed_count: int = 0
    archived_count: int = 0
    """Messages moved to the archive so far (``archive.enabled``); not a bucket of the
    accounting invariant: each is also counted under the reason that removed it."""
    last_flush_at: float | None = None
    created_at: float | None = None
    updated_at: float | None = None
