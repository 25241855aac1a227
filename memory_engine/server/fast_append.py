"""The append's fast path: ``POST /v1/memories/{resource_id}/{key}/messages`` answered in plain
ASGI, without FastAPI's dependency solving and request validation (most of the server's CPU per
append, issue 14's performance goal).

It sits between the gate and FastAPI, so the gate still bounds the body (413), authenticates
(401, the token's project in ``scope["memory.project"]``), records the span and the metrics
(``scope["route"]`` is set to the FastAPI route, so the route label and span name are the same).
The route stays declared in FastAPI: it documents the API (OpenAPI) and is the fallback.

The body is read once and parsed once with :func:`json.loads`; only the envelope is checked here
(a JSON object whose only member ``messages`` is a list). Anything else (no JSON content type,
invalid JSON, another envelope) is replayed, byte for byte, to the FastAPI route, which answers
with today's typed 4xx. The messages themselves are validated by the library's append
(:class:`~memory_engine.errors.MessageValidationError`, 422); key checks and project scoping are
:class:`~memory_engine.server.service.MemoryService`'s, and errors get
:func:`~memory_engine.server.errors.status_and_body`'s bodies.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from memory_engine.server.errors import status_and_body
from memory_engine.server.gate import ASGIApp, Message_, Receive, Scope, Send
from memory_engine.server.service import MemoryService

__all__ = ["FastAppend"]

_JSON_HEADERS = (b"content-type", b"application/json")


def _is_json_content_type(value: bytes | None) -> bool:
    """FastAPI's rule (strict content type, its default): ``application/json`` or
    ``application/*+json``; a body without a content type is not read as JSON."""
    if value is None:
        return False
    media = value.split(b";", 1)[0].strip().lower()
    if not media.startswith(b"application/"):
        return False
    subtype = media[len(b"application/") :]
    return subtype == b"json" or subtype.endswith(b"+json")


class FastAppend:
    """ASGI app in front of FastAPI (``app``) that serves the append route itself (see the
    module docstring); every other request goes to ``app`` untouched."""

    def __init__(self, app: ASGIApp, route: Any, service: Callable[[], MemoryService]) -> None:
        self.app = app
        self.route = route  # the FastAPI APIRoute of the append (its regex, its template)
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        match = self.route.path_regex.match(scope["path"])
        project = scope.get("memory.project")
        if match is None or project is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route  # the gate's route label and span name
        body = await _read_body(receive)
        messages = _envelope_messages(scope, body)
        if messages is None:  # not the common shape: FastAPI answers, with today's errors
            await self.app(scope, _replay(body, receive), send)
            return
        try:
            result = await self.service().append(
                project, match["resource_id"], match["key"], messages
            )
        except Exception as exc:  # every failure becomes the API's typed error body
            status, error = status_and_body(exc)
            await _reply(send, status, json.dumps(error, ensure_ascii=False).encode())
            return
        await _reply(send, 200, result.model_dump_json().encode())


def _envelope_messages(scope: Scope, body: bytes) -> list[Any] | None:
    """The ``messages`` list of a ``{"messages": [...]}`` JSON body, or None for anything else."""
    content_type = None
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value
            break
    if not body or not _is_json_content_type(content_type):
        return None
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(parsed, dict) or len(parsed) != 1:
        return None
    messages = parsed.get("messages")
    return messages if isinstance(messages, list) else None


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives ``body`` once, then defers to ``receive`` (disconnects)."""
    sent = [False]

    async def replayed() -> Message_:
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _reply(send: Send, status: int, payload: bytes) -> None:
    headers = [(b"content-length", b"%d" % len(payload)), _JSON_HEADERS]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
