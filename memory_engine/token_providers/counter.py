"""The provider-aware token counter: a fallback chain whose every count says where it came from.

:class:`ProviderTokenCounter` is a :class:`~memory_engine.tokens.TokenCounter` (everything that
takes a counter accepts it) with two measures:

- **content counts** (:meth:`~ProviderTokenCounter.count_content`, and the content part of
  :meth:`~ProviderTokenCounter.count_message`, which is what ``append`` stores): the provider's
  API when there is one, else or when it fails tiktoken, else the byte estimate;
- **local counts** (:meth:`~ProviderTokenCounter.count_text` and ``truncate``): tiktoken, or
  the byte estimate for providers without a tokenizer here. These never touch the network:
  summarizers and the context window call them in loops (clipping a sentence, trimming a
  summary), where one HTTP request per probe would be slow and would exhaust a provider's rate
  limit.

The per-message convention of :mod:`memory_engine.tokens` holds for every provider: a provider's
count replaces only the *content* term; the 4 tokens of overhead, the name (+1) and the tool-call
fields are counted locally. A message's :class:`~memory_engine.token_providers.base.TokenCount`
carries the source of its content count.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from memory_engine.token_providers.base import (
    RemoteTokenCounter,
    TokenCount,
    TokenProviderError,
    TokenSource,
    estimate_tokens,
    estimate_truncate,
)
from memory_engine.tokens import (
    MESSAGE_OVERHEAD_TOKENS,
    NAME_OVERHEAD_TOKENS,
    TokenCounter,
    compact_json,
    counter_for,
)

if TYPE_CHECKING:
    from memory_engine.messages import Message

__all__ = ["ProviderTokenCounter", "count_message_with_source"]

logger = logging.getLogger(__name__)


class ProviderTokenCounter(TokenCounter):
    """Counts for one ``token_provider``: content by ``remote`` -> tiktoken -> estimate.

    ``local`` is :attr:`TokenSource.TIKTOKEN` (the shared tiktoken counter of ``model``, or
    ``tiktoken_counter`` when given) or :attr:`TokenSource.ESTIMATE`. Thread-safe. A failing
    provider is logged once per outage (WARNING), and once more when it answers again (INFO).
    """

    def __init__(
        self,
        provider: str,
        model: str | None,
        *,
        remote: RemoteTokenCounter | None = None,
        local: TokenSource = TokenSource.TIKTOKEN,
        tiktoken_counter: TokenCounter | None = None,
    ) -> None:
        if local not in (TokenSource.TIKTOKEN, TokenSource.ESTIMATE):
            raise ValueError(f"local must be tiktoken or estimate, got {local!r}")
        # The base class only provides the type and the encoding attributes; text counts are
        # delegated to the process-wide shared counter so its cache is shared too.
        super().__init__(model, cache_size=0)
        self.provider = provider
        self.model = model
        self.remote = remote
        self.local_source = local
        self._tiktoken: TokenCounter | None = None
        if local is TokenSource.TIKTOKEN:
            self._tiktoken = tiktoken_counter or counter_for(model)
        self._tally_lock = threading.Lock()
        self._tally: dict[str, int] = {}
        self._provider_failing = False
        self._tiktoken_failing = False

    def __repr__(self) -> str:
        return (
            f"ProviderTokenCounter(provider={self.provider!r}, model={self.model!r}, "
            f"remote={self.remote!r}, local={self.local_source.value!r})"
        )

    def close(self) -> None:
        """Close the remote counter's HTTP client, if any."""
        if self.remote is not None:
            self.remote.close()

    # ---- local measure (no network) -------------------------------------------------------

    def local_count(self, text: str) -> TokenCount:
        """``text`` counted by tiktoken (or the estimate when tiktoken fails or is not used)."""
        if self._tiktoken is not None:
            try:
                value = self._tiktoken.count_text(text)
            except Exception as exc:  # a broken encoding must not refuse the message
                if not self._tiktoken_failing:
                    self._tiktoken_failing = True
                    logger.warning(
                        "tiktoken failed for provider %s (%s: %s); counting with the estimate",
                        self.provider,
                        type(exc).__name__,
                        exc,
                    )
            else:
                return TokenCount(value, TokenSource.TIKTOKEN)
        return TokenCount(estimate_tokens(text), TokenSource.ESTIMATE)

    def count_text(self, text: str) -> int:
        """Local count of ``text`` (tiktoken or the estimate): never a network call."""
        return self.local_count(text).value

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of ``text`` found that counts at most ``max_tokens`` by
        :meth:`count_text`."""
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        if self._tiktoken is not None and not self._tiktoken_failing:
            try:
                return self._tiktoken.truncate(text, max_tokens)
            except Exception as exc:  # cut by the estimate, as count_text then counts
                logger.debug("tiktoken truncate failed for provider %s: %s", self.provider, exc)
        return estimate_truncate(text, max_tokens)

    # ---- content measure (the provider chain) ---------------------------------------------

    def count_content(self, text: str) -> TokenCount:
        """Tokens of ``text`` as a message's content: provider API, then tiktoken, then the
        estimate. Blank text is counted locally (providers refuse it)."""
        result: TokenCount | None = None
        if self.remote is not None and text.strip():
            try:
                result = TokenCount(self.remote.count(text), self.remote.source)
            except TokenProviderError as exc:
                if not self._provider_failing:
                    self._provider_failing = True
                    logger.warning(
                        "token counts for provider %s fall back to %s: %s",
                        self.provider,
                        self.local_source.value,
                        exc,
                    )
                else:
                    logger.debug("token count fallback for provider %s: %s", self.provider, exc)
            else:
                if self._provider_failing:
                    self._provider_failing = False
                    logger.info(
                        "token counts for provider %s come from its API again", self.provider
                    )
        if result is None:
            result = self.local_count(text)
        with self._tally_lock:
            self._tally[result.source] = self._tally.get(result.source, 0) + 1
        return result

    def count_message_detailed(self, message: Message) -> TokenCount:
        """:meth:`count_message` with the source of its content count."""
        content = self.count_content(message.content)
        total = content.value + MESSAGE_OVERHEAD_TOKENS
        if message.name:
            total += self.count_text(message.name) + NAME_OVERHEAD_TOKENS
        if message.tool_calls:
            total += self.count_text(compact_json(message.tool_calls))
        if message.tool_call_id:
            total += self.count_text(message.tool_call_id)
        return TokenCount(total, content.source)

    def count_message(self, message: Message) -> int:
        """Tokens of one message by the engine's convention, content counted by the provider."""
        return self.count_message_detailed(message).value

    def source_counts(self) -> dict[str, int]:
        """How many content counts each source produced since this counter was built."""
        with self._tally_lock:
            return dict(self._tally)


def count_message_with_source(counter: TokenCounter, message: Message) -> TokenCount:
    """``message``'s count and its source, whatever the counter (a plain one counts with
    tiktoken)."""
    if isinstance(counter, ProviderTokenCounter):
        return counter.count_message_detailed(message)
    return TokenCount(counter.count_message(message), TokenSource.TIKTOKEN)
