"""The API commands of ``memory-engine``: ``serve`` (the HTTP API on uvicorn), ``mcp`` (the MCP
server on stdio) and ``api-keys create``. They need the ``server`` extra
(``pip install 'memory-engine[server]'``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from memory_engine.errors import ConfigError
from memory_engine.tooling.cli_support import (
    JsonOption,
    cli_settings,
    emit_json,
    handled,
    stdout_console,
)

__all__ = ["server_app"]

server_app = typer.Typer()
api_keys_app = typer.Typer(help="API keys of the HTTP API and MCP server.", no_args_is_help=True)
server_app.add_typer(api_keys_app, name="api-keys")


def _require_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import mcp  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"{exc.name} is not installed: pip install 'memory-engine[server]'"
        ) from exc


@server_app.command()
@handled
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8080,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level.")] = "info",
) -> None:
    """Run the HTTP API (and the MCP server at /mcp) until SIGTERM or Ctrl-C. Keys from
    MEMORY_API_KEYS or MEMORY_API_KEYS_FILE; traces when OTEL_TRACES_EXPORTER or
    MEMORY_TRACING=true is set."""
    _require_extra()
    import logging

    import uvicorn

    from memory_engine.server.app import create_app
    from memory_engine.server.tracing import configure_tracing

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    configure_tracing("memory-engine-api")
    app = create_app(cli_settings())
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,  # paths carry memory keys; metrics and traces count requests
        lifespan="on",
        server_header=False,
    )


@server_app.command("mcp")
@handled
def mcp_stdio(
    project: Annotated[
        str | None,
        typer.Option(help="The project every tool acts in (default MEMORY_DEFAULT_PROJECT_ID)."),
    ] = None,
) -> None:
    """Run the MCP server on stdio (for agent hosts that start it as a subprocess)."""
    _require_extra()
    import anyio

    from memory_engine.aio import AsyncMemoryClient
    from memory_engine.keys import PROJECT_ID_PATTERN
    from memory_engine.server.mcp import build_mcp_server
    from memory_engine.server.service import MemoryService
    from memory_engine.server.tracing import configure_tracing

    settings = cli_settings()
    project_id = project or settings.default_project_id
    if not PROJECT_ID_PATTERN.fullmatch(project_id):
        raise ConfigError(f"--project {project_id[:64]!a} is not a valid project id")
    configure_tracing("memory-engine-mcp")
    state: dict[str, MemoryService] = {}
    server = build_mcp_server(lambda: state["service"], stdio_project=project_id)

    async def main() -> None:
        async with AsyncMemoryClient(settings) as client:
            state["service"] = MemoryService(client)
            await server.run_stdio_async()

    anyio.run(main)


@api_keys_app.command("create")
@handled
def create_key(
    project: Annotated[str, typer.Option(help="The project the token belongs to.")],
    file: Annotated[
        Path | None,
        typer.Option(help="The keys file (default MEMORY_API_KEYS_FILE)."),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Create a token for PROJECT: its SHA-256 goes to the keys file, the token is printed
    once and stored nowhere."""
    from memory_engine.server.auth import API_KEYS_FILE_ENV, create_api_key

    path = file or (
        Path(os.environ[API_KEYS_FILE_ENV]) if os.environ.get(API_KEYS_FILE_ENV) else None
    )
    if path is None:
        raise ConfigError(f"no keys file: pass --file or set {API_KEYS_FILE_ENV}")
    token = create_api_key(path, project)
    if json_output:
        emit_json({"ok": True, "project": project, "token": token, "file": str(path)})
    else:
        out = stdout_console()
        out.print(f"project {project}: token (shown once, keep it secret):", highlight=False)
        out.print(token, highlight=False, soft_wrap=True)
