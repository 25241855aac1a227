"""LLM summarizers over HTTP: OpenAI-compatible chat completions and the Anthropic Messages API.

Each summarizer owns one ``httpx.Client`` (connections are reused across calls; call ``close()``
or use it as a context manager when done). Every failure becomes
:class:`~memory_engine.errors.SummarizerError` raised ``from`` the cause: connection errors and
timeouts, HTTP status >= 400, a body that is not JSON or not the expected shape, empty text, a
placeholder or refusal (``NONE``, ``N/A``, "I cannot ..."), output cut at the token cap, or content
that is not text. The API key is sent only in a request header: it never appears in ``repr``, in
logs or in an error message (a provider echoing it in an error body is scrubbed).

``timeout_s`` bounds each network wait and the call as a whole (checked while the body streams).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Self
from urllib.parse import urlsplit

import httpx
from pydantic import SecretStr

from memory_engine.errors import SummarizerError
from memory_engine.http import HttpCallError, error_excerpt, post_json_bounded, safe_url
from memory_engine.settings import DEFAULT_SUMMARIZER_TIMEOUT_S
from memory_engine.summarizers.base import SummaryText, check_summary_text, has_content
from memory_engine.summarizers.prompt import Prompt, build_prompt

if TYPE_CHECKING:
    from memory_engine.messages import Message
    from memory_engine.tokens import TokenCounter

__all__ = [
    "ANTHROPIC_VERSION",
    "AnthropicSummarizer",
    "DEFAULT_ANTHROPIC_BASE_URL",
    "DEFAULT_OPENAI_BASE_URL",
    "OpenAIChatSummarizer",
]

logger = logging.getLogger(__name__)

DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_ANTHROPIC_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_TIMEOUT_S = DEFAULT_SUMMARIZER_TIMEOUT_S
MAX_RESPONSE_BYTES = 1024 * 1024


class _HTTPSummarizer:
    """Shared transport, error translation and validation; subclasses build and parse bodies."""

    name: str
    path: ClassVar[str]

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: SecretStr | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if not model:
            raise ValueError("model is required")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self._api_key = api_key
        self._url = self.base_url + self.path
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s), follow_redirects=False)

    def __repr__(self) -> str:
        key = "SecretStr('**********')" if self._api_key is not None else "None"
        return (
            f"{type(self).__name__}(base_url={safe_url(self.base_url)!r}, model={self.model!r}, "
            f"api_key={key}, timeout_s={self.timeout_s!r})"
        )

    __str__ = __repr__

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- subclass hooks --------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        raise NotImplementedError

    def _body(self, prompt: Prompt, max_tokens: int) -> dict[str, Any]:
        raise NotImplementedError

    def _extract(self, payload: Any) -> str:
        """The reply text from a decoded JSON body; raise SummarizerError for a bad reply."""
        raise NotImplementedError

    # --- the call --------------------------------------------------------------------------

    def summarize(
        self,
        previous: str | None,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        counter: TokenCounter,
    ) -> SummaryText:
        """The previous summary updated with ``messages``; see :class:`Summarizer`.

        Without a message that has content there is nothing to add: no request is made and the
        previous summary comes back unchanged (empty when there was none).
        """
        if max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if not any(has_content(m) for m in messages):
            text = (previous or "").strip()
            return SummaryText(text=text, token_count=counter.count_text(text), source=self.name)
        prompt = build_prompt(previous, messages, max_tokens)
        with self._span(max_tokens) as span:
            payload = self._post(self._body(prompt, max_tokens))
            if span is not None:
                _record_usage(span, payload)
            text = check_summary_text(self._extract(payload), source=self.name)
        tokens = counter.count_text(text)
        if tokens > max_tokens:
            # The provider stopped on its own, so this is a tokenizer mismatch of a few tokens,
            # not a cut-off reply: trim to whole lines when possible.
            text = self._trim(text, max_tokens, counter)
            tokens = counter.count_text(text)
        return SummaryText(text=text, token_count=tokens, source=self.name)

    def _span(self, max_tokens: int) -> contextlib.AbstractContextManager[Any]:
        """An OpenTelemetry client span for the call (gen_ai.* attributes, never the prompt or
        the reply), once tracing is set up in this process; else nothing, importing nothing."""
        if "opentelemetry.trace" not in sys.modules:
            return contextlib.nullcontext()
        from opentelemetry import trace

        host = urlsplit(self._url).hostname
        return trace.get_tracer(__name__).start_as_current_span(
            f"chat {self.model}",
            kind=trace.SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": self.name,
                "gen_ai.system": self.name,
                "gen_ai.request.model": self.model,
                "gen_ai.request.max_tokens": max_tokens,
                "gen_ai.request.temperature": 0,
                **({"server.address": host} if host else {}),
            },
        )

    def _post(self, body: dict[str, Any]) -> Any:
        started = time.monotonic()
        where = safe_url(self._url)
        try:
            status, text = post_json_bounded(
                self._client,
                self._url,
                body=body,
                headers=self._headers(),
                timeout_s=self.timeout_s,
                max_bytes=MAX_RESPONSE_BYTES,
            )
        except HttpCallError as exc:
            raise SummarizerError(
                f"{self.name} summarizer: {error_excerpt(str(exc), self._secret(), None)}"
            ) from exc
        elapsed = time.monotonic() - started
        if status >= 400:
            raise SummarizerError(
                f"{self.name} summarizer: HTTP {status} from {where}: "
                f"{error_excerpt(text, self._secret())}"
            )
        logger.debug(
            "summarizer %s model %s answered %s in %.3fs", self.name, self.model, status, elapsed
        )
        try:
            return json.loads(text)
        except ValueError as exc:
            raise SummarizerError(
                f"{self.name} summarizer: malformed JSON from {where} (HTTP {status})"
            ) from exc

    def _secret(self) -> str | None:
        """The key to scrub from text taken from elsewhere (an error body may echo it)."""
        return None if self._api_key is None else self._api_key.get_secret_value()

    def _shape_error(self, what: str) -> SummarizerError:
        return SummarizerError(f"{self.name} summarizer: unexpected response shape: {what}")

    @staticmethod
    def _trim(text: str, max_tokens: int, counter: TokenCounter) -> str:
        lines = text.splitlines()
        while len(lines) > 1 and counter.count_text("\n".join(lines)) > max_tokens:
            lines.pop()
        kept = "\n".join(lines)
        if counter.count_text(kept) <= max_tokens:
            return kept
        return counter.truncate(kept, max_tokens).rstrip()


def _record_usage(span: Any, payload: Any) -> None:
    """Token usage and the answering model on the call's span (OpenAI and Anthropic names)."""
    if not isinstance(payload, dict):
        return
    usage = payload.get("usage")
    if isinstance(usage, dict):
        for attribute, names in (
            ("gen_ai.usage.input_tokens", ("input_tokens", "prompt_tokens")),
            ("gen_ai.usage.output_tokens", ("output_tokens", "completion_tokens")),
        ):
            for name in names:
                if isinstance(usage.get(name), int):
                    span.set_attribute(attribute, usage[name])
                    break
    if isinstance(payload.get("model"), str):
        span.set_attribute("gen_ai.response.model", payload["model"])


class OpenAIChatSummarizer(_HTTPSummarizer):
    """OpenAI-compatible chat completions: ``POST {base_url}/chat/completions``.

    ``base_url`` includes the API version, e.g. ``https://api.openai.com/v1`` or a vLLM, Ollama or
    LiteLLM server's ``http://host:port/v1``. Without ``api_key`` no Authorization header is sent.
    """

    name = "openai"
    path = "/chat/completions"

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self._api_key is not None:
            headers["authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        return headers

    def _body(self, prompt: Prompt, max_tokens: int) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": prompt.user},
            ],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": False,
        }

    def _extract(self, payload: Any) -> str:
        try:
            choice = payload["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError) as exc:
            raise self._shape_error("no choices[0].message") from exc
        if not isinstance(choice, dict) or not isinstance(message, dict):
            raise self._shape_error("choices[0].message is not an object")
        finish = choice.get("finish_reason")
        if finish == "length":
            raise SummarizerError("openai summarizer: reply truncated at max_tokens")
        if finish == "content_filter":
            raise SummarizerError("openai summarizer: reply stopped by the content filter")
        if message.get("refusal"):
            raise SummarizerError("openai summarizer: the model refused")
        if message.get("tool_calls") or finish in ("tool_calls", "function_call"):
            raise SummarizerError("openai summarizer: reply is a tool call, not text")
        content = message.get("content")
        if isinstance(content, list):
            # Some compatible servers answer with content parts.
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise SummarizerError("openai summarizer: reply has non-text content parts")
            content = "".join(str(p.get("text", "")) for p in content)
        if content is None:
            raise SummarizerError("openai summarizer: reply has no text content (null)")
        if not isinstance(content, str):
            raise self._shape_error(f"content is {type(content).__name__}")
        return content


class AnthropicSummarizer(_HTTPSummarizer):
    """Anthropic Messages API: ``POST {base_url}/v1/messages`` with ``x-api-key`` and
    ``anthropic-version: 2023-06-01``. A ``base_url`` ending in ``/v1`` is accepted too."""

    name = "anthropic"
    path = "/v1/messages"

    def __init__(
        self,
        base_url: str = DEFAULT_ANTHROPIC_BASE_URL,
        *,
        model: str,
        api_key: SecretStr | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        base = base_url.rstrip("/")
        if base.endswith("/v1"):
            base = base[: -len("/v1")]
        super().__init__(base, model, api_key, timeout_s)

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        if self._api_key is not None:
            headers["x-api-key"] = self._api_key.get_secret_value()
        return headers

    def _body(self, prompt: Prompt, max_tokens: int) -> dict[str, Any]:
        return {
            "model": self.model,
            "system": prompt.system,
            "messages": [{"role": "user", "content": prompt.user}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }

    def _extract(self, payload: Any) -> str:
        if not isinstance(payload, dict):
            raise self._shape_error("body is not an object")
        if payload.get("type") == "error":
            raise SummarizerError("anthropic summarizer: the API answered with an error object")
        stop = payload.get("stop_reason")
        if stop == "max_tokens":
            raise SummarizerError("anthropic summarizer: reply truncated at max_tokens")
        if stop == "refusal":
            raise SummarizerError("anthropic summarizer: the model refused")
        blocks = payload.get("content")
        if not isinstance(blocks, list):
            raise self._shape_error("content is not a list")
        texts: list[str] = []
        for block in blocks:
            if not isinstance(block, dict):
                raise self._shape_error("content block is not an object")
            kind = block.get("type")
            if kind in ("thinking", "redacted_thinking"):
                continue
            if kind != "text":
                raise SummarizerError(f"anthropic summarizer: reply has a {kind!r} block, not text")
            value = block.get("text")
            if not isinstance(value, str):
                raise self._shape_error("text block without a string")
            texts.append(value)
        if stop == "tool_use":
            raise SummarizerError("anthropic summarizer: reply is a tool call, not text")
        return "".join(texts)
