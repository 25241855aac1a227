"""The append's fast path (memory_engine/server/fast_append.py) in process over real Redis, through
the whole app (gate included): the common body is answered without FastAPI (a message's fields
are checked by the library, MessageValidationError), any other body is replayed to the FastAPI
route (RequestValidationError, InvalidJSON as before), and both count under the route's label."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi")

from prometheus_client import generate_latest

from memory_engine import metrics
from memory_engine.aio import AsyncMemoryClient
from memory_engine.server.app import create_app
from memory_engine.server.auth import ApiKeys
from memory_engine.settings import Settings

TOKEN = "fast-append-token-0123456789"
URL = "/v1/memories/chat-window/conv:fast/messages"
ROUTE = "/v1/memories/{resource_id}/{key:path}/messages"


async def exchange(settings: Settings, requests: list[tuple[bytes, dict[str, str]]]) -> list[Any]:
    client = AsyncMemoryClient(settings)
    app = create_app(settings, keys=ApiKeys.of([("acme", TOKEN)]), client=client, mcp=False)
    out: list[Any] = []
    try:
        async with (
            app.fastapi.router.lifespan_context(app.fastapi),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
        ):
            for body, headers in requests:
                r = await c.post(
                    URL, content=body, headers={"authorization": f"Bearer {TOKEN}", **headers}
                )
                out.append((r.status_code, r.json()))
            stats = await c.get(
                "/v1/memories/chat-window/conv:fast/stats",
                headers={"authorization": f"Bearer {TOKEN}"},
            )
            out.append(stats.json())
    finally:
        await client.aclose()
    return out


def count_of(status: str) -> float:
    text = generate_latest(metrics.registry()).decode()
    prefix = f'memory_engine_http_requests_total{{method="POST",route="{ROUTE}",status="{status}"}}'
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


def test_fast_path_and_fallback_answer_as_the_api_does(settings: Settings) -> None:
    json_h = {"content-type": "application/json"}
    ok = json.dumps({"messages": [{"role": "user", "content": "héllo"}]}).encode()
    before = {s: count_of(s) for s in ("200", "400", "422")}
    replies = asyncio.run(
        exchange(
            settings,
            [
                (ok, json_h),
                (ok, {"content-type": "application/vnd.x+json; charset=utf-8"}),
                (ok, {}),  # no content type: not JSON (FastAPI's strict content type)
                (json.dumps({"messages": [{"role": 5, "content": "x"}]}).encode(), json_h),
                (json.dumps({"messages": [], "extra": 1}).encode(), json_h),
                (json.dumps({"messages": "hi"}).encode(), json_h),
                (b"{not json", json_h),
                (ok, {"content-type": "text/plain"}),
            ],
        )
    )
    (s1, r1), (s2, r2), no_type, bad_role, extra, not_list, not_json, text, stats = replies
    assert (s1, r1["appended"], r1["message_count"], r1["first_seq"]) == (200, 1, 1, 1)
    assert (s2, r2["message_count"]) == (200, 2)
    assert no_type[0] == 422 and no_type[1]["error"] == "RequestValidationError", no_type
    # Fast path: the library validates the message.
    assert bad_role[0] == 422 and bad_role[1]["error"] == "MessageValidationError", bad_role
    # Fallback to the FastAPI route: its own typed errors, unchanged.
    assert extra[0] == 422 and extra[1]["error"] == "RequestValidationError", extra
    assert not_list[0] == 422 and not_list[1]["error"] == "RequestValidationError", not_list
    assert not_json == (400, {"error": "InvalidJSON", "message": "the body is not valid JSON"})
    assert text[0] == 422 and text[1]["error"] == "RequestValidationError", text
    assert stats["message_count"] == 2  # the refused bodies wrote nothing
    assert count_of("200") - before["200"] == 2
    assert count_of("422") - before["422"] == 5
    assert count_of("400") - before["400"] == 1
