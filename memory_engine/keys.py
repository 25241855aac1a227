"""The key space: the only module that formats Redis key strings.

A *memory id* is ``<project>:<key>``, where ``<key>`` is the rendered key template. The project id
never contains ``:``, so the first colon always marks the namespace boundary and no rendered key can
reach another project's memory. Every key of one memory carries the memory id as a Redis Cluster
hash tag, so the per-memory scripts touch one slot.

=====================================  ======  ==============================================
Key                                    Type    Contents
=====================================  ======  ==============================================
``<p>:{<memory id>}:msgs``             LIST    JSON messages, oldest first; each has ``seq``
``<p>:{<memory id>}:meta``             HASH    message_count, token_count, system_count,
                                               seq (last), epoch, created_at, updated_at,
                                               resource_id, summary_tokens, flushed,
                                               summarized, evicted, cleared, replaced,
                                               last_flush_at, ttl_ms
``<p>:{<memory id>}:summary``          HASH    text, token_count, summary_point, covered,
                                               source, updated_at
``<p>:{<memory id>}:used``             ZSET    seq -> last use time (LRU strategies only)
``<p>:{<memory id>}:flush``            STRING  flush marker (SET NX PX): a flush is pending
``<p>:{<memory id>}:lock``             STRING  lock owner token (SET NX PX, renewed)
``<p>:idx:expiry``                     ZSET    memory id -> unix time its keys expire
``<p>:idx:access``                     ZSET    memory id -> unix time of last write
``<p>:idx:pending``                    ZSET    memory id -> unix time a flush was requested
``<p>:breaker:<name>``                 HASH    a circuit breaker's shared state
``<p>:breaker:_index``                 SET     names of every breaker (no SCAN needed)
``<p>:beat:``                          --      prefix for celery-redbeat's keys
=====================================  ======  ==============================================

The index keys live in other cluster slots; they are written by separate commands pipelined with
the per-memory script (still one round trip on a single node), never from inside a script.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from memory_engine.errors import KeyTemplateError

__all__ = [
    "KeySpace",
    "MemoryKeys",
    "KEY_MAX_LENGTH",
    "PROJECT_ID_PATTERN",
    "memory_id_for",
    "project_of",
    "render_key",
    "validate_key",
]

KEY_MAX_LENGTH = 256
TEMPLATE_MAX_LENGTH = 1024
PROJECT_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
# No braces (hash tags), no whitespace or control characters, no glob characters.
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_.:@=+\-/]+$")
_TEMPLATE_CACHE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class MemoryKeys:
    """Every Redis key of one memory, in the order the scripts expect them."""

    memory_id: str
    msgs: str
    meta: str
    summary: str
    used: str
    flush: str
    lock: str

    @property
    def project(self) -> str:
        return project_of(self.memory_id)


class KeySpace:
    """Builds every key under one prefix (``MEMORY_KEY_PREFIX``)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.expiry_index = f"{prefix}:idx:expiry"
        self.access_index = f"{prefix}:idx:access"
        self.pending_index = f"{prefix}:idx:pending"
        self.beat_prefix = f"{prefix}:beat:"
        # celery-redbeat derives these from its prefix: entry key -> next due time, and the lock
        # the running Beat holds (read by ``memory-engine health``).
        self.beat_schedule = f"{self.beat_prefix}:schedule"
        self.beat_lock = f"{self.beat_prefix}:lock"
        self.breaker_prefix = f"{prefix}:breaker:"
        # "_index" cannot collide with a breaker: breaker names start with a letter.
        self.breaker_index = f"{self.breaker_prefix}_index"

    def breaker(self, name: str) -> str:
        """The HASH holding one circuit breaker's shared state."""
        return f"{self.breaker_prefix}{name}"

    def memory(self, memory_id: str) -> MemoryKeys:
        tag = f"{self.prefix}:{{{memory_id}}}"
        return MemoryKeys(
            memory_id=memory_id,
            msgs=f"{tag}:msgs",
            meta=f"{tag}:meta",
            summary=f"{tag}:summary",
            used=f"{tag}:used",
            flush=f"{tag}:flush",
            lock=f"{tag}:lock",
        )

    def memory_pattern(self, suffix: str = "meta") -> str:
        """A SCAN pattern for operators' one-off tools; never used by periodic work."""
        return f"{self.prefix}:{{*}}:{suffix}"


def validate_key(key: str) -> str:
    """Check a rendered key: charset, length, no empty segments. Raise :class:`KeyTemplateError`."""
    if not key:
        raise KeyTemplateError("rendered key is empty")
    if len(key) > KEY_MAX_LENGTH:
        raise KeyTemplateError(
            f"rendered key is {len(key)} characters; the maximum is {KEY_MAX_LENGTH}"
        )
    if not _KEY_PATTERN.match(key):
        bad = sorted({c for c in key if not _KEY_PATTERN.match(c)})
        shown = ", ".join(repr(c) for c in bad[:8])
        raise KeyTemplateError(
            f"rendered key {key[:80]!r} has forbidden characters {shown}; "
            "allowed: letters, digits and _ . : @ = + - /"
        )
    if key.startswith(("__", ":")) or key.endswith(":") or "::" in key:
        raise KeyTemplateError(
            f"rendered key {key[:80]!r} has an empty segment or a reserved '__' prefix"
        )
    return key


def memory_id_for(project_id: str, key: str) -> str:
    """The namespaced memory id. Both parts are validated; the project id has no ':'."""
    if not isinstance(project_id, str) or not PROJECT_ID_PATTERN.match(project_id):
        raise KeyTemplateError(
            f"project id {str(project_id)[:80]!r} is invalid: 1-64 of letters, digits, _ . -"
        )
    return f"{project_id}:{validate_key(key)}"


def project_of(memory_id: str) -> str:
    return memory_id.split(":", 1)[0]


class _TemplateRenderer:
    """Jinja2 sandbox with StrictUndefined; compiled templates cached by their source."""

    def __init__(self) -> None:
        self._env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
        self._cache: LRUCache[str, Any] = LRUCache(maxsize=_TEMPLATE_CACHE_SIZE)

    def render(self, template: str, context: dict[str, Any]) -> str:
        if not isinstance(template, str) or not template.strip():
            raise KeyTemplateError("key template is empty")
        if len(template) > TEMPLATE_MAX_LENGTH:
            raise KeyTemplateError(f"key template is longer than {TEMPLATE_MAX_LENGTH} characters")
        compiled = self._cache.get(template)
        try:
            if compiled is None:
                compiled = self._env.from_string(template)
                self._cache[template] = compiled
            rendered = compiled.render(context)
        except TemplateError as exc:  # UndefinedError, SecurityError, TemplateSyntaxError
            raise KeyTemplateError(f"key template {template!r} failed: {exc}") from exc
        except (TypeError, ValueError, RecursionError, OverflowError) as exc:
            raise KeyTemplateError(f"key template {template!r} failed: {exc}") from exc
        return str(rendered).strip()


_RENDERER = _TemplateRenderer()


def render_key(template: str, context: dict[str, Any] | None, *, default_project_id: str) -> str:
    """Render ``template`` against the workflow ``context`` and return the namespaced memory id.

    The project id comes from ``context["project"]["id"]``, else ``default_project_id``. A missing
    variable, a sandbox violation or an invalid result raises :class:`KeyTemplateError`; there is
    no fallback to the raw template or to a shared key.
    """
    ctx = context or {}
    if not isinstance(ctx, dict):
        raise KeyTemplateError(f"workflow context must be a mapping, got {type(ctx).__name__}")
    project = ctx.get("project")
    if project is None:
        project_id: object = default_project_id
    elif isinstance(project, dict):
        project_id = project.get("id", default_project_id)
    else:
        # A malformed project must not silently land in the default namespace.
        raise KeyTemplateError(
            f"context 'project' must be a mapping with an 'id', got {type(project).__name__}"
        )
    if not isinstance(project_id, str):
        raise KeyTemplateError(f"project id must be a string, got {type(project_id).__name__}")
    key = _RENDERER.render(template, ctx)
    return memory_id_for(project_id, key)
