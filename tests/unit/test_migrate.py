"""Compozy (Go engine) resource files translated to this schema (pure: text in, text out)."""

from __future__ import annotations

import pytest
import yaml

from memory_engine.errors import ConfigError, MigrationError
from memory_engine.keys import render_key
from memory_engine.migrate import migrate_resource_text, translate_go_template
from memory_engine.registry import ResourceRegistry
from memory_engine.resources import parse_resource

# The shape of Compozy's examples/memory/memory/*.yaml and of its docs' configuration page,
# written for this test.
USER_MEMORY = """\
resource: memory
id: user_memory
description: User conversation history
version: 0.1.0

key: "user:{{.workflow.input.user_id}}"

type: token_based
max_tokens: 2000
max_messages: 50

persistence:
  type: redis
  ttl: 168h
"""

SUPPORT_MEMORY = """\
resource: memory
id: support_memory
version: 1.0.0

# Fallback key template for ID-only references
default_key_template: "support:{{ .conversation_id }}:{{.agent.id}}"

type: token_based
max_tokens: 4000
max_messages: 100

flushing_strategy:
  type: fifo
  threshold: 0.9  # flush at 90 %

eviction_policy:
  type: priority
  priority_keywords: ["error", "critical"]
  priority_boost: 2.0
  decay_rate: 0.1

persistence:
  type: redis
  ttl: 24h
  circuit_breaker:
    enabled: true
    timeout: "100ms"

append_ttl: "30m"
clear_ttl: "5m"
flush_ttl: "2h"

privacy_policy:
  redact_patterns:
    # SSN
    - '\\b\\d{3}-\\d{2}-\\d{4}\\b'
  non_persistable_message_types:
    - system
    - tool_internal
  redaction_config:
    default_redaction_string: "[X]"
    preserve_format: true

locking:
  append_ttl: 30s
  flush_ttl: 5m

token_provider:
  provider: openai
  model: gpt-4
  api_key: "${OPENAI_API_KEY}"
  fallback: tiktoken
  settings:
    timeout: "30s"
"""


def test_a_go_template_key_becomes_default_key_template_in_jinja() -> None:
    with pytest.raises(ConfigError, match="key: unknown field; use default_key_template"):
        parse_resource(yaml.safe_load(USER_MEMORY))  # the errors still name the field
    migration = migrate_resource_text(USER_MEMORY)
    assert migration.changed and migration.notes == ()
    # A one-line change: everything else (blank lines, order, quotes) stays as written.
    assert migration.text == USER_MEMORY.replace(
        'key: "user:{{.workflow.input.user_id}}"',
        'default_key_template: "user:{{ workflow.input.user_id }}"',
    )
    resource = parse_resource(yaml.safe_load(migration.text))
    assert resource.default_key_template is not None
    context = {"project": {"id": "acme"}, "workflow": {"input": {"user_id": "u7"}}}
    assert render_key(resource.default_key_template, context, default_project_id="d") == (
        "acme:user:u7"
    )


def test_renamed_sections_and_unread_fields_of_the_docs() -> None:
    migration = migrate_resource_text(SUPPORT_MEMORY)
    data = yaml.safe_load(migration.text)
    resource = parse_resource(data)
    assert data["default_key_template"] == "support:{{ conversation_id }}:{{ agent.id }}"
    assert resource.flushing.type == "simple_fifo"
    assert resource.flushing.summarize_threshold == 0.9
    assert resource.eviction.policy == "priority"
    assert resource.eviction.priority_keywords == ("error", "critical")
    assert resource.privacy_policy is not None
    assert resource.privacy_policy.default_redaction_string == "[X]"
    assert resource.privacy_policy.non_persistable_message_types == ("system",)
    assert resource.locking.flush_ttl_s == 300
    assert resource.token_provider is not None
    assert resource.token_provider.api_key_env == "OPENAI_API_KEY"
    for gone in ("append_ttl", "clear_ttl", "flush_ttl", "flushing_strategy", "eviction_policy"):
        assert gone not in data
    assert "circuit_breaker" not in data["persistence"]
    assert "# Fallback key template for ID-only references" in migration.text
    assert "# flush at 90 %" in migration.text and "# SSN" in migration.text
    notes = "\n".join(migration.notes)
    for dropped in (
        "append_ttl", "flush_ttl", "eviction.priority_boost", "eviction.decay_rate",
        "persistence.circuit_breaker", "preserve_format", "tool_internal",
        "locking.append_ttl", "token_provider.fallback", "token_provider.settings",
    ):  # fmt: skip
        assert dropped in notes


def test_a_migrated_file_migrates_to_itself() -> None:
    once = migrate_resource_text(SUPPORT_MEMORY).text
    again = migrate_resource_text(once)
    assert again.text == once and not again.changed and again.notes == ()


def test_every_document_of_a_file_is_migrated() -> None:
    text = USER_MEMORY + "---\n" + USER_MEMORY.replace("user_memory", "other_memory")
    migrated = migrate_resource_text(text).text
    registry = ResourceRegistry(parse_resource(d) for d in yaml.safe_load_all(migrated))
    assert registry.ids() == ["other_memory", "user_memory"]


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{.a}}", "{{ a }}"),
        ("{{ .a.b_c }}", "{{ a.b_c }}"),
        ("x:{{.a}}:{{ .b.c }}", "x:{{ a }}:{{ b.c }}"),
        ("{{- .a -}}", "{{- a -}}"),
        ("{{ already.jinja }}", "{{ already.jinja }}"),
        ("plain", "plain"),
    ],
)
def test_go_field_references_translate(template: str, expected: str) -> None:
    assert translate_go_template(template) == expected


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ('{{ .a | default "x" }}', "pipeline"),
        ("{{ .a | upper }}", "pipeline"),
        ('{{ printf "%s" .a }}', "function"),
        ("{{ index .a 0 }}", "function"),
        ("{{ if .a }}x{{ end }}", "action"),
        ("{{ . }}", "function"),
        ("{{/* note */}}", "comment"),
        ("{{ .in }}", "keyword"),
        ("{% raw %}{{ .a }}", "Jinja2 syntax"),
    ],
)
def test_what_cannot_be_translated_is_refused_with_a_reason(template: str, reason: str) -> None:
    with pytest.raises(MigrationError, match=reason):
        translate_go_template(template)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            ('key: "user:{{.workflow.input.user_id}}"', 'key: "u:{{ .id | default \\"x\\" }}"'),
            "key",
        ),
        (("  type: redis", "  type: in_memory"), "persistence.type"),
        (("version: 0.1.0", 'version: 0.1.0\ndefault_key_template: "u:{{ x }}"'), "key"),
        (
            (
                "type: token_based",
                "type: token_based\ntoken_provider: {provider: openai, api_key: sk-1}",
            ),
            "token_provider.api_key",
        ),
        (("max_tokens: 2000", "max_tokens: -5"), "max_tokens"),
    ],
)
def test_a_file_that_cannot_be_translated_is_refused_naming_the_field(
    change: tuple[str, str], field: str
) -> None:
    with pytest.raises(MigrationError) as caught:
        migrate_resource_text(USER_MEMORY.replace(*change))
    assert caught.value.field == field
    assert isinstance(caught.value, ConfigError)
