"""Enqueues Celery tasks by name, so workflow code never imports task code.

A minimal Celery app (no tasks, JSON only) is built on first use: a memory that never crosses its
threshold never touches the broker.

The producer declares the engine's queues exactly as the workers do (:func:`task_queues`):
on RabbitMQ a publish to a queue nobody declared yet is dropped, and a redeclaration with other
arguments (``x-queue-type``) is refused by the broker.

Publishing goes through a circuit breaker named after the broker,
``broker.redis@<host>[:<port>]`` or ``broker.amqp@<host>[:<port>]``
(:mod:`memory_engine.breakers`; state shared in the memory Redis when the producer is given one,
exported as ``memory_engine_breaker_state``). A hung broker costs one publish timeout
(:attr:`TaskProducer.publish_timeout_s`), then the breaker opens after that single failure
(:data:`PUBLISH_BREAKER_FAIL_MAX`: a publish already retries inside) and every publish in every
process sharing it fails at once with :class:`~memory_engine.errors.BrokerUnavailable`
(``breaker_open=True``) without touching the network, until the reset timeout lets one trial
through.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import TYPE_CHECKING, Any

from memory_engine.errors import BrokerUnavailable
from memory_engine.settings import Settings
from memory_engine.task_contract import QUEUES, TASK_ROUTES

if TYPE_CHECKING:
    from kombu.entity import Queue

    from memory_engine.breakers import SharedCircuitBreaker
    from memory_engine.store.connections import RedisClient

__all__ = [
    "PUBLISH_BREAKER_FAIL_MAX",
    "SHOWN_TASK_ARGUMENTS",
    "TaskProducer",
    "task_kwargsrepr",
    "task_queues",
]

log = logging.getLogger(__name__)

PUBLISH_MAX_RETRIES = 2
PUBLISH_RETRY_INTERVAL_S = 0.2
PUBLISH_BREAKER_FAIL_MAX = 1
"""Failed publishes that open the broker breaker: one, since each publish already retries
``PUBLISH_MAX_RETRIES`` times and a second failure would cost every appender another timeout."""

SHOWN_TASK_ARGUMENTS = frozenset(
    {"memory_id", "resource_id", "strategy", "reason", "policy", "dry_run", "first_seq", "last_seq"}
)
"""Task arguments that Flower, task events and worker logs may show; any other is masked."""


def task_kwargsrepr(kwargs: dict[str, Any]) -> str:
    """The ``kwargsrepr`` sent with a task (what Flower shows as its arguments): ids and options
    only. Tasks never carry message content; masking every other name keeps it so if one ever
    gains an argument that could."""
    return repr({k: v if k in SHOWN_TASK_ARGUMENTS else "<hidden>" for k, v in kwargs.items()})


def declared_queue(settings: Settings, name: str) -> Queue:
    """One queue as :func:`task_queues` declares the engine's."""
    from kombu.entity import Exchange, Queue

    arguments = (
        {"x-queue-type": settings.broker_queue_type} if settings.broker_kind() == "amqp" else None
    )
    return Queue(  # type: ignore[no-untyped-call]
        name,
        Exchange(name, type="direct", durable=True),  # type: ignore[no-untyped-call]
        routing_key=name,
        durable=True,
        queue_arguments=arguments,
    )


def task_queues(settings: Settings) -> list[Queue]:
    """The engine's queues as the client and every worker declare them: durable (they survive a
    broker restart; kombu's default, stated here), each with its own direct exchange; on
    RabbitMQ of ``settings.broker_queue_type`` (``x-queue-type``: ``quorum`` replicates the queue
    over the cluster's nodes). Redis has no queue arguments."""
    from kombu.entity import Exchange, Queue  # deferred with Celery: only a publish needs kombu

    arguments = (
        {"x-queue-type": settings.broker_queue_type} if settings.broker_kind() == "amqp" else None
    )
    return [
        Queue(  # type: ignore[no-untyped-call]
            name,
            Exchange(name, type="direct", durable=True),  # type: ignore[no-untyped-call]
            routing_key=name,
            durable=True,
            queue_arguments=arguments,
        )
        for name in QUEUES
    ]


def publish_transport_options(settings: Settings) -> dict[str, Any]:
    """kombu transport options of the publishing connection, per broker kind.

    RabbitMQ: publisher confirms (a publish returns once the broker has taken the message, so an
    acknowledged append's flush is not lost in a socket buffer) and bounded socket reads and
    writes (a hung broker costs :attr:`TaskProducer.publish_timeout_s`, as on Redis)."""
    if settings.broker_kind() == "amqp":
        return {
            "confirm_publish": True,
            "read_timeout": settings.socket_timeout_s,
            "write_timeout": settings.socket_timeout_s,
        }
    return {
        "visibility_timeout": settings.visibility_timeout_s,
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.socket_connect_timeout_s,
    }


def trace_headers() -> dict[str, str] | None:
    """The current trace context (W3C ``traceparent``/``tracestate``) as task headers, so the
    worker's spans join the caller's trace; None when tracing was never set up in this process
    (opentelemetry not imported: nothing to carry, nothing imported)."""
    if "opentelemetry.trace" not in sys.modules:
        return None
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


class TaskProducer:
    """Thread-safe publisher of engine tasks.

    ``redis`` (the memory Redis) holds the broker breaker's state, shared with every process
    using the same key prefix; without it the breaker is this producer's own.
    """

    def __init__(self, settings: Settings, redis: RedisClient | None = None) -> None:
        self._settings = settings
        self._redis = redis
        self._app: Any = None
        self._breaker: SharedCircuitBreaker | None = None
        self._lock = threading.Lock()

    @property
    def breaker(self) -> SharedCircuitBreaker:
        """The broker's circuit breaker (built on first use: it registers in Redis)."""
        if self._breaker is None:
            with self._lock:
                if self._breaker is None:
                    # pybreaker loads on the first publish, not with the library.
                    from memory_engine.breakers import breaker_name, build_breaker

                    self._breaker = build_breaker(
                        breaker_name(
                            "broker", self._settings.broker_kind(), self._settings.broker_dsn()
                        ),
                        self._settings,
                        failures=(BrokerUnavailable,),
                        redis=self._redis,
                        fail_max=PUBLISH_BREAKER_FAIL_MAX,
                    )
        return self._breaker

    @property
    def publish_timeout_s(self) -> float:
        """The longest a publish to an unresponsive broker takes before it fails: every attempt
        may wait for the connect and the socket timeout."""
        attempt_s = self._settings.socket_connect_timeout_s + self._settings.socket_timeout_s
        return (
            PUBLISH_MAX_RETRIES + 1
        ) * attempt_s + PUBLISH_MAX_RETRIES * PUBLISH_RETRY_INTERVAL_S

    @property
    def app(self) -> Any:
        if self._app is None:
            with self._lock:
                if self._app is None:
                    from celery import Celery  # deferred: appends below threshold never need it

                    app = Celery("memory-engine-client", set_as_current=False)
                    app.conf.update(
                        broker_url=self._settings.celery_broker_url(),
                        task_serializer="json",
                        accept_content=["json"],
                        result_serializer="json",
                        task_routes=TASK_ROUTES,
                        task_queues=task_queues(self._settings),
                        task_create_missing_queues=False,
                        task_send_sent_event=True,
                        broker_connection_timeout=self._settings.socket_connect_timeout_s,
                        broker_connection_retry_on_startup=True,
                        broker_transport_options=publish_transport_options(self._settings),
                    )
                    self._app = app
        return self._app

    def send(
        self,
        name: str,
        kwargs: dict[str, Any],
        *,
        task_id: str | None = None,
        queue: str | None = None,
    ) -> str:
        """Publish ``name`` with ``kwargs`` (ids only, never content) to its routed queue, or to
        ``queue`` (an application's task, e.g. the pre-removal hook ``archive.on_remove_task``:
        declared like the engine's queues).

        Raises :class:`~memory_engine.errors.BrokerUnavailable`: the publish failed (within
        :attr:`publish_timeout_s`), or the broker breaker is open (``breaker_open``: at once,
        nothing was sent).
        """
        return self.breaker.call_or_raise(
            self._publish,
            name,
            kwargs,
            task_id,
            queue,
            error_type=lambda message: BrokerUnavailable(message, breaker_open=True),
        )

    def _publish(
        self, name: str, kwargs: dict[str, Any], task_id: str | None, queue: str | None
    ) -> str:
        options: dict[str, Any] = {}
        if queue is not None:
            # A Queue object, not a name: the app declares only the engine's queues and does
            # not create missing ones.
            options["queue"] = declared_queue(self._settings, queue)
        try:
            result = self.app.send_task(
                name,
                kwargs=kwargs,
                headers=trace_headers(),
                **options,
                argsrepr="()",
                kwargsrepr=task_kwargsrepr(kwargs),
                task_id=task_id,
                retry=True,
                retry_policy={
                    "max_retries": PUBLISH_MAX_RETRIES,
                    "interval_start": 0,
                    "interval_step": PUBLISH_RETRY_INTERVAL_S,
                    "interval_max": PUBLISH_RETRY_INTERVAL_S,
                },
            )
        except Exception as exc:  # kombu raises OperationalError and friends
            raise BrokerUnavailable(f"could not publish {name}: {exc}") from exc
        return str(result.id)

    def queue_depths(self) -> dict[str, int]:
        """Messages ready in each engine queue as RabbitMQ counts them (a passive
        ``queue.declare``; a queue nobody declared yet holds none). For a RabbitMQ broker; on
        Redis a queue is a list (``store.inspect.queue_lengths``).

        Raises :class:`~memory_engine.errors.BrokerUnavailable` when the broker does not answer.
        """
        depths: dict[str, int] = {}
        conn = self.app.connection_for_read()
        try:
            conn.ensure_connection(max_retries=1, timeout=self._settings.socket_connect_timeout_s)
            for name in QUEUES:
                channel = conn.channel()
                try:
                    depths[name] = int(channel.queue_declare(queue=name, passive=True)[1])
                except conn.channel_errors:  # 404: not declared yet (the channel is closed)
                    depths[name] = 0
                finally:
                    channel.close()
        except conn.connection_errors as exc:
            raise BrokerUnavailable(f"could not read the queue depths: {exc}") from exc
        finally:
            conn.release()
        return depths

    def close(self) -> None:
        if self._app is not None:
            self._app.close()
            self._app = None
