"""Translate resource files written for Compozy's Go engine into this engine's schema.

Pure: text in, text out, no I/O (``memory-engine resources migrate`` reads, diffs and writes).
Compozy's docs and examples (``examples/memory/memory/*.yaml``) use names its own code never read;
this engine refuses them with a hint. :func:`migrate_resource_text` renames them and keeps the
file's comments, order and quoting (a round-trip YAML parser):

==========================================  =================================================
Compozy (docs, examples)                    This engine
==========================================  =================================================
``key: "user:{{.workflow.input.id}}"``      ``default_key_template: "user:{{ workflow.input.id }}"``
``{{.a.b}}``, ``{{ .a.b }}`` in templates   ``{{ a.b }}`` (sandboxed Jinja2)
``flushing_strategy:``                      ``flushing:``
``flushing(_strategy).threshold``           ``flushing.summarize_threshold``
``flushing.type: fifo``                     ``flushing.type: simple_fifo``
``eviction_policy: {type: ...}``            ``eviction: {policy: ...}``
``privacy_policy.redaction_config``         ``privacy_policy.default_redaction_string``
``.default_redaction_string``
``token_provider.api_key: "${VAR}"``        ``token_provider.api_key_env: VAR``
==========================================  =================================================

Fields Compozy's engine never read (so dropping them keeps its behaviour) are removed, each with
a note: top-level ``append_ttl``/``clear_ttl``/``flush_ttl``, ``dynamic_ttl``, ``metadata``,
``persistence.circuit_breaker``/``pool``/``sentinel``, ``eviction_policy.priority_boost``/
``decay_rate``, ``redaction_config``'s other fields, ``token_provider.fallback``/``settings``,
``flushing_strategy.target_utilization``/``min_messages``, summary fields of a non-summarizing
strategy, ``locking.append_ttl``/``clear_ttl`` (appends and clears take no lock here) and
message types that are not roles. What cannot be translated is refused with
:class:`~memory_engine.errors.MigrationError` naming the field: Go template functions, pipelines
and actions (``{{ .x | default "y" }}``, ``{{ if ... }}``), ``persistence.type: in_memory``, a
literal API key, a key given twice. The result is validated with the real schema.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError as RoundTripYAMLError

from memory_engine.errors import ConfigError, MigrationError
from memory_engine.messages import Role
from memory_engine.resources import parse_resource

__all__ = ["Migration", "migrate_resource_text", "translate_go_template"]

_GO_ACTION: Final = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
_GO_FIELD_CHAIN: Final = re.compile(r"\A(?:\.[A-Za-z_][A-Za-z0-9_]*)+\Z")
# A Go field reference anywhere in an action: ".x" at the start or after a space, "(", "|", ",".
_GO_FIELD_USE: Final = re.compile(r"(?:\A|[\s(|,])\.(?:[A-Za-z_]|\s|\Z)|\A\.\Z")
_GO_KEYWORDS: Final = frozenset(
    {"if", "else", "end", "range", "with", "define", "template", "block", "break", "continue"}
)
# Names Jinja2 reads as something else than a variable at the start of an expression.
_JINJA_RESERVED: Final = frozenset(
    {"and", "or", "not", "in", "is", "if", "else", "true", "false", "none", "True", "False",
     "None", "loop", "self", "super", "varargs", "kwargs"}
)  # fmt: skip
_ENV_REFERENCE: Final = re.compile(
    r"\A\$\{([A-Z_][A-Z0-9_]*)\}\Z|\A\{\{\s*\.env\.([A-Z_][A-Z0-9_]*)\s*\}\}\Z"
)
_UNREAD: Final = "Compozy's engine never read it"
_ROLES: Final = frozenset(role.value for role in Role)


@dataclass(frozen=True, slots=True)
class Migration:
    """The translated text and one note per change that is not a plain rename."""

    text: str
    changed: bool
    notes: tuple[str, ...] = field(default=())


def translate_go_template(template: str, where: str = "key") -> str:
    """``{{.a.b}}`` and ``{{ .a.b }}`` become ``{{ a.b }}``; actions without a Go field
    reference (already Jinja2) are kept. Raise :class:`MigrationError` for anything else."""

    def one(match: re.Match[str]) -> str:
        left, body, right = match.group(1) or "", match.group(2).strip(), match.group(3) or ""
        shown = match.group(0)
        if body.startswith("/*"):
            raise MigrationError(f"Go template comment {shown!a} has no translation", field=where)
        if _GO_FIELD_CHAIN.fullmatch(body):
            first = body[1:].split(".", 1)[0]
            if first in _JINJA_RESERVED:
                raise MigrationError(
                    f"Go field {body!a} starts with {first!a}, which Jinja2 reads as a keyword",
                    field=where,
                )
            trim_left, trim_right = ("-" if left else ""), ("-" if right else "")
            return f"{{{{{trim_left} {body[1:]} {trim_right}}}}}"
        if _GO_FIELD_USE.search(body) or body.split(" ", 1)[0] in _GO_KEYWORDS:
            if "|" in body:
                kind = "a pipeline"
            elif body.split(" ", 1)[0] in _GO_KEYWORDS:
                kind = "an action"
            else:
                kind = "a function"
            raise MigrationError(
                f"Go template {shown!a} uses {kind}; only field references such as "
                "{{ .a.b }} translate: rewrite it in Jinja2 (e.g. {{ a.b | default('x') }})",
                field=where,
            )
        return shown  # already Jinja2

    for literal in _GO_ACTION.split(template)[::4]:
        if "{%" in literal or "{#" in literal:
            raise MigrationError(
                f"literal text {literal!a} would read as Jinja2 syntax", field=where
            )
    return _GO_ACTION.sub(one, template)


class _Document:
    """One YAML document being migrated, with the notes it produces."""

    def __init__(self, data: CommentedMap, label: str, notes: list[str]) -> None:
        self.data = data
        self.label = label
        self.notes = notes

    def note(self, path: str, what: str) -> None:
        self.notes.append(f"{self.label}{path}: {what}")

    def drop(self, section: CommentedMap, key: str, path: str, why: str = _UNREAD) -> None:
        if key in section:
            del section[key]
            self.note(path, f"removed ({why})")

    def migrate(self) -> None:
        data = self.data
        if "key" in data:
            if "default_key_template" in data:
                raise MigrationError(
                    "both 'key' and 'default_key_template' are set; keep one", field="key"
                )
            _rename(data, "key", "default_key_template")
            where = "key"
        else:
            where = "default_key_template"
        if isinstance(data.get("default_key_template"), str):
            data["default_key_template"] = _keep_style(
                data["default_key_template"],
                translate_go_template(data["default_key_template"], where),
            )
        for name in ("append_ttl", "clear_ttl", "flush_ttl"):
            self.drop(data, name, name, f"{_UNREAD}; lock TTLs go under 'locking'")
        for name in ("dynamic_ttl", "metadata"):
            self.drop(data, name, name)
        self._flushing()
        self._eviction()
        self._persistence()
        self._privacy()
        self._locking()
        self._token_provider()

    def _flushing(self) -> None:
        data = self.data
        if "flushing_strategy" in data:
            if "flushing" in data:
                raise MigrationError(
                    "both 'flushing_strategy' and 'flushing' are set; keep one",
                    field="flushing_strategy",
                )
            _rename(data, "flushing_strategy", "flushing")
        section = data.get("flushing")
        if not isinstance(section, CommentedMap):
            return
        if "threshold" in section:
            if "summarize_threshold" in section:
                raise MigrationError(
                    "both 'threshold' and 'summarize_threshold' are set; keep one",
                    field="flushing.threshold",
                )
            _rename(section, "threshold", "summarize_threshold")
        if section.get("type") == "fifo":
            section["type"] = "simple_fifo"
        for name in ("target_utilization", "min_messages"):
            self.drop(section, name, f"flushing.{name}")
        if section.get("type", "simple_fifo") != "hybrid_summary":
            for name in ("summary_tokens", "summarize_oldest_percent"):
                why = f"{_UNREAD} for a {section.get('type', 'simple_fifo')} strategy"
                self.drop(section, name, f"flushing.{name}", why)

    def _eviction(self) -> None:
        data = self.data
        if "eviction_policy" in data:
            if "eviction" in data:
                raise MigrationError(
                    "both 'eviction_policy' and 'eviction' are set; keep one",
                    field="eviction_policy",
                )
            _rename(data, "eviction_policy", "eviction")
        section = data.get("eviction")
        if not isinstance(section, CommentedMap):
            return
        if "type" in section and "policy" not in section:
            _rename(section, "type", "policy")
        for name in ("priority_boost", "decay_rate"):
            self.drop(section, name, f"eviction.{name}")

    def _persistence(self) -> None:
        section = self.data.get("persistence")
        if not isinstance(section, CommentedMap):
            return
        if section.get("type") == "in_memory":
            raise MigrationError(
                "'in_memory' has no translation: this engine stores memories in Redis only",
                field="persistence.type",
            )
        for name in ("circuit_breaker", "pool", "sentinel"):
            self.drop(section, name, f"persistence.{name}")

    def _privacy(self) -> None:
        section = self.data.get("privacy_policy")
        if not isinstance(section, CommentedMap):
            return
        config = section.get("redaction_config")
        if isinstance(config, CommentedMap):
            replacement = config.get("default_redaction_string")
            if replacement is not None:
                if "default_redaction_string" in section:
                    raise MigrationError(
                        "default_redaction_string is set twice; keep one",
                        field="privacy_policy.redaction_config.default_redaction_string",
                    )
                section["default_redaction_string"] = replacement
            others = [name for name in config if name != "default_redaction_string"]
            del section["redaction_config"]
            if others:
                self.note(
                    "privacy_policy.redaction_config",
                    f"removed {', '.join(map(str, others))} ({_UNREAD})",
                )
        types = section.get("non_persistable_message_types")
        if isinstance(types, list):
            unknown = [t for t in types if not (isinstance(t, str) and t.lower() in _ROLES)]
            for item in unknown:
                types.remove(item)
            if unknown:
                self.note(
                    "privacy_policy.non_persistable_message_types",
                    f"removed {', '.join(map(str, unknown))} (not a message role: they never "
                    "matched a message)",
                )

    def _locking(self) -> None:
        section = self.data.get("locking")
        if isinstance(section, CommentedMap):
            why = "appends and clears are single atomic scripts here and take no lock"
            for name in ("append_ttl", "clear_ttl"):
                self.drop(section, name, f"locking.{name}", why)

    def _token_provider(self) -> None:
        section = self.data.get("token_provider")
        if not isinstance(section, CommentedMap):
            return
        for name in ("fallback", "settings"):
            self.drop(section, name, f"token_provider.{name}")
        if "api_key" not in section:
            return
        value = section["api_key"]
        reference = _ENV_REFERENCE.fullmatch(value) if isinstance(value, str) else None
        if "api_key_env" in section:
            # Compozy's resolver read api_key_env first: api_key was never used.
            self.drop(section, "api_key", "token_provider.api_key", "api_key_env takes precedence")
        elif reference:
            position = list(section).index("api_key")
            del section["api_key"]
            section.insert(position, "api_key_env", reference.group(1) or reference.group(2))
        else:
            raise MigrationError(
                "a literal API key cannot stay in a resource file: put it in an environment "
                "variable and name it in api_key_env",
                field="token_provider.api_key",
            )


def _rename(section: CommentedMap, old: str, new: str) -> None:
    """Rename a key in place, keeping its position and its comments."""
    position = list(section).index(old)
    value = section.pop(old)
    comment = section.ca.items.pop(old, None)
    section.insert(position, new, value)
    if comment is not None:
        section.ca.items[new] = comment


def _keep_style(original: Any, text: str) -> Any:
    """``text`` in the quoting style of ``original`` (a ruamel scalar string keeps its quotes)."""
    if text == original:
        return original
    return text if type(original) is str else type(original)(text)


def _sequence_indent(text: str) -> tuple[int, int]:
    """``(sequence, offset)`` indents: whether the file indents ``- item`` under its key."""
    lines = text.splitlines()
    for number, line in enumerate(lines[1:], start=1):
        stripped = line.lstrip(" ")
        if stripped.startswith("- "):
            dash = len(line) - len(stripped)
            previous = lines[number - 1]
            if previous.rstrip().endswith(":"):
                key = len(previous) - len(previous.lstrip(" "))
                return (4, 2) if dash > key else (2, 0)
    return 2, 0


def migrate_resource_text(text: str) -> Migration:
    """Translate a Compozy memory resource file (all its YAML documents) to this schema.

    Raises :class:`MigrationError` (a :class:`ConfigError`, with the field) for what cannot be
    translated, or when the result does not validate; the message says why.
    """
    rt = YAML(typ="rt")
    rt.preserve_quotes = True
    rt.width = 4096
    sequence, offset = _sequence_indent(text)
    rt.indent(mapping=2, sequence=sequence, offset=offset)
    try:
        documents = list(rt.load_all(text))
    except RoundTripYAMLError as exc:
        raise MigrationError(f"invalid YAML: {exc}") from None
    notes: list[str] = []
    several = len(documents) > 1
    for number, document in enumerate(documents, start=1):
        if document is None:
            continue
        label = f"document {number}: " if several else ""
        if not isinstance(document, CommentedMap):
            raise MigrationError(f"{label}a resource document must be a mapping")
        try:
            _Document(document, label, notes).migrate()
        except MigrationError as exc:
            if several:
                raise MigrationError(f"document {number}: {exc}", field=exc.field) from None
            raise
    out = io.StringIO()
    if several:
        rt.explicit_start = text.lstrip().startswith("---")
        rt.dump_all(documents, out)
    elif documents and documents[0] is not None:
        rt.dump(documents[0], out)
    migrated = out.getvalue() if documents and any(d is not None for d in documents) else text
    _validate(migrated)
    return Migration(text=migrated, changed=migrated != text, notes=tuple(notes))


def _validate(text: str) -> None:
    check: Callable[[object], object] = parse_resource
    for number, document in enumerate(yaml.safe_load_all(text), start=1):
        if document is None:
            continue
        try:
            check(document)
        except ConfigError as exc:
            raise MigrationError(
                f"the translated document {number} does not validate: {exc}", field=exc.field
            ) from None
