"""The HTTP API (FastAPI on uvicorn): ``memory-engine serve``; docs/http.md is the guide,
docs/openapi.json the contract (a test keeps it equal to :func:`create_app`'s).

One pure-ASGI middleware (:class:`Gate`) sits in front of everything: it bounds the request
body (counting the bytes of the body stream, 413 before any parsing), authenticates ``/v1`` and
``/mcp`` (401, no detail), records the request's span (when tracing is on) and metrics, and hands
``/mcp`` to the MCP server's streamable HTTP app. Behind it, :class:`FastAppend` answers the
append (``POST .../messages``, the hot path) in plain ASGI; its FastAPI route documents it and
answers the bodies the fast path does not take. Routes return ready :class:`JSONResponse`
objects: the response models document the API, and are not validated again per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Body, FastAPI, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from memory_engine import metrics
from memory_engine.aio import AsyncMemoryClient
from memory_engine.core.plans import FlushResult
from memory_engine.core.subjects import ErasureReport
from memory_engine.errors import MemoryEngineError
from memory_engine.messages import AppendResult, MemoryStats, Message, Page
from memory_engine.server.auth import ApiKeys
from memory_engine.server.errors import error_body, status_and_body
from memory_engine.server.fast_append import FastAppend
from memory_engine.server.gate import Gate
from memory_engine.server.service import SUBJECT_MAX_CHARS, MemoryService
from memory_engine.settings import Settings, load_settings

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app"]

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 5 * 1024 * 1024
"""Largest request body read (``MEMORY_API_MAX_BODY_BYTES``): above the largest batch an append
accepts (``MEMORY_MAX_BATCH_BYTES``, 4 MiB by default) plus JSON overhead."""
READY_TIMEOUT_S = 2.0
API_VERSION = "1"

# ---- request and response bodies --------------------------------------------------------------


class MessagesBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    messages: list[Message] = Field(description="Messages, oldest first; stored all or none.")


class FlushBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    strategy: str | None = None
    dry_run: bool = False


class ResolveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    context: dict[str, Any] = Field(default_factory=dict)


class SubjectBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subject: str = Field(
        min_length=1,
        max_length=SUBJECT_MAX_CHARS,
        description="The data subject, as the resource's subject_template renders it (e.g. a "
        "user id). In the body, never the path: paths reach access logs.",
    )


class ResolveResult(BaseModel):
    key: str
    memory_id: str


class ReplaceResult(BaseModel):
    message_count: int


class ClearResult(BaseModel):
    cleared: int


class DeleteResult(BaseModel):
    deleted: bool


class ContextResult(BaseModel):
    messages: list[Message]


class ResourceInfo(BaseModel):
    id: str
    type: str
    description: str | None = None
    max_tokens: int | None = None
    max_messages: int | None = None
    ttl_s: int | None = None
    default_key_template: str | None = None


class ResourcesResult(BaseModel):
    resources: list[ResourceInfo]


class ErrorBody(BaseModel):
    error: str = Field(description="The error's class name, e.g. MessageValidationError.")
    message: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 409, 413, 422, 501, 503)
}

# ---- the app ----------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="A project's API token.")


async def _project(request: Request, _credentials: Annotated[Any, Security(_bearer)] = None) -> str:
    """The token's project, set by the gate (routes under /v1 are never reached without it)."""
    project: str = request.scope["memory.project"]
    return project


def _json(model: BaseModel, status: int = 200) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"), status_code=status)


def _error_response(exc: BaseException) -> JSONResponse:
    status, body = status_and_body(exc)
    return JSONResponse(body, status_code=status)


async def _ping_broker(settings: Settings) -> bool:
    def check() -> bool:
        from kombu.connection import Connection

        url = settings.celery_broker_url()
        with Connection(url, connect_timeout=READY_TIMEOUT_S) as conn:  # type: ignore[no-untyped-call]
            conn.ensure_connection(max_retries=1, timeout=READY_TIMEOUT_S)
        return True

    try:
        return await asyncio.wait_for(asyncio.to_thread(check), READY_TIMEOUT_S * 2)
    except Exception:  # any failure means not ready; the reason goes to the log only
        log.warning("readyz: broker unreachable", exc_info=True)
        return False


def create_app(
    settings: Settings | None = None,
    *,
    keys: ApiKeys | None = None,
    client: AsyncMemoryClient | None = None,
    max_body_bytes: int | None = None,
    mcp: bool = True,
) -> Any:
    """The ASGI application. ``settings``: the engine's (default: ``MEMORY_*``); ``keys``:
    default :meth:`ApiKeys.from_env`; ``client``: an async client to use instead of building one
    at start-up (it is not closed at shutdown). The result is the FastAPI app wrapped in the
    gate; the FastAPI app is its ``.fastapi`` attribute."""
    import os

    settings = settings or load_settings()
    keys = keys if keys is not None else ApiKeys.from_env()
    if max_body_bytes is None:
        max_body_bytes = int(os.environ.get("MEMORY_API_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES))
    state: dict[str, Any] = {}

    def service() -> MemoryService:
        found: MemoryService = state["service"]
        return found

    mcp_server = None
    mcp_app = None
    if mcp:
        from mcp.server.transport_security import TransportSecuritySettings

        from memory_engine.server.mcp import build_mcp_server

        mcp_server = build_mcp_server(service, keys=keys)
        mcp_app = mcp_server.streamable_http_app(
            streamable_http_path="/mcp",
            stateless_http=True,
            json_response=True,
            max_request_body_size=max_body_bytes,
            # Bearer auth is required; a rebinding page cannot present a token.
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        owned = client is None
        active = client if client is not None else AsyncMemoryClient(settings)
        state["client"] = active
        state["service"] = MemoryService(active)
        try:
            if mcp_server is not None:
                async with mcp_server.session_manager.run():
                    yield
            else:
                yield
        finally:
            if owned:
                await active.aclose()

    api = FastAPI(
        title="memory-engine",
        version=API_VERSION,
        description="Conversation memory for LLM agents: the HTTP API (docs/http.md).",
        lifespan=lifespan,
        responses=ERRORS,
        redirect_slashes=False,  # a redirect would carry a key to another path
        # The gate records the one server span (for /mcp and refused requests too); FastAPI's
        # own telemetry would add a second, and its logs may quote request bodies.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )

    @api.exception_handler(MemoryEngineError)
    async def engine_error(_request: Request, exc: MemoryEngineError) -> JSONResponse:
        return _error_response(exc)

    @api.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse(error_body("InvalidJSON", "the body is not valid JSON"), 400)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in errors[:10]
        )
        return JSONResponse(error_body("RequestValidationError", problems), 422)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        names = {404: "NotFound", 405: "MethodNotAllowed", 413: "BodyTooLarge"}
        if exc.status_code == 400:  # FastAPI's "error parsing the body" (e.g. nested too deep)
            return JSONResponse(error_body("InvalidJSON", "the body could not be parsed"), 400)
        name = names.get(exc.status_code, "HTTPError")
        return JSONResponse(error_body(name, str(exc.detail)), exc.status_code)

    @api.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        return _error_response(exc)

    m = "/v1/memories/{resource_id}/{key:path}"
    RID = Path(description="A resource id (GET /v1/resources).")
    KEY = Path(description="The memory key inside the token's project (may contain '/').")

    @api.post(
        f"{m}/messages",
        response_model=AppendResult,
        summary="Append messages (all or none, one round trip)",
    )
    async def append_messages(
        body: MessagesBody,
        resource_id: str = RID,
        key: str = KEY,
        project: str = Security(_project),
    ) -> Response:
        result = await service().append(project, resource_id, key, body.messages)  # type: ignore[arg-type]
        return _json(result)

    @api.get(
        f"{m}/messages",
        response_model=Page,
        summary="Read a page of messages, oldest first",
    )
    async def read_messages(
        resource_id: str = RID,
        key: str = KEY,
        offset: int = Query(0, ge=0),
        limit: int = Query(50, ge=1),
        project: str = Security(_project),
    ) -> Response:
        return _json(await service().read_page(project, resource_id, key, offset, limit))

    @api.put(
        f"{m}/messages",
        response_model=ReplaceResult,
        summary="Replace every message (the summary goes too)",
    )
    async def replace_messages(
        body: MessagesBody,
        resource_id: str = RID,
        key: str = KEY,
        project: str = Security(_project),
    ) -> Response:
        count = await service().replace(project, resource_id, key, body.messages)  # type: ignore[arg-type]
        return _json(ReplaceResult(message_count=count))

    @api.delete(
        f"{m}/messages",
        response_model=ClearResult,
        summary="Clear every message and the summary",
    )
    async def clear_messages(
        resource_id: str = RID, key: str = KEY, project: str = Security(_project)
    ) -> Response:
        return _json(ClearResult(cleared=await service().clear(project, resource_id, key)))

    @api.get(
        f"{m}/stats",
        response_model=MemoryStats,
        summary="Counts, tokens, budget used, TTL, summary point",
    )
    async def memory_stats(
        resource_id: str = RID, key: str = KEY, project: str = Security(_project)
    ) -> Response:
        return _json(await service().stats(project, resource_id, key))

    @api.get(
        f"{m}/context",
        response_model=ContextResult,
        summary="The prompt window: system, summary, newest messages within the budget",
    )
    async def memory_context(
        resource_id: str = RID,
        key: str = KEY,
        max_tokens: int | None = Query(None, ge=0),
        project: str = Security(_project),
    ) -> Response:
        window = await service().context(project, resource_id, key, max_tokens)
        return _json(ContextResult(messages=window))

    @api.post(
        f"{m}/flush",
        response_model=FlushResult,
        summary="Flush now (inline); 409 when a flush is already running",
    )
    async def flush_memory(
        body: Annotated[FlushBody | None, Body()] = None,
        resource_id: str = RID,
        key: str = KEY,
        project: str = Security(_project),
    ) -> Response:
        body = body or FlushBody()
        result = await service().flush(project, resource_id, key, body.strategy, body.dry_run)
        return _json(result)

    @api.delete(
        m,
        response_model=DeleteResult,
        summary="Delete the memory entirely",
    )
    async def delete_memory(
        resource_id: str = RID, key: str = KEY, project: str = Security(_project)
    ) -> Response:
        await service().delete(project, resource_id, key)
        return _json(DeleteResult(deleted=True))

    @api.get(
        f"{m}/archive",
        response_model=Page,
        summary="Read a page of the archive (what compaction, clear, replace removed)",
    )
    async def read_archive(
        resource_id: str = RID,
        key: str = KEY,
        offset: int = Query(0, ge=0),
        limit: int = Query(50, ge=1),
        project: str = Security(_project),
    ) -> Response:
        return _json(await service().read_archive(project, resource_id, key, offset, limit))

    @api.post(
        "/v1/subjects/export",
        response_class=StreamingResponse,
        responses={200: {"content": {"application/x-ndjson": {}}}},
        summary="Export the data subject's memories in the token's project (JSON Lines)",
    )
    async def export_subject(body: SubjectBody, project: str = Security(_project)) -> Response:
        lines = await service().export_subject(project, body.subject)
        return StreamingResponse(lines, media_type="application/x-ndjson")

    @api.post(
        "/v1/subjects/erase",
        response_model=ErasureReport,
        summary="Erase every memory of the data subject in the token's project",
    )
    async def erase_subject(body: SubjectBody, project: str = Security(_project)) -> Response:
        return _json(await service().erase_subject(project, body.subject))

    @api.post(
        "/v1/resources/{resource_id}/resolve",
        response_model=ResolveResult,
        summary="Render the resource's key template in a workflow context (fail-closed)",
    )
    async def resolve_key(
        body: ResolveBody, resource_id: str = RID, project: str = Security(_project)
    ) -> Response:
        key = service().resolve(project, resource_id, body.context)
        return _json(ResolveResult(key=key, memory_id=f"{project}:{key}"))

    @api.get(
        "/v1/resources",
        response_model=ResourcesResult,
        summary="Resource ids and limits",
    )
    async def list_resources(project: str = Security(_project)) -> Response:
        del project  # authenticated; resources are shared by every project
        return JSONResponse({"resources": service().resources()})

    @api.get("/healthz", summary="Liveness (no details)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz", summary="Readiness: Redis and the broker answer")
    async def readyz() -> JSONResponse:
        active: AsyncMemoryClient = state["client"]
        try:
            redis_ok = await asyncio.wait_for(active.store.ping(), READY_TIMEOUT_S)
        except Exception:  # not ready, whatever the reason; details go to the log only
            log.warning("readyz: redis unreachable", exc_info=True)
            redis_ok = False
        broker_ok = await _ping_broker(settings)
        ready = redis_ok and broker_ok
        body = {
            "status": "ready" if ready else "unavailable",
            "redis": redis_ok,
            "broker": broker_ok,
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    registry = metrics.registry()

    @api.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    append_route = next(r for r in api.routes if getattr(r, "endpoint", None) is append_messages)
    gate = Gate(
        FastAppend(api, append_route, service),
        keys=keys,
        max_body_bytes=max_body_bytes,
        mcp_app=mcp_app,
        registry=registry,
    )
    gate.fastapi = api  # type: ignore[attr-defined]
    return gate


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of the API (docs/openapi.json is this, checked in); no I/O.
    Regenerate: ``python -m memory_engine.server.app > docs/openapi.json``."""
    app = create_app(
        Settings(redis_url="redis://127.0.0.1:6379/0"),  # never connected to
        keys=ApiKeys.of([("openapi", "unused")]),
        mcp=False,
    )
    document: dict[str, Any] = app.fastapi.openapi()
    return document


if __name__ == "__main__":
    print(json.dumps(openapi_document(), indent=2, sort_keys=True))
