"""An OpenAI Agents SDK agent whose conversation lives in a memory (``MemoryEngineSession``).

Two runs of the same agent; the second one sees the first from the session (the memory's context
window), although nothing but the session carries it. Needs the ``openai-agents`` extra and a
Redis: ``MEMORY_REDIS_URL=redis://127.0.0.1:6379/0 python docs/examples/openai_agents_session.py``.

With ``OPENAI_BASE_URL`` (and ``OPENAI_API_KEY``, ``OPENAI_MODEL``) set it talks to that endpoint;
without, it starts the loopback OpenAI server of the tooling and scripts its answers, so it runs
offline. CI runs it (tests/e2e/test_examples.py checks the lines marked ``expect``).

# expect: turn 1: It is sunny in Paris.
# expect: turn 2: You asked about the weather in Paris.
# expect: user: Weather in Paris? Mail me at [REDACTED]
# expect: function_call get_weather -> function_call_output: sunny in Paris
# expect: messages=6
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled
from openai import AsyncOpenAI

from memory_engine import AsyncMemoryClient
from memory_engine.integrations.openai_agents import MemoryEngineSession


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


@contextmanager
def openai_endpoint() -> Iterator[tuple[str, str, str]]:
    """(base URL, API key, model): the environment's, or the loopback server's."""
    if os.environ.get("OPENAI_BASE_URL"):
        yield (
            os.environ["OPENAI_BASE_URL"],
            os.environ.get("OPENAI_API_KEY", ""),
            os.environ.get("OPENAI_MODEL", "gpt-4.1-mini"),
        )
        return
    from memory_engine.tooling.loopback_llm import ToolCall, running_llm_server

    with running_llm_server() as server:
        server.script(
            ToolCall("get_weather", '{"city": "Paris"}', "call_1"),
            "It is sunny in Paris.",
            "You asked about the weather in Paris.",
        )
        yield server.openai_base_url, "offline", "loopback"


async def main() -> None:
    set_tracing_disabled(True)
    with openai_endpoint() as (base_url, api_key, model_name):
        model = OpenAIChatCompletionsModel(
            model=model_name, openai_client=AsyncOpenAI(base_url=base_url, api_key=api_key)
        )
        agent = Agent(name="support", instructions="Be brief.", model=model, tools=[get_weather])
        async with AsyncMemoryClient.from_env() as client:
            ids = {"user_id": "u42", "conversation_id": uuid.uuid4().hex}
            memory = client.memory(
                "customer-support", {"project": {"id": "acme"}, "workflow": {"input": ids}}
            )
            session = MemoryEngineSession(memory)
            first = await Runner.run(
                agent, "Weather in Paris? Mail me at ada@example.com", session=session
            )
            print(f"turn 1: {first.final_output}")
            second = await Runner.run(agent, "What did I ask?", session=session)
            print(f"turn 2: {second.final_output}")

            items = await session.get_items()
            print(f"user: {items[0]['content']}")  # redacted before it was stored
            call, output = items[1], items[2]
            print(f"{call['type']} {call['name']} -> {output['type']}: {output['output']}")
            stats = await memory.stats()
            print(f"messages={stats.message_count} tokens={stats.token_count}")
            await memory.delete()


if __name__ == "__main__":
    asyncio.run(main())
