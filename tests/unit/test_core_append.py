"""The append's decisions without Redis (the seam the sync and async clients share): a batch is
validated, redacted and counted, turned into the script's arguments, and the script's reply,
canned here, is read back into an outcome and a result."""

from __future__ import annotations

import json

import pytest

from memory_engine.core.append import (
    AppendPlan,
    BatchLimits,
    append_result,
    decode_reply,
    prepare_batch,
    script_arguments,
)
from memory_engine.errors import MemoryErased, MemoryFull, MessageValidationError
from memory_engine.keys import KeySpace
from memory_engine.messages import Message
from memory_engine.privacy import Redactor
from memory_engine.resources import parse_resource
from memory_engine.tokens import counter_for

RESOURCE = parse_resource(
    {
        "resource": "memory",
        "id": "conv",
        "type": "message_count_based",
        "max_messages": 10,
        "model": "gpt-4o",
        "privacy_policy": {
            "redact_patterns": [r"\d{3}-\d{2}-\d{4}"],
            "non_persistable_message_types": ["tool"],
        },
        "default_key_template": "c:{{ workflow.input.conv }}",
    }
)
LIMITS = BatchLimits(max_message_bytes=1000, max_batch_messages=3, max_batch_bytes=2000)


def plan() -> AppendPlan:
    return AppendPlan.for_resource(
        RESOURCE, Redactor.from_policy(RESOURCE.privacy_policy), counter_for(RESOURCE.model)
    )


def test_a_batch_is_redacted_counted_and_filtered_before_any_io() -> None:
    batch = prepare_batch(
        [
            {"role": "user", "content": "my SSN is 123-45-6789"},
            {"role": "tool", "content": "secret tool output", "tool_call_id": "c1"},
        ],
        plan(),
        LIMITS,
        now=100.0,
    )
    assert (len(batch.pending), batch.skipped, batch.redacted) == (1, 1, 1)
    body = batch.pending[0].body
    assert "123-45-6789" not in body and "my SSN is [REDACTED]" in json.loads(body)["c"]
    # The count is of the text as stored (after redaction).
    redacted = Message(role="user", content="my SSN is [REDACTED]")
    assert batch.pending[0].token_count == counter_for("gpt-4o").count_message(redacted)


def test_limits_are_checked_before_anything_is_sent() -> None:
    with pytest.raises(MessageValidationError, match="max_batch_messages"):
        prepare_batch([{"role": "user", "content": "x"}] * 4, plan(), LIMITS)
    with pytest.raises(MessageValidationError, match="max_message_bytes"):
        prepare_batch([{"role": "user", "content": "x" * 1001}], plan(), LIMITS)
    with pytest.raises(MessageValidationError, match="no messages"):
        prepare_batch([], plan(), LIMITS)


def test_script_arguments_follow_the_scripts_header_and_replies_decode() -> None:
    p = plan()
    batch = prepare_batch([{"role": "user", "content": "hello"}], p, LIMITS, now=5.0)
    keys = KeySpace("pfx").memory("acme:c1")
    args = script_arguments(
        keys,
        batch.pending,
        resource_id="conv",
        ttl_s=p.ttl_s,
        token_threshold=p.token_threshold,
        message_threshold=p.message_threshold,
        marker_ttl_s=60,
        tracks_use=p.tracks_use,
        token_ceiling=p.token_ceiling,
        message_ceiling=p.message_ceiling,
        refuse_over_ceiling=False,
        now=5.0,
    )
    assert args.keys == (keys.msgs, keys.meta, keys.summary, keys.used, keys.flush, keys.archive)
    assert args.static[1] == "conv" and args.static[4] == 60_000
    assert args.static[9] == ""  # archive off: the script does nothing more
    assert args.dynamic[:4] == [b"5.0", b"1", b"0", b"%d" % batch.pending[0].token_count]
    # A canned reply of append.lua: first,last,count,total,flush,epoch,created,evicted
    outcome, created = decode_reply(b"7,7,3,42,1,2,0,1", "acme:c1", args)
    assert (outcome.first_seq, outcome.message_count, outcome.token_count) == (7, 3, 42)
    assert outcome.flush_requested and not outcome.flush_deduplicated and not created
    assert outcome.evicted == 1 and outcome.message_tokens == args.message_tokens
    result = append_result(outcome, batch, flush_requested=True)
    assert (result.stored, result.appended, result.last_seq, result.evicted) == (True, 1, 7, 1)
    # "flush == 2": at the threshold, but a flush was already pending.
    assert decode_reply("8,8,4,50,2,2,1,0", "acme:c1", args)[0].flush_deduplicated
    with pytest.raises(MemoryFull, match="nothing was written"):
        decode_reply(b"R,40,900", "acme:c1", args)
    with pytest.raises(MemoryErased, match="nothing was written"):
        decode_reply(b"E", "acme:c1", args)
