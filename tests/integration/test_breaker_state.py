"""Circuit breakers (memory_engine/breakers.py) against the session's real Redis.

Several breaker objects with the same name and key prefix stand for several worker processes:
each has its own Redis connection pool, so all they share is what is stored in Redis.
(tests/integration/test_breakers.py does the same with real subprocesses.)
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pybreaker
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from memory_engine.breakers import (
    BreakerState,
    RedisBreakerStorage,
    SharedCircuitBreaker,
    breaker_name,
    breaker_states,
    build_breaker,
    on_breaker_state,
    subscribe_breaker_state,
    unsubscribe_breaker_state,
)
from memory_engine.errors import ConfigError, StoreUnavailable, SummarizerError
from memory_engine.keys import KeySpace
from memory_engine.settings import Settings

NAME = "summarizer.test@127.0.0.1:9"
FAIL_MAX = 3
THREAD_JOIN_S = 10.0
POLL_DEADLINE_S = 10.0


class Down(Exception):
    """A failure the breakers under test count."""


class Unrelated(Exception):
    """An exception the breakers under test do not count."""


@pytest.fixture
def breaker_settings(settings: Settings) -> Settings:
    return settings.replace(breaker_fail_max=FAIL_MAX, breaker_reset_timeout_s=3600.0)


@pytest.fixture
def pools(redis_url: str) -> Iterator[Callable[..., redis.Redis]]:
    """Separate Redis clients (own pools), one per simulated process; closed at the end."""
    made: list[redis.Redis] = []

    def make(**options: Any) -> redis.Redis:
        client = redis.Redis.from_url(redis_url, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def seen() -> Iterator[list[tuple[str, str]]]:
    """Every (name, state) reported through on_breaker_state during the test."""
    events: list[tuple[str, str]] = []

    def record(name: str, state: str) -> None:
        events.append((name, state))

    subscribe_breaker_state(record)
    yield events
    unsubscribe_breaker_state(record)


class Calls:
    """Callables that count how often a breaker really invoked them."""

    def __init__(self) -> None:
        self.count = 0

    def fail(self) -> None:
        self.count += 1
        raise Down("dependency down")

    def ok(self) -> str:
        self.count += 1
        return "ok"


def trip(breaker: SharedCircuitBreaker, calls: Calls) -> None:
    for _ in range(FAIL_MAX):
        with pytest.raises(Down):
            breaker.call(calls.fail)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dead_redis() -> redis.Redis:
    """A client of a port nothing listens on, configured like the engine's (no retries)."""
    return redis.Redis(port=closed_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))


def make_breaker(settings: Settings, client: redis.Redis | None, name: str = NAME) -> Any:
    return build_breaker(name, settings, failures=(Down,), redis=client)


# --- opening, failing fast, closing -------------------------------------------------------------


def test_opens_after_fail_max_then_fails_fast_without_calling(
    breaker_settings: Settings, redis_client: redis.Redis
) -> None:
    breaker = make_breaker(breaker_settings, redis_client)
    calls = Calls()
    for _ in range(FAIL_MAX - 1):
        with pytest.raises(Down):
            breaker.call(calls.fail)
        assert breaker.current is BreakerState.CLOSED
    with pytest.raises(Down):  # the tripping failure is re-raised as itself
        breaker.call(calls.fail)
    assert breaker.current is BreakerState.OPEN
    with pytest.raises(SummarizerError, match="open") as info:
        breaker.call_or_raise(calls.ok, error_type=SummarizerError)
    assert isinstance(info.value.__cause__, pybreaker.CircuitBreakerError)
    with pytest.raises(pybreaker.CircuitBreakerError):
        breaker.call(calls.ok)
    assert calls.count == FAIL_MAX, "an open breaker must not call the dependency"


def test_state_is_one_hash_under_the_breaker_prefix(
    breaker_settings: Settings, redis_client: redis.Redis
) -> None:
    breaker = make_breaker(breaker_settings, redis_client)
    trip(breaker, Calls())
    prefix = KeySpace(breaker_settings.key_prefix).breaker_prefix
    stored = {k.decode(): v.decode() for k, v in redis_client.hgetall(prefix + NAME).items()}
    assert stored["state"] == "open" and stored["failures"] == str(FAIL_MAX)
    assert float(stored["opened_at"]) > 0 and "." in stored["opened_at"]  # sub-second precision
    assert redis_client.smembers(prefix + "_index") == {NAME.encode()}
    assert all(key.decode().startswith(prefix) for key in redis_client.scan_iter(prefix + "*"))


def test_a_success_resets_the_failure_count(
    breaker_settings: Settings, redis_client: redis.Redis
) -> None:
    breaker = make_breaker(breaker_settings, redis_client)
    calls = Calls()
    for _ in range(3):
        for _ in range(FAIL_MAX - 1):
            with pytest.raises(Down):
                breaker.call(calls.fail)
        assert breaker.call(calls.ok) == "ok"
    assert breaker.current is BreakerState.CLOSED and breaker.fail_counter == 0


def test_exceptions_of_other_types_do_not_count(
    breaker_settings: Settings, redis_client: redis.Redis
) -> None:
    breaker = make_breaker(breaker_settings, redis_client)

    def unrelated() -> None:
        raise Unrelated("a caller bug, not an outage")

    for _ in range(FAIL_MAX * 2):
        with pytest.raises(Unrelated):
            breaker.call(unrelated)
    assert breaker.current is BreakerState.CLOSED


def test_half_opens_after_the_reset_timeout_and_a_good_trial_closes(
    breaker_settings: Settings, redis_client: redis.Redis, seen: list[tuple[str, str]]
) -> None:
    breaker = make_breaker(breaker_settings.replace(breaker_reset_timeout_s=0.2), redis_client)
    calls = Calls()
    trip(breaker, calls)
    assert poll_until_called(breaker, calls.ok) == "ok"
    assert breaker.current is BreakerState.CLOSED
    states = [state for name, state in seen if name == NAME]
    assert states == ["closed", "open", "half-open", "closed"]


def test_a_failed_trial_opens_again(breaker_settings: Settings, redis_client: redis.Redis) -> None:
    breaker = make_breaker(breaker_settings.replace(breaker_reset_timeout_s=0.2), redis_client)
    calls = Calls()
    trip(breaker, calls)
    with pytest.raises(Down):
        poll_until_called(breaker, calls.fail)
    assert calls.count == FAIL_MAX + 1  # exactly one trial call
    assert breaker.current is BreakerState.OPEN


def poll_until_called(breaker: SharedCircuitBreaker, func: Callable[[], Any]) -> Any:
    """Call through ``breaker`` until it lets the call through (the reset timeout passed)."""
    outcome: dict[str, Any] = {}

    def attempt() -> bool:
        try:
            outcome["value"] = breaker.call(func)
        except pybreaker.CircuitBreakerError:
            return False
        except Exception as exc:
            outcome["error"] = exc
        return True

    deadline = time.monotonic() + POLL_DEADLINE_S
    while not attempt():
        assert time.monotonic() < deadline, "the breaker never let a trial call through"
        time.sleep(0.02)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# --- shared state -------------------------------------------------------------------------------


def test_two_breakers_with_one_name_share_state_through_redis(
    breaker_settings: Settings,
    pools: Callable[..., redis.Redis],
    seen: list[tuple[str, str]],
) -> None:
    first = make_breaker(breaker_settings, pools())
    second = make_breaker(breaker_settings, pools())
    calls = Calls()
    trip(first, calls)
    with pytest.raises(SummarizerError):
        second.call_or_raise(calls.ok, error_type=SummarizerError)
    assert calls.count == FAIL_MAX, "the second 'process' must fail fast too"
    assert seen.count((NAME, "open")) == 2  # each process reports what it saw, once
    first.close()  # an operator closing the breaker from one process
    assert second.call(calls.ok) == "ok"


def test_failures_from_several_processes_add_up(
    breaker_settings: Settings, pools: Callable[..., redis.Redis]
) -> None:
    breakers = [make_breaker(breaker_settings, pools()) for _ in range(FAIL_MAX)]
    calls = Calls()
    for breaker in breakers:  # one failure each: none alone reaches fail_max
        with pytest.raises(Down):
            breaker.call(calls.fail)
    assert all(b.current is BreakerState.OPEN for b in breakers)


def test_key_prefixes_isolate_breakers(settings: Settings, redis_client: redis.Redis) -> None:
    one = make_breaker(settings.replace(key_prefix=settings.key_prefix + "a"), redis_client)
    other = make_breaker(settings.replace(key_prefix=settings.key_prefix + "b"), redis_client)
    for _ in range(settings.breaker_fail_max):
        with pytest.raises(Down):
            one.call(Calls().fail)
    assert one.current is BreakerState.OPEN and other.current is BreakerState.CLOSED


def test_works_with_a_decoding_client(
    breaker_settings: Settings, pools: Callable[..., redis.Redis]
) -> None:
    breaker = make_breaker(breaker_settings, pools(decode_responses=True))
    trip(breaker, Calls())
    assert breaker.current is BreakerState.OPEN
    keyspace = KeySpace(breaker_settings.key_prefix)
    assert breaker_states(pools(decode_responses=True), keyspace) == {NAME: "open"}


def test_breaker_states_lists_every_registered_breaker(
    breaker_settings: Settings, redis_client: redis.Redis
) -> None:
    keyspace = KeySpace(breaker_settings.key_prefix)
    assert breaker_states(redis_client, keyspace) == {}
    tripped = make_breaker(breaker_settings, redis_client)
    make_breaker(breaker_settings, redis_client, name="tokens.anthropic@api.anthropic.com")
    trip(tripped, Calls())
    assert breaker_states(redis_client, keyspace) == {
        NAME: "open",
        "tokens.anthropic@api.anthropic.com": "closed",
    }


def test_breaker_states_raises_store_unavailable(pools: Callable[..., redis.Redis]) -> None:
    dead = dead_redis()
    with pytest.raises(StoreUnavailable):
        breaker_states(dead, KeySpace("x"))


# --- without Redis ------------------------------------------------------------------------------


def test_unreachable_redis_degrades_to_this_process_state(
    breaker_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="memory_engine.breakers")
    dead = dead_redis()
    breaker = make_breaker(breaker_settings, dead)  # must not raise
    calls = Calls()
    trip(breaker, calls)
    with pytest.raises(SummarizerError):
        breaker.call_or_raise(calls.ok, error_type=SummarizerError)
    assert calls.count == FAIL_MAX
    outages = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
    assert len(outages) == 1, "one warning per outage, not one per call"


def test_without_redis_the_breaker_is_process_local(breaker_settings: Settings) -> None:
    breaker = make_breaker(breaker_settings, None)
    assert isinstance(breaker._state_storage, pybreaker.CircuitMemoryStorage)
    trip(breaker, Calls())
    assert breaker.current is BreakerState.OPEN


def test_storage_never_raises_for_redis_errors(breaker_settings: Settings) -> None:
    dead = dead_redis()
    storage = RedisBreakerStorage(dead, KeySpace("x"), NAME)
    storage.increment_counter()
    storage.increment_counter()
    assert storage.counter == 2 and storage.state == "closed" and storage.opened_at is None


# --- concurrency, callbacks, logs ---------------------------------------------------------------


def test_the_lock_is_not_held_while_the_guarded_call_runs(
    breaker_settings: Settings, redis_client: redis.Redis
) -> None:
    breaker = make_breaker(breaker_settings, redis_client)
    entered, release = threading.Event(), threading.Event()

    def slow() -> str:
        entered.set()
        release.wait(THREAD_JOIN_S)
        return "slow"

    slow_thread = threading.Thread(target=breaker.call, args=(slow,))
    slow_thread.start()
    try:
        assert entered.wait(THREAD_JOIN_S)
        results: list[str] = []
        fast = threading.Thread(target=lambda: results.append(breaker.call(lambda: "fast")))
        fast.start()
        fast.join(THREAD_JOIN_S)
        assert results == ["fast"], "a slow call must not block other calls of the breaker"
        assert not release.is_set() and slow_thread.is_alive()
    finally:
        release.set()
        slow_thread.join(THREAD_JOIN_S)


def test_concurrent_failures_report_open_once(
    breaker_settings: Settings, redis_client: redis.Redis, seen: list[tuple[str, str]]
) -> None:
    breaker = make_breaker(breaker_settings, redis_client)
    barrier = threading.Barrier(FAIL_MAX * 2)

    def fail() -> None:
        barrier.wait(THREAD_JOIN_S)
        raise Down("down")

    def worker() -> None:
        try:
            breaker.call(fail)
        except (Down, pybreaker.CircuitBreakerError):
            pass

    threads = [threading.Thread(target=worker) for _ in range(FAIL_MAX * 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_JOIN_S)
    assert breaker.current is BreakerState.OPEN
    assert [s for n, s in seen if n == NAME] == ["closed", "open"]


def test_a_failing_callback_is_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    got: list[tuple[str, str]] = []

    def broken(name: str, state: str) -> None:
        raise RuntimeError("metrics exporter bug")

    def good(name: str, state: str) -> None:
        got.append((name, state))

    subscribe_breaker_state(broken)
    subscribe_breaker_state(good)
    subscribe_breaker_state(good)  # a second subscription is a no-op
    try:
        on_breaker_state("x", "open")
    finally:
        unsubscribe_breaker_state(broken)
        unsubscribe_breaker_state(good)
    on_breaker_state("x", "closed")  # nobody listens any more
    assert got == [("x", "open")]
    assert "callback" in caplog.text and "metrics exporter bug" in caplog.text


def test_transitions_are_logged(
    breaker_settings: Settings, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="memory_engine.breakers")
    breaker = make_breaker(breaker_settings.replace(breaker_reset_timeout_s=0.2), redis_client)
    calls = Calls()
    trip(breaker, calls)
    poll_until_called(breaker, calls.ok)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert any(level == logging.WARNING and NAME in msg and "open" in msg for level, msg in lines)
    assert any("half-open" in msg for _, msg in lines)
    assert any(msg.startswith(f"circuit breaker {NAME} is closed") for _, msg in lines)


# --- names --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.anthropic.com", "tokens.anthropic@api.anthropic.com"),
        ("http://127.0.0.1:8080/v1", "tokens.anthropic@127.0.0.1:8080"),
        ("https://user:secret@llm.example/v1", "tokens.anthropic@llm.example"),
        ("http://[::1]:9/", "tokens.anthropic@::1:9"),
        ("not a url", "tokens.anthropic@unknown"),
    ],
)
def test_breaker_names_identify_the_endpoint_and_never_its_credentials(
    url: str, expected: str
) -> None:
    assert breaker_name("tokens", "anthropic", url) == expected


@pytest.mark.parametrize("name", ["", "1abc", "a b", "a{b}", "x" * 201, "_index"])
def test_invalid_names_are_refused(name: str, breaker_settings: Settings) -> None:
    with pytest.raises(ConfigError):
        build_breaker(name, breaker_settings, failures=(Down,))
