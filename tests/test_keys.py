"""Key templates and the key space (pure: no Redis)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memory_engine.errors import KeyTemplateError
from memory_engine.keys import KEY_MAX_LENGTH, KeySpace, project_of, render_key, validate_key

CTX = {
    "project": {"id": "acme"},
    "workflow": {"id": "wf-1", "input": {"user_id": "u42", "conv": "c7"}},
}


def test_renders_against_workflow_context_and_namespaces_by_project() -> None:
    key = render_key(
        "chat:{{ workflow.input.user_id }}:{{ workflow.input.conv }}",
        CTX,
        default_project_id="dflt",
    )
    assert key == "acme:chat:u42:c7"
    assert project_of(key) == "acme"


def test_default_project_id_when_context_has_none() -> None:
    key = render_key(
        "chat:{{ workflow.id }}", {"workflow": {"id": "w9"}}, default_project_id="dflt"
    )
    assert key == "dflt:chat:w9"


def test_missing_variable_is_an_error_never_a_fallback() -> None:
    with pytest.raises(KeyTemplateError, match="user_id"):
        render_key(
            "chat:{{ workflow.input.user_id }}", {"workflow": {"input": {}}}, default_project_id="d"
        )


def test_sandbox_blocks_attribute_escape() -> None:
    with pytest.raises(KeyTemplateError):
        render_key("{{ ''.__class__.__mro__[1].__subclasses__() }}", CTX, default_project_id="d")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("a*b", "forbidden"),
        ("a{b}c", "forbidden"),
        ("a b", "forbidden"),
        ("line\nbreak", "forbidden"),
        ("", "empty"),
        ("x" * (KEY_MAX_LENGTH + 1), "maximum"),
        ("a::b", "empty segment"),
        ("__internal", "reserved"),
    ],
)
def test_invalid_rendered_keys_are_rejected(value: str, problem: str) -> None:
    with pytest.raises(KeyTemplateError, match=problem):
        render_key(
            "{{ workflow.input.v }}", {"workflow": {"input": {"v": value}}}, default_project_id="d"
        )


@pytest.mark.parametrize("project", ["a:b", "", "x" * 65, "a b", "{x}"])
def test_invalid_project_ids_are_rejected(project: str) -> None:
    with pytest.raises(KeyTemplateError, match="project id"):
        render_key("k", {"project": {"id": project}}, default_project_id="d")


def test_context_must_be_a_mapping() -> None:
    with pytest.raises(KeyTemplateError, match="mapping"):
        render_key("k", ["not", "a", "dict"], default_project_id="d")  # type: ignore[arg-type]


def test_keyspace_uses_one_hash_tag_per_memory() -> None:
    keys = KeySpace("mem").memory("acme:chat:u1")
    for k in (keys.msgs, keys.meta, keys.summary, keys.used, keys.flush, keys.lock):
        assert "{acme:chat:u1}" in k
        assert k.startswith("mem:{acme:chat:u1}:")
    assert keys.project == "acme"


def test_two_projects_same_template_get_disjoint_keys() -> None:
    a = render_key(
        "chat:{{ workflow.id }}",
        {"project": {"id": "p1"}, "workflow": {"id": "w"}},
        default_project_id="d",
    )
    b = render_key(
        "chat:{{ workflow.id }}",
        {"project": {"id": "p2"}, "workflow": {"id": "w"}},
        default_project_id="d",
    )
    ks = KeySpace("mem")
    assert {ks.memory(a).msgs, ks.memory(a).meta}.isdisjoint({ks.memory(b).msgs, ks.memory(b).meta})


@given(st.text(max_size=300))
def test_any_input_value_gives_a_valid_key_in_namespace_or_a_typed_error(value: str) -> None:
    try:
        key = render_key(
            "u:{{ workflow.input.v }}",
            {"project": {"id": "p1"}, "workflow": {"input": {"v": value}}},
            default_project_id="d",
        )
    except KeyTemplateError:
        return
    assert project_of(key) == "p1"
    assert key.startswith("p1:u:")
    validate_key(key.split(":", 1)[1])


@pytest.mark.parametrize("project", ["acme", ["acme"], 42])
def test_a_malformed_project_is_an_error_not_the_default_namespace(project: object) -> None:
    with pytest.raises(KeyTemplateError, match="project"):
        render_key("k", {"project": project}, default_project_id="d")


def test_a_non_string_project_id_is_an_error() -> None:
    with pytest.raises(KeyTemplateError, match="project id must be a string"):
        render_key("k", {"project": {"id": 7}}, default_project_id="d")
