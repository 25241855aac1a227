"""The ASGI gate in front of the HTTP API and the MCP app: it bounds the request body (counting
the bytes of the body stream: 413 before any parsing), authenticates ``/v1`` and ``/mcp`` (401,
no detail), records the request's span (when tracing is on) and its metrics, and hands ``/mcp`` to
the MCP server's streamable HTTP app."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from memory_engine.server.auth import ApiKeys, bearer_token
from memory_engine.server.errors import BodyTooLarge, error_body
from memory_engine.server.tracing import tracing_active

__all__ = ["ASGIApp", "Gate", "Receive", "Scope", "Send", "http_metrics"]

log = logging.getLogger("memory_engine.server.app")

Scope = MutableMapping[str, Any]
Message_ = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message_]]
Send = Callable[[Message_], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# ---- metrics ----------------------------------------------------------------------------------


class _HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "memory_engine_http_requests",
            "HTTP requests, by route template, method and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "memory_engine_http_request_duration_seconds",
            "HTTP request duration, by route template and method.",
            ["route", "method"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
        )


_HTTP_METRICS: dict[int, _HttpMetrics] = {}


def http_metrics(registry: CollectorRegistry) -> _HttpMetrics:
    found = _HTTP_METRICS.get(id(registry))
    if found is None:
        found = _HTTP_METRICS[id(registry)] = _HttpMetrics(registry)
    return found


# ---- the gate: body limit, auth, span, metrics, /mcp ------------------------------------------


def _json_response(status: int, body: dict[str, Any], extra: list[Any] | None = None) -> Any:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    return headers + (extra or []), payload


def _route_of(scope: Scope) -> str | None:
    """The matched route's template (Starlette's router puts the route in the scope)."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else None


class Gate:
    """Pure ASGI middleware in front of the app (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: ApiKeys,
        max_body_bytes: int,
        mcp_app: ASGIApp | None,
        registry: CollectorRegistry,
    ) -> None:
        self.app = app
        self.keys = keys
        self.max_body_bytes = max_body_bytes
        self.mcp_app = mcp_app
        self.metrics = http_metrics(registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path: str = scope["path"]
        status_box = [500]

        async def send_recording(message: Message_) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
            await send(message)

        if tracing_active():
            await self._traced(scope, receive, send_recording, path, status_box)
        else:
            await self._handle(scope, receive, send_recording, path)
        route = _route_of(scope) or ("/mcp" if path.startswith("/mcp") else "other")
        method = scope["method"]
        self.metrics.requests.labels(route, method, str(status_box[0])).inc()
        self.metrics.duration.labels(route, method).observe(time.perf_counter() - started)

    async def _traced(
        self, scope: Scope, receive: Receive, send: Send, path: str, status_box: list[int]
    ) -> None:
        from opentelemetry import propagate, trace

        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        tracer = trace.get_tracer("memory_engine.server")
        method = scope["method"]
        with tracer.start_as_current_span(
            method,
            context=propagate.extract(headers),
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "url.scheme": scope.get("scheme", "http")},
        ) as span:
            try:
                await self._handle(scope, receive, send, path)
            finally:
                route = _route_of(scope)
                if route:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status_box[0])
                if status_box[0] >= 500:
                    span.set_status(trace.StatusCode.ERROR)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        is_mcp = path == "/mcp" or path.startswith("/mcp/")
        if path.startswith("/v1/") or is_mcp:
            token = None
            for name, value in scope["headers"]:
                if name == b"authorization":
                    token = bearer_token(value.decode("latin-1"))
                    break
            project = self.keys.project_for(token)
            if project is None:
                await self._reply(
                    send,
                    401,
                    error_body("Unauthorized", "authentication required"),
                    [(b"www-authenticate", b"Bearer")],
                )
                return
            scope["memory.project"] = project
        declared = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value
                break
        if declared is not None:
            try:
                too_large = int(declared) > self.max_body_bytes
            except ValueError:
                too_large = True
            if too_large:
                await self._reply(send, 413, self._too_large_body())
                return
        receive = self._bounded(receive)
        started = [False]

        async def send_tracking(message: Message_) -> None:
            if message["type"] == "http.response.start":
                started[0] = True
            await send(message)

        try:
            if is_mcp and self.mcp_app is not None:
                await self.mcp_app(scope, receive, send_tracking)
            else:
                await self.app(scope, receive, send_tracking)
        except BodyTooLarge:
            if started[0]:
                raise
            await self._reply(send, 413, self._too_large_body())

    def _too_large_body(self) -> dict[str, Any]:
        return error_body("BodyTooLarge", f"request body over {self.max_body_bytes} bytes")

    def _bounded(self, receive: Receive) -> Receive:
        limit = self.max_body_bytes
        seen = [0]

        async def bounded() -> Message_:
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > limit:
                    raise BodyTooLarge(f"request body over {limit} bytes")
            return message

        return bounded

    @staticmethod
    async def _reply(
        send: Send, status: int, body: dict[str, Any], extra: list[Any] | None = None
    ) -> None:
        headers, payload = _json_response(status, body, extra)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
