"""Runtime settings: one typed object, read from ``MEMORY_*`` environment variables by a factory.

Nothing is read at import time. Build settings with :func:`load_settings` (or ``Settings()``) and
pass them to the client or the Celery app; tests build their own.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from memory_engine.errors import ConfigError

__all__ = [
    "DEFAULT_RESOURCES_PACKAGE_DIR",
    "RedisMode",
    "Settings",
    "default_resources_dir",
    "load_settings",
    "parse_sentinels",
]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_KEY_PREFIX = "mem"
DEFAULT_PROJECT_ID = "default"
DEFAULT_SOCKET_TIMEOUT_S = 2.0
DEFAULT_CONNECT_TIMEOUT_S = 2.0
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
DEFAULT_MAX_BATCH_MESSAGES = 500
DEFAULT_MAX_BATCH_BYTES = 4 * 1024 * 1024
DEFAULT_FLUSH_MARKER_TTL_S = 600
DEFAULT_REDACTION_TIMEOUT_MS = 50
DEFAULT_TASK_SOFT_TIME_LIMIT_S = 240
DEFAULT_TASK_TIME_LIMIT_S = 300
DEFAULT_SUMMARIZER_TIMEOUT_S = 30.0
DEFAULT_BEAT_LOCK_TIMEOUT_S = 60
DEFAULT_BEAT_MAX_LOOP_INTERVAL_S = 10
DEFAULT_RESOURCES_PACKAGE_DIR = "resources_default"
"""Folder of ``memory_engine`` holding the resource files it ships (the same files as the
repository's ``config/resources``, which a deployment points ``MEMORY_RESOURCES_DIR`` at)."""


def default_resources_dir() -> Path:
    """The resource files shipped inside the ``memory_engine`` package: where
    ``MEMORY_RESOURCES_DIR`` points when it is unset, whatever the working directory."""
    shipped = importlib.resources.files("memory_engine") / DEFAULT_RESOURCES_PACKAGE_DIR
    if not isinstance(shipped, Path):  # imported from a zip: there is no directory to read
        raise ConfigError(
            "memory_engine is not installed as files, so its default resources cannot be read; "
            "set MEMORY_RESOURCES_DIR"
        )
    return shipped


# Upper bounds: every duration must be finite (inf overflows socket.settimeout and time
# arithmetic) and sane (a 10-hour socket timeout is a typo, not a choice).
MAX_SOCKET_TIMEOUT_S = 300.0
MAX_HTTP_TIMEOUT_S = 600.0
MAX_INTERVAL_S = 7 * 24 * 3600.0

REDIS_URL_SCHEMES = ("redis", "rediss", "unix")
"""Schemes of ``MEMORY_REDIS_URL`` (those redis-py connects with); ``unix:///path`` is a socket."""

BrokerKind = Literal["redis", "amqp", "other"]
AMQP_URL_SCHEMES = ("amqp", "amqps", "pyamqp")
"""Broker schemes of RabbitMQ (kombu's py-amqp transport; ``amqps`` is TLS)."""
STANDALONE_REDIS_MODE = "standalone"
RedisMode = Literal["standalone", "cluster", "sentinel"]
"""How the memory-data Redis is deployed (``MEMORY_REDIS_MODE``, docs/scaling.md)."""


DEFAULT_ERASURE_TOMBSTONE_TTL_S = 120
"""Default life of an erased memory's tombstone: longer than the append's index refresh (60 s),
so a client's first append after it is indexed again before it writes."""


class Settings(BaseSettings):
    """Every knob of the engine and its service processes. Env prefix ``MEMORY_``."""

    # hide_input_in_errors: a refused URL must not be echoed (it may carry a password).
    model_config = SettingsConfigDict(
        env_prefix="MEMORY_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    # --- Redis (memory data) and broker
    redis_url: SecretStr | None = Field(
        default=None,
        description="Redis for memory data. Unset: the client uses redis://127.0.0.1:6379/0; "
        "`memory-engine demo`/`up` start an embedded Redis instead. rediss:// enables TLS.",
    )
    broker_url: SecretStr | None = Field(
        default=None,
        description="Celery broker: Redis (redis://, rediss://, unix://) or RabbitMQ (amqp://, "
        "amqps://). Unset: the Redis URL.",
    )
    redis_max_connections: int = Field(default=64, ge=1)

    # --- broker side: result backend, RedBeat store, RabbitMQ queues (see docs/operations.md,
    # "Brokers"). The data-Redis topology (standalone, cluster, sentinel) is another block.
    result_backend_url: SecretStr | None = Field(
        default=None,
        description="Redis for Celery task results. Unset: the broker when it is Redis, else "
        "the data Redis when it is standalone; must be set when the data store is a Cluster "
        "or behind Sentinel and the broker is not Redis.",
    )
    beat_redis_url: SecretStr | None = Field(
        default=None,
        description="Redis for celery-redbeat's schedule and lock. Unset: as "
        "result_backend_url (the broker when it is Redis, else the standalone data Redis).",
    )
    broker_queue_type: Literal["classic", "quorum"] = Field(
        default="classic",
        description="RabbitMQ queue type of the engine's queues (x-queue-type): quorum queues "
        "are replicated (HA). A queue's type is fixed when it is first declared. Ignored for a "
        "Redis broker.",
    )
    socket_timeout_s: float = Field(
        default=DEFAULT_SOCKET_TIMEOUT_S, gt=0, le=MAX_SOCKET_TIMEOUT_S, allow_inf_nan=False
    )
    socket_connect_timeout_s: float = Field(
        default=DEFAULT_CONNECT_TIMEOUT_S, gt=0, le=MAX_SOCKET_TIMEOUT_S, allow_inf_nan=False
    )

    # --- Redis topology of the memory data (docs/scaling.md)
    redis_mode: RedisMode = Field(
        default="standalone",
        description="standalone: MEMORY_REDIS_URL is the server. cluster: MEMORY_REDIS_URL names "
        "any node of a Redis Cluster; the client discovers the others and follows MOVED/ASK "
        "and failovers. sentinel: the master named MEMORY_REDIS_SENTINEL_MASTER is found "
        "through MEMORY_REDIS_SENTINELS; MEMORY_REDIS_URL then gives only the master's "
        "credentials, TLS (rediss://, ssl_* query options) and database, not its address.",
    )
    redis_sentinels: str | None = Field(
        default=None,
        description="Sentinel mode: the sentinels, 'host:port,host:port' (at least one).",
    )
    redis_sentinel_master: str | None = Field(
        default=None, description="Sentinel mode: the master's name as the sentinels know it."
    )
    redis_sentinel_username: str | None = Field(
        default=None, description="Sentinel mode: ACL user of the sentinels (if they need one)."
    )
    redis_sentinel_password: SecretStr | None = Field(
        default=None, description="Sentinel mode: password of the sentinels (if they need one)."
    )
    redis_sentinel_tls: bool | None = Field(
        default=None,
        description="Sentinel mode: talk TLS to the sentinels. None: as the master (rediss://); "
        "the ssl_* options of MEMORY_REDIS_URL (CA, certificates) apply to both.",
    )

    # --- keys and resources
    key_prefix: str = Field(default=DEFAULT_KEY_PREFIX, pattern=r"^[A-Za-z0-9_\-]{1,32}$")
    resources_dir: Path = Field(
        default_factory=default_resources_dir,
        description="Directory of resource YAML files. Unset: the defaults shipped in the "
        "memory_engine package (chat-window, customer-support, agent-scratchpad). A directory "
        "that is set but missing is an error when the registry loads.",
    )
    default_project_id: str = Field(default=DEFAULT_PROJECT_ID, pattern=r"^[A-Za-z0-9_\-.]{1,64}$")

    # --- data subjects (docs/data-protection.md)
    subject_salt: SecretStr | None = Field(
        default=None,
        description="Per-deployment secret that keys the HMAC-SHA256 of data subjects (keys and "
        "erasure records hold the hash, never the subject). Required by resources with a "
        "subject_template and by subject export/erasure; changing it orphans existing indexes.",
    )
    erasure_tombstone_ttl_s: int = Field(
        default=DEFAULT_ERASURE_TOMBSTONE_TTL_S,
        ge=1,
        description="How long an erased memory refuses appends (MemoryErased), so that an "
        "append in flight during an erasure cannot recreate it.",
    )

    # --- input limits
    max_message_bytes: int = Field(default=DEFAULT_MAX_MESSAGE_BYTES, ge=64)
    max_batch_messages: int = Field(default=DEFAULT_MAX_BATCH_MESSAGES, ge=1)
    max_batch_bytes: int = Field(default=DEFAULT_MAX_BATCH_BYTES, ge=1024)
    redaction_timeout_ms: int = Field(default=DEFAULT_REDACTION_TIMEOUT_MS, ge=1)

    # --- flush
    flush_marker_ttl_s: int = Field(default=DEFAULT_FLUSH_MARKER_TTL_S, ge=1)

    # --- summarizer
    summarizer_provider: Literal["openai", "anthropic", "rule_based"] = "rule_based"
    summarizer_base_url: str | None = None
    summarizer_model: str | None = None
    summarizer_api_key: SecretStr | None = None
    summarizer_timeout_s: float = Field(
        default=DEFAULT_SUMMARIZER_TIMEOUT_S, gt=0, le=MAX_HTTP_TIMEOUT_S, allow_inf_nan=False
    )

    # --- circuit breakers (summarizer, token-count APIs) and provider token counting
    breaker_fail_max: int = Field(
        default=5, ge=1, description="Consecutive failures that open a circuit breaker."
    )
    breaker_reset_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=MAX_INTERVAL_S,
        allow_inf_nan=False,
        description="Seconds an open breaker waits before one trial call.",
    )
    token_count_timeout_s: float = Field(
        default=2.0,
        gt=0,
        le=MAX_HTTP_TIMEOUT_S,
        allow_inf_nan=False,
        description="Bound on one provider count-tokens HTTP call (it runs inside append).",
    )

    # --- encryption at rest (docs/encryption.md; off unless keys are set)
    encryption_keys: SecretStr | None = Field(
        default=None,
        description="Key ring: `id:base64,id:base64` (each key 32 bytes, base64), or a JSON "
        "object {id: base64}. Ids `<project>/<n>` are a project's own keys (the highest n "
        "encrypts its memories). Unset (and no file): messages and summaries are stored in "
        "clear.",
    )
    encryption_keys_file: Path | None = Field(
        default=None,
        description="A file holding the key ring, in either form of encryption_keys (lines "
        "`id:base64` allowed, `#` comments skipped). Exclusive with encryption_keys.",
    )
    encryption_active_key: str | None = Field(
        default=None,
        description="The key id that encrypts memories of projects without keys of their own. "
        "Unset: the one key without a project, when there is exactly one.",
    )

    # --- Celery and service processes
    task_soft_time_limit_s: int = Field(default=DEFAULT_TASK_SOFT_TIME_LIMIT_S, ge=1)
    task_time_limit_s: int = Field(default=DEFAULT_TASK_TIME_LIMIT_S, ge=1)
    broker_visibility_timeout_s: int | None = Field(
        default=None,
        ge=1,
        description="Seconds an unacknowledged task waits before redelivery to another worker. "
        "None: derived, task_time_limit_s * 2 + 60. Keep it above the hard time limit and the "
        "resources' locking.flush_ttl; tests lower it to see redelivery in seconds.",
    )
    broker_unacked_restore_interval_s: int | None = Field(
        default=None,
        ge=1,
        description="Seconds between a worker's sweeps that redeliver tasks of dead workers. "
        "None: kombu's default (a sweep about every 100 s).",
    )
    cleanup_interval_s: float = Field(default=300.0, gt=0, le=MAX_INTERVAL_S, allow_inf_nan=False)
    reconcile_interval_s: float = Field(default=900.0, gt=0, le=MAX_INTERVAL_S, allow_inf_nan=False)
    marker_sweep_interval_s: float = Field(
        default=60.0, gt=0, le=MAX_INTERVAL_S, allow_inf_nan=False
    )
    beat_lock_timeout_s: int = Field(
        default=DEFAULT_BEAT_LOCK_TIMEOUT_S,
        ge=2,
        description="RedBeat lock TTL: a standby Beat takes over at most this long (plus "
        "beat_max_loop_interval_s) after the active one dies.",
    )
    beat_max_loop_interval_s: int = Field(default=DEFAULT_BEAT_MAX_LOOP_INTERVAL_S, ge=1)
    flower_user: str | None = None
    flower_password: SecretStr | None = None
    flower_unauthenticated_dev: bool = False
    flower_port: int = Field(default=5555, ge=1, le=65535)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_registry: Literal["global", "dedicated"] = Field(
        default="global",
        description="Where the client's Prometheus metrics are registered: prometheus_client's "
        "global REGISTRY, or a dedicated registry (memory_engine.metrics.registry()).",
    )
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("redis_url")
    @classmethod
    def _redis_url_parses(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_redis_url(value.get_secret_value())
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker_url_parses(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            url = value.get_secret_value()
            if urlsplit(url).scheme in REDIS_URL_SCHEMES:
                check_redis_url(url)
            else:
                _check_url_shape(url)
        return value

    @field_validator("result_backend_url", "beat_redis_url")
    @classmethod
    def _service_redis_url_parses(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_redis_url(value.get_secret_value())
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinels_parse(cls, value: str | None) -> str | None:
        if value is not None:
            parse_sentinels(value)
        return value

    @model_validator(mode="after")
    def _topology_is_complete(self) -> Settings:
        if self.redis_mode == "cluster" and urlsplit(self.redis_dsn()).scheme == "unix":
            raise ValueError("redis_mode 'cluster' needs a redis:// or rediss:// node URL")
        if self.redis_mode == "sentinel" and not (
            self.redis_sentinels and self.redis_sentinel_master
        ):
            raise ValueError(
                "redis_mode 'sentinel' needs MEMORY_REDIS_SENTINELS (host:port,host:port) and "
                "MEMORY_REDIS_SENTINEL_MASTER (the master's name)"
            )
        return self

    @model_validator(mode="after")
    def _limits_are_ordered(self) -> Settings:
        if self.task_soft_time_limit_s >= self.task_time_limit_s:
            raise ValueError("task_soft_time_limit_s must be below task_time_limit_s")
        # RedBeat extends its lock once per loop; a loop longer than the lock lets it lapse.
        if self.beat_max_loop_interval_s >= self.beat_lock_timeout_s:
            raise ValueError("beat_max_loop_interval_s must be below beat_lock_timeout_s")
        return self

    def replace(self, **changes: object) -> Settings:
        """A validated copy with ``changes`` applied (the environment is not read again)."""
        try:
            return type(self).model_validate({**self.model_dump(), **changes})
        except ValidationError as exc:
            raise ConfigError(f"invalid settings: {exc}") from exc

    def encryption_key_spec(self) -> str | None:
        """The key ring's text (``encryption_keys``, or the contents of
        ``encryption_keys_file``), or ``None`` when encryption is off. Raises
        :class:`ConfigError` when both are set or the file cannot be read; the error never
        quotes the file's contents."""
        if self.encryption_keys is not None and self.encryption_keys_file is not None:
            raise ConfigError("set MEMORY_ENCRYPTION_KEYS or MEMORY_ENCRYPTION_KEYS_FILE, not both")
        if self.encryption_keys_file is not None:
            try:
                return self.encryption_keys_file.read_text("utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(
                    f"MEMORY_ENCRYPTION_KEYS_FILE {str(self.encryption_keys_file)!a} cannot be "
                    f"read: {type(exc).__name__}"
                ) from exc
        if self.encryption_keys is not None:
            return self.encryption_keys.get_secret_value()
        return None

    # --- derived
    def redis_dsn(self) -> str:
        return self.redis_url.get_secret_value() if self.redis_url else DEFAULT_REDIS_URL

    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """``MEMORY_REDIS_SENTINELS`` as (host, port) pairs (empty outside sentinel mode)."""
        return parse_sentinels(self.redis_sentinels) if self.redis_sentinels else []

    def broker_dsn(self) -> str:
        """The broker URL as redis-py reads it (for direct Redis clients of the broker)."""
        return self.broker_url.get_secret_value() if self.broker_url else self.redis_dsn()

    def celery_broker_url(self) -> str:
        """:meth:`broker_dsn` in the form kombu and Celery parse (broker and result backend):
        credentials given as ``?password=``/``?username=`` move into the URL's userinfo (kombu
        fails on both at once), and ``unix:///path?db=N`` becomes
        ``redis+socket:///path?virtual_host=N`` (kombu's name for a Redis Unix socket)."""
        return kombu_url(self.broker_dsn())

    def broker_kind(self) -> BrokerKind:
        """``redis`` (kombu's Redis transport), ``amqp`` (RabbitMQ) or ``other`` (another kombu
        transport: no engine feature depends on it)."""
        return broker_kind(self.broker_dsn())

    def result_backend_dsn(self) -> str:
        """Redis URL of Celery's result backend (see :func:`service_redis_default`)."""
        if self.result_backend_url is not None:
            return self.result_backend_url.get_secret_value()
        return service_redis_default(self, "MEMORY_RESULT_BACKEND_URL")

    def beat_redis_dsn(self) -> str:
        """Redis URL of celery-redbeat's schedule and lock (see :func:`service_redis_default`)."""
        if self.beat_redis_url is not None:
            return self.beat_redis_url.get_secret_value()
        return service_redis_default(self, "MEMORY_BEAT_REDIS_URL")

    @property
    def visibility_timeout_s(self) -> int:
        """Longer than the longest hard time limit, so a running task is never redelivered
        (unless ``broker_visibility_timeout_s`` overrides it)."""
        if self.broker_visibility_timeout_s is not None:
            return self.broker_visibility_timeout_s
        return self.task_time_limit_s * 2 + 60


def broker_kind(url: str) -> BrokerKind:
    scheme = urlsplit(url).scheme
    if scheme in REDIS_URL_SCHEMES:
        return "redis"
    return "amqp" if scheme in AMQP_URL_SCHEMES else "other"


def data_redis_mode(settings: Settings) -> str:
    """``MEMORY_REDIS_MODE``: how the memory-data Redis is deployed."""
    return settings.redis_mode


def service_redis_default(settings: Settings, variable: str) -> str:
    """The Redis the service keeps results and Beat's schedule in when ``variable`` is unset:
    the broker when it is Redis (a standalone server kombu already talks to), else the data
    Redis when it is standalone. A Cluster (or Sentinel-managed) data store is not a URL that
    Celery's Redis backend or RedBeat can use: then the variable must be set, and this raises
    :class:`ConfigError` saying so."""
    if settings.broker_kind() == "redis":
        return settings.broker_dsn()
    mode = data_redis_mode(settings)
    if mode == STANDALONE_REDIS_MODE:
        return settings.redis_dsn()
    raise ConfigError(
        f"{variable} must be set: the broker is not Redis and the data Redis is in {mode} mode "
        f"(MEMORY_REDIS_MODE={mode}), which Celery's result backend and RedBeat cannot use; "
        f"set it to a standalone Redis, e.g. redis://host:6379/1"
    )


def _check_url_shape(url: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError("is not a valid URL (its port is not a number from 0 to 65535)") from None
    if not parts.scheme:
        raise ValueError("is not a URL (no scheme://)")


def parse_sentinels(text: str) -> list[tuple[str, int]]:
    """``host:port,host:port`` as pairs; ``ValueError`` naming the entry that is wrong."""
    pairs: list[tuple[str, int]] = []
    for entry in (e.strip() for e in text.split(",")):
        host, sep, port = entry.rpartition(":")
        if not entry or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"sentinel {entry!r} is not host:port (as in 10.0.0.5:26379)")
        pairs.append((host.strip("[]"), int(port)))
    return pairs


def check_redis_url(url: str) -> None:
    """Raise ``ValueError`` saying what is wrong with a Redis URL, never quoting it (it may hold a
    password): the scheme, the port, the database number, a Unix socket's path."""
    _check_url_shape(url)
    parts = urlsplit(url)
    if parts.scheme not in REDIS_URL_SCHEMES:
        raise ValueError(f"scheme must be redis://, rediss:// or unix:// (got {parts.scheme!r}://)")
    query = dict(parse_qsl(parts.query))
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("unix:// needs a socket path, as in unix:///run/redis/redis.sock")
        db = query.get("db", "0")
    else:
        if not parts.hostname:
            raise ValueError("has no host, as in redis://127.0.0.1:6379/0")
        db = parts.path.lstrip("/") or query.get("db", "0")
    if not db.isdigit():
        raise ValueError("database must be a number, as in redis://host:6379/0 or ?db=0")
    from redis.connection import parse_url  # redis-py's own parser: the last word

    try:
        parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError:
        raise ValueError("is not a URL redis-py can connect with") from None


def kombu_url(url: str) -> str:
    """A Redis URL as kombu/Celery parse it (see :meth:`Settings.celery_broker_url`); other URLs
    are returned unchanged."""
    parts = urlsplit(url)
    if parts.scheme not in REDIS_URL_SCHEMES:
        return url
    query = parse_qsl(parts.query, keep_blank_values=True)
    credentials = {k: v for k, v in query if k in ("username", "password")}
    rest = [(k, v) for k, v in query if k not in ("username", "password")]
    netloc = parts.netloc
    if credentials:
        user = credentials.get("username", parts.username or "")
        password = credentials.get("password", parts.password or "")
        host = netloc.rpartition("@")[2]
        netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    scheme = parts.scheme
    if scheme == "unix":
        scheme = "redis+socket"
        rest = [("virtual_host", v) if k == "db" else (k, v) for k, v in rest]
    # Not urlunsplit: it drops the "//" of an empty host (redis+socket:///path).
    query_text = f"?{urlencode(rest)}" if rest else ""
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    return f"{scheme}://{netloc}{parts.path}{query_text}{fragment}"


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment plus ``overrides``; errors become :class:`ConfigError`."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"MEMORY_{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from exc
