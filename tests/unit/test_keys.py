"""Key templates and the key space (pure: no Redis)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memory_engine.errors import KeyTemplateError
from memory_engine.keys import (
    KEY_MAX_LENGTH,
    TEMPLATE_RENDER_TIMEOUT_S,
    KeySpace,
    project_of,
    render_key,
    validate_key,
    validate_memory_id,
)

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


# --- full matches: nothing before or after, nothing stripped (#11.21) ---------------------------


@pytest.mark.parametrize("project", ["acme\n", "acme\r\n", "acme ", " acme", "acme\t"])
def test_a_project_id_with_trailing_or_leading_whitespace_is_refused(project: str) -> None:
    with pytest.raises(KeyTemplateError, match="project id"):
        render_key("k", {"project": {"id": project}}, default_project_id="d")


@pytest.mark.parametrize("value", ["s1\n", "s1\r\n", " s1", "s1 ", "s1\t"])
def test_whitespace_in_a_rendered_key_is_refused_never_stripped(value: str) -> None:
    context = {"project": {"id": "acme"}, "workflow": {"input": {"v": value}}}
    assert render_key("c:{{ workflow.input.v }}", {**context, "workflow": {"input": {"v": "s1"}}},
                      default_project_id="d") == "acme:c:s1"  # fmt: skip
    with pytest.raises(KeyTemplateError, match="whitespace is refused"):
        render_key("c:{{ workflow.input.v }}", context, default_project_id="d")


@pytest.mark.parametrize("template", ["  c:{{ x }}", "c:{{ x }} ", "c:{{ x }}\n\n"])
def test_whitespace_around_a_template_is_refused(template: str) -> None:
    # Jinja drops one newline at the end of a template's source (a YAML block scalar adds one);
    # anything more is part of the key and refused.
    with pytest.raises(KeyTemplateError, match="whitespace"):
        render_key(template, {"x": "s1"}, default_project_id="d")


@pytest.mark.parametrize("key", ["s1\n", "a\nb", "a\rb", "a\u2028b"])
def test_validate_key_is_a_full_match(key: str) -> None:
    with pytest.raises(KeyTemplateError, match="forbidden"):
        validate_key(key)


# --- resolved memory ids (what tasks carry) (#11.16) ----------------------------------------------


def test_a_valid_memory_id_passes() -> None:
    assert validate_memory_id("acme:chat:u1") == "acme:chat:u1"


@pytest.mark.parametrize(
    "memory_id",
    [
        ":x",
        "x",
        "acme\n:k",
        "acme:k\n",
        "acme:{k}",
        "acme:k}\nERROR forged line {x",
        "a b:k",
        "acme:",
        "acme::k",
        "acme:" + "k" * (KEY_MAX_LENGTH + 1),
        7,
        None,
    ],
)
def test_an_invalid_memory_id_is_refused_and_shown_escaped(memory_id: object) -> None:
    with pytest.raises(KeyTemplateError, match="memory id") as caught:
        validate_memory_id(memory_id)
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message


# --- bounded rendering (#11.22) -------------------------------------------------------------------

NESTED_LOOPS = (
    "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}"
    "{% endfor %}{% endfor %}{% endfor %}"
)


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "template",
    [
        "{{ 'a' * 2000000000 }}",
        NESTED_LOOPS,
        "{% set r = range(100000) %}{% for a in r %}{% for b in r %}{% endfor %}{% endfor %}",
        "{% macro m(n) %}{{ m(n) }}{% endmacro %}{{ m(1) }}",
        "{{ ['a'] * 2000000000 }}",
        "{{ 2 ** 100000000 }}",
        "{{ 'x'|center(2000000000) }}",
        "{{ 'x'.ljust(2000000000) }}",
        "{{ '{:>2000000000}'.format('x') }}",
        "{{ '%2000000000s' % 'x' }}",
        "{{ '%*s' % (2000000000, 'x') }}",
        "{{ '%2000000000d'|format(1) }}",
        "{{ ('a' * 4000)|replace('a', 'b' * 4000) }}",
        "{{ ('a' * 4000)|list|join('b' * 4000) }}",
        "{{ [1]|batch(2000000000, 'x')|list }}",
        "{{ range(2000000000)|list }}",
        "{{ x|tojson(2000000000) }}",
        "{{ ('\t' * 4000).expandtabs(2000000) }}",
    ],
)
def test_unbounded_templates_fail_fast_with_a_typed_error(template: str) -> None:
    started = time.monotonic()
    with pytest.raises(KeyTemplateError):
        render_key(template, {"x": "s1"}, default_project_id="d")
    assert time.monotonic() - started < TEMPLATE_RENDER_TIMEOUT_S


def test_an_output_longer_than_a_key_stops_rendering() -> None:
    with pytest.raises(KeyTemplateError, match="maximum"):
        render_key("{{ x }}" * 100, {"x": "y" * 100}, default_project_id="d")


def test_ordinary_templates_still_render() -> None:
    template = (
        "{% if x %}c{% endif %}:{{ x|upper }}:{{ '%s-%05d' % (x, 42) }}:{{ '{}-{}'.format(x, 7) }}"
        ":{{ x|replace('s', 't') }}:{{ x|default('n') }}:{{ 123456789 * 3 }}"
    )
    assert render_key(template, {"x": "s1"}, default_project_id="d") == (
        "d:c:S1:s1-00042:s1-7:t1:s1:370370367"
    )
