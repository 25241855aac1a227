"""Tests for memory_engine.registry: loading resource directories and files, lookups, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from memory_engine.errors import ConfigError, ResourceNotFound
from memory_engine.registry import ResourceRegistry, load_resource_file
from memory_engine.resources import FlushingType, ResourceType, parse_resource

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "resources"


def resource_yaml(resource_id: str, extra: str = "") -> str:
    return f"resource: memory\nid: {resource_id}\ntype: buffer\nmax_messages: 10\n{extra}"


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


# ---- the shipped examples -----------------------------------------------------------------------


def test_shipped_resources_load() -> None:
    registry = ResourceRegistry.from_directory(SHIPPED)
    assert registry.ids() == ["agent-scratchpad", "chat-window", "customer-support"]
    assert len(registry) == 3


def test_shipped_support() -> None:
    res = ResourceRegistry.from_directory(SHIPPED).get("customer-support")
    assert res.type is ResourceType.TOKEN_BASED
    assert (res.max_tokens, res.max_messages, res.model) == (4000, 200, "gpt-4o")
    assert res.flushing.type is FlushingType.HYBRID_SUMMARY
    assert res.flushing.summary_tokens == 500
    assert res.token_allocation is not None and res.token_allocation.short_term == 0.6
    assert res.ttl_s == 86400 and res.locking.flush_ttl_s == 120.0
    assert res.trigger_thresholds() == (3200, 160)
    assert res.privacy_policy is not None and len(res.privacy_policy.redact_patterns) == 2
    assert res.default_key_template == (
        "support:{{ workflow.input.user_id }}:{{ workflow.input.conversation_id }}"
    )


def test_shipped_chat_window_and_scratchpad() -> None:
    registry = ResourceRegistry.from_directory(SHIPPED)
    chat = registry.get("chat-window")
    assert chat.type is ResourceType.MESSAGE_COUNT_BASED and chat.max_messages == 50
    assert (
        chat.ttl_s == 3600 and chat.default_key_template == "chat:{{ workflow.input.session_id }}"
    )
    scratch = registry.get("agent-scratchpad")
    assert scratch.type is ResourceType.BUFFER and scratch.eviction.policy == "priority"
    assert scratch.privacy_policy is not None
    assert scratch.privacy_policy.non_persistable_message_types == ("tool",)
    assert scratch.privacy_policy.default_redaction_string == "[SECRET]"
    assert scratch.ttl_s == 1800 and scratch.default_key_template == "scratch:{{ workflow.id }}"


def test_shipped_redaction_patterns_redact() -> None:
    import regex

    policy = ResourceRegistry.from_directory(SHIPPED).get("agent-scratchpad").privacy_policy
    assert policy is not None
    text = "Authorization: Bearer abc.DEF-123 and api_key=xyz and sk-ABCDEFGHIJKLMNOPQRST"
    for pattern in policy.redact_patterns:
        text = regex.sub(pattern, policy.default_redaction_string, text)
    assert "abc.DEF" not in text and "xyz" not in text and "ABCDEFGH" not in text


# ---- loading ------------------------------------------------------------------------------------


def test_multi_document_file(tmp_path: Path) -> None:
    text = (
        resource_yaml("one")
        + "---\n# only a comment: an empty document\n---\n"
        + resource_yaml("two")
    )
    path = write(tmp_path, "many.yaml", text)
    assert [r.id for r in load_resource_file(path)] == ["one", "two"]
    registry = ResourceRegistry.from_directory(tmp_path)
    assert registry.ids() == ["one", "two"]
    assert registry.source_of("two") == f"{path} (document 3)"


def test_multi_document_error_names_document(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "many.yaml",
        resource_yaml("one") + "---\n" + resource_yaml("two", "max_tokens: 0\n"),
    )
    with pytest.raises(ConfigError) as info:
        ResourceRegistry.from_directory(tmp_path)
    assert info.value.source == f"{path} (document 2)"
    assert "document 2" in str(info.value) and "max_tokens: " in str(info.value)
    assert info.value.field == "max_tokens"


def test_single_document_source_is_the_path(tmp_path: Path) -> None:
    path = write(tmp_path, "one.yaml", resource_yaml("one"))
    assert ResourceRegistry.from_directory(tmp_path).source_of("one") == str(path)


def test_yml_extension_loaded_and_others_ignored(tmp_path: Path) -> None:
    write(tmp_path, "a.yml", resource_yaml("from-yml"))
    write(tmp_path, "b.YAML", resource_yaml("upper-case"))
    write(tmp_path, "notes.txt", "not: yaml: at: all")
    write(tmp_path, "c.yaml.bak", resource_yaml("backup"))
    (tmp_path / "nested").mkdir()
    write(tmp_path / "nested", "deep.yaml", resource_yaml("deep"))
    assert ResourceRegistry.from_directory(tmp_path).ids() == ["from-yml", "upper-case"]


def test_empty_directory_and_empty_file(tmp_path: Path) -> None:
    assert len(ResourceRegistry.from_directory(tmp_path)) == 0
    write(tmp_path, "empty.yaml", "# nothing here yet\n")
    assert len(ResourceRegistry.from_directory(tmp_path)) == 0


def test_files_load_in_name_order(tmp_path: Path) -> None:
    write(tmp_path, "b.yaml", resource_yaml("bee"))
    write(tmp_path, "a.yaml", resource_yaml("ay"))
    assert [r.id for r in ResourceRegistry.from_directory(tmp_path)] == ["ay", "bee"]


# ---- errors -------------------------------------------------------------------------------------


def test_duplicate_ids_across_files_name_both(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", resource_yaml("shared"))
    second = write(tmp_path, "b.yml", resource_yaml("shared"))
    with pytest.raises(ConfigError) as info:
        ResourceRegistry.from_directory(tmp_path)
    message = str(info.value)
    assert "'shared'" in message and str(first) in message and str(second) in message


def test_duplicate_ids_in_constructor() -> None:
    res = parse_resource({"resource": "memory", "id": "x", "type": "buffer", "max_messages": 1})
    with pytest.raises(ConfigError, match=r"<resources\[0\]> and in <resources\[1\]>"):
        ResourceRegistry([res, res])


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "resource: memory\nid: x\ntype: [buffer\nmax_messages: 3\n")
    with pytest.raises(ConfigError) as info:
        ResourceRegistry.from_directory(tmp_path)
    message = str(info.value)
    assert str(path) in message and "invalid YAML" in message
    assert "line 4" in message
    assert info.value.source == str(path)


def test_invalid_yaml_in_later_document(tmp_path: Path) -> None:
    path = write(tmp_path, "m.yaml", resource_yaml("ok") + "---\nid: [\n")
    with pytest.raises(ConfigError, match="line") as info:
        load_resource_file(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("body", ["- a\n- b\n", "just a string\n", "42\n"])
def test_document_not_a_mapping(tmp_path: Path, body: str) -> None:
    path = write(tmp_path, "odd.yaml", body)
    with pytest.raises(ConfigError, match="must be a mapping") as info:
        ResourceRegistry.from_directory(tmp_path)
    assert info.value.source == str(path)


def test_invalid_resource_names_file_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yaml", resource_yaml("r", "flushing:\n  type: lru\n  colour: red\n"))
    with pytest.raises(ConfigError) as info:
        ResourceRegistry.from_directory(tmp_path)
    assert str(path) in str(info.value) and "flushing.colour: unknown field" in str(info.value)


def _laughs(levels: int) -> str:
    """A billion-laughs document: each level an anchored list of nine aliases of the previous
    one, so ``levels`` levels stand for 9**levels strings in a few hundred bytes."""
    lines = ['lol0: &lol0 "lol"']
    lines += [f"lol{n}: &lol{n} [{', '.join([f'*lol{n - 1}'] * 9)}]" for n in range(1, levels + 1)]
    return resource_yaml("bomb", "\n".join(lines) + f"\ndescription: *lol{levels}\n")


@pytest.mark.parametrize("levels", [4, 9])
def test_yaml_aliases_refused_quickly_with_a_bounded_message(tmp_path: Path, levels: int) -> None:
    import time
    import traceback

    path = write(tmp_path, "bomb.yaml", _laughs(levels))
    started = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        ResourceRegistry.from_directory(tmp_path)
    rendered = "".join(traceback.format_exception(info.value))
    assert time.perf_counter() - started < 2.0
    assert info.value.source == str(path)
    assert "anchors and aliases" in str(info.value) and "line 5" in str(info.value)
    assert len(rendered) < 10_000, rendered[:2000]


@pytest.mark.parametrize(
    "body",
    [
        "base: &base {type: buffer}\n",  # an anchor alone
        "flushing: &f {type: lru}\neviction: *f\n",
        "defaults: &d {max_messages: 3}\nmerged:\n  <<: *d\n",  # a merge key is an alias too
    ],
)
def test_any_anchor_or_alias_refused(tmp_path: Path, body: str) -> None:
    write(tmp_path, "a.yaml", resource_yaml("a", body))
    with pytest.raises(ConfigError, match="anchors and aliases"):
        ResourceRegistry.from_directory(tmp_path)


def test_validation_error_not_chained_and_bounded(tmp_path: Path) -> None:
    import traceback

    # No aliases: a large but honest document whose values are all wrong.
    huge = "x" * 100_000
    body = "".join(f"k{i}: {huge}\n" for i in range(40)) + f"description: [{huge}]\n"
    path = write(tmp_path, "wide.yaml", resource_yaml("wide", body))
    with pytest.raises(ConfigError) as info:
        load_resource_file(path)
    error = info.value
    assert error.__cause__ is None and error.__suppress_context__
    text = str(error)
    assert "(41 problems)" in text and "... and 21 more" in text
    assert len("".join(traceback.format_exception(error))) < 20_000


def test_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match=r"bin\.yaml"):
        ResourceRegistry.from_directory(tmp_path)


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match="does not exist") as info:
        ResourceRegistry.from_directory(missing)
    assert info.value.source == str(missing)


def test_directory_is_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, "file.yaml", resource_yaml("f"))
    with pytest.raises(ConfigError, match="not a directory"):
        ResourceRegistry.from_directory(path)


def test_load_resource_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_resource_file(tmp_path / "absent.yaml")


# ---- lookups ------------------------------------------------------------------------------------


def test_get_unknown_lists_known_ids() -> None:
    registry = ResourceRegistry.from_directory(SHIPPED)
    with pytest.raises(ResourceNotFound) as info:
        registry.get("nope")
    message = str(info.value)
    assert "'nope'" in message
    for known in ("agent-scratchpad", "chat-window", "customer-support"):
        assert known in message
    assert info.value.known == registry.ids()
    with pytest.raises(ResourceNotFound):
        registry.source_of("nope")


def test_container_protocol() -> None:
    registry = ResourceRegistry.from_directory(SHIPPED)
    assert "chat-window" in registry and "nope" not in registry and 3 not in registry
    assert sorted(r.id for r in registry) == registry.ids()
    assert registry.source_of("chat-window").endswith("chat_window.yaml")
    assert "chat-window" in repr(registry)


def test_from_sources_and_constructor() -> None:
    res = parse_resource({"resource": "memory", "id": "x", "type": "buffer", "max_messages": 1})
    assert ResourceRegistry.from_sources([(res, "somewhere")]).source_of("x") == "somewhere"
    assert ResourceRegistry([res]).source_of("x") == "<resources[0]>"
    assert len(ResourceRegistry()) == 0
