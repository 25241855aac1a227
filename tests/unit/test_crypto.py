"""The cipher of encryption at rest (memory_engine/crypto.py) and the encrypted wire form
(memory_engine/messages.py): round trips, typed errors for tampering, wrong and missing keys,
and the memory id bound as associated data. Real AES-GCM (the `cryptography` package)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from memory_engine.core.columns import StoredMessages
from memory_engine.core.commands import open_summary_hash, rewrap_calls, seal_summary_text
from memory_engine.crypto import (
    ENVELOPE_PREFIX,
    KeyRing,
    Purpose,
    key_id_of,
    keyring_from_settings,
    parse_key_spec,
)
from memory_engine.errors import ConfigError, CorruptMessage, DecryptionError
from memory_engine.messages import Message, rewrap_wire
from memory_engine.settings import Settings

MEMORY = "acme:chat-1"
OTHER = "acme:chat-2"
SECRET = "the launch code is 0000"


def _key() -> bytes:
    return os.urandom(32)


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def _ring(active: str = "k1", **keys: bytes) -> KeyRing:
    return KeyRing(keys or {"k1": _key()}, active)


def _stored(message: Message, seq: int, ring: KeyRing, memory_id: str = MEMORY) -> bytes:
    body = message.wire_body(7, 1732550000.123, ring.sealer(memory_id))
    return f'{{"s":{seq},{body[1:]}'.encode()


# ---- the cipher --------------------------------------------------------------------------


def test_seal_and_open_round_trip_and_envelope_shape() -> None:
    ring = _ring()
    envelope = ring.seal(SECRET.encode(), MEMORY, Purpose.MESSAGE)
    assert envelope.startswith(f"{ENVELOPE_PREFIX}k1:")
    assert SECRET not in envelope
    assert key_id_of(envelope) == "k1"
    assert ring.open(envelope, MEMORY, Purpose.MESSAGE) == SECRET.encode()
    # a fresh nonce every time
    assert ring.seal(SECRET.encode(), MEMORY, Purpose.MESSAGE) != envelope


def test_tampered_ciphertext_is_a_typed_error() -> None:
    ring = _ring()
    envelope = ring.seal(SECRET.encode(), MEMORY, Purpose.MESSAGE)
    prefix, blob = envelope.rsplit(":", 1)
    raw = bytearray(base64.b64decode(blob))
    raw[-1] ^= 1
    tampered = f"{prefix}:{base64.b64encode(bytes(raw)).decode()}"
    with pytest.raises(DecryptionError) as caught:
        ring.open(tampered, MEMORY, Purpose.MESSAGE)
    assert "authentication failed" in str(caught.value)
    assert blob not in str(caught.value)
    with pytest.raises(DecryptionError, match="base64"):
        ring.open(f"{prefix}:@@@", MEMORY, Purpose.MESSAGE)
    with pytest.raises(DecryptionError, match="too short"):
        ring.open(f"{prefix}:AAAA", MEMORY, Purpose.MESSAGE)


def test_wrong_key_and_missing_key_are_typed_errors() -> None:
    envelope = _ring(k1=_key()).seal(SECRET.encode(), MEMORY, Purpose.MESSAGE)
    with pytest.raises(DecryptionError, match="authentication failed") as wrong:
        _ring(k1=_key()).open(envelope, MEMORY, Purpose.MESSAGE)
    assert wrong.value.key_id == "k1" and wrong.value.memory_id == MEMORY
    with pytest.raises(DecryptionError, match="not in the key ring") as missing:
        _ring("k2", k2=_key()).open(envelope, MEMORY, Purpose.MESSAGE)
    assert missing.value.key_id == "k1"


def test_associated_data_binds_the_memory_id_and_the_purpose() -> None:
    ring = _ring()
    envelope = ring.seal(SECRET.encode(), MEMORY, Purpose.MESSAGE)
    with pytest.raises(DecryptionError, match="moved from another memory"):
        ring.open(envelope, OTHER, Purpose.MESSAGE)
    with pytest.raises(DecryptionError):
        ring.open(envelope, MEMORY, Purpose.SUMMARY)


def test_a_stored_element_moved_to_another_memory_fails_to_decode() -> None:
    ring = _ring()
    raw = _stored(Message(role="user", content=SECRET), 3, ring)
    assert Message.from_wire(raw, memory_id=MEMORY, keyring=ring).content == SECRET
    with pytest.raises(DecryptionError) as caught:
        Message.from_wire(raw, memory_id=OTHER, keyring=ring)
    assert caught.value.seq == 3 and caught.value.memory_id == OTHER


def test_project_keys_choose_the_newest_and_shredding_one_project_leaves_others() -> None:
    shared, a1, a2 = _key(), _key(), _key()
    ring = KeyRing({"main": shared, "acme/1": a1, "acme/2": a2}, "main")
    assert ring.key_id_for("acme:x") == "acme/2"
    assert ring.key_id_for("globex:x") == "main"
    acme = ring.seal(b"a", "acme:x", Purpose.MESSAGE)
    globex = ring.seal(b"g", "globex:x", Purpose.MESSAGE)
    shredded = KeyRing({"main": shared}, "main")  # every acme/<n> deleted
    with pytest.raises(DecryptionError, match="not in the key ring"):
        shredded.open(acme, "acme:x", Purpose.MESSAGE)
    assert shredded.open(globex, "globex:x", Purpose.MESSAGE) == b"g"


# ---- key ring configuration --------------------------------------------------------------


def test_key_spec_forms(tmp_path: Path) -> None:
    k1, k2 = _key(), _key()
    inline = parse_key_spec(f"k1:{_b64(k1)}, acme/1:{_b64(k2)}")
    assert inline == {"k1": k1, "acme/1": k2}
    assert parse_key_spec(json.dumps({"k1": _b64(k1), "acme/1": _b64(k2)})) == inline
    lines = f"# rotated 2026-12\nk1:{_b64(k1)}\n\nacme/1:{_b64(k2)}\n"
    assert parse_key_spec(lines) == inline
    path = tmp_path / "keys"
    path.write_text(lines)
    ring = keyring_from_settings(Settings(encryption_keys_file=path, encryption_active_key="k1"))
    assert ring is not None and ring.key_ids == ["acme/1", "k1"]
    assert keyring_from_settings(Settings()) is None


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("k1", "not `id:base64`"),
        ("k1:!!!", "not base64"),
        (f"k1:{_b64(b'short')}", "5 bytes"),
        (f"bad id:{_b64(bytes(32))}", "invalid"),
        (f"k1:{_b64(bytes(32))},k1:{_b64(bytes(32))}", "twice"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_key_specs_are_config_errors_without_key_material(spec: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as caught:
        parse_key_spec(spec)
    assert _b64(bytes(32)) not in str(caught.value)


def test_active_key_rules() -> None:
    k = _key()
    assert KeyRing({"only": k}).active_key_id == "only"  # the one shared key
    with pytest.raises(ConfigError, match="MEMORY_ENCRYPTION_ACTIVE_KEY"):
        KeyRing({"a": k, "b": _key()})
    with pytest.raises(ConfigError, match="not a key of the ring"):
        KeyRing({"a": k}, "zzz")
    with pytest.raises(ConfigError):
        keyring_from_settings(Settings(encryption_active_key="k1"))
    assert "only" in repr(KeyRing({"only": k})) and _b64(k) not in repr(KeyRing({"only": k}))


def test_missing_cryptography_package_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    # An import of a module set to None raises ImportError: what a deployment without the
    # `encryption` extra sees.
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.ciphers.aead", None)
    with pytest.raises(ConfigError, match=r"memory-engine\[encryption\]"):
        KeyRing({"k1": _key()})


# ---- the encrypted wire form ------------------------------------------------------------


def test_encrypted_wire_keeps_the_header_and_hides_every_sealed_field() -> None:
    ring = _ring()
    message = Message(
        role="assistant",
        content=SECRET,
        name="alice",
        tool_calls=[{"id": "call_1", "type": "function", "function": {"arguments": '{"pin": 42}'}}],
        metadata={"email": "alice@example.com"},
    )
    raw = _stored(message, 17, ring)
    assert raw.startswith(b'{"s":17,"t":7,"r":"assistant","x":"enc:v1:k1:')
    for secret in (b"launch", b"alice", b"pin", b"example.com", b"call_1"):
        assert secret not in raw
    assert b'"k":1' in raw  # planners find tool-call messages without decrypting
    back = Message.from_wire(raw, memory_id=MEMORY, keyring=ring)
    assert (back.content, back.name, back.tool_calls, back.metadata) == (
        message.content,
        message.name,
        message.tool_calls,
        message.metadata,
    )
    assert (back.seq, back.token_count, back.created_at) == (17, 7, 1732550000.123)


def test_encrypted_element_without_a_key_ring_is_a_typed_error_never_garbage() -> None:
    raw = _stored(Message(role="user", content=SECRET), 5, _ring())
    with pytest.raises(DecryptionError, match="no encryption keys") as caught:
        Message.from_wire(raw, memory_id=MEMORY)
    assert caught.value.seq == 5 and caught.value.key_id == "k1"
    assert SECRET not in str(caught.value)


def test_corrupt_sealed_field_is_corrupt_message() -> None:
    ring = _ring()
    with pytest.raises(CorruptMessage):
        Message.from_wire(b'{"s":1,"t":1,"r":"user","x":5,"ts":1}', memory_id=MEMORY, keyring=ring)
    sealed = ring.seal(b'["not", "an object"]', MEMORY, Purpose.MESSAGE)
    raw = f'{{"s":1,"t":1,"r":"user","x":"{sealed}","ts":1}}'
    with pytest.raises(CorruptMessage):
        Message.from_wire(raw, memory_id=MEMORY, keyring=ring)


def test_stored_messages_plan_from_clear_headers_and_decrypt_on_access() -> None:
    ring = _ring()
    call = Message(role="assistant", content="", tool_calls=[{"id": "c1", "type": "function"}])
    result = Message(role="tool", content="42", tool_call_id="c1")
    raw = [
        _stored(Message(role="system", content="be brief"), 1, ring),
        _stored(call, 2, ring),
        _stored(result, 3, ring),
    ]
    stored = StoredMessages(raw, memory_id=MEMORY, keyring=ring)
    columns = stored.columns
    assert list(columns.seqs) == [1, 2, 3] and list(columns.system) == [True, False, False]
    assert columns.unit_indices(1) == (1, 2)  # the call and its result stay one unit
    assert stored[2].content == "42"


def test_rewrap_moves_elements_to_the_target_key_and_encrypts_plaintext() -> None:
    old, new = _key(), _key()
    before = KeyRing({"k1": old}, "k1")
    after = KeyRing({"k1": old, "k2": new}, "k2")
    message = Message(role="assistant", content=SECRET, tool_calls=[{"id": "c"}], name="bot")
    raw = _stored(message, 9, before)
    moved = rewrap_wire(raw, MEMORY, after)
    assert moved is not None and b'"x":"enc:v1:k2:' in moved
    assert moved.startswith(b'{"s":9,"t":7,"r":"assistant",') and b'"k":1' in moved
    assert rewrap_wire(moved, MEMORY, after) is None  # already under the target key
    only_new = KeyRing({"k2": new}, "k2")
    assert Message.from_wire(moved, memory_id=MEMORY, keyring=only_new).content == SECRET

    plain = b'{"s":4,"t":3,"r":"user","c":"hello","ts":1732550000123,"n":"al","m":{"a":1}}'
    sealed = rewrap_wire(plain, MEMORY, after)
    assert sealed is not None and b"hello" not in sealed and b'"ts":1732550000123' in sealed
    back = Message.from_wire(sealed, memory_id=MEMORY, keyring=only_new)
    assert (back.content, back.name, back.metadata, back.seq) == ("hello", "al", {"a": 1}, 4)


def test_summary_text_seal_open_and_rewrap_calls() -> None:
    k1 = _key()
    ring = KeyRing({"k1": k1}, "k1")
    stored = seal_summary_text("the user wants a refund", MEMORY, ring)
    assert stored.startswith(ENVELOPE_PREFIX)
    opened = open_summary_hash({"text": stored, "token_count": "5"}, MEMORY, ring)
    assert opened == {"text": "the user wants a refund", "token_count": "5"}
    with pytest.raises(DecryptionError):
        open_summary_hash({"text": stored}, MEMORY, None)
    assert open_summary_hash({"text": "plain"}, MEMORY, None) == {"text": "plain"}
    raw = [_stored(Message(role="user", content=f"m{i}"), i, ring) for i in range(5)]
    assert rewrap_calls(raw, stored.encode(), MEMORY, ring, chunk=2) == []
    rotated = KeyRing({"k1": k1, "k9": _key()}, "k9")
    calls = rewrap_calls(raw, stored.encode(), MEMORY, rotated, chunk=2)
    assert [call[0] for call in calls] == [2, 2, 1]  # 5 elements in chunks of 2
    assert [call[1::3][: call[0]] for call in calls] == [(0, 1), (2, 3), (4,)]  # positions
    assert calls[0][-2] == stored.encode() and key_id_of(calls[0][-1]) == "k9"
    assert calls[1][-2:] == ("", "")  # the summary rides with the first call only
    other = KeyRing({"k1": _key(), "k9": _key()}, "k9")
    with pytest.raises(DecryptionError):  # nothing opens under another k1
        rewrap_calls(raw, None, MEMORY, other, chunk=2)
