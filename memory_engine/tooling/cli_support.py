"""Shared plumbing of the ``memory-engine`` commands: exit codes, ``--json`` output, error
handling, settings and the memory a command line names.

Exit codes: ``0`` ok, ``1`` failure or unhealthy, ``2`` usage or configuration error (bad option,
invalid YAML, unknown resource, bad ``--context``), ``3`` Redis unavailable. With ``--json`` a
command prints one JSON document on stdout, errors included (``{"ok": false, "error": {...}}``).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from memory_engine.errors import (
    ConfigError,
    KeyTemplateError,
    MemoryEngineError,
    MessageValidationError,
    StoreUnavailable,
)
from memory_engine.messages import check_nesting_depth
from memory_engine.settings import Settings, load_settings
from memory_engine.store import inspect, translate_errors

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REDIS_UNAVAILABLE",
    "EXIT_USAGE",
    "ContextOption",
    "JsonOption",
    "KeyOption",
    "ResourceArg",
    "ResourceOption",
    "UsageProblem",
    "cli_client",
    "cli_settings",
    "emit_json",
    "exit_code_for",
    "fail",
    "fmt_time",
    "handled",
    "kv_table",
    "parse_context",
    "preview",
    "resolve_memory",
    "stderr_console",
    "stdout_console",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_REDIS_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130
CONTENT_PREVIEW_CHARS = 90

MAX_CONTEXT_BYTES = 1024 * 1024
"""Largest ``--context`` accepted (inline or ``@file``); a file is read no further than this."""
MAX_CONTEXT_DEPTH = 32
"""Deepest nesting of objects/arrays accepted in ``--context`` (the object itself is level 1)."""

P = ParamSpec("P")
R = TypeVar("R")

JsonOption = Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")]
ContextOption = Annotated[
    str | None,
    typer.Option(
        "--context", "-c", help="Workflow context as JSON, or @file.json, for the key template."
    ),
]
KeyOption = Annotated[
    str | None, typer.Option("--key", "-k", help="A resolved memory id (project:key).")
]
ResourceArg = Annotated[str | None, typer.Argument(help="Resource id.", show_default=False)]
ResourceOption = Annotated[
    str | None,
    typer.Option("--resource", "-r", help="Resource id (with --key: read from the memory)."),
]


class UsageProblem(MemoryEngineError):
    """The command line is inconsistent (missing or malformed arguments)."""


# ---- output and errors -----------------------------------------------------------------------


def stdout_console() -> Console:
    # markup off: messages, file names and regexes are printed as they are ("[\\w.+-]+@..." would
    # otherwise be read as a style tag); colour comes from Text styles.
    return Console(highlight=False, markup=False)


def stderr_console() -> Console:
    # soft_wrap: an error stays one line however long, so it can be grepped and copied whole.
    return Console(stderr=True, highlight=False, markup=False, soft_wrap=True)


def emit_json(data: Any, *, line: bool = False) -> None:
    """Print ``data`` as JSON on stdout; ``line``: on one line (a stream of events, JSON Lines)."""
    indent = None if line else 2
    sys.stdout.write(json.dumps(data, indent=indent, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def exit_code_for(exc: BaseException) -> int:
    """Map an exception to the documented exit codes."""
    if isinstance(exc, StoreUnavailable):
        return EXIT_REDIS_UNAVAILABLE
    if isinstance(exc, ConfigError | KeyTemplateError | MessageValidationError | UsageProblem):
        return EXIT_USAGE
    return EXIT_FAILURE


def fail(exc: BaseException, json_output: bool) -> NoReturn:
    code = exit_code_for(exc)
    kind = type(exc).__name__
    if json_output:
        error: dict[str, Any] = {"type": kind, "message": str(exc), "exit_code": code}
        for attr in ("source", "field", "known", "resource_id"):
            if getattr(exc, attr, None) is not None:
                error[attr] = getattr(exc, attr)
        emit_json({"ok": False, "error": error})
    else:
        stderr_console().print(Text.assemble(("error", "bold red"), f" ({kind}): {exc}"))
    raise typer.Exit(code)


def handled(func: Callable[P, R]) -> Callable[P, R]:
    """Turn engine errors into a message and the documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        json_output = bool(kwargs.get("json_output", False))
        try:
            with translate_errors("the command"):
                return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except MemoryEngineError as exc:
            fail(exc, json_output)

    return wrapper


def cli_settings() -> Settings:
    from memory_engine.tooling.services import resolve_resources_dir

    return resolve_resources_dir(load_settings())


@contextmanager
def cli_client(settings: Settings | None = None) -> Iterator[Any]:
    from memory_engine.client import MemoryClient

    with MemoryClient(settings or cli_settings()) as client:
        yield client


def parse_context(raw: str | None) -> dict[str, Any]:
    """``--context`` as a JSON object: inline or ``@file``, at most :data:`MAX_CONTEXT_BYTES`
    (a file is never read past that: ``@/dev/zero`` is refused, not read forever) and
    :data:`MAX_CONTEXT_DEPTH` levels deep. Anything else is a :class:`UsageProblem` (exit 2)."""
    if raw is None:
        raise UsageProblem("--context is required with RESOURCE (or use --key MEMORY_ID)")
    if raw.startswith("@"):
        try:
            with Path(raw[1:]).open("rb") as handle:
                data = handle.read(MAX_CONTEXT_BYTES + 1)
        except OSError as exc:
            raise UsageProblem(f"--context {raw}: {exc}") from exc
    else:
        data = raw.encode("utf-8", "surrogateescape")
    if len(data) > MAX_CONTEXT_BYTES:
        raise UsageProblem(f"--context is larger than {MAX_CONTEXT_BYTES} bytes")
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UsageProblem(f"--context is not UTF-8 text: {exc.reason}") from exc
    except json.JSONDecodeError as exc:
        raise UsageProblem(f"--context is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise UsageProblem(
            f"--context is nested more than {MAX_CONTEXT_DEPTH} levels deep"
        ) from exc
    if not isinstance(value, dict):
        raise UsageProblem(f"--context must be a JSON object, got {type(value).__name__}")
    try:
        check_nesting_depth(value, "--context", MAX_CONTEXT_DEPTH)
    except MessageValidationError as exc:
        raise UsageProblem(
            f"--context is nested more than {MAX_CONTEXT_DEPTH} levels deep"
        ) from exc
    return value


def resolve_memory(client: Any, resource: str | None, context: str | None, key: str | None) -> Any:
    """The memory named by RESOURCE + --context, or by --key (resource read from its metadata)."""
    if key:
        resource_id = resource
        if resource_id is None:
            with translate_errors("inspect"):
                resource_id = inspect.resource_id_of(client.redis, client.keyspace, key)
            if not resource_id:
                raise UsageProblem(f"memory {key!r} does not exist; pass --resource to name it")
        return client.memory_by_id(key, resource_id)
    if not resource:
        raise UsageProblem("give RESOURCE with --context, or --key MEMORY_ID")
    return client.memory(resource, parse_context(context))


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def preview(text: str, limit: int = CONTENT_PREVIEW_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def kv_table(title: str, rows: list[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for name, value in rows:
        table.add_row(name, str(value))
    return table
