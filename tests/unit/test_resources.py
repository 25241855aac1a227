"""Tests for memory_engine.resources: the schema, its rules, durations and the pattern screen."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_engine.context_windows import context_window
from memory_engine.errors import ConfigError
from memory_engine.resources import (
    DEFAULT_PRIORITY_KEYWORDS,
    EvictionPolicyType,
    FlushingType,
    MemoryResource,
    ResourceType,
    check_redact_pattern,
    parse_duration,
    parse_resource,
)


def doc(**fields: Any) -> dict[str, Any]:
    """A valid token_based resource with ``fields`` merged over it (None removes a key)."""
    data: dict[str, Any] = {
        "resource": "memory",
        "id": "test",
        "type": "token_based",
        "max_tokens": 1000,
    }
    data.update(fields)
    return {key: value for key, value in data.items() if value is not None}


def rejected(data: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_resource(data, source="res.yaml")
    return info.value


def assert_rejected(data: object, path: str, *fragments: str) -> ConfigError:
    error = rejected(data)
    text = str(error)
    assert f"{path}: " in text, text
    for fragment in fragments:
        assert fragment in text, text
    assert error.source == "res.yaml"
    return error


# ---- the happy path -----------------------------------------------------------------------------


def test_minimal_resource_gets_defaults() -> None:
    res = parse_resource(doc())
    assert res.type is ResourceType.TOKEN_BASED
    assert res.flushing.type is FlushingType.SIMPLE_FIFO
    assert res.flushing.summarize_threshold == 0.8
    assert res.flushing.target_percent == 0.5
    assert res.eviction.policy is EvictionPolicyType.FIFO
    assert res.eviction.priority_keywords == DEFAULT_PRIORITY_KEYWORDS
    assert res.persistence.type == "redis"
    assert res.ttl_s == 86400
    assert res.locking.flush_ttl_s == 300.0
    assert res.privacy_policy is None and res.token_provider is None


def test_resource_is_frozen() -> None:
    res = parse_resource(doc())
    with pytest.raises(ValueError):
        res.max_tokens = 5  # type: ignore[misc]


# ---- one test per rule --------------------------------------------------------------------------


def test_resource_must_be_memory() -> None:
    assert_rejected(doc(resource="agent"), "resource")


@pytest.mark.parametrize("bad_id", ["", "has space", "a/b", "x" * 101, "ключ"])
def test_id_pattern(bad_id: str) -> None:
    assert_rejected(doc(id=bad_id), "id")


def test_type_must_be_known() -> None:
    assert_rejected(doc(type="sliding"), "type")


def test_missing_required_field_named() -> None:
    assert_rejected(doc(type=None), "type")


@pytest.mark.parametrize("field", ["max_tokens", "max_messages"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True, "100"])
def test_limits_are_positive_ints(field: str, value: object) -> None:
    assert_rejected(doc(**{field: value}), field)


def test_token_based_needs_a_token_limit() -> None:
    assert_rejected(doc(max_tokens=None, max_messages=10), "max_tokens", "token_based")


def test_message_count_based_needs_max_messages() -> None:
    data = doc(type="message_count_based", max_tokens=None)
    assert_rejected(data, "max_messages", "message_count_based")


def test_buffer_needs_a_limit() -> None:
    assert_rejected(doc(type="buffer", max_tokens=None), "max_tokens", "buffer")
    assert parse_resource(doc(type="buffer", max_tokens=None, max_messages=5)).max_messages == 5


@pytest.mark.parametrize("ratio", [0, -0.1, 1.01])
def test_max_context_ratio_range(ratio: float) -> None:
    assert_rejected(
        doc(max_tokens=None, max_context_ratio=ratio, model="gpt-4o"), "max_context_ratio"
    )


def test_max_context_ratio_needs_known_model() -> None:
    data = doc(max_tokens=None, max_context_ratio=0.5, model="my-private-llm")
    assert_rejected(data, "max_context_ratio", "'my-private-llm'", "no known context window")


def test_max_context_ratio_needs_a_model() -> None:
    assert_rejected(doc(max_tokens=None, max_context_ratio=0.5), "max_context_ratio", "model")


def test_max_context_ratio_and_max_tokens_exclusive() -> None:
    assert_rejected(doc(max_context_ratio=0.5, model="gpt-4o"), "max_context_ratio", "not both")


def test_hybrid_summary_tokens_default_to_a_tenth_of_the_budget() -> None:
    res = parse_resource(doc(max_tokens=10_000, flushing={"type": "hybrid_summary"}))
    assert res.flushing.summary_tokens == 1000  # 10 % of max_tokens
    # Round trip: the derived value is a plain value of the model.
    assert MemoryResource.model_validate(res.model_dump(exclude_unset=True)) == res


def test_hybrid_summary_tokens_default_to_the_long_term_share() -> None:
    allocation = {"short_term": 0.7, "long_term": 0.2, "system": 0.1}
    data = doc(max_tokens=10_000, token_allocation=allocation, flushing={"type": "hybrid_summary"})
    assert parse_resource(data).flushing.summary_tokens == 2000


def test_hybrid_summary_tokens_default_floor_and_ceiling() -> None:
    # 10 % of 300 is 30, raised to the 64-token floor; 64 fits under half the 150-token target.
    assert parse_resource(doc(max_tokens=300, flushing={"type": "hybrid_summary"})).flushing == (
        parse_resource(
            doc(max_tokens=300, flushing={"type": "hybrid_summary", "summary_tokens": 64})
        ).flushing
    )
    # 100 tokens: target 50, so at most 25 (a flush can still get under its target).
    res = parse_resource(doc(max_tokens=100, flushing={"type": "hybrid_summary"}))
    assert res.flushing.summary_tokens == 25
    # A long_term share above half the target is capped the same way.
    allocation = {"short_term": 0.1, "long_term": 0.8, "system": 0.1}
    data = doc(max_tokens=1000, token_allocation=allocation, flushing={"type": "hybrid_summary"})
    assert parse_resource(data).flushing.summary_tokens == 250


def test_hybrid_summary_tokens_default_without_token_limit() -> None:
    data = doc(
        type="message_count_based",
        max_tokens=None,
        max_messages=20,
        flushing={"type": "hybrid_summary"},
    )
    assert parse_resource(data).flushing.summary_tokens == 512


def test_hybrid_summary_tokens_default_from_context_ratio() -> None:
    # floor(8192 * 0.5) = 4096 for gpt-4: 409 tokens
    data = doc(
        max_tokens=None, max_context_ratio=0.5, model="gpt-4", flushing={"type": "hybrid_summary"}
    )
    assert parse_resource(data).flushing.summary_tokens == 409


def test_hybrid_summary_on_a_one_token_budget_is_refused() -> None:
    data = doc(max_tokens=1, flushing={"type": "hybrid_summary"})
    assert_rejected(data, "flushing.summary_tokens", "too small")


def test_summary_tokens_below_token_limit() -> None:
    data = doc(flushing={"type": "hybrid_summary", "summary_tokens": 1000})
    assert_rejected(data, "flushing.summary_tokens", "below", "(1000)")


def test_summary_tokens_below_ratio_limit() -> None:
    # floor(8192 * 0.1) = 819 for gpt-4
    data = doc(
        max_tokens=None,
        max_context_ratio=0.1,
        model="gpt-4",
        flushing={"type": "hybrid_summary", "summary_tokens": 819},
    )
    assert_rejected(data, "flushing.summary_tokens", "(819)")


def test_hybrid_summary_without_token_limit_is_fine() -> None:
    data = doc(
        type="message_count_based",
        max_tokens=None,
        max_messages=20,
        flushing={"type": "hybrid_summary", "summary_tokens": 300},
    )
    assert parse_resource(data).flushing.summary_tokens == 300


@pytest.mark.parametrize("field", ["summary_tokens", "summarize_oldest_percent"])
def test_hybrid_only_fields_refused_elsewhere(field: str) -> None:
    value = 100 if field == "summary_tokens" else 0.5
    data = doc(flushing={"type": "lru", field: value})
    assert_rejected(data, f"flushing.{field}", "hybrid_summary")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("summarize_threshold", 0),
        ("summarize_threshold", 1.5),
        ("summarize_oldest_percent", 0),
        ("target_percent", 1),
        ("target_percent", 0),
        ("summary_tokens", 0),
    ],
)
def test_flushing_ranges(field: str, value: float) -> None:
    flushing: dict[str, Any] = {"type": "hybrid_summary", "summary_tokens": 100, field: value}
    assert_rejected(doc(flushing=flushing), f"flushing.{field}")


def test_target_below_threshold() -> None:
    data = doc(flushing={"summarize_threshold": 0.5, "target_percent": 0.6})
    assert_rejected(data, "flushing.target_percent", "summarize_threshold")
    data = doc(flushing={"summarize_threshold": 0.5, "target_percent": 0.5})
    assert_rejected(data, "flushing.target_percent", "summarize_threshold")


@pytest.mark.parametrize("strategy", [t.value for t in FlushingType])
@pytest.mark.parametrize(
    ("threshold", "target"),
    [(1.0, 0.5), (0.8, 0.5), (0.6, 0.375), (0.5, 0.3125), (0.2, 0.125), (0.01, 0.00625)],
)
def test_default_target_is_derived_from_the_threshold(
    strategy: str, threshold: float, target: float
) -> None:
    flushing = {"type": strategy, "summarize_threshold": threshold}
    res = parse_resource(doc(flushing=flushing))
    assert res.flushing.target_percent == pytest.approx(target)
    assert res.flushing.target_percent < threshold


@given(st.floats(min_value=0, max_value=1, exclude_min=True, allow_subnormal=False))
def test_every_legal_threshold_is_accepted_alone(threshold: float) -> None:
    res = parse_resource(doc(flushing={"summarize_threshold": threshold}))
    assert 0 < res.flushing.target_percent < threshold


def test_explicit_target_is_kept() -> None:
    data = doc(flushing={"summarize_threshold": 0.5, "target_percent": 0.45})
    assert parse_resource(data).flushing.target_percent == 0.45


def test_flushing_type_known() -> None:
    assert_rejected(doc(flushing={"type": "time_based"}), "flushing.type")


def test_token_allocation_sums_to_one() -> None:
    good = {"short_term": 0.5, "long_term": 0.3, "system": 0.1, "user_defined": {"tools": 0.1}}
    assert parse_resource(doc(token_allocation=good)).token_allocation is not None
    within = {"short_term": 0.6, "long_term": 0.3, "system": 0.1005}
    assert parse_resource(doc(token_allocation=within)).token_allocation is not None
    bad = {"short_term": 0.6, "long_term": 0.3, "system": 0.2}
    assert_rejected(doc(token_allocation=bad), "token_allocation", "sum to 1", "1.1000")


def test_token_allocation_share_range() -> None:
    bad = {"short_term": 1.5, "long_term": -0.5, "system": 0.0}
    assert_rejected(doc(token_allocation=bad), "token_allocation.short_term")


def test_token_allocation_needs_token_budget() -> None:
    data = doc(
        type="message_count_based",
        max_tokens=None,
        max_messages=10,
        token_allocation={"short_term": 0.6, "long_term": 0.3, "system": 0.1},
    )
    assert_rejected(data, "token_allocation", "token budget")


def test_persistence_in_memory_refused_with_reason() -> None:
    data = doc(persistence={"type": "in_memory"})
    assert_rejected(data, "persistence.type", "Redis only")
    assert_rejected(doc(persistence={"type": "postgres"}), "persistence.type")


def test_persistence_ttl_zero_means_no_expiry() -> None:
    assert parse_resource(doc(persistence={"ttl": 0})).ttl_s == 0
    assert parse_resource(doc(persistence={"ttl": "0"})).ttl_s == 0
    assert parse_resource(doc(persistence={"ttl": "1h30m"})).ttl_s == 5400
    # A sub-second TTL must not become "0 = no expiry".
    assert parse_resource(doc(persistence={"ttl": "500ms"})).ttl_s == 1


def test_persistence_ttl_garbage_named() -> None:
    assert_rejected(doc(persistence={"ttl": "soon"}), "persistence.ttl", "'soon'")


def test_flush_lock_ttl_positive() -> None:
    assert_rejected(doc(locking={"flush_ttl": 0}), "locking.flush_ttl", "at least 1ms")
    assert_rejected(doc(locking={"flush_ttl": "-1s"}), "locking.flush_ttl", "'-1s'")


@pytest.mark.parametrize("field", ["append_ttl", "clear_ttl"])
def test_append_and_clear_lock_ttls_are_refused_with_a_reason(field: str) -> None:
    # Accepted but inert fields mislead: appends and clears are atomic scripts without a lock.
    assert_rejected(doc(locking={field: "30s"}), f"locking.{field}", "take no lock")


def test_flush_lock_ttl_property() -> None:
    res = parse_resource(doc(locking={"flush_ttl": "2m"}))
    assert res.locking.flush_ttl_s == 120.0


def test_eviction_priority_keywords_normalised() -> None:
    data = doc(eviction={"policy": "priority", "priority_keywords": [" Error", "error", "URGENT"]})
    assert parse_resource(data).eviction.priority_keywords == ("error", "urgent")


def test_eviction_priority_needs_keywords() -> None:
    data = doc(eviction={"policy": "priority", "priority_keywords": []})
    assert_rejected(data, "eviction.priority_keywords", "needs a keyword")
    data = doc(eviction={"policy": "priority", "priority_keywords": [" "]})
    assert_rejected(data, "eviction.priority_keywords", "empty")


def test_eviction_keywords_only_for_priority() -> None:
    data = doc(eviction={"policy": "lru", "priority_keywords": ["x"]})
    assert_rejected(data, "eviction.priority_keywords", "priority")


def test_eviction_policy_known() -> None:
    assert_rejected(doc(eviction={"policy": "random"}), "eviction.policy")


def test_privacy_policy_types_lowercased_and_checked() -> None:
    data = doc(privacy_policy={"non_persistable_message_types": ["TOOL", "System"]})
    policy = parse_resource(data).privacy_policy
    assert policy is not None and policy.non_persistable_message_types == ("tool", "system")
    data = doc(privacy_policy={"non_persistable_message_types": ["robot"]})
    assert_rejected(data, "privacy_policy.non_persistable_message_types", "'robot'")


def test_privacy_policy_bad_pattern_path_has_index() -> None:
    data = doc(privacy_policy={"redact_patterns": [r"\d+", "(unclosed"]})
    error = assert_rejected(data, "privacy_policy.redact_patterns.1", "does not compile")
    assert error.field == "privacy_policy.redact_patterns.1"


def test_privacy_policy_redaction_string() -> None:
    data = doc(privacy_policy={"redact_patterns": [r"\d{4}"], "default_redaction_string": "[X]"})
    policy = parse_resource(data).privacy_policy
    assert policy is not None and policy.default_redaction_string == "[X]"


def test_token_provider_fields() -> None:
    data = doc(
        token_provider={
            "provider": "OpenAI",
            "model": "gpt-4o-mini",
            "api_key_env": "OPENAI_API_KEY",
            "endpoint": "https://api.openai.com/v1",
        }
    )
    res = parse_resource(data)
    assert res.token_provider is not None and res.token_provider.provider == "openai"
    assert res.tokenizer_model == "gpt-4o-mini"
    assert "api_key" not in res.model_dump()["token_provider"]


def test_token_provider_api_key_literal_refused() -> None:
    data = doc(token_provider={"provider": "openai", "api_key": "sk-live-123"})
    error = assert_rejected(data, "token_provider.api_key", "name it in api_key_env")
    assert "sk-live-123" not in str(error)


@pytest.mark.parametrize(
    ("field", "value"),
    [("api_key_env", "openai-key"), ("endpoint", "ftp://x"), ("endpoint", "localhost:8080")],
)
def test_token_provider_bad_values(field: str, value: str) -> None:
    assert_rejected(
        doc(token_provider={"provider": "openai", field: value}), f"token_provider.{field}"
    )


def test_token_provider_needs_provider() -> None:
    assert_rejected(doc(token_provider={"model": "gpt-4o"}), "token_provider.provider")


def test_default_key_template_must_parse() -> None:
    assert_rejected(doc(default_key_template="chat:{{ workflow.id "), "default_key_template")
    ok = parse_resource(doc(default_key_template="chat:{{ workflow.id }}"))
    assert ok.default_key_template == "chat:{{ workflow.id }}"


@pytest.mark.parametrize(
    ("value", "text"), [(1.0, "1.0"), (2, "2"), (0.3, "0.3"), ("1.10", "1.10")]
)
def test_version_numbers_are_kept_as_text(value: object, text: str) -> None:
    assert parse_resource(doc(version=value)).version == text


def test_version_from_unquoted_yaml_number() -> None:
    import yaml

    data = yaml.safe_load("resource: memory\nid: v\ntype: buffer\nmax_messages: 5\nversion: 1.0\n")
    assert parse_resource(data).version == "1.0"


@pytest.mark.parametrize("value", [True, [1], {"major": 1}])
def test_version_other_types_refused(value: object) -> None:
    assert_rejected(doc(version=value), "version")


def test_unknown_keys_rejected_with_path() -> None:
    assert_rejected(doc(colour="blue"), "colour", "unknown field")
    assert_rejected(doc(flushing={"type": "lru", "keep_first": 2}), "flushing.keep_first")
    assert_rejected(doc(persistence={"circuit_breaker": {}}), "persistence.circuit_breaker")
    assert_rejected(
        doc(token_provider={"provider": "x", "fallback": "y"}), "token_provider.fallback"
    )


def test_compozy_doc_keys_get_a_hint() -> None:
    assert_rejected(doc(flushing_strategy={}), "flushing_strategy", "'flushing'")
    assert_rejected(doc(key="x"), "key", "default_key_template")


def test_every_problem_listed_field_is_first() -> None:
    error = rejected(doc(max_messages=0, eviction={"policy": "nope"}, extra=1))
    text = str(error)
    for path in ("max_messages: ", "eviction.policy: ", "extra: "):
        assert path in text
    assert "3 problems" in text
    assert error.field == "max_messages"


def test_not_a_mapping() -> None:
    error = rejected(["resource", "memory"])
    assert error.field is None and "(document)" in str(error)


def test_model_validate_raises_validation_error_with_loc() -> None:
    # Other modules build resources with model_validate; rule errors keep their own location.
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        MemoryResource.model_validate(
            doc(flushing={"type": "hybrid_summary", "summary_tokens": 5000})
        )
    assert info.value.errors()[0]["loc"] == ("flushing", "summary_tokens")


# ---- derived values -----------------------------------------------------------------------------


def test_thresholds_and_targets_tokens_and_messages() -> None:
    res = parse_resource(
        doc(max_tokens=4000, max_messages=200, flushing={"summarize_threshold": 0.75})
    )
    assert res.effective_max_tokens == 4000
    assert res.trigger_thresholds() == (3000, 150)
    assert res.flush_targets() == (1875, 93)  # default target 0.75 * 0.625 = 0.46875


def test_thresholds_untracked_limit_is_zero() -> None:
    res = parse_resource(doc(type="message_count_based", max_tokens=None, max_messages=7))
    assert res.effective_max_tokens is None
    assert res.trigger_thresholds() == (0, 5)  # floor(7 * 0.8)
    assert res.flush_targets() == (None, 3)  # floor(7 * 0.5)


def test_threshold_at_least_one() -> None:
    res = parse_resource(
        doc(max_tokens=1, flushing={"summarize_threshold": 0.5, "target_percent": 0.2})
    )
    assert res.trigger_thresholds() == (1, 0)
    assert res.flush_targets() == (0, None)


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.333, 1.0])
def test_effective_max_tokens_from_context_ratio(ratio: float) -> None:
    res = parse_resource(doc(max_tokens=None, max_context_ratio=ratio, model="gpt-4o"))
    assert res.effective_max_tokens == math.floor(128_000 * ratio)
    tokens, _ = res.trigger_thresholds()
    assert tokens == math.floor(math.floor(128_000 * ratio) * 0.8)


def test_context_ratio_uses_token_provider_model() -> None:
    data = doc(
        max_tokens=None,
        max_context_ratio=0.5,
        token_provider={"provider": "anthropic", "model": "claude-3-5-sonnet-20241022"},
    )
    res = parse_resource(data)
    assert res.effective_max_tokens == 100_000
    assert res.tokenizer_model == "claude-3-5-sonnet-20241022"


def test_tokenizer_model_falls_back_to_model() -> None:
    assert parse_resource(doc(model="gpt-4o")).tokenizer_model == "gpt-4o"
    assert parse_resource(doc()).tokenizer_model is None


# ---- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        ("0", 0.0),
        (30, 30.0),
        (1.5, 1.5),
        ("90", 90.0),
        ("30s", 30.0),
        ("5m", 300.0),
        ("24h", 86400.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("500ms", 0.5),
        ("1m500ms", 60.5),
        ("1.5h", 5400.0),
        (" 2m ", 120.0),
    ],
)
def test_parse_duration_accepts(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [-1, -0.5, "-5s", "", "soon", "5 minutes", "5M", "1h-30m", "s", "1y", True, None, [1],
     float("nan"), float("inf"), 10**400, "9" * 400 + "d"],
)  # fmt: skip
def test_parse_duration_refuses(value: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert repr(value)[:30] in str(info.value)


# ---- redaction pattern screen -------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [r"(a+)+", r"(\w+)*", r"(.*)*", r"(a|aa)+", r"x{5000}", r"x{1001,}", r"(x+x+)+y",
     r"(\w+\s?)+$", r"((a+)?b)+", r"(?:\d+|\w)+", r"(?>(a+)+)"],
)  # fmt: skip
def test_redos_patterns_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match=r"backtrack|too costly"):
        check_redact_pattern(pattern)
    assert_rejected(
        doc(privacy_policy={"redact_patterns": [pattern]}), "privacy_policy.redact_patterns.0"
    )


@pytest.mark.parametrize(
    "pattern",
    [r"\b\d{3}-\d{2}-\d{4}\b", r"[\w.+-]+@[\w-]+\.[\w.]+", r"(?i)api[_-]?key\s*[:=]\s*\S+",
     r"(ab)+", r"(\d{1,3}\.){3}\d{1,3}", r"x{1000}", r"(cat|car)+", r"(a++)+", r"(?>a+)+",
     r"(?:[a-z0-9-]++\.)+[a-z]{2,}", r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+"],
)  # fmt: skip
def test_good_patterns_accepted(pattern: str) -> None:
    assert check_redact_pattern(pattern) == pattern


@pytest.mark.parametrize("pattern", ["", "a*", r"\b", "(x|)"])
def test_patterns_matching_empty_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="empty string"):
        check_redact_pattern(pattern)


@pytest.mark.parametrize(
    "pattern",
    [r"x{e<=9}", r"secret{e<=1}", r"(?:api_key){i<=2}", r"(?:token){s<=1,d<=1}", r"a{e}",
     r"(?x) pass word {e<=2}", r"(?i)(?:ab(?:cd){e<=1})+"],
)  # fmt: skip
def test_fuzzy_patterns_refused(pattern: str) -> None:
    # re reads the braces as literal text, so its screen passes them; regex runs them fuzzy.
    with pytest.raises(ValueError, match="fuzzy matching"):
        check_redact_pattern(pattern)
    assert_rejected(
        doc(privacy_policy={"redact_patterns": ["safe", pattern]}),
        "privacy_policy.redact_patterns.1",
        "fuzzy",
    )


@pytest.mark.parametrize("pattern", [r"(?V1)a", r"(?V0)secret", r"a(?V1)b", r"(?iV1)x"])
def test_inline_version_flags_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="inline version flags"):
        check_redact_pattern(pattern)


def test_escaped_braces_are_literal_and_accepted() -> None:
    assert check_redact_pattern(r"x\{e<=9\}") == r"x\{e<=9\}"


def test_empty_match_screened_with_the_engine_that_runs_it() -> None:
    import regex

    # Whatever reaches the engine, the engine itself must not match the empty string.
    for pattern in (r"x\{e<=9\}", r"\d{3}", r"sk-[A-Za-z0-9]{20,}"):
        assert regex.compile(check_redact_pattern(pattern)).search("") is None


def test_nested_quantifier_message_says_how_to_fix() -> None:
    with pytest.raises(ValueError, match=r"possessive \(a\+\+\) or atomic"):
        check_redact_pattern(r"(?:[a-z0-9-]+\.)+[a-z]{2,}")


def test_pattern_screen_raises_no_warnings() -> None:
    # re's parser warns about "[[" (a possible future nested set); warnings are errors in tests.
    assert check_redact_pattern("[[a]") == "[[a]"


def test_pattern_unparseable_by_re_refused_with_reason() -> None:
    # Valid for `regex` but not for `re`: it cannot be screened, so it is refused.
    with pytest.raises(ValueError, match="cannot be screened"):
        check_redact_pattern(r"\p{L}+@\p{L}+")


# ---- model catalogue ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "window"),
    [("gpt-4o", 128_000), ("GPT-4o-2024-08-06", 128_000), ("gpt-4o-mini", 128_000),
     ("gpt-4", 8_192), ("gpt-4-0613", 8_192), ("gpt-4-turbo-2024-04-09", 128_000),
     ("gpt-3.5-turbo", 16_385), ("o1", 200_000), ("o3-mini", 200_000),
     ("claude-3-5-sonnet-20241022", 200_000), ("claude-sonnet-4-20250514", 200_000),
     ("claude-opus-4-1", 200_000), ("openai/gpt-4o", 128_000), ("llama3:8b", 8_192),
     ("llama3.1:70b", 131_072), ("gpt-4.5-preview", None), ("unknown-model", None), ("", None)],
)  # fmt: skip
def test_context_window(model: str, window: int | None) -> None:
    assert context_window(model) == window


# ---- fuzz: nothing but a resource or a ConfigError ----------------------------------------------

_scalars = (
    st.none() | st.booleans() | st.integers(-(10**6), 10**20) | st.floats() | st.text(max_size=20)
)
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
_FIELDS = [
    "description", "version", "max_tokens", "max_messages",
    "max_context_ratio", "model", "token_allocation", "flushing", "eviction", "persistence",
    "privacy_policy", "locking", "token_provider", "default_key_template",
]  # fmt: skip
_sections = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from([t.value for t in FlushingType] + ["in_memory", "redis"]),
        "policy": st.sampled_from([p.value for p in EvictionPolicyType]),
        "ttl": st.one_of(st.text(max_size=8), st.integers(-5, 10**6), st.floats()),
        "summary_tokens": st.integers(-5, 5000),
        "redact_patterns": st.lists(st.text(alphabet="()[]{}|*+?.\\dwsab0-9^$:=", max_size=12)),
        "api_key": st.text(max_size=5),
        "provider": st.text(max_size=8),
        "short_term": st.floats(0, 1),
    },
)
_documents = st.fixed_dictionaries(
    {
        "resource": st.sampled_from(["memory", "agent"]),
        "id": st.text(max_size=12),
        "type": st.sampled_from([t.value for t in ResourceType] + ["x"]),
    },
    optional={name: st.one_of(_values, _sections) for name in _FIELDS}
    | {"max_tokens": st.integers(-5, 10**6), "max_context_ratio": st.floats(-1, 2)},
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_values, _documents))
def test_fuzz_only_config_errors(data: object) -> None:
    try:
        res = parse_resource(data, source="fuzz.yaml")
    except ConfigError as error:
        assert error.source == "fuzz.yaml"
        assert str(error)
    else:
        assert isinstance(res, MemoryResource)
        res.trigger_thresholds()
        res.flush_targets()


def test_anthropic_token_provider_needs_a_model() -> None:
    assert_rejected(
        doc(token_provider={"provider": "anthropic", "api_key_env": "ANTHROPIC_API_KEY"}),
        "token_provider.model",
        "needs a model",
    )


@pytest.mark.parametrize("strategy", [t.value for t in FlushingType])
@pytest.mark.parametrize("policy", [p.value for p in EvictionPolicyType])
def test_uses_recorded_when_the_strategy_or_the_eviction_policy_needs_them(
    strategy: str, policy: str
) -> None:
    res = parse_resource(doc(flushing={"type": strategy}, eviction={"policy": policy}))
    assert res.records_uses == (strategy in ("lru", "token_aware_lru") or policy == "lru")
