"""OpenTelemetry set-up for the service processes (the HTTP/MCP server, the Celery workers).

Off unless configured: tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter other than
``none``, or ``MEMORY_TRACING=true`` (then the exporter defaults to OTLP). Everything else comes
from the standard variables the SDK reads itself (``OTEL_SERVICE_NAME``,
``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ...).

opentelemetry is imported only here, inside functions, and only when tracing is on, so a
deployment without the ``server`` extra runs untraced. Library modules that add spans
(``memory_engine.producer`` injects the trace context into task headers,
``memory_engine.summarizers.llm`` wraps the LLM call) only touch opentelemetry once some code in
the process has imported it: a process that never configured tracing pays nothing.

Span attributes never carry message content: ids, counts, model names and statuses only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "TRACING_ENV",
    "configure_tracing",
    "span",
    "tracing_active",
    "tracing_requested",
]

log = logging.getLogger(__name__)

TRACING_ENV = "MEMORY_TRACING"
TRACER_NAME = "memory_engine"
_TRUE = {"1", "true", "yes", "on"}


def tracing_requested(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for traces (see the module docstring)."""
    env = os.environ if env is None else env
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter and exporter != "none":
        return True
    return env.get(TRACING_ENV, "").strip().lower() in _TRUE


def tracing_active() -> bool:
    """True once a tracer provider is installed in this process (by :func:`configure_tracing`,
    an embedding application or a test); until then every span helper is a no-op, and imports
    nothing when opentelemetry was never loaded."""
    if "opentelemetry.trace" not in sys.modules:
        return False
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def configure_tracing(service_name: str, env: Mapping[str, str] | None = None) -> bool:
    """Install a tracer provider with the exporters ``OTEL_TRACES_EXPORTER`` names (default
    ``otlp``, over HTTP/protobuf) when tracing is requested. Returns whether tracing is on.
    A provider already installed (an embedding application's, a test's) is kept."""
    env = os.environ if env is None else env
    if not tracing_requested(env):
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
    except ImportError:
        log.warning("tracing requested but opentelemetry is not installed (the `server` extra)")
        return False
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return True
    names = [
        n.strip().lower()
        for n in (env.get("OTEL_TRACES_EXPORTER") or "otlp").split(",")
        if n.strip() and n.strip().lower() != "none"
    ]
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or service_name})
    provider = TracerProvider(resource=resource)
    for name in names:
        exporter: SpanExporter
        if name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporter = ConsoleSpanExporter()
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # endpoint, headers, timeout from OTEL_EXPORTER_OTLP_*
        else:
            log.warning("unknown OTEL_TRACES_EXPORTER %r ignored (known: otlp, console)", name)
            continue
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info("tracing on: exporters %s", ",".join(names) or "(none)")
    return True


@contextlib.contextmanager
def span(name: str, *, kind: str = "INTERNAL", **attributes: Any) -> Iterator[Any]:
    """A span named ``name`` with ``attributes`` (None values dropped), or nothing when tracing
    is not active. Yields the span (or None). Exceptions are recorded and re-raised."""
    if not tracing_active():
        yield None
        return
    from opentelemetry import trace

    tracer = trace.get_tracer(TRACER_NAME)
    attrs = {k.replace("__", "."): v for k, v in attributes.items() if v is not None}
    with tracer.start_as_current_span(
        name, kind=getattr(trace.SpanKind, kind), attributes=attrs
    ) as s:
        yield s


def set_attributes(current: Any, **attributes: Any) -> None:
    """Add attributes to a span yielded by :func:`span` (a no-op for None)."""
    if current is None:
        return
    for key, value in attributes.items():
        if value is not None:
            current.set_attribute(key.replace("__", "."), value)
