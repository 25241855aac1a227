"""What workflow code pays for ``import memory_engine`` and one append: the library, and none of
the operator tooling, CLI/terminal libraries, Flower, web servers or the engine's flush code
(they load when a flush is requested or run, in the process that runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

FORBIDDEN_TOP_LEVEL = (
    "celery",
    "kombu",
    "typer",
    "rich",
    "click",
    "flower",
    "tornado",
    "uvicorn",
    "fastapi",
    "starlette",
    "mcp",
    "pybreaker",
    # the framework adapters' dependencies (memory_engine.integrations imports them, on demand)
    "agents",
    "openai",
    "langchain",
    "langchain_core",
    "langgraph",
)
FORBIDDEN_PREFIXES = (
    "memory_engine.tooling",
    "memory_engine.server",
    "memory_engine.engine",
    "memory_engine.migrate",
    "memory_engine.integrations",
)

SCRIPT = """
import json, sys
import memory_engine
from memory_engine import MemoryClient
with MemoryClient.from_env() as client:
    memory = client.memory("chat-window", {"project": {"id": "acme"},
                                           "workflow": {"input": {"session_id": "w1"}}})
    result = memory.append({"role": "user", "content": "hello"})
    assert result.stored and not result.flush_requested
print(json.dumps(sorted(sys.modules)))
"""


def test_import_and_one_append_load_no_tooling_cli_or_web_server(redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMORY_")}
    env["MEMORY_REDIS_URL"] = redis_url
    env["MEMORY_KEY_PREFIX"] = "weight"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.splitlines()[-1])
    assert "memory_engine.store" in loaded and "memory_engine.client" in loaded  # it did run
    offenders = [
        m
        for m in loaded
        if m.split(".")[0] in FORBIDDEN_TOP_LEVEL or m.startswith(FORBIDDEN_PREFIXES)
    ]
    assert not offenders, f"loaded by import + one append: {offenders}"
