"""A real HTTP server on loopback speaking the OpenAI and Anthropic APIs: the LLM of tests,
benchmarks and offline demos (the machines that run them have no internet).

Endpoints:
- ``POST /v1/chat/completions`` (OpenAI shape; use ``server.openai_base_url``),
- ``POST /v1/messages`` (Anthropic shape; use ``server.anthropic_base_url``),
- ``POST /v1/messages/count_tokens`` (``{"input_tokens": N}``, N from :func:`word_count`).

Behaviour is switched at runtime with ``server.mode``:

=============  ==================================================================================
``ok``         200 with a deterministic summary (or ``server.reply`` when set)
``slow``       sleep ``server.delay_s``, then ``ok``
``error500``   HTTP ``server.error_status`` (500 by default) with a JSON error body
``error401``   HTTP 401 whose body echoes the credential received, as some providers do
``malformed``  200 with a body that is not JSON
``empty``      200 with an empty text
``none``       200 with the text ``NONE``
``truncated``  200, ``finish_reason: "length"`` / ``stop_reason: "max_tokens"``
``non_text``   200 with ``content: null`` + a tool call / a ``tool_use`` block
``hang``       never answers, until the server stops
=============  ==================================================================================

``server.latency_s`` (default 0) delays every answer of every mode by that long, like a provider's
response time (``slow`` adds ``delay_s`` on top). ``server.in_flight`` is the number of requests
being answered now and ``server.max_in_flight`` the most seen at once since the last
:meth:`~FakeLLMServer.reset_in_flight` (how many calls a client really makes concurrently).

Every request is recorded (path, lower-cased headers, decoded JSON) in ``server.requests``.

Scripted replies (agent tests): :meth:`FakeLLMServer.script` queues answers for
``/v1/chat/completions``, consumed one per request in order: a ``str`` is a text answer, a
:class:`ToolCall` (or a list of them) an answer with ``tool_calls`` (``finish_reason:
"tool_calls"``). When the queue is empty, ``mode`` answers as above; error modes answer before the
queue is touched.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "MODES",
    "FakeLLMServer",
    "RecordedRequest",
    "ScriptedReply",
    "ToolCall",
    "running_llm_server",
    "word_count",
]

MODES = frozenset(
    {
        "ok",
        "slow",
        "error500",
        "error401",
        "malformed",
        "empty",
        "none",
        "truncated",
        "non_text",
        "hang",
    }
)
WORDS_PER_LINE = 6


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]
    json: Any


@dataclass(frozen=True)
class ToolCall:
    """A scripted tool call: ``arguments`` is the JSON string the model sends."""

    name: str
    arguments: str = "{}"
    call_id: str = "call_1"


ScriptedReply = str | ToolCall | Sequence[ToolCall]


def word_count(payload: Any) -> int:
    """The fake's token count: whitespace-separated words of the system and every message text."""
    texts: list[str] = []
    system = payload.get("system") if isinstance(payload, dict) else None
    if isinstance(system, str):
        texts.append(system)
    for message in (payload.get("messages") or []) if isinstance(payload, dict) else []:
        texts.append(_message_text(message))
    return sum(len(text.split()) for text in texts)


def _message_text(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return ""


def fake_summary(payload: Any) -> str:
    """``SUMMARY: `` + the first words of each ``role: ...`` line of the last user turn, cut to
    about ``max_tokens`` words."""
    messages = payload.get("messages") or []
    user = _message_text(messages[-1]) if messages else ""
    parts = []
    for line in user.splitlines():
        head, sep, _ = line.partition(":")
        if sep and head.split(" ")[0] in ("user", "assistant", "tool", "system"):
            parts.append(" ".join(line.split()[:WORDS_PER_LINE]))
    words = ("SUMMARY: " + "; ".join(parts or ["nothing new"])).split()
    limit = max(2, int(payload.get("max_tokens") or 256) // 2)
    return " ".join(words[:limit])


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, so clients can reuse connections
    disable_nagle_algorithm = True  # else each keep-alive reply stalls ~40 ms (delayed ACK)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.fake._connection_opened()

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in self.headers.items()}
        fake = self.server.fake
        fake._record(RecordedRequest(self.path, headers, body))
        fake._enter()
        try:
            self._answer(fake, headers, body)
        finally:
            fake._leave()

    def _answer(self, fake: FakeLLMServer, headers: dict[str, str], body: Any) -> None:
        mode = fake.mode
        if fake.latency_s > 0 and fake._stopping.wait(fake.latency_s):
            self.close_connection = True
            return
        if mode == "hang":
            fake._stopping.wait()
            self.close_connection = True
            return
        if mode == "slow" and fake._stopping.wait(fake.delay_s):
            self.close_connection = True  # stopped while sleeping: answer nothing
            return
        if self.path not in ("/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens"):
            self._send(404, {"error": {"type": "not_found", "message": self.path}})
            return
        if mode == "error500":
            error = {"type": "server_error", "message": "the fake provider failed"}
            self._send(fake.error_status, {"error": error})
            return
        if mode == "error401":
            credential = headers.get("x-api-key") or headers.get("authorization", "")
            error = {"type": "invalid_request_error", "message": f"bad key: {credential}"}
            self._send(401, {"error": error})
            return
        if mode == "malformed":
            self._send_raw(200, b'{"choices": [ this is not json')
            return
        if self.path == "/v1/messages/count_tokens":
            self._send(200, {"input_tokens": word_count(body)})
        elif self.path == "/v1/chat/completions":
            scripted = fake._next_scripted()
            if scripted is not None:
                self._send(200, _scripted_openai(body, scripted))
            else:
                self._send(200, self._openai(body, mode))
        else:
            self._send(200, self._anthropic(body, mode))

    def _text(self, body: Any, mode: str) -> str | None:
        if mode == "empty":
            return ""
        if mode == "none":
            return "NONE"
        if mode == "non_text":
            return None
        if self.server.fake.reply is not None:
            return self.server.fake.reply
        return fake_summary(body if isinstance(body, dict) else {})

    def _openai(self, body: Any, mode: str) -> dict[str, Any]:
        text = self._text(body, mode)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        finish = "length" if mode == "truncated" else "stop"
        if mode == "non_text":
            finish = "tool_calls"
            function = {"name": "lookup", "arguments": "{}"}
            message["tool_calls"] = [{"id": "call_1", "type": "function", "function": function}]
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "model": (body or {}).get("model", ""),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {
                "prompt_tokens": word_count(body),
                "completion_tokens": len((text or "").split()),
                "total_tokens": word_count(body) + len((text or "").split()),
            },
        }

    def _anthropic(self, body: Any, mode: str) -> dict[str, Any]:
        text = self._text(body, mode)
        content: list[dict[str, Any]]
        if mode == "non_text":
            content = [{"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}]
        else:
            content = [{"type": "text", "text": text or ""}]
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": (body or {}).get("model", ""),
            "content": content,
            "stop_reason": {"truncated": "max_tokens", "non_text": "tool_use"}.get(
                mode, "end_turn"
            ),
            "stop_sequence": None,
            "usage": {
                "input_tokens": word_count(body),
                "output_tokens": len((text or "").split()),
            },
        }

    def _send(self, status: int, payload: Any) -> None:
        self._send_raw(status, json.dumps(payload).encode())

    def _send_raw(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _scripted_openai(body: Any, reply: ScriptedReply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": None}
    if isinstance(reply, str):
        message["content"] = reply
        finish = "stop"
    else:
        calls = [reply] if isinstance(reply, ToolCall) else list(reply)
        message["tool_calls"] = [
            {
                "id": call.call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in calls
        ]
        finish = "tool_calls"
    completion = len((message["content"] or "").split())
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": 0,
        "model": (body or {}).get("model", ""),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": word_count(body),
            "completion_tokens": completion,
            "total_tokens": word_count(body) + completion,
        },
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default listen backlog is 5: a thread pool opening 16+ connections at once
    # overflowed it and some calls failed to connect.
    request_queue_size = 128
    fake: FakeLLMServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out has closed its socket before a "slow" reply: expected here.
        pass


class FakeLLMServer:
    """A provider stand-in on ``127.0.0.1`` (a free port). Start with :meth:`start`, stop with
    :meth:`stop`, or use :func:`running_llm_server`. Attributes may be changed while it runs."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.delay_s = 2.0
        self.error_status = 500
        self.reply: str | None = None
        self.requests: list[RecordedRequest] = []
        self._scripted: deque[ScriptedReply] = deque()
        self.connections = 0  # TCP connections accepted: 1 for N calls means keep-alive worked
        self.latency_s = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle
    def start(self, port: int = 0) -> FakeLLMServer:
        """Listen on ``port`` (0: a free one). Restarting a stopped server on its old port brings
        an endpoint "back" at the same URL."""
        self._stopping.clear()
        httpd = _Server(("127.0.0.1", port), _Handler)
        httpd.fake = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases "hang" and "slow" handlers
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def reset(self) -> None:
        """Back to ``ok`` with no recorded requests."""
        self.mode = "ok"
        self.delay_s = 2.0
        self.error_status = 500
        self.reply = None
        self.latency_s = 0.0
        with self._lock:
            self.requests.clear()
            self._scripted.clear()
            self.connections = 0
            self.max_in_flight = self.in_flight

    def reset_in_flight(self) -> None:
        """Start counting ``max_in_flight`` again from the requests in flight now."""
        with self._lock:
            self.max_in_flight = self.in_flight

    # --- addresses
    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.base_url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.base_url

    # --- scripted answers
    def script(self, *replies: ScriptedReply) -> None:
        """Queue answers for the next chat completions, in order (module docstring)."""
        with self._lock:
            self._scripted.extend(replies)

    def _next_scripted(self) -> ScriptedReply | None:
        with self._lock:
            return self._scripted.popleft() if self._scripted else None

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """The chat completion requests received so far, oldest first."""
        with self._lock:
            return [r for r in self.requests if r.path == "/v1/chat/completions"]

    # --- recording
    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _connection_opened(self) -> None:
        with self._lock:
            self.connections += 1

    def recorded(self) -> list[RecordedRequest]:
        """A snapshot of the requests received so far."""
        with self._lock:
            return list(self.requests)

    @property
    def last(self) -> RecordedRequest:
        with self._lock:
            return self.requests[-1]

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "mode" and value not in MODES:
            raise ValueError(f"unknown mode {value!r}; one of {sorted(MODES)}")
        super().__setattr__(name, value)


@contextmanager
def running_llm_server() -> Iterator[FakeLLMServer]:
    """A started :class:`FakeLLMServer`, stopped on exit (hanging requests are released)."""
    server = FakeLLMServer().start()
    try:
        yield server
    finally:
        server.stop()
