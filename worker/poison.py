"""Poison messages: queue items a worker cannot use must not stop it, nor reach its log.

Two places decode a task message, and both must survive garbage.

**kombu's transport.**
kombu's Redis transport pops a raw item off a queue list (``BRPOP``; ``RPOP`` for synchronous
gets) and decodes it before anything of Celery runs: ``loads`` of the JSON envelope in
``Channel._brpop_read``/``Channel._get``, then ``Message.__init__`` reads
``properties['delivery_tag']`` and decodes the body (``body_encoding: base64``). An item that
fails there (``LPUSH memory.flush "not json"``, an envelope whose base64 body is invalid) raises
out of the event loop, Celery's ``on_decode_error`` never sees it, and the worker stops with
"Unrecoverable error" (the item is already popped: it is lost either way). kombu offers no hook
before that decoding (celery/kombu#2421 reports the same for SQS; celery/celery#4308 for bodies).

So the Redis client a channel uses is a subclass whose ``BRPOP``/``RPOP`` replies are screened:
an item that kombu could not turn into a message is logged (queue, reason, size; never its
content), pushed to the capped dead-letter list :data:`DEAD_LETTER_QUEUE` on the broker, and
replaced by "no message" (exactly what an empty ``BRPOP`` returns), so consumption goes on.

**Celery's consumer.** Envelopes that kombu accepts but whose content Celery cannot use (a body
that is not JSON, a refused content type, an unknown task, no task header) Celery rejects itself
(acked and dropped, the worker goes on), but its log lines carry the message body and headers
(``MESSAGE_DECODE_ERROR``, ``UNKNOWN_TASK_ERROR``, ``INVALID_TASK_ERROR``, ``UNKNOWN_FORMAT`` in
``celery.worker.consumer.consumer``) and a traceback. :class:`BodyFreeConsumerLog` rewrites those
records to one line with the error type and, when known, the task name and id.

**RabbitMQ.** py-amqp receives AMQP frames and kombu builds the message from them, so there is
no raw JSON envelope to screen: every malformed delivery (a body that is not JSON or not UTF-8,
a pickle or unknown content type, no or an unknown task header) reaches Celery's consumer, which
rejects it without requeue and logs it through :class:`BodyFreeConsumerLog` (shown by
``tests/e2e/test_rabbitmq.py``). Nothing is dead-lettered there; declare a dead-letter exchange
on the queues (a RabbitMQ policy) to keep such messages.

:func:`install` maps the ``redis``/``rediss`` URL schemes to :class:`Transport` in kombu's alias
table, so every kombu connection of a process that builds the Celery app gets it, while the
transport name (what Flower and ``as_uri`` show) stays ``redis``. Sentinel and ``redis+socket``
URLs keep kombu's own transport.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from typing import Any

import redis
from celery.worker.consumer import consumer as celery_consumer
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from kombu.utils.json import loads

__all__ = [
    "DEAD_LETTER_MAX_ITEMS",
    "DEAD_LETTER_QUEUE",
    "DEAD_LETTER_SAMPLE_BYTES",
    "BodyFreeConsumerLog",
    "Channel",
    "Transport",
    "install",
    "poison_reason",
]

log = logging.getLogger(__name__)

DEAD_LETTER_QUEUE = "memory.dead"
"""Broker list of screened-out items, newest first (``LRANGE memory.dead 0 9``)."""
DEAD_LETTER_MAX_ITEMS = 1000
"""The dead-letter list is trimmed to this many items: a flood of garbage cannot fill the broker."""
DEAD_LETTER_SAMPLE_BYTES = 64 * 1024
"""At most this much of a screened-out item is kept, for the operator who looks into it."""

_TRANSPORT_PATH = f"{__name__}:Transport"
_SCREENED_SCHEMES = ("redis", "rediss")


def _error_name(exc: BaseException) -> str:
    kind = type(exc)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def poison_reason(item: bytes | str, channel: Any) -> str | None:
    """Why kombu could not turn the raw queue ``item`` into a message, or ``None`` if it can.

    Runs the decoding kombu runs (its ``loads``, the envelope fields ``Message`` reads, the body
    codec). The reason names the failed step and the exception type, never the content.
    """
    try:
        payload = loads(item)
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        return f"envelope is not JSON ({_error_name(exc)})"
    if not isinstance(payload, dict):
        return "envelope is not a JSON object"
    properties = payload.get("properties")
    if not isinstance(properties, dict) or properties.get("delivery_tag") is None:
        return "envelope has no properties.delivery_tag"
    if not isinstance(properties.get("delivery_info", {}), dict):
        return "envelope properties.delivery_info is not an object"
    if not isinstance(payload.get("headers", {}) or {}, dict):
        return "envelope headers are not an object"
    body, encoding = payload.get("body"), properties.get("body_encoding")
    if body:
        if encoding is not None and not isinstance(encoding, str):
            return "envelope body_encoding is not a string"
        try:
            channel.decode_body(body, encoding)
        except Exception as exc:  # the codec's own error: binascii.Error, KeyError, ...
            return f"body cannot be decoded as {str(encoding)[:32]!r} ({_error_name(exc)})"
    return None


class ScreeningRedis(redis.Redis):
    """The channel's Redis client: ``BRPOP``/``RPOP`` replies that kombu could not decode are
    dead-lettered and reported as "no message"."""

    def __init__(self, *args: Any, channel: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._channel = channel

    def parse_response(self, connection: Any, command_name: Any, **options: Any) -> Any:
        response = super().parse_response(connection, command_name, **options)
        if command_name == "BRPOP" and response:
            queue, item = response
            if not self._channel.screen(_text(queue), item):
                return None
        return response

    def rpop(self, name: Any, count: int | None = None) -> Any:
        item = super().rpop(name, count)
        if count is None and item is not None and not self._channel.screen(_text(name), item):
            return None
        return item


class Channel(kombu_redis.Channel):  # kombu is untyped
    """kombu's Redis channel with screened queue reads (see the module docstring)."""

    def _get_client(self) -> Any:
        client = super()._get_client()
        if client is not redis.Redis:  # a global_keyprefix client: keep kombu's as it is
            return client
        return functools.partial(ScreeningRedis, channel=self)

    def screen(self, queue: str, item: bytes | str) -> bool:
        """True if ``item`` (just popped from ``queue``) can be delivered; else log it without
        its content, dead-letter it, and return False."""
        reason = poison_reason(item, self)
        if reason is None:
            return True
        queue = queue.rsplit(self.sep, 1)[0]  # a priority sub-list names its queue
        raw = item if isinstance(item, bytes) else item.encode("utf-8", "surrogatepass")
        log.warning(
            "dropped a malformed message from queue %s: %s (%d bytes); kept in broker list %s",
            queue,
            reason,
            len(raw),
            DEAD_LETTER_QUEUE,
        )
        record = json.dumps(
            {
                "queue": queue,
                "reason": reason,
                "dead_at": time.time(),
                "size_bytes": len(raw),
                "item": raw[:DEAD_LETTER_SAMPLE_BYTES].decode("utf-8", "replace"),
            }
        )
        try:
            # The sync pool, not the BRPOP connection: that one belongs to the event loop.
            with redis.Redis(connection_pool=self.pool).pipeline(transaction=True) as pipe:
                pipe.lpush(DEAD_LETTER_QUEUE, record)
                pipe.ltrim(DEAD_LETTER_QUEUE, 0, DEAD_LETTER_MAX_ITEMS - 1)
                pipe.execute()
        except redis.RedisError as exc:
            log.warning(
                "could not keep the malformed message in %s (%s); it is dropped",
                DEAD_LETTER_QUEUE,
                type(exc).__name__,
            )
        return False


class Transport(kombu_redis.Transport):  # kombu is untyped
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel


# ---- Celery's rejections, logged without the message ------------------------------------------

_CONSUMER_LOGGER = celery_consumer.logger.name
_REJECTION_TEMPLATES = {
    celery_consumer.MESSAGE_DECODE_ERROR: "body cannot be decoded",
    celery_consumer.UNKNOWN_TASK_ERROR: "unknown task",
    celery_consumer.INVALID_TASK_ERROR: "invalid task message",
    celery_consumer.UNKNOWN_FORMAT: "not a task message",
}


def _short(value: Any) -> str:
    return repr(value)[:80]


class BodyFreeConsumerLog(logging.Filter):
    """Rewrites Celery's "cannot use this message" records to a line without body, headers or
    traceback (see the module docstring). Other records pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        what = _REJECTION_TEMPLATES.get(record.msg) if isinstance(record.msg, str) else None
        if what is None:
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        error = _error_name(args[0]) if args and isinstance(args[0], BaseException) else "-"
        task, task_id = "-", "-"
        if record.msg is celery_consumer.UNKNOWN_TASK_ERROR and len(args) > 2:
            headers = args[2] if isinstance(args[2], dict) else {}
            task, task_id = _short(headers.get("task", "-")), _short(headers.get("id", "-"))
        record.msg = "dropped a task message: %s (%s); task=%s id=%s; content not logged"
        record.args = (what, error, task, task_id)
        record.exc_info = None
        record.exc_text = None
        return True


_log_filter = BodyFreeConsumerLog()


def install() -> None:
    """Screen this process's Redis queues and Celery's rejection log lines.

    Uses :class:`Transport` for ``redis://`` and ``rediss://`` broker URLs (call before the
    first broker connection: kombu caches the class per scheme on first use) and adds
    :class:`BodyFreeConsumerLog` to Celery's consumer logger. Idempotent.
    """
    for scheme in _SCREENED_SCHEMES:
        TRANSPORT_ALIASES[scheme] = _TRANSPORT_PATH
    consumer_logger = logging.getLogger(_CONSUMER_LOGGER)
    if _log_filter not in consumer_logger.filters:
        consumer_logger.addFilter(_log_filter)
