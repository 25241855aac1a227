"""Service processes for ``memory-engine demo`` and ``up``: an embedded Redis and the
``celery -A worker`` worker, Beat and Flower subprocesses, stopped so that nothing is left behind.

The library never imports the service packages (``worker``, ``tasks``, ``config``): they run as
``python -m celery -A worker ...`` subprocesses whose working directory is the directory that holds
this installation's ``worker`` package, so a project's own ``worker`` module cannot shadow it.

Every child starts in its own session (its own process group): a terminal's Ctrl-C reaches only
the CLI, which then stops the children in order (Flower, Beat, worker, Redis), each with SIGTERM to
its whole group (the worker's pool children included), then SIGKILL after a timeout. On Linux a
child also gets ``PR_SET_PDEATHSIG``, so it is told to stop even if the CLI itself is SIGKILLed.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import SecretStr

from memory_engine.errors import ConfigError, MemoryEngineError
from memory_engine.settings import Settings
from memory_engine.task_contract import QUEUES
from memory_engine.tooling.embedded_redis import EmbeddedRedis
from memory_engine.tooling.processes import (
    SERVICE_STOP_TIMEOUT_S,
    ManagedProcess,
    pdeathsig_preexec,
    raise_if_shutdown_requested,
)

__all__ = [
    "ServiceError",
    "Services",
    "celery_argv",
    "describe",
    "flower_credentials",
    "redact_url",
    "resolve_resources_dir",
    "service_root",
    "settings_env",
    "spawn_worker",
    "worker_args",
]

log = logging.getLogger(__name__)

WORKER_STOP_TIMEOUT_S = 25.0  # above the worker's soft shutdown (10 s): a warm stop finishes tasks
WORKER_READY_TIMEOUT_S = 60.0
PING_TIMEOUT_S = 1.0
DEFAULT_WORKER_CONCURRENCY = 2


class ServiceError(MemoryEngineError):
    """A service process could not start, died, or did not become ready in time."""


def service_root() -> Path:
    """The directory holding the service's top-level ``worker`` package: ``MEMORY_SERVICE_ROOT``
    when set, else the checkout this package was installed from (editable install), else the
    working directory. The library wheel carries no service code (docs/architecture.md)."""
    configured = os.environ.get("MEMORY_SERVICE_ROOT")
    candidates = [Path(configured)] if configured else []
    candidates += [Path(__file__).resolve().parents[2], Path.cwd()]
    for root in candidates:
        if (root / "worker" / "__init__.py").is_file():
            return root.resolve()
    raise ConfigError(
        "the service (the top-level 'worker', 'tasks' and 'config' packages) was not found: run "
        "from a checkout of memory-engine or set MEMORY_SERVICE_ROOT to one "
        f"(looked in {', '.join(str(c) for c in candidates)})"
    )


def resolve_resources_dir(settings: Settings) -> Settings:
    """Settings with an absolute ``resources_dir``, so children started elsewhere find it.

    A relative directory is taken from the working directory when it exists there, else from
    the service root, so the default ``config/resources`` finds the shipped resources when the
    CLI runs outside a checkout.
    """
    path = Path(settings.resources_dir)
    if path.is_absolute():
        return settings
    if not path.is_dir():
        shipped = service_root() / path
        if shipped.is_dir():
            return settings.replace(resources_dir=shipped)
    return settings.replace(resources_dir=path.resolve())


def settings_env(settings: Settings) -> dict[str, str]:
    """``MEMORY_*`` variables that rebuild ``settings`` in another process (secrets included:
    they go to our own children only). Fields that are None are left out; ``resources_dir`` is
    made absolute, as children run in another directory."""
    env: dict[str, str] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, Path):
            text = str(value.resolve())
        else:
            text = str(value)
        env[f"MEMORY_{name.upper()}"] = text
    return env


def celery_argv(command: str, *args: str) -> list[str]:
    """``python -m celery -A worker <command> <args>`` with this interpreter."""
    return [sys.executable, "-m", "celery", "-A", "worker", command, *args]


def worker_args(
    *,
    queues: Sequence[str] = QUEUES,
    concurrency: int = DEFAULT_WORKER_CONCURRENCY,
    loglevel: str = "WARNING",
    nodename: str | None = None,
) -> list[str]:
    args = ["-Q", ",".join(queues), "-c", str(concurrency), f"--loglevel={loglevel}"]
    if nodename:
        args += ["-n", nodename]
    return args


def spawn_worker(
    settings: Settings,
    log_path: Path,
    *,
    queues: Sequence[str] = QUEUES,
    concurrency: int = 1,
    pool: str = "prefork",
    nodename: str | None = None,
    loglevel: str = "WARNING",
    extra_args: Sequence[str] = (),
) -> ManagedProcess:
    """A ``celery -A worker worker`` process built from ``settings`` (benchmarks and one-off
    runs; :class:`Services` supervises the CLI's). Ready once its log says ``ready.``."""
    argv = celery_argv(
        "worker",
        *worker_args(queues=queues, concurrency=concurrency, loglevel=loglevel, nodename=nodename),
        "-P",
        pool,
        # Mingle and gossip talk to other workers; a lone worker only pays their start-up.
        "--without-mingle",
        "--without-gossip",
        *extra_args,
    )
    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    return ManagedProcess.spawn(
        nodename or "worker", argv, cwd=service_root(), env=env, log_path=log_path
    )


class Services:
    """Starts and stops the service processes of one CLI run. Use as a context manager.

    ``log_dir`` set: each child writes to ``<log_dir>/<name>.log`` (the demo keeps the terminal
    for its report); unset: children write to this process's stderr (``up``, where operators
    read the logs), leaving stdout to the CLI.
    """

    def __init__(self, settings: Settings, *, log_dir: Path | None = None) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.redis: EmbeddedRedis | None = None
        self.processes: list[ManagedProcess] = []
        self.extra_env: dict[str, str] = {}
        self._preexec = pdeathsig_preexec()

    # ---- Redis ---------------------------------------------------------------------------

    def ensure_redis(self) -> Settings:
        """Start an embedded Redis when ``MEMORY_REDIS_URL`` is unset; returns the settings every
        child and the CLI use from now on (the embedded URL filled in)."""
        if self.settings.redis_url is not None:
            self._check_reachable()
            return self.settings
        data_dir = self.log_dir / "redis" if self.log_dir is not None else None
        if data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
        self.redis = EmbeddedRedis(data_dir=data_dir, preexec_fn=self._preexec).start()
        self.settings = self.settings.replace(redis_url=self.redis.url)
        return self.settings

    def _check_reachable(self) -> None:
        """Fail fast (:class:`StoreUnavailable`) when the configured Redis or a Redis broker does
        not answer, instead of starting services that would retry forever."""
        from urllib.parse import urlsplit

        from memory_engine.store import translate_errors
        from memory_engine.store.connections import ping_url

        urls = {self.settings.redis_dsn(), self.settings.broker_dsn()}
        for url in sorted(u for u in urls if urlsplit(u).scheme in ("redis", "rediss", "unix")):
            with translate_errors(f"start-up ({redact_url(url)})"):
                ping_url(url, timeout_s=self.settings.socket_connect_timeout_s)

    # ---- children ------------------------------------------------------------------------

    def child_env(self) -> dict[str, str]:
        """The environment of every service child: ours, with every settings field written out as
        its ``MEMORY_*`` variable, so each child builds exactly the settings this run uses."""
        env = dict(os.environ)
        env.update(settings_env(self.settings))
        for name in Settings.model_fields:
            if getattr(self.settings, name) is None:
                env.pop(f"MEMORY_{name.upper()}", None)
        root = str(service_root())
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        # Logs reach the file or terminal as written, not when a buffer fills or the child exits.
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        return env

    def start(
        self, name: str, argv: list[str], *, stop_timeout_s: float = SERVICE_STOP_TIMEOUT_S
    ) -> ManagedProcess:
        log_path = self.log_dir / f"{name}.log" if self.log_dir is not None else None
        try:
            proc = ManagedProcess.spawn(
                name,
                argv,
                cwd=service_root(),
                env=self.child_env(),
                log_path=log_path,
                # Without a log file, children write to our stderr: stdout stays the CLI's own
                # (``up --json`` prints JSON Lines there).
                stdout=sys.stderr.fileno(),
                preexec_fn=self._preexec,
                stop_timeout_s=stop_timeout_s,
            )
        except OSError as exc:
            raise ServiceError(f"could not start {name}: {exc}") from exc
        self.processes.append(proc)
        log.info("started %s (pid %d)", name, proc.pid)
        return proc

    def start_worker(
        self,
        *,
        nodename: str | None = None,
        concurrency: int = DEFAULT_WORKER_CONCURRENCY,
        loglevel: str = "WARNING",
    ) -> ManagedProcess:
        args = worker_args(concurrency=concurrency, loglevel=loglevel, nodename=nodename)
        return self.start(
            "worker", celery_argv("worker", *args), stop_timeout_s=WORKER_STOP_TIMEOUT_S
        )

    def start_beat(self, *, loglevel: str = "WARNING") -> ManagedProcess:
        # The RedBeat scheduler is configured in config/celery.py; saying it again here keeps a
        # stray celerybeat-schedule file out of the working directory if that ever changes.
        argv = celery_argv("beat", "-S", "redbeat.RedBeatScheduler", f"--loglevel={loglevel}")
        return self.start("beat", argv)

    def start_flower(
        self, *, port: int, address: str = "127.0.0.1", loglevel: str = "WARNING"
    ) -> ManagedProcess:
        argv = celery_argv("flower", f"--address={address}", f"--port={port}")
        argv.append(f"--logging={loglevel.lower()}")
        return self.start("flower", argv)

    # ---- readiness and liveness ------------------------------------------------------------

    def wait_for_worker(
        self, worker: ManagedProcess, nodename: str, timeout_s: float = WORKER_READY_TIMEOUT_S
    ) -> None:
        """Wait until ``nodename`` answers a Celery control ping; fail fast if it exits."""
        from memory_engine.producer import TaskProducer

        producer = TaskProducer(self.settings)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                raise_if_shutdown_requested()
                if not worker.alive():
                    raise ServiceError(
                        f"worker exited with code {worker.popen.returncode} before it was "
                        f"ready{self._tail(worker)}"
                    )
                replies = producer.app.control.ping(destination=[nodename], timeout=PING_TIMEOUT_S)
                if any(nodename in reply for reply in replies or []):
                    return
                if time.monotonic() > deadline:
                    raise ServiceError(
                        f"worker {nodename} did not answer a ping within {timeout_s:.0f} s"
                        f"{self._tail(worker)}"
                    )
        finally:
            producer.close()

    def wait_for_port(
        self, proc: ManagedProcess, port: int, timeout_s: float = WORKER_READY_TIMEOUT_S
    ) -> None:
        """Wait until ``proc`` listens on loopback ``port`` (Flower)."""
        deadline = time.monotonic() + timeout_s
        while True:
            raise_if_shutdown_requested()
            if not proc.alive():
                raise ServiceError(
                    f"{proc.name} exited with code {proc.popen.returncode}{self._tail(proc)}"
                )
            with socket.socket() as s:
                s.settimeout(0.2)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise ServiceError(f"{proc.name} did not listen on port {port}{self._tail(proc)}")
            time.sleep(0.1)

    def dead(self) -> list[ManagedProcess]:
        """Children that exited although nobody stopped them."""
        return [p for p in self.processes if not p.alive()]

    def pids(self) -> dict[str, list[int]]:
        """Every pid this run started, by service (a worker's pool children included)."""
        out = {p.name: p.pids() for p in self.processes}
        if self.redis is not None and self.redis.proc is not None:
            out["redis"] = [self.redis.proc.pid]
        return out

    @staticmethod
    def _tail(proc: ManagedProcess) -> str:
        tail = proc.log_tail()
        return f"; last log lines of {proc.log_path}:\n{tail}" if tail else ""

    # ---- shutdown --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop children newest first (Flower, Beat, worker), then the embedded Redis last, so a
        worker finishing its tasks can still reach it. Safe to call twice."""
        while self.processes:
            proc = self.processes.pop()
            try:
                proc.stop()
            except Exception:  # keep stopping the others
                log.exception("could not stop %s (pid %d)", proc.name, proc.pid)
        if self.redis is not None:
            self.redis.cleanup()
            self.redis = None

    def __enter__(self) -> Services:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # A second Ctrl-C or SIGTERM during shutdown must not leave children behind: stopping is
        # bounded by its timeouts, so finish it first.
        in_main = threading.current_thread() is threading.main_thread()
        ignored = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in ignored} if in_main else {}
        try:
            self.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def flower_credentials(settings: Settings, services: Services, user: str) -> dict[str, Any]:
    """How Flower authenticates in this run: configured credentials (password not repeated), the
    explicit development flag (none), else a generated password for ``user``, passed to the
    Flower child through ``MEMORY_FLOWER_*`` and returned so the CLI can print it once."""
    if settings.flower_user and settings.flower_password:
        return {"user": settings.flower_user, "password": "(MEMORY_FLOWER_PASSWORD)"}
    if settings.flower_unauthenticated_dev:
        return {"user": None, "password": None}
    import secrets

    password = secrets.token_urlsafe(12)
    services.extra_env.update(MEMORY_FLOWER_USER=user, MEMORY_FLOWER_PASSWORD=password)
    return {"user": user, "password": password}


def redact_url(url: str) -> str:
    """``url`` with any password replaced, for printing."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def describe(services: Services) -> dict[str, Any]:
    """A JSON-ready description of the running services."""
    return {
        "redis_url": redact_url(services.settings.redis_dsn()),
        "embedded_redis": services.redis is not None,
        "redis_port": services.redis.port if services.redis is not None else None,
        "pids": services.pids(),
    }
