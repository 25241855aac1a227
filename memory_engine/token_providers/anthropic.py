"""Anthropic's count-tokens API as a remote token counter: cached, bounded, behind a breaker.

``POST {endpoint}/v1/messages/count_tokens`` with ``anthropic-version: 2023-06-01`` and, when the
resource names ``api_key_env``, ``x-api-key`` read from that environment variable at call time (so
a rotated key is picked up; the key is never stored on the object, logged, or put in an error).
The body is ``{"model": ..., "messages": [{"role": "user", "content": text}]}`` and the reply
``{"input_tokens": N}``.

The API counts a whole one-message request, its own framing included. So that the engine's
per-message convention holds for every provider (content + 4 + name and tool fields), the counter
measures that framing once per process (the count of the one-token text ``"."`` minus one) and
subtracts it: what it returns is the content's share.

Each call is bounded by ``timeout_s`` as a whole (connect, send and the full reply), and goes
through the endpoint's circuit breaker; counts are kept in an LRU cache keyed by a BLAKE2b digest
of the text (the cache never holds message content), so an append of a text counted before makes
no request.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from cachetools import LRUCache

from memory_engine.http import HttpCallError, error_excerpt, post_json_bounded, safe_url
from memory_engine.token_providers.base import TokenProviderError, TokenSource

if TYPE_CHECKING:
    from memory_engine.breakers import SharedCircuitBreaker

__all__ = [
    "ANTHROPIC_COUNT_PATH",
    "ANTHROPIC_VERSION",
    "DEFAULT_ANTHROPIC_ENDPOINT",
    "DEFAULT_COUNT_CACHE_ENTRIES",
    "AnthropicTokenCounter",
]

DEFAULT_ANTHROPIC_ENDPOINT = "https://api.anthropic.com"
ANTHROPIC_COUNT_PATH = "/v1/messages/count_tokens"
ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_COUNT_CACHE_ENTRIES = 65536
"""Entries in the count cache (a 16-byte digest and an int each, about 150 bytes)."""

MAX_COUNT_RESPONSE_BYTES = 64 * 1024
_DIGEST_BYTES = 16
_CALIBRATION_TEXT = "."  # one token in any BPE vocabulary
# Hosts that never answer without a key: calling them keyless would only burn the breaker.
_KEYED_HOSTS = frozenset({"api.anthropic.com"})


class AnthropicTokenCounter:
    """Counts content tokens with Anthropic's count-tokens API. Thread-safe; share one per
    endpoint and model. Raises :class:`TokenProviderError` on any failure."""

    source = TokenSource.ANTHROPIC_API

    def __init__(
        self,
        model: str,
        *,
        endpoint: str | None = None,
        api_key_env: str | None = None,
        timeout_s: float,
        breaker: SharedCircuitBreaker | None = None,
        cache_size: int = DEFAULT_COUNT_CACHE_ENTRIES,
    ) -> None:
        if not model:
            raise ValueError("model is required")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        base = (endpoint or DEFAULT_ANTHROPIC_ENDPOINT).rstrip("/")
        if base.endswith("/v1"):
            base = base[: -len("/v1")]
        self.model = model
        self.endpoint = base
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.breaker = breaker
        self._url = base + ANTHROPIC_COUNT_PATH
        self._where = safe_url(self._url)
        self._needs_key = urlsplit(base).hostname in _KEYED_HOSTS
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s), follow_redirects=False)
        self._cache: LRUCache[bytes, int] = LRUCache(maxsize=max(1, cache_size))
        self._lock = threading.Lock()
        self._framing: int | None = None

    def __repr__(self) -> str:
        # The variable's name is configuration, not a secret; its value never appears.
        return (
            f"AnthropicTokenCounter(endpoint={safe_url(self.endpoint)!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r}, timeout_s={self.timeout_s:g})"
        )

    __str__ = __repr__

    def close(self) -> None:
        self._client.close()

    # ---- counting -------------------------------------------------------------------------

    def count(self, text: str) -> int:
        """Tokens of ``text`` as the content of one user message, framing excluded."""
        key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=_DIGEST_BYTES)
        digest = key.digest()
        with self._lock:
            cached = self._cache.get(digest)
        if cached is not None:
            return cached
        framing = self._framing_tokens()
        value = max(0, self._request(text) - framing)
        with self._lock:
            self._cache[digest] = value
        return value

    def cache_size(self) -> int:
        """Number of texts whose count is cached."""
        with self._lock:
            return len(self._cache)

    def _framing_tokens(self) -> int:
        framing = self._framing
        if framing is None:
            # Two threads may both measure it once; the answers agree, so no lock is held
            # across the request.
            framing = max(0, self._request(_CALIBRATION_TEXT) - 1)
            self._framing = framing
        return framing

    def _request(self, text: str) -> int:
        key = self._api_key()  # checked before the breaker: a missing key is no outage
        if self.breaker is None:
            return self._post(text, key)
        return self.breaker.call_or_raise(self._post, text, key, error_type=TokenProviderError)

    def _api_key(self) -> str | None:
        if self.api_key_env:
            value = os.environ.get(self.api_key_env, "").strip()
            if value:
                return value
            if self._needs_key:
                raise TokenProviderError(
                    f"anthropic token count: environment variable {self.api_key_env} is not set"
                )
            return None
        if self._needs_key:
            raise TokenProviderError(
                f"anthropic token count: {self._where} needs a key; set token_provider.api_key_env"
            )
        return None

    def _post(self, text: str, key: str | None) -> int:
        headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION}
        if key:
            headers["x-api-key"] = key
        body = {"model": self.model, "messages": [{"role": "user", "content": text}]}
        try:
            status, reply = post_json_bounded(
                self._client,
                self._url,
                body=body,
                headers=headers,
                timeout_s=self.timeout_s,
                max_bytes=MAX_COUNT_RESPONSE_BYTES,
            )
        except HttpCallError as exc:
            raise TokenProviderError(
                f"anthropic token count: {error_excerpt(str(exc), key, None)}"
            ) from exc
        if status >= 400:
            raise TokenProviderError(
                f"anthropic token count: HTTP {status} from {self._where}: "
                f"{error_excerpt(reply, key)}"
            )
        return self._parse(reply, status)

    def _parse(self, reply: str, status: int) -> int:
        try:
            payload: Any = json.loads(reply)
        except ValueError as exc:
            raise TokenProviderError(
                f"anthropic token count: malformed JSON from {self._where} (HTTP {status})"
            ) from exc
        value = payload.get("input_tokens") if isinstance(payload, dict) else None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise TokenProviderError(
                f"anthropic token count: reply from {self._where} has no input_tokens integer"
            )
        return value
