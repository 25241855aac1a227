"""Encryption at rest: the key ring and the AES-GCM envelope of stored fields. Pure: no I/O
(:meth:`memory_engine.settings.Settings.encryption_key_spec` reads a key file).

An envelope is one ASCII string::

    enc:v1:<key id>:<base64(nonce || ciphertext || tag)>

AES-256-GCM, a fresh 96-bit random nonce per envelope, and as associated data
``memory-engine:v1:<purpose>:<memory id>`` (``purpose``: ``message`` or ``summary``), so a
ciphertext copied to another memory, or from a summary into a message, fails authentication.
The key id travels in clear: it says which key opens the envelope, and lets rotation find what
is not yet under the current key without decrypting anything.

Key ids: ``[A-Za-z0-9_.-]{1,64}``, or ``<project>/<n>`` for a project's own keys (``n`` a
decimal number). A memory of project ``P`` is encrypted with the ``P/<n>`` of highest ``n`` when
the ring holds one, else with the active key. Deleting every ``P/<n>`` key makes ``P``'s data
unreadable (crypto-shredding) and leaves every other project readable.

Which fields are encrypted, and how a message's stored form carries them, is the wire format's
business (:mod:`memory_engine.messages`); this module only seals and opens bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

from memory_engine.errors import ConfigError, DecryptionError

if TYPE_CHECKING:
    from memory_engine.settings import Settings

__all__ = [
    "ENVELOPE_PREFIX",
    "KEY_BYTES",
    "NO_KEY_RING",
    "KeyRing",
    "Purpose",
    "Sealer",
    "is_envelope",
    "key_id_of",
    "keyring_from_settings",
    "open_text",
    "parse_key_spec",
]

ENVELOPE_PREFIX: Final[str] = "enc:v1:"
KEY_BYTES: Final[int] = 32
"""AES-256: every key is 32 bytes (44 characters of base64)."""
NONCE_BYTES: Final[int] = 12
TAG_BYTES: Final[int] = 16
_NAME = r"[A-Za-z0-9_.\-]{1,64}"
_KEY_ID = re.compile(rf"\A(?:{_NAME}/)?{_NAME}\Z")
_PROJECT_KEY_ID = re.compile(rf"\A({_NAME})/(\d{{1,9}})\Z")

Sealer = Callable[[bytes], str]
"""Seals the plaintext of one field of one memory into an envelope (key and memory bound)."""


class Purpose(StrEnum):
    """What an envelope holds; part of its associated data."""

    MESSAGE = "message"
    SUMMARY = "summary"


def is_envelope(value: object) -> bool:
    return isinstance(value, str) and value.startswith(ENVELOPE_PREFIX)


def key_id_of(envelope: str) -> str | None:
    """The key id an envelope names, or ``None`` when it is not an envelope."""
    if not envelope.startswith(ENVELOPE_PREFIX):
        return None
    key_id, sep, _rest = envelope[len(ENVELOPE_PREFIX) :].partition(":")
    return key_id if sep and _KEY_ID.fullmatch(key_id) else None


def _associated_data(memory_id: str, purpose: Purpose) -> bytes:
    return f"memory-engine:v1:{purpose.value}:{memory_id}".encode()


def parse_key_spec(text: str) -> dict[str, bytes]:
    """Key id -> key from the text of ``MEMORY_ENCRYPTION_KEYS`` (or its file): a JSON object
    ``{"id": "base64"}``, or entries ``id:base64`` separated by commas or new lines (blank lines
    and lines starting with ``#`` skipped). Raises :class:`ConfigError` naming the entry by its
    id or position, never quoting key material."""
    stripped = text.strip()
    entries: list[tuple[str, str]] = []
    if stripped.startswith("{"):
        try:
            loaded = json.loads(stripped)
        except ValueError:
            raise ConfigError("MEMORY_ENCRYPTION_KEYS: not valid JSON") from None
        if not isinstance(loaded, dict) or not all(isinstance(v, str) for v in loaded.values()):
            raise ConfigError("MEMORY_ENCRYPTION_KEYS: JSON must map key ids to base64 strings")
        entries = list(loaded.items())
    else:
        for line in stripped.splitlines():
            if line.strip().startswith("#"):
                continue
            for position, item in enumerate(line.split(","), start=1):
                item = item.strip()
                if not item:
                    continue
                key_id, sep, material = item.partition(":")
                if not sep:
                    raise ConfigError(
                        f"MEMORY_ENCRYPTION_KEYS: entry {position} is not `id:base64`"
                    )
                entries.append((key_id.strip(), material.strip()))
    keys: dict[str, bytes] = {}
    for key_id, material in entries:
        if not _KEY_ID.fullmatch(key_id):
            raise ConfigError(
                f"MEMORY_ENCRYPTION_KEYS: key id {key_id[:80]!a} is invalid: "
                "[A-Za-z0-9_.-]{1,64}, or <project>/<n>"
            )
        if key_id in keys:
            raise ConfigError(f"MEMORY_ENCRYPTION_KEYS: key id {key_id!a} appears twice")
        try:
            key = base64.b64decode(material, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"MEMORY_ENCRYPTION_KEYS: key {key_id!a} is not base64") from None
        if len(key) != KEY_BYTES:
            raise ConfigError(
                f"MEMORY_ENCRYPTION_KEYS: key {key_id!a} is {len(key)} bytes; AES-256 keys are "
                f"{KEY_BYTES} bytes"
            )
        keys[key_id] = key
    return keys


class KeyRing:
    """The keys one process may use: which key seals a memory's fields, and opening envelopes.

    Thread-safe (immutable after construction; ``AESGCM`` objects are stateless)."""

    def __init__(self, keys: Mapping[str, bytes], active_key_id: str | None = None) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:
            raise ConfigError(
                "encryption keys are configured (MEMORY_ENCRYPTION_KEYS) but the `cryptography` "
                "package is not installed: pip install 'memory-engine[encryption]'"
            ) from None
        if not keys:
            raise ConfigError("MEMORY_ENCRYPTION_KEYS holds no key")
        for key_id, key in keys.items():
            if not _KEY_ID.fullmatch(key_id) or len(key) != KEY_BYTES:
                raise ConfigError(f"encryption key {key_id[:80]!a} is invalid")
        shared = sorted(k for k in keys if "/" not in k)
        if active_key_id is None:
            if len(shared) != 1:
                raise ConfigError(
                    "MEMORY_ENCRYPTION_ACTIVE_KEY must name the key that encrypts memories of "
                    f"projects without keys of their own (keys without a project: {shared})"
                )
            active_key_id = shared[0]
        if active_key_id not in keys or "/" in active_key_id:
            raise ConfigError(
                f"MEMORY_ENCRYPTION_ACTIVE_KEY {active_key_id[:80]!a} is not a key of the ring "
                "without a project"
            )
        self.active_key_id = active_key_id
        self._ciphers: dict[str, Any] = {k: AESGCM(v) for k, v in keys.items()}
        # project -> its key id of highest n
        newest: dict[str, tuple[int, str]] = {}
        for key_id in keys:
            found = _PROJECT_KEY_ID.fullmatch(key_id)
            if found:
                project, n = found.group(1), int(found.group(2))
                if project not in newest or n > newest[project][0]:
                    newest[project] = (n, key_id)
        self._project_keys = {project: key_id for project, (_n, key_id) in newest.items()}

    def __repr__(self) -> str:  # never the keys
        return f"KeyRing(ids={sorted(self._ciphers)}, active={self.active_key_id!r})"

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._ciphers)

    def key_id_for(self, memory_id: str) -> str:
        """The key that seals ``memory_id``'s fields: its project's newest key, else the
        active key."""
        project = memory_id.partition(":")[0]
        return self._project_keys.get(project, self.active_key_id)

    def seal(
        self, plaintext: bytes, memory_id: str, purpose: Purpose, *, key_id: str | None = None
    ) -> str:
        """An envelope of ``plaintext`` bound to ``memory_id`` and ``purpose``."""
        key_id = key_id or self.key_id_for(memory_id)
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(
            nonce, plaintext, _associated_data(memory_id, purpose)
        )
        return f"{ENVELOPE_PREFIX}{key_id}:{base64.b64encode(nonce + sealed).decode('ascii')}"

    def sealer(self, memory_id: str, purpose: Purpose = Purpose.MESSAGE) -> Sealer:
        """A :data:`Sealer` for one memory: the key and associated data resolved once."""
        key_id = self.key_id_for(memory_id)
        cipher = self._ciphers[key_id]
        ad = _associated_data(memory_id, purpose)
        prefix = f"{ENVELOPE_PREFIX}{key_id}:"
        urandom, encode = os.urandom, base64.b64encode

        def seal(plaintext: bytes) -> str:
            nonce = urandom(NONCE_BYTES)
            return prefix + encode(nonce + cipher.encrypt(nonce, plaintext, ad)).decode("ascii")

        return seal

    def open(self, envelope: str, memory_id: str, purpose: Purpose) -> bytes:
        """The plaintext of ``envelope``; :class:`DecryptionError` (``seq`` None: the caller
        knows it) when it is malformed, its key is not in the ring, or authentication fails."""
        from cryptography.exceptions import InvalidTag

        key_id = key_id_of(envelope)
        if key_id is None:
            raise DecryptionError(memory_id, None, None, "not a valid envelope")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise DecryptionError(
                memory_id, None, key_id, "its key is not in the key ring (deleted or never set)"
            )
        try:
            blob = base64.b64decode(
                envelope[len(ENVELOPE_PREFIX) + len(key_id) + 1 :], validate=True
            )
        except (binascii.Error, ValueError):
            raise DecryptionError(memory_id, None, key_id, "not valid base64") from None
        if len(blob) < NONCE_BYTES + TAG_BYTES:
            raise DecryptionError(memory_id, None, key_id, "too short")
        try:
            plaintext: bytes = cipher.decrypt(
                blob[:NONCE_BYTES], blob[NONCE_BYTES:], _associated_data(memory_id, purpose)
            )
        except InvalidTag:
            raise DecryptionError(
                memory_id,
                None,
                key_id,
                "authentication failed (wrong key, altered, or moved from another memory)",
            ) from None
        return plaintext

    def open_text(self, value: str, memory_id: str, purpose: Purpose) -> str:
        """A text field as stored: an envelope is opened, anything else is returned as is."""
        if not value.startswith(ENVELOPE_PREFIX):
            return value
        try:
            return self.open(value, memory_id, purpose).decode("utf-8")
        except UnicodeDecodeError:
            raise DecryptionError(memory_id, None, key_id_of(value), "not UTF-8 text") from None


def open_text(value: str, memory_id: str, purpose: Purpose, keyring: KeyRing | None) -> str:
    """:meth:`KeyRing.open_text`, and a :class:`DecryptionError` for an envelope read without
    a key ring (encryption switched off while encrypted data remains)."""
    if keyring is not None:
        return keyring.open_text(value, memory_id, purpose)
    if value.startswith(ENVELOPE_PREFIX):
        raise DecryptionError(memory_id, None, key_id_of(value), NO_KEY_RING)
    return value


NO_KEY_RING: Final[str] = "no encryption keys are configured (MEMORY_ENCRYPTION_KEYS)"


def keyring_from_settings(settings: Settings) -> KeyRing | None:
    """The key ring ``settings`` describe, or ``None`` (encryption off: no keys set). Raises
    :class:`ConfigError` for a malformed ring, an active key that is not in it, or a ring
    without the ``cryptography`` package."""
    spec = settings.encryption_key_spec()
    if spec is None or not spec.strip():
        if settings.encryption_active_key:
            raise ConfigError("MEMORY_ENCRYPTION_ACTIVE_KEY is set but no key ring is")
        return None
    return KeyRing(parse_key_spec(spec), settings.encryption_active_key)
