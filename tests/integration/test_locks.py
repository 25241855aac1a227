"""MemoryLock against the real Redis: fail-fast, renewal, compare-and-delete, loss detection."""

from __future__ import annotations

import time

import pytest
import redis

from memory_engine.errors import FlushAlreadyRunning, LockLost
from memory_engine.store.locks import MemoryLock
from tests.fixtures_worker import wait_for


def test_second_holder_fails_fast(redis_client: redis.Redis, key_prefix: str) -> None:
    key = f"{key_prefix}:lock"
    with MemoryLock(redis_client, key, 5):
        with pytest.raises(FlushAlreadyRunning):
            MemoryLock(redis_client, key, 5).acquire()
    assert redis_client.exists(key) == 0


def test_lock_is_renewed_while_held(redis_client: redis.Redis, key_prefix: str) -> None:
    key = f"{key_prefix}:lock"
    lock = MemoryLock(redis_client, key, 0.3)
    with lock:
        first_token = redis_client.get(key)
        deadline = time.monotonic() + 1.2  # four TTLs: without renewal it would have expired
        while time.monotonic() < deadline:
            assert redis_client.get(key) == first_token
            lock.check()
            time.sleep(0.05)
    assert redis_client.exists(key) == 0


def test_release_never_deletes_someone_elses_lock(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    key = f"{key_prefix}:lock"
    lock = MemoryLock(redis_client, key, 5)
    lock.acquire()
    redis_client.set(key, "other-owner")
    assert lock.release() is False
    assert redis_client.get(key) == b"other-owner"


def test_a_lost_lock_is_detected(redis_client: redis.Redis, key_prefix: str) -> None:
    key = f"{key_prefix}:lock"
    lock = MemoryLock(redis_client, key, 0.3)
    lock.acquire()
    try:
        redis_client.set(key, "thief")
        wait_for(lock.lost.is_set, timeout=5, what="the renewal to notice the loss")
        with pytest.raises(LockLost):
            lock.check()
    finally:
        lock.release()
    assert redis_client.get(key) == b"thief"
