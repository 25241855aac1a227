"""Traces through the SDK's in-memory exporter: the HTTP request's span, the append's, the task
publish carrying the trace context to the in-process Celery worker, whose flush span joins the
same trace, and the LLM call's gen_ai.* span. No span attribute carries message content."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from memory_engine.aio import AsyncMemoryClient
from memory_engine.server.app import create_app
from memory_engine.server.auth import ApiKeys
from memory_engine.settings import Settings
from memory_engine.summarizers.llm import OpenAIChatSummarizer
from memory_engine.tokens import counter_for
from tests.fixtures_worker import wait_for

SECRET = "the-user-said-something-private"
TOKEN = "tracing-token-0123456789"


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    found = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(found))
    yield found
    found.shutdown()


def no_content(spans: list[ReadableSpan]) -> None:
    for s in spans:
        for value in (s.attributes or {}).values():
            assert SECRET not in str(value), (s.name, s.attributes)


async def post_messages(settings: Settings, resource: str, key: str, n: int) -> list[int]:
    client = AsyncMemoryClient(settings)
    app = create_app(settings, keys=ApiKeys.of([("acme", TOKEN)]), client=client, mcp=False)
    statuses = []
    tracer = trace.get_tracer("test")
    try:
        async with (
            app.fastapi.router.lifespan_context(app.fastapi),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
        ):
            with tracer.start_as_current_span("workflow step"):
                headers: dict[str, str] = {"authorization": f"Bearer {TOKEN}"}
                from opentelemetry import propagate

                propagate.inject(headers)
                for i in range(n):
                    r = await c.post(
                        f"/v1/memories/{resource}/{key}/messages",
                        json={"messages": [{"role": "user", "content": f"{SECRET} {i}"}]},
                        headers=headers,
                    )
                    statuses.append(r.status_code)
    finally:
        await client.aclose()
    return statuses


def test_request_span_wraps_the_append_span(
    exporter: InMemorySpanExporter, settings: Settings
) -> None:
    exporter.clear()
    assert asyncio.run(post_messages(settings, "chat-window", "conv:trace", 1)) == [200]
    spans = exporter.get_finished_spans()
    by_name = {s.name: s for s in spans}
    server = by_name["POST /v1/memories/{resource_id}/{key:path}/messages"]
    append = by_name["memory.append"]
    parent = by_name["workflow step"]
    assert server.kind == trace.SpanKind.SERVER
    assert server.attributes["http.route"] == "/v1/memories/{resource_id}/{key:path}/messages"
    assert server.attributes["http.response.status_code"] == 200
    assert append.attributes["db.system.name"] == "redis"
    assert append.parent is not None and append.parent.span_id == server.context.span_id
    assert server.parent is not None and server.parent.span_id == parent.context.span_id
    assert {s.context.trace_id for s in (server, append, parent)} == {parent.context.trace_id}
    no_content(spans)


def test_the_trace_crosses_the_task_queue_to_the_worker(
    exporter: InMemorySpanExporter, celery_worker: Any, worker_settings: Settings
) -> None:
    exporter.clear()
    # fifo-small: 10 messages, flush at 80%: the 8th append publishes memory.flush.
    statuses = asyncio.run(post_messages(worker_settings, "fifo-small", "fifo:traced", 9))
    assert statuses == [200] * 9

    def flush_span() -> ReadableSpan | None:
        for s in exporter.get_finished_spans():
            if s.name == "process memory.flush":
                return s
        return None

    worker_span = wait_for(flush_span, what="the worker's memory.flush span")
    parent = next(s for s in exporter.get_finished_spans() if s.name == "workflow step")
    assert worker_span.kind == trace.SpanKind.CONSUMER
    assert worker_span.context.trace_id == parent.context.trace_id
    publishing = [
        s
        for s in exporter.get_finished_spans()
        if s.name == "memory.append" and s.attributes.get("memory.flush_requested")
    ]
    assert len(publishing) == 1
    assert worker_span.parent is not None
    assert worker_span.parent.span_id == publishing[0].context.span_id
    no_content(exporter.get_finished_spans())


def test_llm_call_span_has_gen_ai_attributes_and_no_content(
    exporter: InMemorySpanExporter, llm_server: Any
) -> None:
    from memory_engine.messages import Message

    exporter.clear()
    with OpenAIChatSummarizer(llm_server.openai_base_url, "llama3") as summarizer:
        summarizer.summarize(
            None,
            [Message(role="user", content=SECRET)],
            max_tokens=100,
            counter=counter_for("gpt-4o"),
        )
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "chat llama3"]
    assert span.kind == trace.SpanKind.CLIENT
    assert span.attributes["gen_ai.operation.name"] == "chat"
    assert span.attributes["gen_ai.provider.name"] == "openai"
    assert span.attributes["gen_ai.request.model"] == "llama3"
    assert span.attributes["gen_ai.request.max_tokens"] == 100
    no_content([span])
