"""Celery configuration derived from :class:`memory_engine.settings.Settings`.

Decisions (see ``shared/notes/celery.md`` for the verified behaviour behind them):

- JSON only: pickle is refused on both sides (``accept_content``), so a crafted message cannot
  execute code in a worker.
- ``acks_late`` + ``reject_on_worker_lost`` + prefetch 1: a task whose worker dies is redelivered;
  every task body is idempotent, so a second run changes nothing already done.
- Visibility timeout > the hard time limit: a running task is never redelivered while it runs
  (Redis broker; RabbitMQ redelivers when the dead worker's connection closes).
- The broker is Redis or RabbitMQ; the result backend and RedBeat's store are Redis, by default
  the broker when it is Redis, else the standalone data Redis (``check_broker_side`` refuses what
  cannot work and names the variable to set).
- A result backend is kept (results are small JSON summaries of what a task did; the summarize
  task's SUMMARIZING progress lives there) and expires after ``RESULT_EXPIRES_S``. ``memory.flush``
  stores only its failures (``tasks/flush.py``): appends never wait for it, and Flower reads its
  outcome from task events.
- Task events on (worker and sent events) so Flower sees every task.
- No credential in a value that ``celery inspect conf`` or Flower's worker Config tab shows.
  Celery masks by key name (``celery.app.utils.filter_hidden_settings``): a key matching
  ``API|TOKEN|KEY|SECRET|PASS|...`` is masked whole, ``broker_url`` through kombu's
  ``as_uri(mask=...)`` and keys containing ``backend`` through ``sanitize_url``, which keeps the
  query string. Every other key is shown as is, ``redbeat_redis_url`` included. So every URL
  but ``broker_url`` goes in without its password (:func:`split_password`), and the password
  through a key whose name Celery masks: ``redis_password`` for the result backend,
  ``redbeat_redis_options["password"]`` for RedBeat (it passes its options to redis-py, where
  an explicit password stands when the URL has none).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from memory_engine.errors import ConfigError
from memory_engine.producer import task_queues
from memory_engine.settings import (
    STANDALONE_REDIS_MODE,
    Settings,
    data_redis_mode,
    kombu_url,
)
from memory_engine.task_contract import QUEUE_FLUSH, TASK_ROUTES

__all__ = [
    "RESULT_EXPIRES_S",
    "broker_transport_options",
    "build_celery_config",
    "check_broker_side",
    "split_password",
]

RESULT_EXPIRES_S = 3600
BROKER_HEALTH_CHECK_INTERVAL_S = 25
WORKER_SOFT_SHUTDOWN_S = 10.0


def split_password(url: str) -> tuple[str, str | None]:
    """``url`` without its password, and the password (``None`` when it has none).

    The password is the one redis-py would use: the userinfo one, else a ``password`` query
    parameter; both are removed. The user name stays in the URL (an ACL user is no secret).
    """
    parts = urlsplit(url)
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    username, colon, raw_password = userinfo.partition(":")
    query = parse_qsl(parts.query, keep_blank_values=True)
    from_query = [value for name, value in query if name == "password"]
    password = unquote(raw_password) if colon and raw_password else None
    if password is None and from_query and from_query[-1]:
        password = from_query[-1]
    if not at and not from_query:
        return url, None
    netloc = f"{username}@{hostinfo}" if at and username else hostinfo
    kept = (
        urlencode([(name, value) for name, value in query if name != "password"])
        if from_query
        else parts.query
    )
    # Joined by hand: urlunsplit drops the "//" of schemes it does not know (unix://).
    stripped = f"{parts.scheme}://{netloc}{parts.path}"
    stripped += f"?{kept}" if kept else ""
    stripped += f"#{parts.fragment}" if parts.fragment else ""
    return stripped, password


def check_broker_side(settings: Settings) -> None:
    """Refuse, with what to set, a broker/backend/Beat combination that cannot work.

    Celery's Redis transport, its Redis result backend and RedBeat each talk to one standalone
    Redis. A data store in Cluster or Sentinel mode (``MEMORY_REDIS_MODE``) is neither, so the
    broker must then be named, and the result backend and RedBeat store too unless the broker
    is a Redis they can share (:func:`memory_engine.settings.service_redis_default`).
    """
    mode = data_redis_mode(settings)
    if settings.broker_url is None and mode != STANDALONE_REDIS_MODE:
        raise ConfigError(
            f"MEMORY_BROKER_URL must be set: it defaults to MEMORY_REDIS_URL, which is a {mode} "
            f"(MEMORY_REDIS_MODE={mode}) that Celery cannot use as a broker; set it to a "
            f"standalone Redis (redis://host:6379/1) or RabbitMQ (amqp://user:pass@host:5672/vhost)"
        )
    settings.result_backend_dsn()
    settings.beat_redis_dsn()


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """kombu transport options of the workers' broker connections, per broker kind."""
    if settings.broker_kind() != "redis":
        # RabbitMQ redelivers a dead consumer's unacknowledged messages when its connection
        # closes (heartbeats, broker_heartbeat, detect a silent one): no visibility timeout.
        return {}
    transport: dict[str, Any] = {
        "visibility_timeout": settings.visibility_timeout_s,
        "socket_timeout": max(30.0, settings.socket_timeout_s),
        "socket_connect_timeout": settings.socket_connect_timeout_s,
        "socket_keepalive": True,
        "health_check_interval": BROKER_HEALTH_CHECK_INTERVAL_S,
    }
    if settings.broker_unacked_restore_interval_s is not None:
        # Throttle 1: every timer tick really scans (kombu otherwise scans every 10th tick).
        transport["unacked_restore_interval"] = settings.broker_unacked_restore_interval_s
        transport["unacked_restore_throttle"] = 1
    return transport


def build_celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery ``conf`` mapping for workers, Beat and Flower.

    Raises :class:`~memory_engine.errors.ConfigError` for a combination that cannot work
    (:func:`check_broker_side`): the service refuses to start and says what to set.
    """
    check_broker_side(settings)
    backend_url, backend_password = split_password(kombu_url(settings.result_backend_dsn()))
    redbeat_url, redbeat_password = split_password(settings.beat_redis_dsn())
    redbeat_options = {"password": redbeat_password} if redbeat_password else {}
    return {
        # kombu's form (?password= moved into the userinfo, unix:// as redis+socket://), whole:
        # Celery masks broker_url by name (amqp:// too). The backend and RedBeat URLs are not
        # masked (query) or not known to Celery: their password goes by a masked key.
        "broker_url": settings.celery_broker_url(),
        "broker_connection_timeout": settings.socket_connect_timeout_s,
        "result_backend": backend_url,
        "redis_password": backend_password,
        "result_expires": RESULT_EXPIRES_S,
        "result_backend_transport_options": {"visibility_timeout": settings.visibility_timeout_s},
        "redis_socket_timeout": max(30.0, settings.socket_timeout_s),
        "redis_socket_connect_timeout": settings.socket_connect_timeout_s,
        # A Unix socket has no keepalive option (redis-py refuses the argument).
        "redis_socket_keepalive": not backend_url.startswith("redis+socket:"),
        "broker_transport_options": broker_transport_options(settings),
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # serialization: JSON only
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        # reliability
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "task_time_limit": settings.task_time_limit_s,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_soft_shutdown_timeout": WORKER_SOFT_SHUTDOWN_S,
        # observability
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        # queues and routes: declared as the client declares them (durable; x-queue-type on
        # RabbitMQ), so neither side's declaration is refused by the broker.
        "task_queues": task_queues(settings),
        "task_default_queue": QUEUE_FLUSH,
        "task_routes": TASK_ROUTES,
        "task_create_missing_queues": False,
        # Beat: celery-redbeat keeps the schedule in Redis behind a lock, so a second Beat is a
        # hot standby instead of a second sender.
        "beat_scheduler": "redbeat.RedBeatScheduler",
        "redbeat_redis_url": redbeat_url,
        # Set even when empty: RedBeat otherwise falls back to broker_transport_options.
        "redbeat_redis_options": redbeat_options,
        "redbeat_key_prefix": f"{settings.key_prefix}:beat:",
        "redbeat_lock_timeout": settings.beat_lock_timeout_s,
        "beat_max_loop_interval": settings.beat_max_loop_interval_s,
        "timezone": "UTC",
        "enable_utc": True,
    }
