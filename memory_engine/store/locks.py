"""A memory's distributed lock: owner token, compare-and-delete release, renewal while work runs.

Only flushes and evictions take it (appends never do: they are single atomic scripts). A second
flush of the same memory fails fast with :class:`FlushAlreadyRunning`. Fencing: the commit script
checks the owner token, so a holder whose lock expired cannot commit.

Renewal: every held lock is renewed every ``ttl / 3`` (compare-and-pexpire) by one daemon thread
per process, :class:`_Renewer`, which keeps a registry of the held locks. A thread per lock cost a
thread start and join per flush (~0.1 ms, more on a busy machine) for a renewal that almost never
runs: a flush takes milliseconds and the TTL is tens of seconds. A renewal that finds the lock
gone sets :attr:`MemoryLock.lost`, and :meth:`MemoryLock.check` raises :class:`LockLost`.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import redis

from memory_engine.errors import FlushAlreadyRunning, LockLost
from memory_engine.store.connections import RedisClient, is_cluster
from memory_engine.store.plumbing import translate_errors
from memory_engine.store.scripts import script_source

__all__ = ["MemoryLock"]

log = logging.getLogger(__name__)

RENEW_FRACTION = 3  # renew every ttl/3: two renewals may fail before the lock lapses
_STALE_SLACK = 64  # released locks' heap entries tolerated before the renewer's heap is compacted


class _Renewer:
    """One daemon thread that renews every held lock of this process when it is due.

    The registry maps each held lock to the number it was registered under; a scheduled renewal
    whose number no longer matches (the lock was released, perhaps acquired again) is dropped
    when it comes up. A renewal runs outside the registry's mutex, and its outcome is ignored if
    the lock was released meanwhile, so a release never waits for a renewal and a renewal racing
    a release never reports the released lock as lost.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: list[tuple[float, int, MemoryLock]] = []  # (monotonic due, number, lock)
        self._held: dict[int, int] = {}  # id(lock) -> its registration number
        self._numbers = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, lock: MemoryLock) -> None:
        with self._cond:
            number = next(self._numbers)
            self._held[id(lock)] = number
            heapq.heappush(self._due, (time.monotonic() + lock.renew_interval_s, number, lock))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="memory-lock-renewer", daemon=True
                )
                self._thread.start()
            elif self._due[0][1] == number:
                self._cond.notify()  # due before everything the thread was waiting for

    def remove(self, lock: MemoryLock) -> None:
        with self._cond:
            self._held.pop(id(lock), None)
            # A released lock's entry stays in the heap until it comes due (ttl/3 later), holding
            # the lock object; at hundreds of flushes a second, drop them in one pass instead.
            if len(self._due) > 2 * len(self._held) + _STALE_SLACK:
                self._due = [e for e in self._due if self._current(e[1], e[2])]
                heapq.heapify(self._due)

    def _current(self, number: int, lock: MemoryLock) -> bool:
        return self._held.get(id(lock)) == number

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._due and not self._current(self._due[0][1], self._due[0][2]):
                    heapq.heappop(self._due)  # released since it was scheduled
                if not self._due:
                    self._cond.wait()
                    continue
                wait_s = self._due[0][0] - time.monotonic()
                if wait_s > 0:
                    self._cond.wait(wait_s)
                    continue
                _, number, lock = heapq.heappop(self._due)
                self._cond.release()
                try:
                    renewed = lock.try_renew()
                finally:
                    self._cond.acquire()
                if not self._current(number, lock):
                    continue  # released while the renewal ran: its outcome means nothing
                if renewed is False:
                    del self._held[id(lock)]
                    lock.mark_lost()
                else:
                    due = time.monotonic() + lock.renew_interval_s
                    heapq.heappush(self._due, (due, number, lock))


_renewer = _Renewer()


def _reset_after_fork() -> None:
    # A forked child (Celery prefork) inherits the registry but not the thread; its locks, if
    # any, are the parent's and must not be renewed from here.
    global _renewer
    _renewer = _Renewer()


os.register_at_fork(after_in_child=_reset_after_fork)


class MemoryLock:
    """``with MemoryLock(r, key, ttl_s):`` -- acquire (fail fast), renew while held, release."""

    def __init__(self, client: RedisClient, key: str, ttl_s: float, *, what: str = "flush") -> None:
        self._redis = client
        self.key = key
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.renew_interval_s = self.ttl_ms / 1000 / RENEW_FRACTION
        self.what = what
        self.token = secrets.token_hex(16)
        self._release = client.register_script(script_source("lock_release"))
        self._renew = client.register_script(script_source("lock_renew"))
        self._held = False
        self._released = False
        self.lost = threading.Event()

    def acquire(self) -> None:
        with translate_errors("lock acquire"):
            ok = self._redis.set(self.key, self.token, nx=True, px=self.ttl_ms)
        if not ok:
            raise FlushAlreadyRunning(f"{self.what} already running for {self.key}")
        self._held = True
        self._released = False
        _renewer.add(self)

    def try_renew(self) -> bool | None:
        """Extend the TTL if this lock is still ours: True renewed, False gone, None when Redis
        failed (logged; the next attempt may succeed)."""
        try:
            return bool(self._renew(keys=[self.key], args=[self.token, self.ttl_ms]))
        except redis.RedisError as exc:
            log.warning("lock %s renewal failed: %s", self.key, exc)
            return None

    def mark_lost(self) -> None:
        """Record that a renewal found the lock gone (:meth:`check` raises from now on)."""
        log.warning("lock %s lost before renewal", self.key)
        self.lost.set()

    def check(self) -> None:
        """Raise :class:`LockLost` if a renewal found the lock gone."""
        if self.lost.is_set():
            raise LockLost(f"lock {self.key} was lost")

    def release(self, also: Callable[[Any], object] | None = None) -> bool:
        """Stop renewing and delete the lock if it is still ours (compare-and-delete).

        Returns True when the lock was ours; a second call does nothing and returns False.
        Without ``also``, a Redis error is logged and swallowed (the lock expires by its TTL).
        ``also(pipe)`` adds commands to the pipeline that carries the release, so they cost no
        extra round trip; they run first, must be idempotent (a NOSCRIPT reply reruns the
        pipeline), and since the caller needs them done, a Redis error is raised
        (:class:`StoreUnavailable` / :class:`StoreError`).
        """
        if self._released:
            return False  # released already (flush.py releases early before a hand-off)
        self._released = True
        if self._held:
            _renewer.remove(self)
            self._held = False
        if also is None:
            try:
                return bool(self._release(keys=[self.key], args=[self.token]))
            except redis.RedisError as exc:
                log.warning("lock %s release failed (it expires by TTL): %s", self.key, exc)
                return False
        if is_cluster(self._redis):
            # The marker and the pending index live in other slots than the lock, and a cluster
            # pipeline refuses EVALSHA: the commands of ``also`` first, then the release alone.
            with translate_errors("lock release"):
                pipe = self._redis.pipeline(transaction=False)
                also(pipe)
                pipe.execute()
                return bool(self._release(keys=[self.key], args=[self.token]))
        with translate_errors("lock release"):
            for attempt in (0, 1):
                # EVALSHA by hand: a Script called on a pipeline costs a SCRIPT EXISTS round trip.
                pipe = self._redis.pipeline(transaction=False)
                also(pipe)
                pipe.evalsha(self._release.sha, 1, self.key, self.token)
                try:
                    return bool(pipe.execute()[-1])
                except redis.exceptions.NoScriptError:
                    if attempt:
                        raise
                    self._redis.script_load(self._release.script)
        raise AssertionError("unreachable")  # pragma: no cover

    def __enter__(self) -> MemoryLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
