"""The HTTP API and MCP server (``memory-engine serve``, ``memory-engine mcp``): operator-facing
service code over :class:`~memory_engine.aio.AsyncMemoryClient`, installed with the ``server``
extra. Nothing in the library imports it; this package's ``__init__`` imports nothing."""
