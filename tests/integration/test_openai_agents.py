"""The Agents SDK adapter (``memory_engine.integrations.openai_agents``) driven by the real SDK:
``Runner.run`` with the SDK's chat-completions model pointed at the loopback OpenAI server, real
Redis, and the in-process Celery worker for the summary. Plus a property test: every item type
round-trips through ``add_items`` / ``get_items`` / ``pop_item``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx  # noqa: F401  (see below)
import pytest
from agents import (
    Agent,
    OpenAIChatCompletionsModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from agents.memory.session import Session
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from openai import AsyncOpenAI

from memory_engine import AsyncMemoryClient, MemoryClient, Message
from memory_engine.core.context import SUMMARY_TAG
from memory_engine.integrations.openai_agents import ITEM_KEY, MemoryEngineSession
from memory_engine.registry import ResourceRegistry
from memory_engine.resources import parse_resource
from memory_engine.settings import Settings
from memory_engine.tooling.loopback_llm import FakeLLMServer, ToolCall

from .helpers import ctx, resource

# httpx is imported above, before the in-process worker's thread may import it lazily: the SDK
# checks sys.modules["httpx"] on every response, and a module another thread is still
# initializing has no attributes yet (a race of the test harness, not of a deployment).


@pytest.fixture(autouse=True, scope="module")
def _no_tracing() -> Iterator[None]:
    set_tracing_disabled(True)  # the SDK would try to export traces to OpenAI
    yield


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def agent_on(server: FakeLLMServer) -> Agent[Any]:
    client = AsyncOpenAI(base_url=server.openai_base_url, api_key="x", max_retries=0)
    model = OpenAIChatCompletionsModel(model="m", openai_client=client)
    return Agent(name="assistant", instructions="Be brief.", model=model, tools=[get_weather])


def aclient(settings: Settings, **fields: Any) -> AsyncMemoryClient:
    registry = ResourceRegistry([parse_resource(resource("agents", **fields))])
    return AsyncMemoryClient(settings, registry=registry)


def test_the_session_implements_the_sdk_protocol(settings: Settings) -> None:
    async def scenario() -> None:
        async with aclient(settings) as client:
            session = MemoryEngineSession(client.memory("agents", ctx("p")))
            assert isinstance(session, Session)
            assert session.session_id == session.memory.key
            assert session.session_settings is None

    asyncio.run(scenario())


def test_second_turn_sees_the_first_from_the_session(
    settings: Settings, llm_server: FakeLLMServer
) -> None:
    llm_server.script(
        ToolCall("get_weather", '{"city": "Paris"}', "call_w1"),
        "It is sunny in Paris.",
        "You asked about the weather in Paris.",
    )

    async def scenario() -> None:
        async with aclient(settings) as client:
            memory = client.memory("agents", ctx(uuid.uuid4().hex))
            agent = agent_on(llm_server)
            first = await Runner.run(
                agent, "Weather in Paris?", session=MemoryEngineSession(memory)
            )
            assert first.final_output == "It is sunny in Paris."
            # A new session object on the same memory: the history lives in Redis.
            session = MemoryEngineSession(client.memory("agents", ctx(memory.key.split(":")[-1])))
            second = await Runner.run(agent, "What did I ask?", session=session)
            assert second.final_output == "You asked about the weather in Paris."

            sent = llm_server.chat_requests[-1].json["messages"]
            assert [(m["role"], m.get("content")) for m in sent] == [
                ("system", "Be brief."),
                ("user", "Weather in Paris?"),
                ("assistant", None),
                ("tool", "sunny in Paris"),
                ("assistant", "It is sunny in Paris."),
                ("user", "What did I ask?"),
            ]
            call = sent[2]["tool_calls"][0]
            assert call["id"] == "call_w1" and call["function"]["name"] == "get_weather"
            assert sent[3]["tool_call_id"] == "call_w1"  # the output right after its call

            items = await session.get_items()
            kinds = [i.get("type", "message") for i in items]
            assert kinds == [
                "message",
                "function_call",
                "function_call_output",
                "message",
                "message",
                "message",
            ]
            assert items[1]["call_id"] == items[2]["call_id"] == "call_w1"  # type: ignore[typeddict-item]
            stored = await memory.read()
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
            assert [m.metadata[ITEM_KEY] for m in stored] == items
            # limit: the newest items as stored; pop_item: the newest, removed
            assert await session.get_items(limit=2) == items[-2:]
            assert await session.pop_item() == items[-1]
            assert await session.get_items() == items[:-1]
            await session.clear_session()
            assert await session.get_items() == []
            assert await session.pop_item() is None

    asyncio.run(scenario())


def test_a_dangling_call_never_reaches_the_model(settings: Settings) -> None:
    async def scenario() -> None:
        async with aclient(settings) as client:
            session = MemoryEngineSession(client.memory("agents", ctx(uuid.uuid4().hex)))
            call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
            await session.add_items([{"role": "user", "content": "hi"}, call])  # type: ignore[list-item]
            assert await session.get_items() == [{"role": "user", "content": "hi"}]
            assert (await session.get_items(limit=1)) == [call]  # stored all the same
            output = {"type": "function_call_output", "call_id": "c1", "output": "ok"}
            await session.add_items([output])  # type: ignore[list-item]
            assert await session.get_items() == [{"role": "user", "content": "hi"}, call, output]

    asyncio.run(scenario())


def test_items_written_by_other_clients_come_back_as_sdk_items(settings: Settings) -> None:
    async def scenario() -> None:
        async with aclient(settings) as client:
            memory = client.memory("agents", ctx(uuid.uuid4().hex))
            call = {"id": "c9", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            await memory.append_many(
                [
                    {"role": "user", "content": "plain"},
                    {"role": "assistant", "content": "", "tool_calls": [call]},
                    {"role": "tool", "content": "result", "tool_call_id": "c9"},
                ]
            )
            assert await MemoryEngineSession(memory).get_items() == [
                {"role": "user", "content": "plain"},
                {"type": "function_call", "call_id": "c9", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c9", "output": "result"},
            ]

    asyncio.run(scenario())


# ---- a long conversation: the worker summarizes it, the next turn carries the summary ------


def _words(n: int, seed: int) -> str:
    return " ".join(f"w{seed}x{i}" for i in range(n))


async def _until(condition: Any, what: str, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def test_long_conversation_is_summarized_by_a_worker_and_the_next_turn_stays_in_budget(
    celery_worker: Any, engine: MemoryClient, worker_settings: Settings, llm_server: FakeLLMServer
) -> None:
    turns = 12

    async def scenario() -> None:
        async with AsyncMemoryClient(worker_settings) as client:
            # hybrid-small (tests/fixtures_worker.py): 600 tokens, summarizes at 80%
            memory = client.memory("hybrid-small", ctx(uuid.uuid4().hex))
            session = MemoryEngineSession(memory)
            agent = agent_on(llm_server)
            for turn in range(turns):
                llm_server.script(f"answer {turn}: " + _words(30, turn))
                await Runner.run(agent, f"question {turn}: " + _words(10, turn), session=session)

            async def summarized() -> bool:
                stats = await memory.stats()
                return stats.summary_point > 0 and not stats.flush_pending

            await _until(summarized, "the worker's summary")
            stats = await memory.stats()
            assert stats.summarized_count + stats.flushed_count > 0
            assert stats.message_count < 2 * turns

            llm_server.script("final answer")
            await Runner.run(agent, "What did we talk about?", session=session)
            sent = llm_server.chat_requests[-1].json["messages"]
            assert sent[0] == {"role": "system", "content": "Be brief."}
            assert sent[1]["role"] == "system" and f"<{SUMMARY_TAG}>" in sent[1]["content"]
            assert sent[-1] == {"role": "user", "content": "What did we talk about?"}
            # The history the session supplied is within the resource's budget (600 tokens),
            # counted with the memory's own counter.
            counter = client.sync.counter_for(memory.resource)
            history = [
                Message(
                    role=m["role"], content=m.get("content") or "", tool_calls=m.get("tool_calls")
                )
                for m in sent[1:-1]
            ]
            budget = memory.resource.effective_max_tokens
            assert budget == 600
            assert sum(counter.count_message(m) for m in history) <= budget
            # The oldest turns are gone from the request (the summary stands for them).
            assert not any("question 0:" in (m.get("content") or "") for m in sent)
            assert any(f"question {turns - 1}:" in (m.get("content") or "") for m in sent)

    asyncio.run(scenario())


# ---- every item type round-trips -----------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=40)
WORDS = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)
JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), TEXT)

MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "developer"]), "content": TEXT}
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("message"),
            "role": st.sampled_from(["user", "system", "developer"]),
            "content": st.lists(
                st.one_of(
                    st.fixed_dictionaries({"type": st.just("input_text"), "text": TEXT}),
                    st.fixed_dictionaries(
                        {
                            "type": st.just("input_image"),
                            "image_url": WORDS,
                            "detail": st.just("auto"),
                        }
                    ),
                ),
                max_size=3,
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "id": WORDS,
            "type": st.just("message"),
            "role": st.just("assistant"),
            "status": st.just("completed"),
            "content": st.lists(
                st.fixed_dictionaries(
                    {"type": st.just("output_text"), "text": TEXT, "annotations": st.just([])}
                ),
                min_size=1,
                max_size=2,
            ),
        }
    ),
)
REASONING = st.fixed_dictionaries(
    {
        "type": st.just("reasoning"),
        "id": WORDS,
        "summary": st.lists(
            st.fixed_dictionaries({"type": st.just("summary_text"), "text": TEXT}), max_size=2
        ),
    },
    optional={"encrypted_content": WORDS},
)
OTHER = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.just("web_search_call"),
            "id": WORDS,
            "status": st.just("completed"),
            "action": st.fixed_dictionaries({"type": st.just("search"), "query": TEXT}),
        }
    ),
    st.fixed_dictionaries({"type": st.just("item_reference"), "id": WORDS}),
    st.fixed_dictionaries(
        {
            "type": st.just("mcp_approval_response"),
            "approval_request_id": WORDS,
            "approve": st.booleans(),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("x_future_item"),
            "payload": st.dictionaries(WORDS, JSON_SCALAR, max_size=3),
        }
    ),
)
CALL_KINDS = {
    "function_call": lambda: {"name": WORDS, "arguments": TEXT},
    "custom_tool_call": lambda: {"name": WORDS, "input": TEXT},
    "computer_call": lambda: {
        "id": WORDS,
        "action": st.fixed_dictionaries({"type": st.just("click"), "x": st.integers(0, 99)}),
        "pending_safety_checks": st.just([]),
        "status": st.just("completed"),
    },
    "shell_call": lambda: {
        "action": st.fixed_dictionaries({"commands": st.lists(TEXT, max_size=2)})
    },
}
OUTPUT_OF = {
    "function_call": "function_call_output",
    "custom_tool_call": "custom_tool_call_output",
    "computer_call": "computer_call_output",
    "shell_call": "shell_call_output",
}


@st.composite
def tool_unit(draw: st.DrawFn, serial: list[int]) -> list[dict[str, Any]]:
    """1-3 parallel calls, then their outputs in any order (what the SDK stores)."""
    calls, outputs = [], []
    for _ in range(draw(st.integers(1, 3))):
        serial[0] += 1
        call_id = f"call_{serial[0]}"
        kind = draw(st.sampled_from(sorted(CALL_KINDS)))
        fields = draw(st.fixed_dictionaries(CALL_KINDS[kind]()))
        calls.append({"type": kind, "call_id": call_id, **fields})
        output = draw(
            st.one_of(
                TEXT,
                st.lists(
                    st.fixed_dictionaries({"type": st.just("input_text"), "text": TEXT}), max_size=2
                ),
            )
        )
        outputs.append({"type": OUTPUT_OF[kind], "call_id": call_id, "output": output})
    return calls + draw(st.permutations(outputs))


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    serial = [0]
    units = draw(
        st.lists(
            st.one_of(
                MESSAGE.map(lambda m: [m]),
                REASONING.map(lambda m: [m]),
                OTHER.map(lambda m: [m]),
                tool_unit(serial),
            ),
            min_size=1,
            max_size=6,
        )
    )
    return [item for unit in units for item in unit]


@hypothesis_settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(items=conversations())
def test_every_item_type_round_trips(settings: Settings, items: list[dict[str, Any]]) -> None:
    async def scenario() -> None:
        async with aclient(settings) as client:
            session = MemoryEngineSession(client.memory("agents", ctx(uuid.uuid4().hex)))
            await session.add_items(items[:1])  # type: ignore[arg-type]
            await session.add_items(items[1:])  # type: ignore[arg-type]
            assert await session.get_items() == items
            for limit in (1, len(items), len(items) + 5):
                assert await session.get_items(limit=limit) == items[-limit:]
            # what comes out equals what went in, also as JSON (no tuple, no key lost)
            assert json.loads(json.dumps(await session.get_items())) == items
            assert await session.pop_item() == items[-1]
            assert await session.get_items(limit=len(items)) == items[:-1]

    asyncio.run(scenario())
