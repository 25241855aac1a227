"""Token counting by a resource's ``token_provider``: provider APIs, tiktoken, an estimate.

=============  ==========================================  =====================================
provider       content counted by (first that works)       ``count_text`` / ``truncate``
=============  ==========================================  =====================================
(none)         tiktoken for ``model`` (the plain shared     tiktoken
               :class:`~memory_engine.tokens.TokenCounter`)
``openai``     tiktoken for ``token_provider.model``        tiktoken
``anthropic``  count-tokens API -> tiktoken -> estimate     tiktoken (``cl100k_base``)
anything else  estimate: ``ceil(utf-8 bytes / 4)``          estimate
=============  ==========================================  =====================================

Every count has a source (:class:`TokenCount`: ``anthropic_api``, ``tiktoken`` or ``estimate``).
The Anthropic API is called with the key from the environment variable named by
``token_provider.api_key_env`` (``endpoint`` defaults to https://api.anthropic.com), through a
circuit breaker named ``tokens.anthropic@<host>`` whose state is shared through Redis, with the
whole call bounded by ``MEMORY_TOKEN_COUNT_TIMEOUT_S`` (2 s by default) and counts cached per
process by a digest of the text.

Trade-off: ``append`` is synchronous, so with ``anthropic`` each append of a text not counted
before in this process waits for one HTTP call (plus a one-off call per process that measures the
API's per-request framing). A slow provider therefore slows appends by up to the timeout, at most
``MEMORY_BREAKER_FAIL_MAX`` times in a row: then the breaker opens and appends count with tiktoken
at once until a trial call after ``MEMORY_BREAKER_RESET_TIMEOUT_S`` succeeds. Counts taken while
it was open stay tiktoken counts (they are not recounted later).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from memory_engine.breakers import breaker_name, build_breaker
from memory_engine.errors import ConfigError
from memory_engine.token_providers.anthropic import (
    DEFAULT_ANTHROPIC_ENDPOINT,
    AnthropicTokenCounter,
)
from memory_engine.token_providers.base import (
    ESTIMATE_BYTES_PER_TOKEN,
    RemoteTokenCounter,
    TokenCount,
    TokenProviderError,
    TokenSource,
    estimate_tokens,
    estimate_truncate,
)
from memory_engine.token_providers.counter import ProviderTokenCounter, count_message_with_source
from memory_engine.tokens import TokenCounter, counter_for

if TYPE_CHECKING:
    from memory_engine.resources import MemoryResource, TokenProviderConfig
    from memory_engine.settings import Settings
    from memory_engine.store.connections import RedisClient

__all__ = [
    # results
    "TokenCount",
    "TokenSource",
    "TokenProviderError",
    # counters
    "AnthropicTokenCounter",
    "ProviderTokenCounter",
    "RemoteTokenCounter",
    "count_message_with_source",
    # the estimate
    "ESTIMATE_BYTES_PER_TOKEN",
    "estimate_tokens",
    "estimate_truncate",
    # factory
    "CounterRegistry",
    "TokenCounters",
    "build_token_counter",
]

logger = logging.getLogger(__name__)

_TIKTOKEN_PROVIDERS = frozenset({"openai"})


def build_token_counter(
    config: TokenProviderConfig,
    model: str | None,
    settings: Settings,
    *,
    redis: RedisClient | None = None,
) -> ProviderTokenCounter:
    """The counter for one ``token_provider`` (see the module's table).

    ``model`` is the resource's tokenizer model (``token_provider.model``, else ``model``).
    With ``redis``, the provider's breaker state is shared by every process using the same key
    prefix. Raises :class:`ConfigError` when ``anthropic`` has no model to count for.
    """
    provider = config.provider
    if provider in _TIKTOKEN_PROVIDERS:
        return ProviderTokenCounter(provider, model)
    if provider == "anthropic":
        if not model:
            raise ConfigError(
                "the anthropic count-tokens API needs a model", field="token_provider.model"
            )
        endpoint = config.endpoint or DEFAULT_ANTHROPIC_ENDPOINT
        breaker = build_breaker(
            breaker_name("tokens", provider, endpoint),
            settings,
            failures=(TokenProviderError,),
            redis=redis,
        )
        remote = AnthropicTokenCounter(
            model,
            endpoint=endpoint,
            api_key_env=config.api_key_env,
            timeout_s=settings.token_count_timeout_s,
            breaker=breaker,
        )
        # Claude models are unknown to tiktoken: its default encoding is the closest stand-in.
        return ProviderTokenCounter(provider, model, remote=remote)
    logger.info(
        "token provider %s: no tokenizer available here; counts are estimates "
        "(ceil(utf-8 bytes / %d))",
        provider,
        ESTIMATE_BYTES_PER_TOKEN,
    )
    return ProviderTokenCounter(provider, model, local=TokenSource.ESTIMATE)


class CounterRegistry:
    """The counter of each resource, for one client (formerly ``TokenCounters``): the shared
    tiktoken counter for resources without a ``token_provider``, one
    :class:`ProviderTokenCounter` per distinct provider configuration otherwise (built on first
    use, then reused). Thread-safe."""

    def __init__(self, settings: Settings, redis: RedisClient | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self._lock = threading.Lock()
        self._counters: dict[tuple[str | None, ...], ProviderTokenCounter] = {}

    def counter_for(self, resource: MemoryResource) -> TokenCounter:
        """The counter that counts ``resource``'s messages."""
        config = resource.token_provider
        model = resource.tokenizer_model
        if config is None:
            return counter_for(model)
        key = (config.provider, model, config.endpoint, config.api_key_env)
        with self._lock:
            found = self._counters.get(key)
        if found is not None:
            return found
        built = build_token_counter(config, model, self.settings, redis=self.redis)
        with self._lock:
            kept = self._counters.setdefault(key, built)
        if kept is not built:
            built.close()  # another thread won the race
        return kept

    def close(self) -> None:
        """Close every provider counter's HTTP client."""
        with self._lock:
            counters = list(self._counters.values())
            self._counters.clear()
        for counter in counters:
            counter.close()


TokenCounters = CounterRegistry
"""Deprecated name of :class:`CounterRegistry`."""
