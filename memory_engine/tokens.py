"""Token counting with tiktoken: one convention, offline by default, cached and thread-safe.

The per-message convention
--------------------------
Every part of the engine (append, budgets, flush planning, context assembly) counts a message the
same way, through :meth:`TokenCounter.count_message`::

    tokens(message) = count(content)
                    + MESSAGE_OVERHEAD_TOKENS                      # 4: role and separators
                    + (count(name) + NAME_OVERHEAD_TOKENS)         # only when name is set (+1)
                    + count(compact JSON of tool_calls)            # only when tool_calls is set
                    + count(tool_call_id)                          # only when tool_call_id is set

``count`` is ``len(encoding.encode_ordinary(text))``: special-token text such as ``"<|endoftext|>"``
in user content is counted as ordinary text and never raises. The overhead of 4 follows OpenAI's
chat-format cookbook (``<|start|>{role}\\n{content}<|end|>``); compact JSON means
``json.dumps(tool_calls, ensure_ascii=False, separators=(",", ":"))``. The result is an estimate of
what a provider bills, stable across releases of this engine, which is what budgets need.

Which encoding a model gets, and how it loads offline: :mod:`memory_engine.encodings`.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

from memory_engine.encodings import requested_encoding_for, resolve_encoding

if TYPE_CHECKING:
    from memory_engine.messages import Message

__all__ = [
    "DEFAULT_TOKEN_CACHE_ENTRIES",
    "MESSAGE_OVERHEAD_TOKENS",
    "NAME_OVERHEAD_TOKENS",
    "CacheInfo",
    "TokenCounter",
    "compact_json",
    "counter_for",
]

logger = logging.getLogger(__name__)

MESSAGE_OVERHEAD_TOKENS = 4
"""Tokens added to every message for its role and separators."""

NAME_OVERHEAD_TOKENS = 1
"""Tokens added, on top of the name's own tokens, when a message carries ``name``."""

DEFAULT_TOKEN_CACHE_ENTRIES = 65536
"""Entries in each counter's LRU cache of text -> token count (about 100 bytes each)."""

# A cache hit (utf-8 encode, blake2b, LRU reorder) costs about as much as encoding a short text
# (docs/performance.md): below this length a miss costs as much as a hit saves, and short strings
# (names, ids, "ok") would only churn the LRU, so they are encoded directly.
_CACHE_MIN_CHARS = 64

_DIGEST_BYTES = 16

# Counters are shared per (encoding, allow_download) in the process.
_state_lock = threading.Lock()
_shared_counters: dict[tuple[str, bool], TokenCounter] = {}


class CacheInfo(NamedTuple):
    """Counters of a :class:`TokenCounter`'s text cache (like ``functools`` ``cache_info``)."""

    hits: int
    misses: int
    size: int
    maxsize: int


# ---- the counter -----------------------------------------------------------------------------


class TokenCounter:
    """Counts tokens of texts and messages for one encoding; thread-safe, meant to be shared.

    Build one per model with :func:`counter_for` (shared) or directly (private cache). Counts of
    texts of 64 characters or more are kept in an LRU cache of ``cache_size`` entries keyed by a
    16-byte BLAKE2b digest, so the cache never holds message content. ``cache_size=0`` disables it.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        allow_download: bool = False,
        cache_size: int = DEFAULT_TOKEN_CACHE_ENTRIES,
    ) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self._requested = requested_encoding_for(model)
        self._encoding, self._exact = resolve_encoding(self._requested, allow_download)
        self._allow_download = allow_download
        # An OrderedDict (C) as the LRU: an insert that evicts costs a third of what
        # cachetools.LRUCache (pure Python) does, and most texts are misses (chat messages are
        # unique).
        # Keys are digests alone: the cache belongs to this counter, hence to one encoding.
        self._cache: OrderedDict[bytes, int] | None = OrderedDict() if cache_size else None
        self._cache_size = cache_size
        self._hits = 0
        self._misses = 0

    @property
    def encoding_name(self) -> str:
        """The encoding really used (``cl100k_base`` for any fallback; ``o200k_base`` for
        ``o200k_harmony``, which it counts exactly)."""
        return self._encoding.name

    @property
    def requested_encoding(self) -> str:
        """The encoding the model maps to, whether or not it could be loaded."""
        return self._requested

    @property
    def is_fallback(self) -> bool:
        """True when the requested encoding could not be used and cl100k stands in for it."""
        return not self._exact

    def __repr__(self) -> str:
        return (
            f"TokenCounter(requested={self._requested!r}, encoding={self.encoding_name!r}, "
            f"cache_size={self._cache_size})"
        )

    # ---- texts --------------------------------------------------------------------------

    def count_text(self, text: str) -> int:
        """Number of tokens of ``text`` as ordinary text (special tokens are not parsed)."""
        if not text:
            return 0
        if self._cache is None or len(text) < _CACHE_MIN_CHARS:
            return len(self._encoding.encode_ordinary(text))
        # surrogatepass: a lone surrogate (from JSON "\ud800") must not break counting; the
        # digest is only a key, and tiktoken itself replaces surrogates when encoding.
        key = hashlib.blake2b(
            text.encode("utf-8", "surrogatepass"), digest_size=_DIGEST_BYTES
        ).digest()
        # No lock: each OrderedDict call below is one C operation on bytes keys, atomic under the
        # GIL, so a lock (two per count, on every append) would only add a point where threads
        # wait. What races can do is harmless: a hit on an entry another thread evicts meanwhile,
        # one eviction too many, hit/miss counts off by a few.
        cache = self._cache
        cached = cache.get(key)
        if cached is not None:
            try:
                cache.move_to_end(key)
            except KeyError:
                pass  # evicted by another thread since the get
            self._hits += 1
            return cached
        self._misses += 1
        # tiktoken releases the GIL while it encodes, so threads count in parallel.
        count = len(self._encoding.encode_ordinary(text))
        cache[key] = count
        if len(cache) > self._cache_size:
            try:
                cache.popitem(last=False)
            except KeyError:
                pass  # emptied by another thread (cache_clear)
        return count

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of ``text`` found that counts at most ``max_tokens`` tokens.

        The result is always a prefix of ``text`` (``text.startswith(result)``), never splits a
        UTF-8 character and has nothing appended; ``text`` itself when it already fits.
        """
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        tokens = self._encoding.encode_ordinary(text)
        if len(tokens) <= max_tokens:
            return text
        keep = max_tokens
        while keep > 0:
            candidate = self._decode_prefix(tokens[:keep], text)
            # Re-encoding a cut text can split differently from the whole (the regex pre-split
            # sees a new end), so verify and shorten by the excess until it fits.
            excess = len(self._encoding.encode_ordinary(candidate)) - max_tokens
            if excess <= 0:
                return candidate
            keep -= excess
        return ""

    def _decode_prefix(self, tokens: list[int], text: str) -> str:
        raw = self._encoding.decode_bytes(tokens)
        # A token boundary can fall inside a multi-byte character: an incremental decoder that is
        # not told the input is final keeps the incomplete tail out instead of emitting U+FFFD.
        decoded = codecs.getincrementaldecoder("utf-8")().decode(raw, final=False)
        # Slice the original so the result is a true prefix even when tiktoken replaced a lone
        # surrogate (one char in, one U+FFFD out: lengths agree).
        return text[: len(decoded)]

    # ---- messages -----------------------------------------------------------------------

    def count_message(self, message: Message) -> int:
        """Tokens of one message by the convention in this module's docstring."""
        total = self.count_text(message.content) + MESSAGE_OVERHEAD_TOKENS
        if message.name:
            total += self.count_text(message.name) + NAME_OVERHEAD_TOKENS
        if message.tool_calls:
            total += self.count_text(compact_json(message.tool_calls))
        if message.tool_call_id:
            total += self.count_text(message.tool_call_id)
        return total

    def count_many(self, messages: Iterable[Message]) -> list[int]:
        """:meth:`count_message` of each message, in order."""
        return [self.count_message(message) for message in messages]

    # ---- cache --------------------------------------------------------------------------

    def cache_info(self) -> CacheInfo:
        """Hits, misses and size of the text cache (only texts of 64+ characters go through it).
        Exact for one thread; with threads counting at once, hits and misses are approximate
        (they are not locked: see :meth:`count_text`)."""
        size = len(self._cache) if self._cache is not None else 0
        return CacheInfo(self._hits, self._misses, size, self._cache_size)

    def cache_clear(self) -> None:
        """Empty the text cache and reset its counters."""
        if self._cache is not None:
            self._cache.clear()
        self._hits = self._misses = 0


def compact_json(value: object) -> str:
    """The compact JSON form the convention counts for ``tool_calls``."""
    # default=str: counting must not fail on a value the wire format would reject later anyway.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def counter_for(model: str | None, allow_download: bool = False) -> TokenCounter:
    """A process-wide shared :class:`TokenCounter` for ``model``'s encoding.

    Models that map to the same encoding (``gpt-4``, ``gpt-4-turbo``) share one counter and its
    cache. Safe to call from any thread; the counter is built once.
    """
    key = (requested_encoding_for(model), allow_download)
    with _state_lock:
        counter = _shared_counters.get(key)
    if counter is not None:
        return counter
    # Built outside the lock: resolving may load an encoding, which takes our lock itself.
    built = TokenCounter(model, allow_download=allow_download)
    with _state_lock:
        return _shared_counters.setdefault(key, built)
