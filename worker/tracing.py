"""Traces across the task queue: the worker continues the trace of whoever published the task.

The producer (``memory_engine.producer.trace_headers``) sends the caller's W3C trace context in
the task's message headers; here ``task_prerun`` extracts it and opens a consumer span named after
the task around its run (flush, summarize: the LLM call's span nests under it), and
``task_postrun`` closes it. Off unless tracing is configured (``OTEL_TRACES_EXPORTER`` or
``MEMORY_TRACING=true``, see ``memory_engine.server.tracing``) or a provider was set in this
process; opentelemetry is imported only then.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from celery.signals import task_postrun, task_prerun

from memory_engine.server.tracing import configure_tracing

__all__ = ["install"]

_TRACE_HEADERS = ("traceparent", "tracestate")
_active: dict[str, tuple[Any, Any]] = {}
_lock = threading.Lock()


def _header(request: Any, name: str) -> str | None:
    value = getattr(request, name, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(name)
    return value if isinstance(value, str) else None


def _started(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if task_id is None or task is None or "opentelemetry.trace" not in sys.modules:
        return
    from opentelemetry import context, propagate, trace

    carrier = {k: v for k in _TRACE_HEADERS if (v := _header(task.request, k)) is not None}
    delivery = getattr(task.request, "delivery_info", None) or {}
    span = trace.get_tracer(__name__).start_span(
        f"process {task.name}",
        context=propagate.extract(carrier),
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "messaging.system": "celery",
            "messaging.operation.name": "process",
            "messaging.destination.name": str(delivery.get("routing_key") or ""),
            "messaging.message.id": task_id,
            "celery.task.name": task.name,
        },
    )
    token = context.attach(trace.set_span_in_context(span))
    with _lock:
        _active[task_id] = (span, token)


def _finished(task_id: str | None = None, state: str | None = None, **_: Any) -> None:
    if task_id is None:
        return
    with _lock:
        found = _active.pop(task_id, None)
    if found is None:
        return
    from opentelemetry import context, trace

    span, token = found
    if state is not None:
        span.set_attribute("celery.state", state)
        if state == "FAILURE":
            span.set_status(trace.StatusCode.ERROR)
    context.detach(token)
    span.end()


def install() -> None:
    """Set up tracing from the environment and connect the hooks (idempotent, cheap when off)."""
    configure_tracing("memory-engine-worker")
    task_prerun.connect(_started, weak=False, dispatch_uid="memory-engine-trace-start")
    task_postrun.connect(_finished, weak=False, dispatch_uid="memory-engine-trace-end")
