"""Privacy: redaction of content, tool arguments and metadata, non-persistable roles, fail-closed
timeouts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from memory_engine.errors import ConfigError, MessageValidationError, RedactionError
from memory_engine.messages import Message, Role
from memory_engine.privacy import Redactor

EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
SSN = r"\b\d{3}-\d{2}-\d{4}\b"


@dataclass(frozen=True)
class Policy:
    """Stands in for resources.PrivacyPolicy: the redactor only duck-types these fields."""

    redact_patterns: tuple[str, ...] = ()
    non_persistable_message_types: tuple[str, ...] = ()
    default_redaction_string: str = "[REDACTED]"


def redactor(*patterns: str, replacement: str = "[REDACTED]", timeout_ms: int = 50) -> Redactor:
    return Redactor.from_policy(
        Policy(redact_patterns=patterns, default_redaction_string=replacement),
        timeout_ms=timeout_ms,
    )


# ---- text ---------------------------------------------------------------------------------------


def test_emails_and_ssns_redacted_with_custom_string() -> None:
    r = redactor(EMAIL, SSN, replacement="<pii>")
    text = "mail bob@example.com or alice.smith+x@mail.example.org, ssn 123-45-6789."
    redacted, count = r.redact_text(text)
    assert redacted == "mail <pii> or <pii>, ssn <pii>."
    assert count == 3


def test_default_replacement_and_no_match() -> None:
    r = redactor(EMAIL)
    assert r.redact_text("write to a@b.io") == ("write to [REDACTED]", 1)
    assert r.redact_text("nothing to see") == ("nothing to see", 0)
    assert r.redact_text("") == ("", 0)


def test_replacement_is_literal() -> None:
    # A template would turn \g<0> back into the secret; the replacement must be taken verbatim.
    r = redactor(r"secret-(\d+)", replacement=r"\g<0> \1 \\")
    assert r.redact_text("id secret-42 end") == (r"id \g<0> \1 \\ end", 1)


def test_patterns_apply_in_order() -> None:
    r = redactor(r"token=\w+", r"\[REDACTED\]", replacement="[REDACTED]")
    # The second pattern sees the first one's output: both substitutions are counted.
    assert r.redact_text("token=abc") == ("[REDACTED]", 2)


def test_invalid_pattern_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"redact_patterns\.1"):
        redactor(EMAIL, r"(unclosed")


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ConfigError):
        redactor(EMAIL, timeout_ms=0)


# ---- no policy: no-op ---------------------------------------------------------------------------


def test_no_policy_is_noop_and_returns_same_object() -> None:
    for r in (Redactor.from_policy(None), Redactor.from_policy(Policy())):
        assert not r.enabled
        message = Message(role="user", content="bob@example.com 123-45-6789")
        same, count = r.redact_message(message)
        assert same is message and count == 0
        assert r.redact_text("bob@example.com") == ("bob@example.com", 0)
        assert r.is_persistable("system")


def test_nothing_matched_returns_same_object() -> None:
    r = redactor(EMAIL)
    assert r.enabled
    message = Message(role="user", content="no secrets", tool_calls=[{"id": "c1"}])
    same, count = r.redact_message(message)
    assert same is message and count == 0


# ---- roles --------------------------------------------------------------------------------------


def test_non_persistable_roles_case_insensitive() -> None:
    policy = Policy(non_persistable_message_types=("system", "TOOL"))
    r = Redactor.from_policy(policy)
    assert not r.enabled  # roles alone need no patterns
    for role in ("system", "System", "SYSTEM", Role.SYSTEM, "tool", "Tool", Role.TOOL):
        assert not r.is_persistable(role)
    for role in ("user", "ASSISTANT", Role.USER, Role.ASSISTANT):
        assert r.is_persistable(role)


# ---- messages -----------------------------------------------------------------------------------


def test_redact_message_content_returns_new_frozen_message() -> None:
    r = redactor(EMAIL, SSN)
    message = Message(role="user", content="I am bob@example.com, ssn 123-45-6789", name="bob")
    redacted, count = r.redact_message(message)
    assert count == 2
    assert redacted is not message
    assert redacted.content == "I am [REDACTED], ssn [REDACTED]"
    assert redacted.name == "bob" and redacted.role is Role.USER
    assert message.content == "I am bob@example.com, ssn 123-45-6789"  # input untouched
    with pytest.raises(ValidationError):  # frozen
        redacted.content = "x"  # type: ignore[misc]


def test_tool_call_arguments_redacted() -> None:
    r = redactor(EMAIL, SSN)
    raw_args = json.dumps({"to": "carol@example.com", "note": "ssn 123-45-6789", "n": 3})
    calls: list[dict[str, Any]] = [
        {"id": "call_1", "type": "function", "function": {"name": "send", "arguments": raw_args}},
        {"id": "call_2", "type": "function", "function": {"name": "noop", "arguments": "{}"}},
        {
            "id": "call_3",
            "type": "function",
            "function": {"name": "mapped", "arguments": {"cc": ["dave@example.com"], "k": 1}},
        },
    ]
    message = Message(role="assistant", content="sending to carol@example.com", tool_calls=calls)
    redacted, count = r.redact_message(message)
    assert count == 4
    assert redacted.content == "sending to [REDACTED]"
    assert redacted.tool_calls is not None
    first = redacted.tool_calls[0]["function"]["arguments"]
    assert json.loads(first) == {"to": "[REDACTED]", "note": "ssn [REDACTED]", "n": 3}
    assert message.tool_calls is not None
    assert redacted.tool_calls[1] is message.tool_calls[1]  # unchanged calls shared, not copied
    assert redacted.tool_calls[2]["function"]["arguments"] == {"cc": ["[REDACTED]"], "k": 1}
    assert redacted.tool_calls[0]["id"] == "call_1"
    # Neither the message nor the caller's tool_calls were mutated.
    assert message.tool_calls[0]["function"]["arguments"] == raw_args
    assert calls[0]["function"]["arguments"] == raw_args
    assert calls[2]["function"]["arguments"] == {"cc": ["dave@example.com"], "k": 1}


def test_metadata_values_are_redacted_keys_and_identifiers_kept() -> None:
    r = redactor(EMAIL)
    metadata = {"contact": "erin@example.com", "ann@example.com": 1, "deep": {"cc": ["f@g.io", 2]}}
    message = Message(role="user", content="hi", name="erin", metadata=metadata)
    redacted, count = r.redact_message(message)
    assert count == 2
    assert redacted.metadata == {
        "contact": "[REDACTED]",
        "ann@example.com": 1,  # keys are the application's identifiers, not values
        "deep": {"cc": ["[REDACTED]", 2]},
    }
    assert redacted.name == "erin" and redacted.content == "hi"
    assert message.metadata["contact"] == "erin@example.com"  # input untouched
    same, none = r.redact_message(Message(role="user", content="hi", metadata={"k": "v"}))
    assert none == 0 and same.metadata == {"k": "v"}


def test_secret_only_in_tool_arguments_is_found() -> None:
    r = redactor(SSN)
    calls = [{"function": {"name": "f", "arguments": '{"ssn": "123-45-6789"}'}}]
    redacted, count = r.redact_message(Message(role="assistant", content="", tool_calls=calls))
    assert count == 1
    assert redacted.content == ""
    assert redacted.tool_calls == [
        {"function": {"name": "f", "arguments": '{"ssn": "[REDACTED]"}'}}
    ]


# ---- timeouts: fail closed ----------------------------------------------------------------------


def test_catastrophic_pattern_raises_redaction_error_naming_it() -> None:
    # A load-time ReDoS screen would refuse (a+)+$; build the redactor directly to prove the
    # per-call timeout still holds the line if such a pattern gets through.
    r = redactor(EMAIL, r"(a+)+$", timeout_ms=20)
    text = "a" * 50_000 + "b"
    with pytest.raises(RedactionError) as caught:
        r.redact_text(text)
    assert "#1" in str(caught.value)
    assert "(a+)+$" in str(caught.value)
    assert text not in str(caught.value)
    assert isinstance(caught.value, MessageValidationError)  # callers refuse the message
    assert isinstance(caught.value.__cause__, TimeoutError)


@pytest.mark.parametrize("length", [4_000, 50_000], ids=["keeps-the-gil", "releases-the-gil"])
def test_timeout_holds_whether_or_not_the_match_releases_the_gil(length: int) -> None:
    # Texts up to 4,096 characters are matched holding the GIL, longer ones release it
    # (privacy.py); the time budget must bound both.
    r = redactor(r"(a+)+$", timeout_ms=20)
    with pytest.raises(RedactionError, match="#0"):
        r.redact_text("a" * length + "b")
    fine = redactor(EMAIL)
    assert fine.redact_text("write to a@b.co " * (length // 16))[1] == length // 16


def test_timeout_in_tool_arguments_also_raises() -> None:
    r = redactor(r"(a+)+$", timeout_ms=20)
    calls = [{"function": {"name": "f", "arguments": "a" * 50_000 + "b"}}]
    with pytest.raises(RedactionError, match="#0"):
        r.redact_message(Message(role="assistant", content="fine", tool_calls=calls))


# ---- property: no email survives ----------------------------------------------------------------

emails = st.from_regex(
    r"[a-z0-9][a-z0-9._+-]{0,15}@[a-z0-9]{1,10}(\.[a-z0-9]{1,8})?\.[a-z]{2,6}", fullmatch=True
)


@settings(max_examples=200, deadline=None)
@given(
    chunks=st.lists(st.text(max_size=40), min_size=1, max_size=6),
    inserted=st.lists(emails, min_size=1, max_size=5),
)
def test_no_email_survives(chunks: list[str], inserted: list[str]) -> None:
    r = redactor(EMAIL)
    parts: list[str] = []
    for i, chunk in enumerate(chunks):
        parts.append(chunk)
        if i < len(inserted):
            parts.append(f" {inserted[i]} ")
    text = "".join(parts)
    redacted, count = r.redact_text(text)
    assert count >= 1
    for email in inserted:
        assert email not in redacted
    assert r.redact_text(redacted)[1] == 0  # nothing email-shaped is left at all
