"""Errors as the HTTP API answers them: ``{"error": "<ErrorClassName>", "message": "..."}``.

One table maps the engine's exception tree to status codes. Messages are the engine's own (they
name fields and ids, escaped, never content or secrets); anything unexpected becomes a 500 with
a fixed message, logged here with its traceback and never sent.
"""

from __future__ import annotations

import logging
from typing import Any

from memory_engine.errors import (
    ConfigError,
    FlushAlreadyRunning,
    FlushConflict,
    KeyTemplateError,
    LockError,
    MemoryEngineError,
    MemoryErased,
    MemoryFull,
    MessageValidationError,
    ResourceMismatch,
    ResourceNotFound,
    StoreError,
    StoreUnavailable,
)

__all__ = [
    "BodyTooLarge",
    "HTTPError",
    "MemoryNotFound",
    "ProjectMismatch",
    "SubjectsNotConfigured",
    "Unauthorized",
    "error_body",
    "status_and_body",
]

log = logging.getLogger(__name__)


class HTTPError(MemoryEngineError):
    """An error the HTTP layer raises itself, with its status code."""

    status: int = 400


class Unauthorized(HTTPError):
    """No bearer token, or one no project owns. The answer says nothing more."""

    status = 401


class ProjectMismatch(HTTPError):
    """A resolve context names another project than the token's."""

    status = 403


class MemoryNotFound(HTTPError):
    """The memory the path names does not exist (never written, deleted, or expired)."""

    status = 404


class BodyTooLarge(HTTPError):
    """The request body is over the server's limit (counted before any parsing)."""

    status = 413


class SubjectsNotConfigured(HTTPError):
    """Subject export or erasure on a server without ``MEMORY_SUBJECT_SALT``: no subject can be
    looked up, and none was ever indexed. A deployment choice, not a fault: retrying is useless."""

    status = 501


class InvalidJSON(HTTPError):
    """The request body is not JSON (or is nested deeper than the parser goes)."""

    status = 400


# Most specific first: the first isinstance match wins.
_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (HTTPError, 0),  # its own .status
    (ResourceNotFound, 404),
    (KeyTemplateError, 400),
    (MemoryFull, 409),  # the memory is at its hard ceiling: retry after a flush
    (MemoryErased, 409),  # its data subject was just erased: refused for the tombstone's life
    (MessageValidationError, 422),
    (ResourceMismatch, 409),
    (FlushAlreadyRunning, 409),
    (FlushConflict, 409),
    (LockError, 409),
    (StoreUnavailable, 503),  # BrokerUnavailable included
    (StoreError, 500),
    (ConfigError, 500),
)
INTERNAL_MESSAGE = "internal error; see the server log"
UNAVAILABLE_MESSAGE = "the store or the broker is unavailable; retry later"


def error_body(name: str, message: str) -> dict[str, Any]:
    return {"error": name, "message": message}


def status_and_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The status code and JSON body for ``exc``."""
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            if isinstance(exc, HTTPError):
                status = exc.status
            if isinstance(exc, StoreUnavailable):  # its text may name hosts: keep it in the log
                log.warning("request failed: %s: %s", type(exc).__name__, exc)
                return status, error_body(type(exc).__name__, UNAVAILABLE_MESSAGE)
            if status >= 500:
                log.error("request failed: %s", type(exc).__name__, exc_info=exc)
                return status, error_body(type(exc).__name__, INTERNAL_MESSAGE)
            return status, error_body(type(exc).__name__, str(exc))
    log.error("unexpected error", exc_info=exc)
    return 500, error_body("InternalError", INTERNAL_MESSAGE)
