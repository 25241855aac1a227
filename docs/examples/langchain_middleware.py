"""A LangChain 1.x agent (``create_agent``) whose history lives in a memory
(``MemoryEngineMiddleware``), invoked twice without a checkpointer: the second call sends only
the new user message, and the model still sees the first turn.

Needs the ``langchain`` extra, ``langchain-openai`` and a Redis:
``MEMORY_REDIS_URL=redis://127.0.0.1:6379/0 python docs/examples/langchain_middleware.py``.
With ``OPENAI_BASE_URL`` (and ``OPENAI_API_KEY``, ``OPENAI_MODEL``) set it talks to that endpoint;
without, it starts the loopback OpenAI server of the tooling and scripts its answers, so it runs
offline. CI runs it (tests/e2e/test_examples.py checks the lines marked ``expect``).

# expect: turn 1: It is sunny in Paris.
# expect: turn 2: You asked about the weather in Paris.
# expect: the model saw: human, ai(get_weather), tool, ai, human
# expect: stored: user: Weather in Paris? Mail me at [REDACTED]
# expect: messages=6
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from memory_engine import MemoryClient
from memory_engine.integrations.langchain import MemoryEngineMiddleware


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


class ShowWhatTheModelSees(AgentMiddleware):
    """Prints the messages of each model call (after the memory middleware chose them)."""

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse:
        kinds = [
            f"{m.type}({m.tool_calls[0]['name']})" if getattr(m, "tool_calls", None) else m.type
            for m in request.messages
        ]
        self.last = ", ".join(kinds)
        return handler(request)


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


def main() -> None:
    with openai_endpoint() as (base_url, api_key, model_name), MemoryClient.from_env() as client:
        ids = {"user_id": "u42", "conversation_id": uuid.uuid4().hex}
        memory = client.memory(
            "customer-support", {"project": {"id": "acme"}, "workflow": {"input": ids}}
        )
        shown = ShowWhatTheModelSees()
        agent = create_agent(
            ChatOpenAI(model=model_name, base_url=base_url, api_key=api_key),
            [get_weather],
            system_prompt="Be brief.",
            # The memory middleware first: the next one sees the window it chose.
            middleware=[MemoryEngineMiddleware(memory), shown],
        )
        first = agent.invoke(
            {
                "messages": [
                    {"role": "user", "content": "Weather in Paris? Mail me at ada@example.com"}
                ]
            }
        )
        print(f"turn 1: {first['messages'][-1].content}")
        second = agent.invoke({"messages": [{"role": "user", "content": "What did I ask?"}]})
        print(f"turn 2: {second['messages'][-1].content}")
        print(f"the model saw: {shown.last}")
        print(f"stored: user: {memory.read()[0].content}")  # redacted before it was stored
        print(f"messages={memory.stats().message_count}")
        memory.delete()


if __name__ == "__main__":
    main()
