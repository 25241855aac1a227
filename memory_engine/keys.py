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
``<p>:{<memory id>}:archive``          LIST    removed messages (``archive.enabled``): the
                                               stored element plus ``"why"`` (flushed,
                                               summarized, evicted, cleared, replaced) and
                                               ``"at"`` (unix s); own TTL, capped by LTRIM
``<p>:subject:{<project>:<hash>}``     SET     memory ids of one data subject (the hash is
                                               HMAC-SHA256 of the subject with
                                               ``MEMORY_SUBJECT_SALT``; never the subject)
``<p>:erasures``                       LIST    erasure records (subject hash, time, counts;
                                               no content), newest first, capped
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

import functools
import hashlib
import hmac
import re
import string
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache
from jinja2 import StrictUndefined, nodes
from jinja2.sandbox import SandboxedEnvironment

from memory_engine.errors import KeyTemplateError

__all__ = [
    "KeySpace",
    "MemoryKeys",
    "KEY_MAX_LENGTH",
    "PROJECT_ID_PATTERN",
    "TEMPLATE_MAX_LENGTH",
    "TEMPLATE_RENDER_TIMEOUT_S",
    "TEMPLATE_VALUE_MAX_CHARS",
    "memory_id_for",
    "project_of",
    "render_key",
    "render_subject",
    "subject_hash",
    "validate_key",
    "validate_memory_id",
]

KEY_MAX_LENGTH = 256
TEMPLATE_MAX_LENGTH = 1024
TEMPLATE_VALUE_MAX_CHARS = 4096
"""Largest string, list or mapping any step of a key template may produce, and largest width,
repeat count or range it may ask for: past it the template fails with KeyTemplateError."""
TEMPLATE_INT_MAX_BITS = 4096
"""Largest integer (in bits) a key template may compute (``10 ** 10 ** 10`` would run for ever)."""
TEMPLATE_RENDER_TIMEOUT_S = 1.0
"""Wall-clock bound on compiling and rendering one key template (normal ones take microseconds)."""
# \A and \Z, never ^ and $: "$" also matches before a trailing newline ("acme\n" passed).
PROJECT_ID_PATTERN = re.compile(r"\A[A-Za-z0-9_.\-]{1,64}\Z")
# No braces (hash tags), no whitespace or control characters, no glob characters.
_KEY_PATTERN = re.compile(r"\A[A-Za-z0-9_.:@=+\-/]+\Z")
_KEY_CHAR = re.compile(r"[A-Za-z0-9_.:@=+\-/]")
_TEMPLATE_CACHE_SIZE = 1024
_SHOWN_CHARS = 80


def _shown(value: object) -> str:
    """A value for an error message or a log line: escaped (no raw newline can forge a log line)
    and cut short."""
    if isinstance(value, str):
        return ascii(value[:_SHOWN_CHARS]) + ("..." if len(value) > _SHOWN_CHARS else "")
    return f"<{type(value).__name__}>"


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
    archive: str

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
        self.erasure_log = f"{prefix}:erasures"

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
            archive=f"{tag}:archive",
        )

    def subject_index(self, project_id: str, subject_digest: str) -> str:
        """The SET of memory ids of one data subject in one project (its own slot)."""
        return f"{self.prefix}:subject:{{{_check_project_id(project_id)}:{subject_digest}}}"

    def memory_pattern(self, suffix: str = "meta") -> str:
        """A SCAN pattern for operators' one-off tools; never used by periodic work."""
        return f"{self.prefix}:{{*}}:{suffix}"


def validate_key(key: str) -> str:
    """Check a rendered key as it is (nothing is stripped): charset, length, no empty segments.
    Raise :class:`KeyTemplateError`."""
    if not isinstance(key, str):
        raise KeyTemplateError(f"a key must be a string, got {type(key).__name__}")
    if not key:
        raise KeyTemplateError("rendered key is empty")
    if len(key) > KEY_MAX_LENGTH:
        raise KeyTemplateError(
            f"rendered key is {len(key)} characters; the maximum is {KEY_MAX_LENGTH}"
        )
    if not _KEY_PATTERN.fullmatch(key):
        bad = sorted({c for c in key if not _KEY_CHAR.fullmatch(c)})
        shown = ", ".join(ascii(c) for c in bad[:8])
        note = " (whitespace is refused, never stripped)" if any(c.isspace() for c in bad) else ""
        raise KeyTemplateError(
            f"rendered key {_shown(key)} has forbidden characters {shown}{note}; "
            "allowed: letters, digits and _ . : @ = + - /"
        )
    if key.startswith(("__", ":")) or key.endswith(":") or "::" in key:
        raise KeyTemplateError(
            f"rendered key {_shown(key)} has an empty segment or a reserved '__' prefix"
        )
    return key


def _check_project_id(project_id: object) -> str:
    if not isinstance(project_id, str) or not PROJECT_ID_PATTERN.fullmatch(project_id):
        raise KeyTemplateError(
            f"project id {_shown(project_id)} is invalid: 1-64 of letters, digits, _ . -"
        )
    return project_id


def memory_id_for(project_id: str, key: str) -> str:
    """The namespaced memory id. Both parts are validated; the project id has no ':'."""
    return f"{_check_project_id(project_id)}:{validate_key(key)}"


def validate_memory_id(memory_id: object) -> str:
    """Check an already resolved memory id (``<project>:<key>``, what tasks and ``--key`` carry)
    with the rules :func:`memory_id_for` applies to rendered ones. Raise :class:`KeyTemplateError`
    whose message shows the id escaped, never raw."""
    if not isinstance(memory_id, str):
        raise KeyTemplateError(f"memory id must be a string, got {type(memory_id).__name__}")
    project, sep, key = memory_id.partition(":")
    try:
        if not sep:
            raise KeyTemplateError("it has no project namespace")
        return memory_id_for(project, key)
    except KeyTemplateError as exc:
        raise KeyTemplateError(f"memory id {_shown(memory_id)} is invalid: {exc}") from None


def project_of(memory_id: str) -> str:
    return memory_id.split(":", 1)[0]


# --- bounded rendering ---------------------------------------------------------------------------

# Key templates are expressions: {{ ... }} and {% if %}. Loops, macros, assignments and blocks are
# refused at compile time, so a template's running time is bounded by its length (at most
# TEMPLATE_MAX_LENGTH) times the cost of one step, which the hooks below bound by size.
_ALLOWED_STATEMENTS = (nodes.Output, nodes.If)
# Filters with a parameter that sets the size of what they build (a width, a count of groups).
_SIZE_PARAMETER_FILTERS = frozenset(
    {"batch", "center", "indent", "slice", "tojson", "truncate", "urlize", "wordwrap"}
)
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[A-Za-z%]")
_DEADLINE: ContextVar[float | None] = ContextVar("key_template_deadline", default=None)


def _refuse(reason: str) -> KeyTemplateError:
    return KeyTemplateError(f"key template refused: {reason}")


def _tick() -> None:
    deadline = _DEADLINE.get()
    if deadline is not None and time.monotonic() > deadline:
        raise _refuse(f"rendering took longer than {TEMPLATE_RENDER_TIMEOUT_S}s")


def _check_count(value: object, what: str) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and value > TEMPLATE_VALUE_MAX_CHARS:
        raise _refuse(f"{what} {value} is above {TEMPLATE_VALUE_MAX_CHARS}")


def _bounded(value: Any) -> Any:
    """``value`` if it is small enough to be a step towards a key, else a refusal."""
    if isinstance(value, str | bytes | list | tuple | dict | set | frozenset):
        if len(value) > TEMPLATE_VALUE_MAX_CHARS:
            raise _refuse(f"a value of {len(value)} items is above {TEMPLATE_VALUE_MAX_CHARS}")
    elif isinstance(value, int) and value.bit_length() > TEMPLATE_INT_MAX_BITS:
        raise _refuse(f"an integer above {TEMPLATE_INT_MAX_BITS} bits")
    return value


def _check_percent_format(fmt: str) -> None:
    for width, precision in _PERCENT_SPEC.findall(fmt):
        for part in (width, precision):
            if part == "*":
                raise _refuse("'*' widths in % formats")
            if part:
                _check_count(int(part), "format width")


def _check_format_string(fmt: str) -> None:
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError as exc:
        raise _refuse(f"invalid format string: {exc}") from None
    for _literal, _field, spec, _conversion in fields:
        if spec and "{" in spec:
            raise _refuse("nested format specifications")
        for number in re.findall(r"\d+", spec or ""):
            _check_count(int(number), "format width")


def _check_repeat(left: object, right: object) -> None:
    for seq, times in ((left, right), (right, left)):
        if not isinstance(seq, str | bytes | list | tuple) or not isinstance(times, int):
            continue
        if len(seq) * times > TEMPLATE_VALUE_MAX_CHARS:
            raise _refuse(
                f"repeating {len(seq)} items {times} times is above {TEMPLATE_VALUE_MAX_CHARS}"
            )
    if not isinstance(left, int) or not isinstance(right, int):
        return
    if left.bit_length() + right.bit_length() > TEMPLATE_INT_MAX_BITS:
        raise _refuse(f"an integer above {TEMPLATE_INT_MAX_BITS} bits")


def _check_power(base: object, exponent: object) -> None:
    if not isinstance(base, int) or not isinstance(exponent, int) or abs(base) < 2:
        return
    if exponent > 0 and exponent * base.bit_length() > TEMPLATE_INT_MAX_BITS:
        raise _refuse(f"an integer above {TEMPLATE_INT_MAX_BITS} bits")


def _check_replace(text: object, old: object, new: object) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        hits = text.count(old) if old else len(text) + 1
        if len(text) + hits * max(0, len(new) - len(old)) > TEMPLATE_VALUE_MAX_CHARS:
            raise _refuse(f"a replace would grow the text above {TEMPLATE_VALUE_MAX_CHARS}")


def _check_str_method(name: str, text: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if name in _WIDTH_METHODS:
        for value in (*args, *kwargs.values()):
            _check_count(value, f"width of {name}()")
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int) and size * text.count("\t") > TEMPLATE_VALUE_MAX_CHARS:
            raise _refuse(f"expandtabs() would grow the text above {TEMPLATE_VALUE_MAX_CHARS}")
    elif name == "replace" and len(args) >= 2:
        _check_replace(text, args[0], args[1])


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    # A filter that takes the context/environment first keeps its marker (functools.wraps copies
    # jinja_pass_arg), so Jinja still passes it; the value follows it.
    skip = 2 if getattr(func, "jinja_pass_arg", None) is not None else 1

    @functools.wraps(func)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        params = (*args[skip:], *kwargs.values())
        if name in _SIZE_PARAMETER_FILTERS:
            for value in params:
                _check_count(value, f"{name} parameter")
        elif name == "replace" and len(args) >= skip + 2:
            _check_replace(args[skip - 1], args[skip], args[skip + 1])
        elif name == "format" and len(args) >= skip and isinstance(args[skip - 1], str):
            _check_percent_format(args[skip - 1])
        return _bounded(func(*args, **kwargs))

    return bounded


def _bounded_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > TEMPLATE_VALUE_MAX_CHARS:
        raise _refuse(f"a range of {len(rng)} items is above {TEMPLATE_VALUE_MAX_CHARS}")
    return rng


class _KeyTemplateEnvironment(SandboxedEnvironment):
    """Jinja2's sandbox (no attribute escapes) plus bounds on what one step may build: repeats,
    powers, widths, replaces and ranges are checked before they run, every filter, call and
    operator result after, and the whole render against a deadline."""

    # Intercepted operators also keep Jinja from folding them at compile time, unchecked.
    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=False)
        self.globals = {"range": _bounded_range}
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _tick()
        if operator == "*":
            _check_repeat(left, right)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "%" and isinstance(left, str):
            _check_percent_format(left)
        return _bounded(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _tick()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            _check_str_method(getattr(__obj, "__name__", ""), owner, args, kwargs)
        return _bounded(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        # Jinja hands out str.format / format_map wrapped at attribute access: check the widths
        # in the format string here ("{:>2000000000}" would build 2 GB before any size check).
        owner = getattr(value, "__self__", None)
        if isinstance(owner, str) and getattr(value, "__name__", "") in ("format", "format_map"):
            _check_format_string(owner)
        return super().wrap_str_format(value)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)


@contextmanager
def _deadline() -> Iterator[None]:
    token = _DEADLINE.set(time.monotonic() + TEMPLATE_RENDER_TIMEOUT_S)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


class _TemplateRenderer:
    """The bounded sandbox with StrictUndefined; compiled templates cached by their source."""

    def __init__(self) -> None:
        self._env = _KeyTemplateEnvironment()
        self._cache: LRUCache[str, Any] = LRUCache(maxsize=_TEMPLATE_CACHE_SIZE)

    def _compile(self, template: str) -> Any:
        compiled = self._cache.get(template)
        if compiled is None:
            tree = self._env.parse(template)
            for node in tree.find_all(nodes.Stmt):
                if not isinstance(node, _ALLOWED_STATEMENTS):
                    raise _refuse(
                        f"{type(node).__name__.lower()} statements are not allowed in a key "
                        "template (only {{ expressions }} and {% if %})"
                    )
            compiled = self._env.from_string(tree)
            self._cache[template] = compiled
        return compiled

    def render(self, template: str, context: dict[str, Any]) -> str:
        if not isinstance(template, str) or not template:
            raise KeyTemplateError("key template is empty")
        if len(template) > TEMPLATE_MAX_LENGTH:
            raise KeyTemplateError(f"key template is longer than {TEMPLATE_MAX_LENGTH} characters")
        parts: list[str] = []
        size = 0
        try:
            with _deadline():
                for part in self._compile(template).generate(context):
                    size += len(part)
                    if size > KEY_MAX_LENGTH:
                        raise KeyTemplateError(
                            f"rendered key is longer than the maximum, {KEY_MAX_LENGTH} characters"
                        )
                    parts.append(part)
        except KeyTemplateError:
            raise
        except Exception as exc:  # UndefinedError, SecurityError, syntax, MemoryError, ...
            detail = " ".join(str(exc)[:200].split()) or type(exc).__name__
            raise KeyTemplateError(f"key template {_shown(template)} failed: {detail}") from exc
        # Used as rendered: whitespace is refused by validate_key, never stripped (s1 and "s1\n"
        # must not share a memory).
        return "".join(parts)


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


# --- data subjects -------------------------------------------------------------------------------


def render_subject(template: str, context: dict[str, Any] | None) -> str:
    """Render a resource's ``subject_template`` in the key templates' bounded sandbox. Fail-closed
    like keys: a missing variable, a sandbox violation, an empty result or one longer than
    ``KEY_MAX_LENGTH`` raises :class:`KeyTemplateError` (the subject is never shown)."""
    ctx = context or {}
    if not isinstance(ctx, dict):
        raise KeyTemplateError(f"workflow context must be a mapping, got {type(ctx).__name__}")
    try:
        subject = _RENDERER.render(template, ctx)
    except KeyTemplateError as exc:
        raise KeyTemplateError(f"subject template: {exc}") from exc
    if not subject.strip():
        raise KeyTemplateError("subject template rendered an empty subject")
    return subject


def subject_hash(subject: str, salt: str) -> str:
    """What keys and records hold instead of the subject: HMAC-SHA256 (hex) of ``subject`` keyed
    with the deployment's ``MEMORY_SUBJECT_SALT``. Without the salt the hash cannot be computed
    from a guessed subject (a bare SHA-256 of a user id could be)."""
    if not isinstance(subject, str) or not subject.strip():
        raise KeyTemplateError("a data subject must be a non-empty string")
    if len(subject) > KEY_MAX_LENGTH:
        raise KeyTemplateError(f"a data subject is at most {KEY_MAX_LENGTH} characters")
    return hmac.new(salt.encode("utf-8"), subject.encode("utf-8"), hashlib.sha256).hexdigest()
