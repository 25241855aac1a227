"""A memory's distributed lock: owner token, compare-and-delete release, renewal while work runs.

Only flushes and evictions take it (appends never do: they are single atomic scripts). A second
flush of the same memory fails fast with :class:`FlushAlreadyRunning`. Fencing: the commit script
checks the owner token, so a holder whose lock expired cannot commit.
"""

from __future__ import annotations

import logging
import secrets
import threading
from importlib import resources
from types import TracebackType

import redis

from memory_engine.errors import FlushAlreadyRunning, LockLost
from memory_engine.store import translate_errors

__all__ = ["MemoryLock"]

log = logging.getLogger(__name__)

RENEW_FRACTION = 3  # renew every ttl/3: two renewals may fail before the lock lapses


def _script(name: str) -> str:
    return resources.files("memory_engine").joinpath(f"lua/{name}.lua").read_text("utf-8")


class MemoryLock:
    """``with MemoryLock(r, key, ttl_s):`` -- acquire (fail fast), renew in a thread, release."""

    def __init__(self, client: redis.Redis, key: str, ttl_s: float, *, what: str = "flush") -> None:
        self._redis = client
        self.key = key
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.what = what
        self.token = secrets.token_hex(16)
        self._release = client.register_script(_script("lock_release"))
        self._renew = client.register_script(_script("lock_renew"))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = threading.Event()

    def acquire(self) -> None:
        with translate_errors("lock acquire"):
            ok = self._redis.set(self.key, self.token, nx=True, px=self.ttl_ms)
        if not ok:
            raise FlushAlreadyRunning(f"{self.what} already running for {self.key}")
        self._thread = threading.Thread(
            target=self._renew_loop, name=f"lock-renew:{self.key}", daemon=True
        )
        self._thread.start()

    def _renew_loop(self) -> None:
        interval_s = self.ttl_ms / 1000 / RENEW_FRACTION
        while not self._stop.wait(interval_s):
            try:
                if not self._renew(keys=[self.key], args=[self.token, self.ttl_ms]):
                    log.warning("lock %s lost before renewal", self.key)
                    self.lost.set()
                    return
            except redis.RedisError as exc:
                log.warning("lock %s renewal failed: %s", self.key, exc)

    def check(self) -> None:
        """Raise :class:`LockLost` if a renewal found the lock gone."""
        if self.lost.is_set():
            raise LockLost(f"lock {self.key} was lost")

    def release(self) -> bool:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            return bool(self._release(keys=[self.key], args=[self.token]))
        except redis.RedisError as exc:
            log.warning("lock %s release failed (it expires by TTL): %s", self.key, exc)
            return False

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
