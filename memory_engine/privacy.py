"""Privacy controls applied before a message is stored: non-persistable roles and redaction.

A resource's ``privacy_policy`` gives regular expressions (``redact_patterns``), a replacement
(``default_redaction_string``, ``"[REDACTED]"`` by default) and roles that are never stored
(``non_persistable_message_types``). :class:`Redactor` applies them:

- patterns are compiled once, with the ``regex`` module, whose ``timeout=`` bounds each
  substitution: a pattern that backtracks catastrophically on some input raises
  :class:`~memory_engine.errors.RedactionError` naming the pattern's index. Redaction fails closed:
  content that could not be redacted is never returned, so it is never stored;
- patterns run in order, each on the output of the previous one; the replacement is literal
  (backslashes and group references in it are not interpreted);
- a message's ``content`` is redacted, and so is every tool call's ``function.arguments`` (the raw
  JSON string as sent by the provider, or each string inside it when it is already a mapping), so
  secrets passed to tools are covered too. ``name``, ids and ``metadata`` are not redacted.

Unlike Compozy's Go engine, a timeout never returns the original content: the caller gets an error
and must refuse the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import regex

from memory_engine.errors import ConfigError, RedactionError

if TYPE_CHECKING:
    from memory_engine.messages import Message

__all__ = [
    "DEFAULT_REDACTION_STRING",
    "DEFAULT_REDACTION_TIMEOUT_MS",
    "PrivacyPolicyLike",
    "Redactor",
]

DEFAULT_REDACTION_STRING = "[REDACTED]"
"""Replacement used when a policy does not name one."""

DEFAULT_REDACTION_TIMEOUT_MS = 50
"""Time budget of each pattern's substitution on one text, in milliseconds."""

_RELEASE_GIL_ABOVE_CHARS = 4096


class PrivacyPolicyLike(Protocol):
    """What :meth:`Redactor.from_policy` reads (``memory_engine.resources.PrivacyPolicy`` fits).

    A protocol rather than an import so this module does not depend on the resource schema.
    """

    @property
    def redact_patterns(self) -> Sequence[str]: ...

    @property
    def non_persistable_message_types(self) -> Sequence[str]: ...

    @property
    def default_redaction_string(self) -> str: ...


class Redactor:
    """Applies one privacy policy; immutable and thread-safe, build it once per resource.

    A redactor without patterns (:attr:`enabled` is False) returns its inputs unchanged and
    uncopied, at the cost of one attribute check.
    """

    __slots__ = ("_non_persistable", "_patterns", "_replacement", "_template", "_timeout_s")

    def __init__(
        self,
        patterns: Sequence[str] = (),
        *,
        replacement: str = DEFAULT_REDACTION_STRING,
        non_persistable_roles: Sequence[str] = (),
        timeout_ms: int = DEFAULT_REDACTION_TIMEOUT_MS,
    ) -> None:
        """Compile ``patterns``; raise :class:`ConfigError` naming the first invalid one.

        ``timeout_ms`` bounds each pattern's substitution on each text (must be positive).
        """
        if timeout_ms <= 0:
            raise ConfigError(f"redaction timeout must be positive, got {timeout_ms} ms")
        compiled: list[Any] = []
        for index, pattern in enumerate(patterns):
            try:
                # VERSION0, whatever regex.DEFAULT_VERSION a process sets: the version the
                # resource schema screens patterns for (VERSION1 reads sets differently).
                compiled.append(regex.compile(pattern, flags=regex.VERSION0))
            except (regex.error, TypeError, ValueError) as exc:
                raise ConfigError(
                    f"invalid regular expression {pattern!r}: {exc}",
                    field=f"privacy_policy.redact_patterns.{index}",
                ) from exc
        self._patterns: tuple[Any, ...] = tuple(compiled)
        self._replacement = replacement
        # A template string is faster than a callable per match; escaping backslashes makes it
        # literal, so a replacement like "\\1" or "\\g<0>" cannot echo the matched secret back.
        self._template = replacement.replace("\\", "\\\\")
        self._non_persistable = frozenset(role.lower() for role in non_persistable_roles)
        self._timeout_s = timeout_ms / 1000.0

    @classmethod
    def from_policy(
        cls,
        policy: PrivacyPolicyLike | None,
        *,
        timeout_ms: int = DEFAULT_REDACTION_TIMEOUT_MS,
    ) -> Redactor:
        """A redactor for a resource's ``privacy_policy``; a no-op one for ``None``."""
        if policy is None:
            return cls(timeout_ms=timeout_ms)
        return cls(
            tuple(policy.redact_patterns),
            replacement=policy.default_redaction_string,
            non_persistable_roles=tuple(policy.non_persistable_message_types),
            timeout_ms=timeout_ms,
        )

    @property
    def enabled(self) -> bool:
        """True when there is at least one pattern to apply."""
        return bool(self._patterns)

    @property
    def replacement(self) -> str:
        """The literal text that replaces each match."""
        return self._replacement

    @property
    def timeout_ms(self) -> float:
        """Time budget of each pattern's substitution, in milliseconds."""
        return self._timeout_s * 1000.0

    def __repr__(self) -> str:
        return (
            f"Redactor(patterns={len(self._patterns)}, "
            f"non_persistable={sorted(self._non_persistable)}, timeout_ms={self.timeout_ms:g})"
        )

    # ---- roles ---------------------------------------------------------------------------

    def is_persistable(self, role: str) -> bool:
        """False when messages of ``role`` must never be stored (compared case-insensitively)."""
        if not self._non_persistable:
            return True
        # Role is a StrEnum; str() of it is its value, and lower() handles plain strings.
        return str(role).lower() not in self._non_persistable

    # ---- redaction -----------------------------------------------------------------------

    def redact_text(self, text: str) -> tuple[str, int]:
        """``text`` with every match of every pattern replaced, and the number of replacements.

        Raises :class:`RedactionError` (naming the pattern's index, never the text) when a pattern
        exceeds its time budget; nothing partly redacted is returned in that case.
        """
        if not self._patterns or not text:
            return text, 0
        # A chat-sized text keeps the GIL while it is matched (microseconds): with a timeout the
        # regex module otherwise hands the GIL over on every call, and with eight threads
        # appending that cost ~40 % of redacting appends' throughput. A long text releases it, so
        # one slow match cannot stall the process's other threads for up to the time budget.
        concurrent = len(text) > _RELEASE_GIL_ABOVE_CHARS
        total = 0
        for index, pattern in enumerate(self._patterns):
            try:
                text, replaced = pattern.subn(
                    self._template, text, timeout=self._timeout_s, concurrent=concurrent
                )
            except TimeoutError as exc:
                raise RedactionError(
                    f"redaction pattern #{index} ({pattern.pattern!r}) exceeded its "
                    f"{self.timeout_ms:g} ms budget on a {len(text)}-character text; the message "
                    "was refused (simplify the pattern, e.g. remove nested quantifiers)"
                ) from exc
            total += replaced
        return text, total

    def redact_message(self, message: Message) -> tuple[Message, int]:
        """A copy of ``message`` with content, tool-call arguments and metadata values redacted,
        and the count.

        Returns ``message`` itself when nothing matched (or the redactor is disabled). The input
        is never modified: changed tool calls and metadata are rebuilt, unchanged ones are shared.
        Metadata keys, ``name`` and ``tool_call_id`` are identifiers and stay as they are (a
        provider rejects a ``name`` outside ``[A-Za-z0-9_-]``, which a replacement would put in).
        """
        if not self._patterns:
            return message, 0
        content, total = self.redact_text(message.content)
        update: dict[str, Any] = {}
        if total:
            update["content"] = content
        if message.tool_calls:
            calls, replaced = self._redact_tool_calls(message.tool_calls)
            if replaced:
                update["tool_calls"] = calls
                total += replaced
        if message.metadata:
            metadata, replaced = self._redact_value(message.metadata)
            if replaced:
                update["metadata"] = metadata
                total += replaced
        if not update:
            return message, 0
        return message.model_copy(update=update), total

    def _redact_tool_calls(self, calls: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        total = 0
        out: list[dict[str, Any]] = []
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or "arguments" not in function:
                out.append(call)
                continue
            arguments, replaced = self._redact_value(function["arguments"])
            if replaced:
                call = {**call, "function": {**function, "arguments": arguments}}
                total += replaced
            out.append(call)
        return out, total

    def _redact_value(self, value: Any) -> tuple[Any, int]:
        """Redact a string, or every string inside nested dicts and lists (keys left alone)."""
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, dict):
            total = 0
            new_dict: dict[Any, Any] = {}
            for key, item in value.items():
                new_dict[key], replaced = self._redact_value(item)
                total += replaced
            return (new_dict, total) if total else (value, 0)
        if isinstance(value, list | tuple):
            total = 0
            items: list[Any] = []
            for item in value:
                new_item, replaced = self._redact_value(item)
                items.append(new_item)
                total += replaced
            if not total:
                return value, 0
            return (tuple(items) if isinstance(value, tuple) else items), total
        return value, 0
