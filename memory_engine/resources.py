"""Memory resources: the typed, validated form of a ``resource: memory`` YAML document.

Field names follow the Compozy memory schema so its users can bring their files. Models are frozen
and reject unknown keys; every accepted field is read by the engine, and a field it cannot honour
is refused with a reason rather than silently ignored. Errors carry the dotted field path
(``flushing.summary_tokens``); :func:`parse_resource` turns them into one ConfigError.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from jinja2 import TemplateError
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BeforeValidator, Field, ValidationError
from pydantic.functional_validators import AfterValidator, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from memory_engine.context_windows import context_window
from memory_engine.errors import ConfigError
from memory_engine.messages import Role
from memory_engine.patterns import MAX_BOUNDED_REPEAT, MAX_REPEAT_SPLITS, check_redact_pattern
from memory_engine.retention import (
    DEFAULT_ARCHIVE_TTL_S,
    ArchiveConfig,
    CeilingConfig,
)
from memory_engine.schema import (
    Duration,
    FrozenSection,
    PositiveInt,
    Ratio,
    RuleProblems,
    Share,
    Text,
    field_error,
    parse_duration,
    pydantic_check,
)

__all__ = [
    "DEFAULT_FLUSH_LOCK_TTL_S", "DEFAULT_SUMMARIZE_THRESHOLD", "DEFAULT_TARGET_PERCENT",
    "DEFAULT_SUMMARY_SHARE", "MIN_DEFAULT_SUMMARY_TOKENS", "NO_BUDGET_SUMMARY_TOKENS",
    "TARGET_PER_THRESHOLD", "default_summary_tokens", "default_target_percent",
    "DEFAULT_PERSISTENCE_TTL_S", "DEFAULT_PRIORITY_KEYWORDS", "DEFAULT_REDACTION_STRING",
    "MAX_BOUNDED_REPEAT", "MAX_REPEAT_SPLITS", "MAX_REPORTED_CHARS", "MAX_REPORTED_PROBLEMS",
    "ArchiveConfig", "DEFAULT_ARCHIVE_TTL_S", "Duration", "EvictionConfig", "EvictionPolicyType",
    "FlushingConfig",
    "FlushingType", "LockingConfig", "MemoryResource", "PersistenceConfig", "PrivacyPolicy",
    "ResourceType", "TokenAllocation", "TokenProviderConfig", "check_redact_pattern",
    "parse_duration", "parse_resource",
]  # fmt: skip

DEFAULT_PERSISTENCE_TTL_S: Final[float] = 24 * 3600.0
DEFAULT_FLUSH_LOCK_TTL_S: Final[float] = 5 * 60.0
DEFAULT_REDACTION_STRING: Final[str] = "[REDACTED]"
DEFAULT_PRIORITY_KEYWORDS: Final[tuple[str, ...]] = (
    "error", "critical", "important", "warning", "failed", "exception",
    "issue", "problem", "urgent", "key", "essential", "required",
)  # fmt: skip
DEFAULT_SUMMARIZE_THRESHOLD: Final[float] = 0.8
DEFAULT_TARGET_PERCENT: Final[float] = 0.5
"""The most ``flushing.target_percent`` defaults to (see :func:`default_target_percent`)."""
TARGET_PER_THRESHOLD: Final[float] = DEFAULT_TARGET_PERCENT / DEFAULT_SUMMARIZE_THRESHOLD
"""Default target as a share of the threshold: 0.625, so the defaults pair 0.8 with 0.5."""
DEFAULT_SUMMARY_SHARE: Final[float] = 0.1
"""Share of the token budget a hybrid summary gets by default without ``token_allocation``."""
MIN_DEFAULT_SUMMARY_TOKENS: Final[int] = 64
"""Floor of the default ``summary_tokens`` (below it a summary says next to nothing)."""
NO_BUDGET_SUMMARY_TOKENS: Final[int] = 512
"""Default ``summary_tokens`` of a hybrid memory without a token limit (counted in messages)."""
# Redis lock TTLs are set in milliseconds (PX); anything shorter would round to "no lock".
_MIN_LOCK_TTL_S: Final[float] = 0.001
_TOKEN_ALLOCATION_TOLERANCE: Final[float] = 0.001


class ResourceType(StrEnum):
    """How a memory is bounded: by tokens, by message count, or by either (a plain buffer)."""

    TOKEN_BASED = "token_based"
    MESSAGE_COUNT_BASED = "message_count_based"
    BUFFER = "buffer"


class FlushingType(StrEnum):
    """The flush strategy that brings a memory back under its limits."""

    SIMPLE_FIFO = "simple_fifo"
    LRU = "lru"
    TOKEN_AWARE_LRU = "token_aware_lru"
    HYBRID_SUMMARY = "hybrid_summary"


class EvictionPolicyType(StrEnum):
    """Which messages go first when a flush must drop some."""

    FIFO = "fifo"
    LRU = "lru"
    PRIORITY = "priority"


_RedactPattern = Annotated[str, AfterValidator(pydantic_check("pattern", check_redact_pattern))]


# --- sections ---------------------------------------------------------------------------------


def default_target_percent(summarize_threshold: float) -> float:
    """The ``target_percent`` of a resource that does not set one: ``min(0.5, summarize_threshold
    * 0.625)``. 0.5 at the default threshold 0.8 and above it; proportionally lower below, so any
    legal threshold gets a target under it (a flush always has room to go down)."""
    return min(DEFAULT_TARGET_PERCENT, summarize_threshold * TARGET_PER_THRESHOLD)


def default_summary_tokens(
    max_tokens: int | None, long_term_share: float | None, target_percent: float
) -> int:
    """The ``summary_tokens`` of a ``hybrid_summary`` resource that does not set one.

    With a token limit: the ``long_term`` share of it (10 % without ``token_allocation`` or with a
    ``long_term`` of 0), at least 64 tokens, but at most half the flush target (``max_tokens *
    target_percent / 2``, so a flush can always get under its target) and at least 1. Without a
    token limit (a memory bounded by messages only): 512.
    """
    if max_tokens is None:
        return NO_BUDGET_SUMMARY_TOKENS
    share = long_term_share or DEFAULT_SUMMARY_SHARE
    wanted = max(MIN_DEFAULT_SUMMARY_TOKENS, math.floor(max_tokens * share))
    return max(1, min(wanted, math.floor(max_tokens * target_percent / 2)))


class FlushingConfig(FrozenSection):
    """When a flush triggers, how far down it goes, and how (``hybrid_summary`` summarises).

    ``target_percent`` defaults to :func:`default_target_percent` of the threshold; a
    ``hybrid_summary`` resource's ``summary_tokens`` to :func:`default_summary_tokens` (set by
    :class:`MemoryResource`, which knows the budget)."""

    type: FlushingType = FlushingType.SIMPLE_FIFO
    summarize_threshold: Ratio = DEFAULT_SUMMARIZE_THRESHOLD
    summary_tokens: PositiveInt | None = None
    summarize_oldest_percent: Ratio = 0.5
    target_percent: Annotated[float, Field(strict=True, gt=0, lt=1)] = DEFAULT_TARGET_PERCENT

    @model_validator(mode="after")
    def _rules(self) -> FlushingConfig:
        problems = RuleProblems()
        if "target_percent" not in self.model_fields_set:
            # A default must not make a legal threshold invalid: derive it. The model is frozen;
            # this runs inside its validation, before anyone can see the instance.
            target = default_target_percent(self.summarize_threshold)
            object.__setattr__(self, "target_percent", target)
        if self.target_percent >= self.summarize_threshold:
            reason = f"must be below summarize_threshold ({self.summarize_threshold})"
            problems.add("target_percent", reason, self.target_percent)
        if self.type is not FlushingType.HYBRID_SUMMARY:
            for name in ("summary_tokens", "summarize_oldest_percent"):
                if name in self.model_fields_set:
                    reason = f"only used by flushing type hybrid_summary, not {self.type}"
                    problems.add(name, reason, getattr(self, name))
        problems.raise_any(type(self).__name__)
        return self


class EvictionConfig(FrozenSection):
    """Which messages a flush removes first; ``priority`` keeps messages with a keyword longest."""

    policy: EvictionPolicyType = EvictionPolicyType.FIFO
    priority_keywords: tuple[str, ...] = DEFAULT_PRIORITY_KEYWORDS

    @field_validator("priority_keywords")
    @classmethod
    def _normalise_keywords(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Matching is case-insensitive: lower-case once here, not on every message.
        words = tuple(dict.fromkeys(word.strip().lower() for word in value))
        if "" in words:
            raise field_error("keyword", "keywords must not be empty")
        return words

    @model_validator(mode="after")
    def _rules(self) -> EvictionConfig:
        problems = RuleProblems()
        if self.policy is EvictionPolicyType.PRIORITY:
            if not self.priority_keywords:
                problems.add("priority_keywords", "priority eviction needs a keyword", ())
        elif "priority_keywords" in self.model_fields_set:
            reason = f"only used by eviction policy priority, not {self.policy}"
            problems.add("priority_keywords", reason, self.priority_keywords)
        problems.raise_any(type(self).__name__)
        return self


class TokenAllocation(FrozenSection):
    """How the token budget is shared out; all shares, ``user_defined`` included, sum to 1."""

    short_term: Share
    long_term: Share
    system: Share
    user_defined: dict[str, Share] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _sums_to_one(self) -> TokenAllocation:
        problems = RuleProblems()
        total = self.short_term + self.long_term + self.system + sum(self.user_defined.values())
        if abs(total - 1.0) > _TOKEN_ALLOCATION_TOLERANCE:
            problems.add("", f"shares must sum to 1 (+/- 0.001), got {total:.4f}", total)
        problems.raise_any(type(self).__name__)
        return self


class PersistenceConfig(FrozenSection):
    """Where and how long a memory is kept. ``ttl`` 0 means no expiry."""

    type: Literal["redis"] = "redis"
    ttl: Duration = DEFAULT_PERSISTENCE_TTL_S

    @field_validator("type", mode="before")
    @classmethod
    def _redis_only(cls, value: object) -> object:
        if value == "in_memory":
            reason = "'in_memory' is not supported: this engine stores memories in Redis only"
            raise field_error("persistence_type", reason)
        return value

    @property
    def ttl_s(self) -> int:
        """Key TTL in whole seconds for ``EXPIRE``; 0 = no expiry. Sub-second TTLs round up."""
        return math.ceil(self.ttl)


class PrivacyPolicy(FrozenSection):
    """Redaction applied before a message is stored, and message roles that are never stored."""

    redact_patterns: tuple[_RedactPattern, ...] = ()
    non_persistable_message_types: tuple[str, ...] = ()
    default_redaction_string: str = DEFAULT_REDACTION_STRING

    @field_validator("non_persistable_message_types")
    @classmethod
    def _known_roles(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Compared with the message role case-insensitively; an unknown role would never match.
        roles = tuple(dict.fromkeys(item.strip().lower() for item in value))
        known = [role.value for role in Role]
        unknown = [role for role in roles if role not in known]
        if unknown:
            listed = ", ".join(map(repr, unknown))
            reason = f"unknown message type(s) {listed}; known: {', '.join(known)}"
            raise field_error("message_type", reason)
        return roles


class LockingConfig(FrozenSection):
    """TTL of the per-memory lock a flush or an eviction holds (renewed while it runs; a flush may
    call an LLM). Appends and clears take no lock: each is one atomic Redis script, and an
    in-flight flush is fenced by the memory's epoch instead."""

    flush_ttl: Duration = DEFAULT_FLUSH_LOCK_TTL_S
    # Compozy's schema has these; here they could do nothing, so they are refused with a reason.
    append_ttl: SkipJsonSchema[None] = Field(default=None, exclude=True, repr=False)
    clear_ttl: SkipJsonSchema[None] = Field(default=None, exclude=True, repr=False)

    @field_validator("flush_ttl")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value < _MIN_LOCK_TTL_S:
            raise field_error("lock_ttl", f"a lock TTL must be at least 1ms, got {value}s")
        return value

    @field_validator("append_ttl", "clear_ttl", mode="before")
    @classmethod
    def _no_lock(cls, value: object) -> None:
        raise field_error(
            "lock_ttl",
            "appends and clears are single atomic Redis scripts and take no lock; remove it",
        )

    @property
    def flush_ttl_s(self) -> float:
        """Flush lock TTL in seconds."""
        return self.flush_ttl


class TokenProviderConfig(FrozenSection):
    """Which tokenizer counts tokens. Secrets never live in the file, only an env var's name."""

    provider: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,49}$")]
    model: Text | None = None
    api_key_env: Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]*$")] | None = None
    endpoint: str | None = None
    # Declared only so a literal key is refused with a reason at its own path rather than a bare
    # "extra inputs are not permitted"; it can never hold a value.
    api_key: SkipJsonSchema[None] = Field(default=None, exclude=True, repr=False)

    @field_validator("provider", mode="before")
    @classmethod
    def _lower_provider(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("api_key", mode="before")
    @classmethod
    def _no_literal_key(cls, value: object) -> None:
        raise field_error(
            "api_key", "put the key in an environment variable and name it in api_key_env"
        )

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise field_error("endpoint", f"must be an http(s) URL, got {value!r}")
        return value


# --- the resource -----------------------------------------------------------------------------

_TEMPLATE_ENV: Final = SandboxedEnvironment()


def _version_text(value: object) -> object:
    # YAML reads an unquoted `version: 1.0` as a float (and `2` as an int): keep it as text. What
    # YAML dropped is gone ("1.10" reads as 1.1), so a version like that must be quoted.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


class MemoryResource(FrozenSection):
    """A validated memory resource. :func:`parse_resource` builds one with a ConfigError."""

    resource: Literal["memory"]
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,100}$")]
    description: str = ""
    version: Annotated[str | None, BeforeValidator(_version_text)] = None
    type: ResourceType
    max_tokens: PositiveInt | None = None
    max_messages: PositiveInt | None = None
    max_context_ratio: Ratio | None = None
    model: Text | None = None
    token_allocation: TokenAllocation | None = None
    flushing: FlushingConfig = FlushingConfig()
    eviction: EvictionConfig = EvictionConfig()
    persistence: PersistenceConfig = PersistenceConfig()
    ceiling: CeilingConfig = CeilingConfig()
    privacy_policy: PrivacyPolicy | None = None
    locking: LockingConfig = LockingConfig()
    token_provider: TokenProviderConfig | None = None
    default_key_template: Text | None = None
    archive: ArchiveConfig = ArchiveConfig()
    subject_template: Text | None = None
    """Jinja2 (the key templates' sandbox) naming the data subject of every memory created, e.g.
    ``"{{ workflow.input.user_id }}"``: memories are indexed by (project, subject hash) for
    export and erasure (``MemoryClient.export_subject`` / ``erase_subject``)."""

    @field_validator("default_key_template", "subject_template")
    @classmethod
    def _template_parses(cls, value: str | None) -> str | None:
        # Syntax only: rendering (and its sandbox) belongs to the key builder, at use time.
        if value is not None:
            try:
                _TEMPLATE_ENV.parse(value)
            except TemplateError as exc:
                raise field_error("key_template", f"not a valid template: {exc}") from None
        return value

    @model_validator(mode="after")
    def _rules(self) -> MemoryResource:
        problems = RuleProblems()
        ratio, window = self.max_context_ratio, self.context_window_tokens
        if ratio is not None and self.max_tokens is not None:
            problems.add("max_context_ratio", "set it or max_tokens, not both", ratio)
        elif ratio is not None and window is None:
            model = self.model or (self.token_provider.model if self.token_provider else None)
            reason = (
                f"model {model!r} has no known context window; set max_tokens instead"
                if model
                else "needs a model (model or token_provider.model) to know the context window"
            )
            problems.add("max_context_ratio", reason, ratio)
        no_token_limit = self.max_tokens is None and ratio is None
        if self.type is ResourceType.TOKEN_BASED and no_token_limit:
            reason = "token_based memory needs max_tokens, or max_context_ratio with a known model"
            problems.add("max_tokens", reason)
        if self.type is ResourceType.MESSAGE_COUNT_BASED and self.max_messages is None:
            problems.add("max_messages", "message_count_based memory needs max_messages")
        if self.type is ResourceType.BUFFER and no_token_limit and self.max_messages is None:
            problems.add("max_tokens", "buffer memory needs max_tokens or max_messages")
        if self.flushing.type is FlushingType.HYBRID_SUMMARY:
            limit, summary = self.effective_max_tokens, self.flushing.summary_tokens
            if summary is None:
                summary = default_summary_tokens(
                    limit,
                    self.token_allocation.long_term if self.token_allocation else None,
                    self.flushing.target_percent,
                )
                # Frozen, and still inside validation: nobody has seen either model yet.
                flushing = self.flushing.model_copy(update={"summary_tokens": summary})
                object.__setattr__(self, "flushing", flushing)
                if limit is not None and summary >= limit:
                    reason = f"the memory's token limit ({limit}) is too small for a summary"
                    problems.add("flushing.summary_tokens", reason, summary)
            elif limit is not None and summary >= limit:
                reason = f"must be below the memory's token limit ({limit})"
                problems.add("flushing.summary_tokens", reason, summary)
        if self.token_allocation is not None and no_token_limit:
            reason = "shares a token budget, so it needs max_tokens or max_context_ratio"
            problems.add("token_allocation", reason)
        provider = self.token_provider
        if provider is not None and provider.provider == "anthropic" and not self.tokenizer_model:
            # Its count-tokens API needs a model; refusing here beats failing on the first append.
            problems.add("token_provider.model", "the anthropic provider needs a model")
        problems.raise_any(type(self).__name__)
        return self

    @property
    def context_window_tokens(self) -> int | None:
        """Context window of ``model`` (else ``token_provider.model``) if catalogued."""
        model = self.model or (self.token_provider.model if self.token_provider else None)
        return context_window(model) if model else None

    @property
    def effective_max_tokens(self) -> int | None:
        """``max_tokens``, else ``floor(context window * max_context_ratio)``, else ``None``."""
        if self.max_tokens is not None:
            return self.max_tokens
        window = self.context_window_tokens
        if self.max_context_ratio is not None and window is not None:
            return max(1, math.floor(window * self.max_context_ratio))
        return None

    @property
    def records_uses(self) -> bool:
        """Whether reads by the application (``context()``, ``read_page()``) record message uses:
        when the flushing strategy (``lru``, ``token_aware_lru``) or the eviction policy
        (``lru``) orders by last use. Otherwise nothing would read them."""
        return (
            self.flushing.type in (FlushingType.LRU, FlushingType.TOKEN_AWARE_LRU)
            or self.eviction.policy is EvictionPolicyType.LRU
        )

    @property
    def ttl_s(self) -> int:
        """Key TTL in whole seconds; 0 = no expiry."""
        return self.persistence.ttl_s

    @property
    def tokenizer_model(self) -> str | None:
        """The model whose tokenizer counts tokens: ``token_provider.model``, else ``model``."""
        if self.token_provider is not None and self.token_provider.model:
            return self.token_provider.model
        return self.model

    def trigger_thresholds(self) -> tuple[int, int]:
        """``(tokens, messages)`` at which a flush triggers: ``floor(limit * summarize_threshold)``,
        at least 1; 0 when that limit is not set (not tracked)."""
        ratio = self.flushing.summarize_threshold
        limits = (self.effective_max_tokens, self.max_messages)
        tokens, messages = (0 if n is None else max(1, math.floor(n * ratio)) for n in limits)
        return tokens, messages

    def flush_targets(self) -> tuple[int | None, int | None]:
        """``(tokens, messages)`` a flush brings the memory down to: ``floor(limit *
        target_percent)``; ``None`` when that limit is not set."""
        ratio = self.flushing.target_percent
        limits = (self.effective_max_tokens, self.max_messages)
        tokens, messages = (None if n is None else math.floor(n * ratio) for n in limits)
        return tokens, messages

    def ceiling_limits(self) -> tuple[int, int]:
        """``(tokens, messages)`` of the hard ceiling (:class:`CeilingConfig`); 0 = none."""
        return self.ceiling.limits(self.effective_max_tokens, self.max_messages)

    @model_validator(mode="after")
    def _ceiling_above_limits(self) -> MemoryResource:
        problems = RuleProblems()
        limits = {"max_tokens": self.effective_max_tokens, "max_messages": self.max_messages}
        for name, limit in limits.items():
            explicit = getattr(self.ceiling, name)
            if explicit is not None and limit is not None and explicit < limit:
                reason = f"must be at least the memory's {name} ({limit})"
                problems.add(f"ceiling.{name}", reason, explicit)
        problems.raise_any(type(self).__name__)
        return self


# --- errors -----------------------------------------------------------------------------------

MAX_REPORTED_PROBLEMS: Final[int] = 20
"""Most problems one :class:`ConfigError` of :func:`parse_resource` lists (it counts them all)."""
MAX_REPORTED_CHARS: Final[int] = 300
"""Longest field path or reason it quotes; the rest is cut (a reason may quote a value)."""

# Keys from Compozy's docs and examples that its code never read: point their users home.
_UNKNOWN_FIELD_HINTS: Final[dict[str, str]] = {
    "key": "use default_key_template", "flushing_strategy": "the section is named 'flushing'",
    "eviction_policy": "the section is named 'eviction'", "ttl": "it goes under 'persistence'",
    "flushing.threshold": "the field is named 'summarize_threshold'",
    **dict.fromkeys(("append_ttl", "clear_ttl", "flush_ttl"), "lock TTLs go under 'locking'"),
}  # fmt: skip


def _describe(error: Any) -> tuple[str, str]:
    path = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        hint = _UNKNOWN_FIELD_HINTS.get(path)
        message = "unknown field" + (f"; {hint}" if hint else " (not in the memory schema)")
    return path, message


def parse_resource(data: object, source: str | None = None) -> MemoryResource:
    """Validate ``data`` (one parsed YAML document) as a :class:`MemoryResource`.

    Raises :class:`ConfigError` whose message lists every problem as ``<field.path>: <reason>``,
    whose ``.field`` is the first problem's path and whose ``.source`` is ``source``.
    """
    try:
        return MemoryResource.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(error) for error in exc.errors(include_url=False)]
        shown = problems[:MAX_REPORTED_PROBLEMS]
        lines = "\n".join(
            f"  {_clip(path) or '(document)'}: {_clip(message)}" for path, message in shown
        )
        if len(problems) > len(shown):
            lines += f"\n  ... and {len(problems) - len(shown)} more"
        ident = data.get("id") if isinstance(data, dict) else None
        what = (
            f"memory resource {_clip(repr(ident))}" if isinstance(ident, str) else "memory resource"
        )
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        error = ConfigError(f"invalid {what} ({count}):\n{lines}", source=source)
        # Set after, not via field=: ConfigError would prefix it to lines that name their own.
        error.field = (_clip(problems[0][0]) or None) if problems else None
        # Not chained: a ValidationError carries the whole input, and a traceback (a worker's
        # warm-up, a task failure) would render every value of it. The message above says it all.
        raise error from None


def _clip(text: str) -> str:
    if len(text) <= MAX_REPORTED_CHARS:
        return text
    return f"{text[:MAX_REPORTED_CHARS]}... ({len(text)} characters)"
