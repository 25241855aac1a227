"""One renewal thread per process for every held MemoryLock: renewal, loss, release, fork."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable

import redis

from memory_engine.store import locks
from memory_engine.store.locks import MemoryLock
from tests.fixtures_worker import wait_for

SHORT_TTL_S = 0.3
RENEWER = "memory-lock-renewer"


def renewer_threads() -> int:
    return sum(t.name == RENEWER for t in threading.enumerate())


def hold_for(seconds: float, check: Callable[[], object]) -> None:
    """Call ``check`` (which asserts) every 50 ms for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        check()
        time.sleep(0.05)


def test_many_locks_are_renewed_by_one_thread(redis_client: redis.Redis, key_prefix: str) -> None:
    locks = [MemoryLock(redis_client, f"{key_prefix}:lock{i}", SHORT_TTL_S) for i in range(20)]
    for lock in locks:
        lock.acquire()
    try:

        def all_held() -> None:
            for lock in locks:
                assert redis_client.get(lock.key) == lock.token.encode()
                lock.check()

        hold_for(4 * SHORT_TTL_S, all_held)  # without renewal every one would have expired
        assert renewer_threads() == 1
    finally:
        for lock in locks:
            lock.release()
    assert redis_client.exists(*(lock.key for lock in locks)) == 0


def test_one_lost_lock_does_not_stop_the_others(redis_client: redis.Redis, key_prefix: str) -> None:
    kept = MemoryLock(redis_client, f"{key_prefix}:kept", SHORT_TTL_S)
    stolen = MemoryLock(redis_client, f"{key_prefix}:stolen", SHORT_TTL_S)
    with kept, stolen:
        redis_client.set(stolen.key, "thief")
        wait_for(stolen.lost.is_set, timeout=5, what="the loss to be noticed")
        hold_for(4 * SHORT_TTL_S, kept.check)
        assert redis_client.get(kept.key) == kept.token.encode()
        assert not kept.lost.is_set()
    assert redis_client.get(stolen.key) == b"thief"


def test_a_released_lock_is_no_longer_renewed(redis_client: redis.Redis, key_prefix: str) -> None:
    key = f"{key_prefix}:lock"
    lock = MemoryLock(redis_client, key, SHORT_TTL_S)
    lock.acquire()
    assert lock.release() is True
    assert lock.release() is False  # once only, no round trip
    redis_client.set(key, "next-owner", px=int(SHORT_TTL_S * 1000))
    # A renewal after the release would find the next owner's token and report a loss.
    time.sleep(3 * SHORT_TTL_S)
    assert not lock.lost.is_set()
    assert redis_client.exists(key) == 0  # the next owner's lock expired: nobody renewed it


def test_a_lock_taken_again_is_renewed_again(redis_client: redis.Redis, key_prefix: str) -> None:
    lock = MemoryLock(redis_client, f"{key_prefix}:lock", SHORT_TTL_S)
    for _ in range(3):
        with lock:

            def held() -> None:
                assert redis_client.get(lock.key) == lock.token.encode()

            hold_for(3 * SHORT_TTL_S, held)
        assert redis_client.exists(lock.key) == 0


def test_release_carries_extra_commands_in_its_round_trip(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    lock = MemoryLock(redis_client, f"{key_prefix}:lock", 5)
    lock.acquire()
    redis_client.set(f"{key_prefix}:marker", "1")
    redis_client.script_flush()  # the release pipeline reloads its script
    assert lock.release(also=lambda pipe: pipe.delete(f"{key_prefix}:marker")) is True
    assert redis_client.exists(lock.key, f"{key_prefix}:marker") == 0


def _child_holds_a_lock(redis_url: str, key: str, ttl_s: float) -> None:
    client = redis.Redis.from_url(redis_url)
    lock = MemoryLock(client, key, ttl_s)
    with lock:
        time.sleep(4 * ttl_s)
        held = client.get(key) == lock.token.encode()
    raise SystemExit(0 if held else 3)


def test_a_forked_child_renews_its_own_locks(
    redis_client: redis.Redis, redis_url: str, key_prefix: str
) -> None:
    # The parent's renewer thread exists (Celery prefork forks after the worker started); the
    # child must start its own instead of registering with a thread that fork did not copy.
    with MemoryLock(redis_client, f"{key_prefix}:parent", 5):
        assert renewer_threads() == 1
        child = multiprocessing.get_context("fork").Process(
            target=_child_holds_a_lock, args=(redis_url, f"{key_prefix}:child", SHORT_TTL_S)
        )
        child.start()
        child.join(30)
    assert child.exitcode == 0, "the child's lock expired: nothing renewed it"


def test_released_locks_do_not_pile_up_in_the_renewer(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    # Hundreds of flushes a second with a 5 min TTL: each released lock's renewal entry would
    # otherwise stay scheduled (holding the lock) for 100 s.
    with MemoryLock(redis_client, f"{key_prefix}:held", 300):
        for i in range(500):
            with MemoryLock(redis_client, f"{key_prefix}:short{i}", 300):
                pass
        assert len(locks._renewer._due) <= 2 * 1 + locks._STALE_SLACK + 1
