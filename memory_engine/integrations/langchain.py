"""LangChain 1.x over a memory: :class:`MemoryEngineMiddleware` for ``create_agent`` agents, and
the legacy :class:`MemoryEngineChatMessageHistory` for ``RunnableWithMessageHistory``.

The middleware keeps an agent's history in the memory instead of the graph state::

    agent = create_agent(model, tools, middleware=[MemoryEngineMiddleware(memory)])
    agent.invoke({"messages": [{"role": "user", "content": "..."}]})   # no checkpointer needed

- every new message of the run (the user's, each model answer, each tool result) is appended to
  the memory as it appears (``before_model``, ``after_model``, ``after_agent``);
- the model is sent the memory's context window instead of the raw state (``wrap_model_call``):
  the running summary first, then the newest messages within the resource's budget, never a tool
  call without its result. The agent's system prompt stays where it was;
- compaction runs in the Celery workers when an append crosses the resource's threshold, never
  inside the user's turn (unlike LangChain's ``SummarizationMiddleware``).

How a message is stored: role ``user`` / ``assistant`` / ``system`` / ``tool`` with its text as
content, an ``AIMessage``'s tool calls in OpenAI shape (``tool_calls``), a ``ToolMessage``'s
``tool_call_id``, and the LangChain message itself (``messages_to_dict``) in
``metadata["langchain_message"]``, so it comes back with its type, id, tool-call ids and extra
fields. Messages written by other clients come back as the matching LangChain types.

Sync hooks use a sync :class:`~memory_engine.client.Memory` (an ``AsyncMemory``'s ``sync``
twin), async hooks an :class:`~memory_engine.aio.AsyncMemory` (a sync ``Memory`` runs in a
thread there), so ``invoke`` and ``ainvoke`` both work with either kind.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, Final, NotRequired, cast

from memory_engine.aio import AsyncMemory
from memory_engine.client import Memory
from memory_engine.messages import Message, Role

try:
    from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest
    from langchain.agents.middleware.types import ModelResponse, PrivateStateAttr
    from langchain_core.chat_history import BaseChatMessageHistory
    from langchain_core.messages import (
        AIMessage,
        AnyMessage,
        BaseMessage,
        ChatMessage,
        HumanMessage,
        SystemMessage,
        ToolMessage,
        messages_from_dict,
        messages_to_dict,
    )
    from langgraph.runtime import Runtime
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "memory_engine.integrations.langchain needs LangChain 1.x: "
        "pip install 'memory-engine[langchain]'"
    ) from exc

__all__ = [
    "MESSAGE_KEY",
    "MemoryEngineChatMessageHistory",
    "MemoryEngineMiddleware",
    "MemoryEngineState",
    "from_langchain",
    "to_langchain",
]

MESSAGE_KEY: Final = "langchain_message"
"""Metadata key of the stored LangChain message (``messages_to_dict`` form)."""
STORED_KEY: Final = "memory_engine_stored"
"""State key: how many of the state's messages are already in the memory."""

AnyMemory = Memory | AsyncMemory
Resolver = Callable[[Any, Any], AnyMemory | Awaitable[AnyMemory]]

_ROLES: Final[dict[str, Role]] = {
    "human": Role.USER,
    "user": Role.USER,
    "ai": Role.ASSISTANT,
    "assistant": Role.ASSISTANT,
    "system": Role.SYSTEM,
    "developer": Role.SYSTEM,
    "tool": Role.TOOL,
}


class MemoryEngineState(AgentState[Any]):
    """The agent state with the middleware's private counter of stored messages."""

    memory_engine_stored: NotRequired[Annotated[int, PrivateStateAttr]]


# ---- conversion ------------------------------------------------------------------------------


def from_langchain(message: BaseMessage) -> dict[str, Any]:
    """The engine message (a dict for ``append_many``) that stores ``message``."""
    text = message.text
    role = _ROLES.get(message.type, Role.USER)
    if isinstance(message, ChatMessage):
        role = _ROLES.get(message.role, Role.USER)
    out: dict[str, Any] = {
        "role": role,
        "content": text if text.strip() else f"[{message.type}]",
        "metadata": {MESSAGE_KEY: messages_to_dict([message])[0]},
    }
    if isinstance(message, AIMessage) and message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": json.dumps(call["args"])},
            }
            for call in message.tool_calls
        ]
        if not text.strip():
            out["content"] = ""
    if isinstance(message, ToolMessage):
        out["role"] = Role.TOOL
        out["tool_call_id"] = message.tool_call_id
    return out


def to_langchain(message: Message) -> BaseMessage:
    """The LangChain message ``message`` stands for: the stored one when it has one, else one
    built from its role (the summary and other system messages: ``SystemMessage``)."""
    stored = message.metadata.get(MESSAGE_KEY)
    if isinstance(stored, dict):
        restored = messages_from_dict([stored])[0]
        if isinstance(restored, AIMessage) and restored.tool_calls:
            return _answered_calls_only(restored, message)
        return restored
    if message.role is Role.USER:
        return HumanMessage(content=message.content)
    if message.role is Role.SYSTEM:
        return SystemMessage(content=message.content)
    if message.role is Role.TOOL:
        return ToolMessage(content=message.content, tool_call_id=message.tool_call_id or "")
    calls = []
    for call in message.tool_calls or ():
        found = call.get("function")
        function: dict[str, Any] = found if isinstance(found, dict) else {}
        raw = function.get("arguments", "{}")
        try:
            args = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            args = {"arguments": raw}
        calls.append(
            {"name": function.get("name", ""), "args": args if isinstance(args, dict) else {}}
            | {"id": call.get("id"), "type": "tool_call"}
        )
    return AIMessage(content=message.content, tool_calls=calls)


def _answered_calls_only(restored: AIMessage, message: Message) -> AIMessage:
    """``restored`` with only the tool calls the window kept (those answered by a result in the
    memory: ``memory_engine/core/context.py``), here and in the provider's raw copy
    (``additional_kwargs["tool_calls"]``, which a chat model falls back to)."""
    kept = {call.get("id") for call in message.tool_calls or ()}
    if all(call["id"] in kept for call in restored.tool_calls):
        return restored
    extra = dict(restored.additional_kwargs)
    if isinstance(extra.get("tool_calls"), list):
        extra["tool_calls"] = [c for c in extra["tool_calls"] if c.get("id") in kept]
        if not extra["tool_calls"]:
            del extra["tool_calls"]
    calls = [call for call in restored.tool_calls if call["id"] in kept]
    return restored.model_copy(update={"tool_calls": calls, "additional_kwargs": extra})


def _new_messages(state: Any) -> tuple[list[BaseMessage], int]:
    """The state's messages not yet stored, and the state's message count."""
    messages: list[BaseMessage] = list(state.get("messages") or [])
    stored = state.get(STORED_KEY) or 0
    if stored > len(messages):  # the state was rewritten (messages removed): start over
        stored = 0
    return messages[stored:], len(messages)


# ---- the middleware --------------------------------------------------------------------------


class MemoryEngineMiddleware(AgentMiddleware[MemoryEngineState, Any, Any]):
    """Agent history in a memory (module docstring).

    ``memory``: the one memory this agent uses (``Memory`` or ``AsyncMemory``), or ``resolve``:
    ``resolve(state, runtime)`` returns the memory of this run (per thread, per user; it may be
    a coroutine function for async runs). ``max_tokens``: the window's budget (default: the
    resource's).
    """

    state_schema = MemoryEngineState

    def __init__(
        self,
        memory: AnyMemory | None = None,
        *,
        resolve: Resolver | None = None,
        max_tokens: int | None = None,
    ) -> None:
        super().__init__()
        if (memory is None) == (resolve is None):
            raise ValueError("give one of memory= or resolve=")
        self.memory = memory
        self.resolve = resolve
        self.max_tokens = max_tokens

    # -- which memory

    def _sync_memory(self, state: Any, runtime: Any) -> Memory:
        memory = self.memory
        if memory is None:
            assert self.resolve is not None
            found = self.resolve(state, runtime)
            if inspect.isawaitable(found):
                raise TypeError("resolve returned an awaitable: invoke the agent with ainvoke")
            memory = found
        return memory.sync if isinstance(memory, AsyncMemory) else memory

    async def _async_memory(self, state: Any, runtime: Any) -> AnyMemory:
        memory = self.memory
        if memory is None:
            assert self.resolve is not None
            found = self.resolve(state, runtime)
            memory = await found if inspect.isawaitable(found) else found
        return memory

    # -- storing new messages

    def _store(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        new, total = _new_messages(state)
        if new:
            self._sync_memory(state, runtime).append_many([from_langchain(m) for m in new])
        return {STORED_KEY: total} if new else None

    async def _astore(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        new, total = _new_messages(state)
        if not new:
            return None
        memory = await self._async_memory(state, runtime)
        batch = [from_langchain(m) for m in new]
        if isinstance(memory, AsyncMemory):
            await memory.append_many(batch)
        else:
            await asyncio.to_thread(memory.append_many, batch)
        return {STORED_KEY: total}

    def before_model(
        self, state: MemoryEngineState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        return self._store(state, runtime)

    async def abefore_model(
        self, state: MemoryEngineState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        return await self._astore(state, runtime)

    def after_model(self, state: MemoryEngineState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        return self._store(state, runtime)

    async def aafter_model(
        self, state: MemoryEngineState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        return await self._astore(state, runtime)

    def after_agent(self, state: MemoryEngineState, runtime: Runtime[Any]) -> dict[str, Any] | None:
        return self._store(state, runtime)

    async def aafter_agent(
        self, state: MemoryEngineState, runtime: Runtime[Any]
    ) -> dict[str, Any] | None:
        return await self._astore(state, runtime)

    # -- what the model is sent

    def _with_window(self, request: ModelRequest[Any], window: list[Message]) -> ModelRequest[Any]:
        if not window:  # nothing stored (e.g. every role non-persistable): the state as is
            return request
        # to_langchain builds one of AnyMessage's types (messages_from_dict is typed wider)
        messages = cast("list[AnyMessage]", [to_langchain(m) for m in window])
        return request.override(messages=messages)

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any]:
        memory = self._sync_memory(request.state, request.runtime)
        return handler(self._with_window(request, memory.context(self.max_tokens)))

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any]:
        memory = await self._async_memory(request.state, request.runtime)
        if isinstance(memory, AsyncMemory):
            window = await memory.context(self.max_tokens)
        else:
            window = await asyncio.to_thread(memory.context, self.max_tokens)
        return await handler(self._with_window(request, window))


# ---- legacy ----------------------------------------------------------------------------------


class MemoryEngineChatMessageHistory(BaseChatMessageHistory):
    """Legacy: a ``BaseChatMessageHistory`` (deprecated by langchain-core 1.6.4) for code still on
    ``RunnableWithMessageHistory``. ``messages`` is the memory's context window; ``add_messages``
    appends (one round trip); ``clear`` clears the memory. Prefer :class:`MemoryEngineMiddleware`.
    """

    def __init__(self, memory: AnyMemory, *, max_tokens: int | None = None) -> None:
        self.memory = memory
        self.max_tokens = max_tokens

    @property
    def _sync(self) -> Memory:
        return self.memory.sync if isinstance(self.memory, AsyncMemory) else self.memory

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        return [to_langchain(m) for m in self._sync.context(self.max_tokens)]

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        if messages:
            self._sync.append_many([from_langchain(m) for m in messages])

    def clear(self) -> None:
        self._sync.clear()

    async def aget_messages(self) -> list[BaseMessage]:
        if isinstance(self.memory, AsyncMemory):
            return [to_langchain(m) for m in await self.memory.context(self.max_tokens)]
        return await asyncio.to_thread(lambda: self.messages)

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        if not messages:
            return
        if isinstance(self.memory, AsyncMemory):
            await self.memory.append_many([from_langchain(m) for m in messages])
        else:
            await asyncio.to_thread(self.add_messages, messages)

    async def aclear(self) -> None:
        if isinstance(self.memory, AsyncMemory):
            await self.memory.clear()
        else:
            await asyncio.to_thread(self.clear)
