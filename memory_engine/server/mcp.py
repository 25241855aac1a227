"""The MCP server (official ``mcp`` SDK): the memory tools for agents, over stdio
(``memory-engine mcp``) or streamable HTTP (mounted at ``/mcp`` by the HTTP app, same bearer
auth).

Tools: ``append_messages``, ``get_context``, ``read_messages``, ``memory_stats``,
``clear_memory``; each takes ``resource_id`` and ``key`` (the memory key inside the project) and
runs the HTTP API's operation (:class:`~memory_engine.server.service.MemoryService`), so the
isolation rules are the same: the project is the bearer token's (over HTTP) or the one the stdio
server was started for, never an argument.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from memory_engine.errors import MemoryEngineError
from memory_engine.messages import Message
from memory_engine.server.auth import ApiKeys, bearer_token
from memory_engine.server.errors import status_and_body
from memory_engine.server.service import MemoryService

__all__ = ["MCP_SERVER_NAME", "build_mcp_server"]

MCP_SERVER_NAME = "memory-engine"
INSTRUCTIONS = (
    "Conversation memory. A memory is named by a resource_id (its policy: limits, flushing) and "
    "a key (e.g. 'conv:42'). Append each turn with append_messages; before answering, call "
    "get_context for the prompt window (system, summary, newest messages within the budget)."
)


def _messages(messages: list[Message]) -> list[dict[str, Any]]:
    return [m.model_dump(mode="json", exclude_none=True) for m in messages]


def build_mcp_server(
    service_of: Callable[[], MemoryService],
    *,
    keys: ApiKeys | None = None,
    stdio_project: str | None = None,
) -> MCPServer:
    """The MCP server. ``service_of`` returns the running service (built in the host's
    lifespan). Over HTTP the project is ``keys``' project of the request's bearer token; a
    message with no HTTP headers (stdio) uses ``stdio_project``, and is refused without one."""
    server: MCPServer = MCPServer(MCP_SERVER_NAME, instructions=INSTRUCTIONS, log_level="WARNING")

    def project_of(ctx: Context) -> str:
        headers = ctx.headers
        if headers is None:
            if stdio_project is None:
                raise ToolError("Unauthorized: no credentials")
            return stdio_project
        project = keys.project_for(bearer_token(headers.get("authorization"))) if keys else None
        if project is None:
            raise ToolError("Unauthorized: no credentials")
        return project

    async def run(ctx: Context, op: Callable[[MemoryService, str], Any]) -> Any:
        project = project_of(ctx)
        try:
            return await op(service_of(), project)
        except MemoryEngineError as exc:
            _status, body = status_and_body(exc)
            raise ToolError(f"{body['error']}: {body['message']}") from None

    @server.tool()
    async def append_messages(
        resource_id: str, key: str, messages: list[dict[str, Any]], ctx: Context
    ) -> dict[str, Any]:
        """Append messages ({"role": "user"|"assistant"|"system"|"tool", "content": "..."})
        to a memory, atomically (all or none). Returns the append result (counts, seqs, whether
        a flush was requested)."""

        async def op(s: MemoryService, project: str) -> dict[str, Any]:
            result = await s.append(project, resource_id, key, messages)
            return result.model_dump(mode="json")

        result: dict[str, Any] = await run(ctx, op)
        return result

    @server.tool()
    async def get_context(
        resource_id: str, key: str, ctx: Context, max_tokens: int | None = None
    ) -> dict[str, Any]:
        """The prompt window of a memory: system messages, the running summary and the newest
        messages within the token budget (max_tokens, default the resource's)."""

        async def op(s: MemoryService, project: str) -> dict[str, Any]:
            return {"messages": _messages(await s.context(project, resource_id, key, max_tokens))}

        result: dict[str, Any] = await run(ctx, op)
        return result

    @server.tool()
    async def read_messages(
        resource_id: str, key: str, ctx: Context, offset: int = 0, limit: int = 50
    ) -> dict[str, Any]:
        """A page of a memory's stored messages, oldest first, with the total."""

        async def op(s: MemoryService, project: str) -> dict[str, Any]:
            page = await s.read_page(project, resource_id, key, offset, limit)
            return page.model_dump(mode="json", exclude_none=True)

        result: dict[str, Any] = await run(ctx, op)
        return result

    @server.tool()
    async def memory_stats(resource_id: str, key: str, ctx: Context) -> dict[str, Any]:
        """Counts, tokens, budget used, TTL, summary point and whether a flush is pending."""

        async def op(s: MemoryService, project: str) -> dict[str, Any]:
            return (await s.stats(project, resource_id, key)).model_dump(mode="json")

        result: dict[str, Any] = await run(ctx, op)
        return result

    @server.tool()
    async def clear_memory(resource_id: str, key: str, ctx: Context) -> dict[str, Any]:
        """Remove every message and the summary of a memory. Returns how many were cleared."""

        async def op(s: MemoryService, project: str) -> dict[str, Any]:
            return {"cleared": await s.clear(project, resource_id, key)}

        result: dict[str, Any] = await run(ctx, op)
        return result

    return server
