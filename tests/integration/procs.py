"""Real service processes for tests: ``celery -A worker worker|beat|flower`` as subprocesses.

Each process runs in its own session (process group), so :meth:`ServiceProcess.kill` SIGKILLs the
Celery main process *and* its pool children at once, as a crashed container would be. Output goes
to a log file the test can poll (``wait_for_log``) and print when an assertion fails. The
environment is the parent's minus every ``MEMORY_*``/``FLOWER_*`` variable, plus the ``MEMORY_*``
variables the test passes, so a developer's shell cannot leak into a test.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from memory_engine.settings import Settings
from memory_engine.tooling.embedded_redis import EmbeddedRedis
from memory_engine.tooling.processes import ManagedProcess

__all__ = [
    "ROOT",
    "ServiceProcess",
    "beat_process",
    "flower_process",
    "http_get",
    "memory_env",
    "private_broker",
    "running",
    "settings_from_env",
    "task_ids",
    "worker_process",
]

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
POLL_INTERVAL_S = 0.05
_INHERITED_PREFIXES = ("MEMORY_", "FLOWER_")


def memory_env(**fields: object) -> dict[str, str]:
    """``MEMORY_<FIELD>`` variables for Settings fields; an unknown field name is a test bug."""
    env: dict[str, str] = {}
    for name, value in fields.items():
        if name not in Settings.model_fields:
            raise KeyError(f"{name} is not a Settings field")
        if value is None:
            continue
        env[f"MEMORY_{name.upper()}"] = (
            str(value).lower() if isinstance(value, bool) else str(value)
        )
    return env


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """The Settings a service process builds from ``env`` (for the test's own client)."""
    fields = {
        key[len("MEMORY_") :].lower(): value
        for key, value in env.items()
        if key.startswith("MEMORY_") and key[len("MEMORY_") :].lower() in Settings.model_fields
    }
    return Settings.model_validate(fields)


def private_broker() -> Iterator[str]:
    """Fixture body (``broker_url = pytest.fixture(private_broker)``): a private redis-server
    as the broker, so queues, the ``unacked`` hash and RedBeat keys hold one test's data only and
    no broker DB number is shared with another test module."""
    with EmbeddedRedis() as server:
        yield server.url


class ServiceProcess:
    """One service subprocess in its own process group (a
    :class:`~memory_engine.tooling.processes.ManagedProcess`, as the CLI runs them), logging to
    ``log_path``."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED_PREFIXES)}
        self.env.update(env)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.managed: ManagedProcess | None = None

    # --- lifecycle
    def start(self) -> ServiceProcess:
        self.managed = ManagedProcess.spawn(
            self.describe(),
            self.args,
            cwd=ROOT,
            env=self.env,
            log_path=self.log_path,
            stop_timeout_s=STOP_TIMEOUT_S,
        )
        return self

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.managed.popen if self.managed is not None else None

    @property
    def pid(self) -> int:
        if self.managed is None:
            raise RuntimeError("not started")
        return self.managed.pid

    @property
    def alive(self) -> bool:
        return self.managed is not None and self.managed.alive()

    def kill(self) -> None:
        """SIGKILL the whole process group (main process and pool children): a crash."""
        if self.managed is not None:
            self.managed.kill()

    def stop(self) -> None:
        """SIGTERM the group (Celery's warm shutdown), then SIGKILL what is left (pool children
        that outlived their parent would keep consuming)."""
        if self.managed is not None:
            self.managed.stop()

    def wait(self, timeout_s: float) -> int:
        if self.managed is None:
            raise RuntimeError("not started")
        return self.managed.popen.wait(timeout_s)

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def describe(self) -> str:
        return " ".join(self.args[2:])  # from "celery": the command as an operator would type it

    # --- logs
    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])

    def wait_for_log(self, pattern: str, timeout_s: float = READY_TIMEOUT_S) -> re.Match[str]:
        """Poll the log for the regex ``pattern``; fail (with the log tail) if the process dies
        or the deadline passes first."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while True:
            found = regex.search(self.logs())
            if found:
                return found
            if not self.alive:
                raise AssertionError(
                    f"{self.describe()} exited ({self.returncode}) before logging "
                    f"{pattern!r}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.describe()}: no {pattern!r} after {timeout_s}s:\n{self.tail()}"
                )
            time.sleep(POLL_INTERVAL_S)

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker", *args]


def worker_process(
    env: Mapping[str, str],
    log_path: Path,
    *,
    queues: str,
    name: str,
    concurrency: int = 1,
    pool: str = "prefork",
) -> ServiceProcess:
    """A worker (prefork unless ``pool`` says otherwise, e.g. ``threads``); ready once its log
    says ``ready.`` (``wait_for_log(r"ready\\.")``)."""
    args = _celery(
        "worker",
        "-Q",
        queues,
        "-P",
        pool,
        "-c",
        str(concurrency),
        "-n",
        f"{name}@%h",
        "--loglevel=INFO",
        # Mingle and gossip talk to other workers; these tests run one at a time and they cost
        # a second of start-up each.
        "--without-mingle",
        "--without-gossip",
    )
    return ServiceProcess(args, env, log_path)


def beat_process(env: Mapping[str, str], log_path: Path) -> ServiceProcess:
    """``celery -A worker beat`` (RedBeat, from config/celery.py); logs ``beat: Acquired lock``."""
    return ServiceProcess(_celery("beat", "--loglevel=INFO"), env, log_path)


def flower_process(env: Mapping[str, str], log_path: Path, *, port: int) -> ServiceProcess:
    return ServiceProcess(_celery("flower", "--address=127.0.0.1", f"--port={port}"), env, log_path)


@contextmanager
def running(*processes: ServiceProcess) -> Iterator[tuple[ServiceProcess, ...]]:
    """Stop every process on exit, whatever happened (no process outlives its test)."""
    try:
        yield processes
    finally:
        for p in processes:
            p.stop()


def task_ids(log: str, task_name: str) -> list[str]:
    """Ids of ``task_name`` that a worker logged as received, in order."""
    return re.findall(rf"Task {re.escape(task_name)}\[([0-9a-f-]+)\] received", log)


def http_get(
    url: str, auth: tuple[str, str] | None = None, timeout_s: float = 5.0
) -> tuple[int, bytes]:
    """``(status, body)`` of a GET; HTTP errors are returned, not raised."""
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def http_status(url: str, auth: tuple[str, str] | None = None) -> int | None:
    """Status of a GET, or None when nothing listens yet (for readiness polls)."""
    try:
        return http_get(url, auth, timeout_s=2.0)[0]
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
