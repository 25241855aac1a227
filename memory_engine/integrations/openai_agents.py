"""The OpenAI Agents SDK's ``Session`` protocol over a memory: :class:`MemoryEngineSession`.

``Runner.run(agent, text, session=MemoryEngineSession(memory))`` keeps the conversation in the
memory: the SDK adds every input and generated item with :meth:`~MemoryEngineSession.add_items`
and reads the history it sends with :meth:`~MemoryEngineSession.get_items`, which returns the
memory's context window (the summary the workers wrote, then the newest items within the
resource's budget, never a tool call without its output). Compaction runs in the Celery workers
when an append crosses the resource's threshold, not inside the user's turn.

How an item is stored (one item, one message; ``docs/integrations.md`` has the table):

- the item itself, as JSON, in the message's ``metadata["agents_item"]``: what goes in comes out
  equal (:func:`message_to_items`), whatever its type, including types this module does not know;
- a role and content that keep the engine's rules meaningful: messages keep their role
  (``developer`` is stored as ``system``); a tool call whose output pairs with it by ``call_id``
  (``function_call``, ``custom_tool_call``, ``computer_call``, ``shell_call``,
  ``apply_patch_call``, ``tool_search_call``, ``program``) is an ``assistant`` message with one
  ``tool_calls`` entry, its output a ``tool`` message with that ``tool_call_id``, so token counts
  cover the arguments, flushes remove a call with its output, and the window never holds one
  without the other; every other item (reasoning, hosted tool calls, approvals...) is an
  ``assistant`` message whose content is its text (or its JSON, for counting and summaries).

Messages written by other clients (plain role/content messages, OpenAI-shape ``tool_calls``) come
back as the SDK's easy input messages, ``function_call`` and ``function_call_output`` items.

Redaction applies to the stored item too (its string values): with a privacy policy, what comes
back is the redacted item.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, cast

from memory_engine.messages import Message, Role

try:
    from agents.memory.session_settings import SessionSettings
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "memory_engine.integrations.openai_agents needs the OpenAI Agents SDK: "
        "pip install 'memory-engine[openai-agents]'"
    ) from exc

if TYPE_CHECKING:
    from agents.items import TResponseInputItem

    from memory_engine.aio import AsyncMemory

__all__ = [
    "ITEM_KEY",
    "MemoryEngineSession",
    "item_to_message",
    "message_to_items",
]

ITEM_KEY: Final = "agents_item"
"""Metadata key of the stored SDK item."""

# Call item type -> the type of its output item; both name the pair by ``call_id``.
PAIRED_CALLS: Final[dict[str, str]] = {
    "function_call": "function_call_output",
    "custom_tool_call": "custom_tool_call_output",
    "computer_call": "computer_call_output",
    "shell_call": "shell_call_output",
    "apply_patch_call": "apply_patch_call_output",
    "tool_search_call": "tool_search_output",
    "program": "program_output",
}
_OUTPUTS: Final = frozenset(PAIRED_CALLS.values())
_MESSAGE_ROLES: Final[dict[str, Role]] = {
    "user": Role.USER,
    "assistant": Role.ASSISTANT,
    "system": Role.SYSTEM,
    "developer": Role.SYSTEM,
}
# Keys of a content part that hold its text (input/output text, refusal, audio transcript,
# reasoning summary).
_TEXT_KEYS: Final = ("text", "refusal", "transcript")


def _compact(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _text_of(value: object) -> str:
    """The text of a message content or tool output: a string, or the text parts of a list."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts: list[str] = []
        for part in value:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict):
                texts.extend(part[k] for k in _TEXT_KEYS if isinstance(part.get(k), str))
        return "\n".join(texts)
    return ""


def _nonempty(text: str, item_type: str) -> str:
    # The store refuses an empty content (only a tool call may have none): an item without text
    # (an image, an empty output) stands for itself by its type.
    return text if text.strip() else f"[{item_type}]"


def item_to_message(item: TResponseInputItem | dict[str, Any]) -> dict[str, Any]:
    """The message that stores ``item`` (module docstring), as a dict for ``append_many``."""
    data = cast("dict[str, Any]", item)
    item_type = data.get("type")
    metadata = {ITEM_KEY: data}
    call_id = data.get("call_id")
    has_call_id = isinstance(call_id, str) and bool(call_id)
    if item_type in (None, "message") and isinstance(data.get("role"), str):
        role = _MESSAGE_ROLES.get(data["role"], Role.USER)
        text = _text_of(data.get("content"))
        return {"role": role, "content": _nonempty(text, "message"), "metadata": metadata}
    if item_type in PAIRED_CALLS and has_call_id:
        if item_type == "function_call":
            name, arguments = data.get("name"), data.get("arguments")
        else:
            fields = {k: v for k, v in data.items() if k not in ("type", "id", "call_id", "status")}
            name, arguments = item_type, _compact(fields)
        call = {
            "id": call_id,
            "type": "function",
            "function": {
                "name": name if isinstance(name, str) else str(item_type),
                "arguments": arguments if isinstance(arguments, str) else _compact(arguments),
            },
        }
        return {"role": Role.ASSISTANT, "content": "", "tool_calls": [call], "metadata": metadata}
    if item_type in _OUTPUTS and has_call_id:
        output = data.get("output")
        text = _text_of(output) or ("" if output is None else _compact(output))
        return {
            "role": Role.TOOL,
            "content": _nonempty(text, str(item_type)),
            "tool_call_id": call_id,
            "metadata": metadata,
        }
    if item_type == "reasoning":
        text = "\n".join(
            t for t in (_text_of(data.get("summary")), _text_of(data.get("content"))) if t
        )
    else:
        fields = {k: v for k, v in data.items() if k not in ("id", "status")}
        text = _text_of(data.get("content")) or _compact(fields)
    return {
        "role": Role.ASSISTANT,
        "content": _nonempty(text, str(item_type)),
        "metadata": metadata,
    }


def message_to_items(message: Message) -> list[dict[str, Any]]:
    """The SDK items ``message`` stands for: the stored item when it has one, else items built
    from a plain message (a summary or a system message: ``{"role": "system", ...}``; tool calls:
    one ``function_call`` each; a tool result: ``function_call_output``)."""
    stored = message.metadata.get(ITEM_KEY)
    if isinstance(stored, dict):
        return [stored]
    if message.role is Role.TOOL:
        output = {"type": "function_call_output", "call_id": message.tool_call_id}
        return [{**output, "output": message.content}]
    items: list[dict[str, Any]] = []
    if message.content.strip() or not message.tool_calls:
        items.append({"role": message.role.value, "content": message.content})
    for call in message.tool_calls or ():
        found = call.get("function")
        function: dict[str, Any] = found if isinstance(found, dict) else {}
        arguments = function.get("arguments", "{}")
        items.append(
            {
                "type": "function_call",
                "call_id": call.get("id"),
                "name": function.get("name", ""),
                "arguments": arguments if isinstance(arguments, str) else _compact(arguments),
            }
        )
    return items


def _is_tool_message(message: Message) -> bool:
    return message.role is Role.TOOL or bool(message.tool_calls)


def _stored_order(window: Sequence[Message]) -> list[Message]:
    """``window`` with each run of tool calls and outputs back in stored (seq) order.

    The window puts every call right before its outputs; the SDK stores parallel calls first and
    their outputs after (call 1, call 2, output 1, output 2), which the Responses API and the
    SDK's chat-completions converter expect (the calls become one assistant message). In a run of
    calls and outputs only, seq order still has every output after its call."""
    out: list[Message] = []
    run: list[Message] = []
    for message in window:
        if _is_tool_message(message) and message.seq is not None:
            run.append(message)
            continue
        out.extend(sorted(run, key=lambda m: m.seq or 0))
        run = []
        out.append(message)
    out.extend(sorted(run, key=lambda m: m.seq or 0))
    return out


class MemoryEngineSession:
    """An Agents SDK ``Session`` (``agents.memory.session.Session``) over ``memory``.

    - ``session_id``: the memory's id (its rendered key);
    - ``session_settings``: the SDK's ``SessionSettings`` (``limit`` there is passed to
      :meth:`get_items` by the runner);
    - ``max_tokens``: the window's budget (default: the resource's, as ``context()`` uses).
    """

    session_settings: SessionSettings | None

    def __init__(
        self,
        memory: AsyncMemory,
        *,
        max_tokens: int | None = None,
        session_settings: SessionSettings | None = None,
    ) -> None:
        self.memory = memory
        self.session_id: str = memory.key
        self.session_settings = session_settings
        self.max_tokens = max_tokens

    def __repr__(self) -> str:
        return f"MemoryEngineSession({self.memory!r})"

    async def get_items(self, limit: int | None = None) -> list[TResponseInputItem]:
        """The memory's context window as SDK items: the summary first (one ``system`` item),
        then the newest items within the budget, never a tool call without its output.

        With ``limit``: the newest ``limit`` stored items, as stored (what the SDK compares when
        it rewinds a retried turn), without the summary. One round trip either way; the cost
        depends on the window or ``limit``, not on the memory's length."""
        if limit is not None:
            if limit <= 0:
                return []
            tail = await self.memory.read_tail(limit)
            items = [item for message in tail for item in message_to_items(message)]
            return cast("list[TResponseInputItem]", items[-limit:])
        window = await self.memory.context(self.max_tokens)
        items = [item for message in _stored_order(window) for item in message_to_items(message)]
        return cast("list[TResponseInputItem]", items)

    async def add_items(self, items: list[TResponseInputItem]) -> None:
        """Store ``items`` in order, all or none, in one append (one round trip). A threshold
        crossing enqueues one flush for the workers."""
        if items:
            await self.memory.append_many([item_to_message(item) for item in items])

    async def pop_item(self) -> TResponseInputItem | None:
        """Remove and return the newest item (one atomic script), or ``None`` when empty."""
        message = await self.memory.pop()
        if message is None:
            return None
        return cast("TResponseInputItem", message_to_items(message)[-1])

    async def clear_session(self) -> None:
        """Remove every item and the summary (the memory's counters keep counting)."""
        await self.memory.clear()
