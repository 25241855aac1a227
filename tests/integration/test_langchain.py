"""The LangChain adapter (``memory_engine.integrations.langchain``) inside real ``create_agent``
agents whose ``ChatOpenAI`` model talks to the loopback OpenAI server, on real Redis: two
invocations without a checkpointer, the second request carries the first turn; and the legacy
``BaseChatMessageHistory`` with real langchain-core messages.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from memory_engine import AsyncMemoryClient, MemoryClient
from memory_engine.core.context import SUMMARY_TAG
from memory_engine.integrations.langchain import (
    MemoryEngineChatMessageHistory,
    MemoryEngineMiddleware,
    to_langchain,
)
from memory_engine.registry import ResourceRegistry
from memory_engine.resources import parse_resource
from memory_engine.settings import Settings
from memory_engine.tooling.loopback_llm import FakeLLMServer, ToolCall

from .helpers import client_with, ctx, resource

EXPECTED_SECOND_REQUEST = [
    ("system", "Be brief."),
    ("user", "Weather in Paris?"),
    ("assistant", None),
    ("tool", "sunny in Paris"),
    ("assistant", "It is sunny in Paris."),
    ("user", "What did I ask?"),
]


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def model_on(server: FakeLLMServer) -> ChatOpenAI:
    return ChatOpenAI(model="m", base_url=server.openai_base_url, api_key="x", max_retries=0)  # type: ignore[arg-type]


def script_two_turns(server: FakeLLMServer) -> None:
    server.script(
        ToolCall("get_weather", '{"city": "Paris"}', "call_w1"),
        "It is sunny in Paris.",
        "You asked about the weather in Paris.",
    )


def user(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


def assert_second_request(server: FakeLLMServer) -> None:
    sent = server.chat_requests[-1].json["messages"]
    assert [(m["role"], m.get("content")) for m in sent] == EXPECTED_SECOND_REQUEST
    assert sent[2]["tool_calls"][0]["id"] == "call_w1"
    assert sent[2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert sent[3]["tool_call_id"] == "call_w1"


def test_agent_without_checkpointer_sees_its_history(
    settings: Settings, llm_server: FakeLLMServer
) -> None:
    script_two_turns(llm_server)
    with client_with(settings, resource("lc")) as mc:
        memory = mc.memory("lc", ctx(uuid.uuid4().hex))
        agent = create_agent(
            model_on(llm_server),
            [get_weather],
            system_prompt="Be brief.",
            middleware=[MemoryEngineMiddleware(memory)],
        )
        first = agent.invoke(user("Weather in Paris?"))
        assert first["messages"][-1].content == "It is sunny in Paris."
        second = agent.invoke(user("What did I ask?"))
        assert second["messages"][-1].content == "You asked about the weather in Paris."
        assert len(second["messages"]) == 2  # the state holds this run only: no checkpointer
        assert_second_request(llm_server)

        # The memory holds both runs, and each message comes back with its type and ids.
        stored = memory.read()
        assert [m.role.value for m in stored] == [
            "user",
            "assistant",
            "tool",
            "assistant",
            "user",
            "assistant",
        ]
        assert stored[1].tool_calls and stored[1].tool_calls[0]["id"] == "call_w1"
        assert stored[2].tool_call_id == "call_w1"
        assert [to_langchain(m) for m in stored] == first["messages"] + second["messages"]
        restored = to_langchain(stored[2])
        assert isinstance(restored, ToolMessage) and restored.tool_call_id == "call_w1"
        assert restored.id == first["messages"][2].id


def test_async_agent_resolves_its_memory_per_conversation(
    settings: Settings, llm_server: FakeLLMServer
) -> None:
    registry = ResourceRegistry([parse_resource(resource("lc"))])
    conversation = uuid.uuid4().hex

    async def scenario() -> None:
        async with AsyncMemoryClient(settings, registry=registry) as client:
            resolved: list[str] = []

            def resolve(state: Any, runtime: Any) -> Any:
                resolved.append(runtime.context["conversation"])
                return client.memory("lc", ctx(runtime.context["conversation"]))

            agent = create_agent(
                model_on(llm_server),
                [get_weather],
                system_prompt="Be brief.",
                middleware=[MemoryEngineMiddleware(resolve=resolve)],
            )
            script_two_turns(llm_server)
            context = {"conversation": conversation}
            await agent.ainvoke(user("Weather in Paris?"), context=context)  # type: ignore[arg-type]
            await agent.ainvoke(user("What did I ask?"), context=context)  # type: ignore[arg-type]
            assert_second_request(llm_server)
            assert set(resolved) == {conversation}
            # Another conversation starts empty.
            llm_server.script("Hello.")
            await agent.ainvoke(user("Hi"), context={"conversation": "other"})  # type: ignore[arg-type]
            sent = llm_server.chat_requests[-1].json["messages"]
            assert [m["role"] for m in sent] == ["system", "user"]
            stats = await client.memory("lc", ctx(conversation)).stats()
            assert stats.message_count == 6

    asyncio.run(scenario())


def test_middleware_needs_exactly_one_way_to_find_its_memory(settings: Settings) -> None:
    with client_with(settings, resource("lc")) as mc:
        memory = mc.memory("lc", ctx("x"))
        with pytest.raises(ValueError):
            MemoryEngineMiddleware()
        with pytest.raises(ValueError):
            MemoryEngineMiddleware(memory, resolve=lambda state, runtime: memory)


# ---- the legacy history ----------------------------------------------------------------------

SUMMARIZING = {
    "max_tokens": 400,
    "flushing": {"type": "hybrid_summary", "summarize_threshold": 0.8, "summary_tokens": 60},
}


def conversation_messages() -> list[Any]:
    return [
        HumanMessage("Weather in Paris?", id="h1"),
        AIMessage(
            "",
            id="a1",
            tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "c1"}],
        ),
        ToolMessage("sunny", tool_call_id="c1", id="t1", name="get_weather"),
        AIMessage("It is sunny.", id="a2"),
    ]


def test_legacy_history_round_trips_langchain_messages(settings: Settings) -> None:
    with client_with(settings, resource("lc")) as mc:
        history = MemoryEngineChatMessageHistory(mc.memory("lc", ctx(uuid.uuid4().hex)))
        messages = conversation_messages()
        history.add_messages(messages)
        assert history.messages == messages
        # A call whose result never came is not sent (the window keeps only answered calls).
        history.add_messages(
            [
                AIMessage(
                    "Checking two cities.",
                    id="a3",
                    tool_calls=[
                        {"name": "get_weather", "args": {"city": "Rome"}, "id": "c2"},
                        {"name": "get_weather", "args": {"city": "Oslo"}, "id": "c3"},
                    ],
                ),
                ToolMessage("rainy", tool_call_id="c2", id="t2"),
            ]
        )
        last_two = history.messages[-2:]
        assert isinstance(last_two[0], AIMessage)
        assert [c["id"] for c in last_two[0].tool_calls] == ["c2"]
        assert last_two[1].id == "t2"
        history.clear()
        assert history.messages == []


def test_legacy_history_puts_the_summary_first(settings: Settings) -> None:
    with client_with(settings, resource("lc-sum", **SUMMARIZING)) as mc:
        memory = mc.memory("lc-sum", ctx(uuid.uuid4().hex))
        history = MemoryEngineChatMessageHistory(memory)
        for i in range(12):
            history.add_messages(
                [
                    HumanMessage(f"question {i} " + "word " * 20),
                    AIMessage(f"answer {i} " + "x " * 20),
                ]
            )
        memory.flush()  # inline here; in a deployment the workers do it
        window = history.messages
        assert isinstance(window[0], SystemMessage) and f"<{SUMMARY_TAG}>" in window[0].text
        assert len(window) < 24 and window[-1].text.startswith("answer 11")


def test_legacy_history_async_with_an_async_memory(settings: Settings) -> None:
    registry = ResourceRegistry([parse_resource(resource("lc"))])

    async def scenario() -> None:
        async with AsyncMemoryClient(settings, registry=registry) as client:
            history = MemoryEngineChatMessageHistory(client.memory("lc", ctx(uuid.uuid4().hex)))
            messages = conversation_messages()
            await history.aadd_messages(messages)
            assert await history.aget_messages() == messages
            await history.aclear()
            assert await history.aget_messages() == []

    asyncio.run(scenario())


def test_sync_memory_client_and_middleware_share_a_memory(
    settings: Settings, llm_server: FakeLLMServer
) -> None:
    """A message appended by the plain client shows in the agent's next request."""
    with client_with(settings, resource("lc")) as mc:
        memory = mc.memory("lc", ctx(uuid.uuid4().hex))
        memory.append({"role": "user", "content": "My name is Ada."})
        memory.append({"role": "assistant", "content": "Hello Ada."})
        agent = create_agent(model_on(llm_server), [], middleware=[MemoryEngineMiddleware(memory)])
        llm_server.script("You are Ada.")
        agent.invoke(user("Who am I?"))
        sent = llm_server.chat_requests[-1].json["messages"]
        assert [(m["role"], m["content"]) for m in sent] == [
            ("user", "My name is Ada."),
            ("assistant", "Hello Ada."),
            ("user", "Who am I?"),
        ]
        assert isinstance(mc, MemoryClient)
