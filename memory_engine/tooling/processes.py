"""Process supervision for operator tooling, tests and benchmarks: one child per process group,
stopped with its whole group (SIGTERM, then SIGKILL), optionally told to stop when its parent dies
(``PR_SET_PDEATHSIG`` on Linux), and the signal handling that turns Ctrl-C/SIGTERM into a clean
shutdown of the CLI's children.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

__all__ = [
    "ManagedProcess",
    "ShutdownRequested",
    "pdeathsig_preexec",
    "pid_alive",
    "raise_if_shutdown_requested",
    "shutdown_on_signals",
]

log = logging.getLogger(__name__)

SERVICE_STOP_TIMEOUT_S = 10.0
KILL_WAIT_S = 5.0
LOG_TAIL_BYTES = 4000
_PR_SET_PDEATHSIG = 1


class ShutdownRequested(BaseException):
    """Raised in the main thread on Ctrl-C, SIGTERM or SIGHUP so ``finally`` blocks stop the
    services."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"received signal {signal.Signals(signum).name}")


_requested_signal: int | None = None


@contextlib.contextmanager
def shutdown_on_signals(
    signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP),
) -> Iterator[None]:
    """Turn ``signals`` into :class:`ShutdownRequested` while the block runs (main thread only).

    The handler raises at once, wherever the main thread is. Python drops an exception raised
    inside a weakref callback or ``__del__`` (it prints "Exception ignored in ..."), and a signal
    can land there: a Ctrl-C was once lost that way and the demo ran to its end. So the handler
    also records the signal, and the waiting loops call :func:`raise_if_shutdown_requested`.
    """
    global _requested_signal

    def handler(signum: int, frame: FrameType | None) -> None:
        global _requested_signal
        _requested_signal = signum
        raise ShutdownRequested(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested_signal = None
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _requested_signal = None


def raise_if_shutdown_requested() -> None:
    """Raise :class:`ShutdownRequested` if a signal arrived inside :func:`shutdown_on_signals`
    (main thread only: other threads stop when the main thread tells them to)."""
    signum = _requested_signal
    if signum is not None and threading.current_thread() is threading.main_thread():
        raise ShutdownRequested(signum)


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (an exited child nobody reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    members = _group_members(pgid)
    # killpg(0) also counts zombies; with /proc we can tell, without it assume alive.
    return any(pid_alive(pid) for pid in members) if members is not None else True


def _group_members(pgid: int) -> list[int] | None:
    """Pids in process group ``pgid`` (Linux /proc); None where /proc is unavailable."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        # After the command name: state, ppid, pgrp, ...
        if len(fields) > 2 and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return sorted(members)


def pdeathsig_preexec() -> Callable[[], None] | None:
    """A preexec function asking Linux to TERM the child when its parent dies (best effort).

    The libc function is resolved here, in the parent, so the child does nothing but one call.
    """
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        prctl = ctypes.CDLL(name, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return preexec


@dataclass
class ManagedProcess:
    """One service subprocess, leader of its own process group."""

    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log_path: Path | None = None
    stop_timeout_s: float = SERVICE_STOP_TIMEOUT_S
    _log_file: TextIO | None = field(default=None, repr=False)

    @classmethod
    def spawn(
        cls,
        name: str,
        argv: list[str],
        *,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        stdout: int | None = None,
        preexec_fn: Callable[[], None] | None = None,
        stop_timeout_s: float = SERVICE_STOP_TIMEOUT_S,
    ) -> ManagedProcess:
        """Start ``argv`` as the leader of a new session (its own process group).

        Output goes to ``log_path`` (appended), else to the file descriptor ``stdout``, else
        nowhere. Raises :class:`OSError` when the program cannot be started."""
        log_file = log_path.open("a", encoding="utf-8") if log_path is not None else None
        target: Any = log_file if log_file is not None else stdout
        try:
            popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=target if target is not None else subprocess.DEVNULL,
                stderr=subprocess.STDOUT if target is not None else subprocess.DEVNULL,
                start_new_session=True,
                # Resolved before fork: the child runs one prctl call and nothing else.
                preexec_fn=preexec_fn,
            )
        except OSError:
            if log_file is not None:
                log_file.close()
            raise
        return cls(name, argv, popen, log_path, stop_timeout_s, log_file)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the whole process group (a worker's pool children included)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def kill(self) -> int | None:
        """SIGKILL the whole group at once, as a crash would, and reap the leader."""
        return self.stop(0.0, sig=signal.SIGKILL)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def pids(self) -> list[int]:
        """The leader and every live member of its process group (e.g. a worker's pool)."""
        members = _group_members(self.pid) or []
        return sorted({self.pid, *members})

    def wait_for_log(self, pattern: str, timeout_s: float) -> str:
        """Poll the log file until the regex ``pattern`` appears; return the match. Raises
        :class:`RuntimeError` (with the log's tail) when the process exits or time runs out."""
        import re

        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.log_path.read_text(errors="replace") if self.log_path else ""
            found = regex.search(text)
            if found:
                return found.group(0)
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited ({self.popen.returncode}) before logging {pattern!r}:\n"
                    f"{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no {pattern!r} after {timeout_s}s")
            time.sleep(0.05)

    def log_tail(self, limit: int = LOG_TAIL_BYTES) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        data = self.log_path.read_bytes()[-limit:]
        return data.decode("utf-8", "replace")

    def stop(self, timeout_s: float | None = None, *, sig: int = signal.SIGTERM) -> int | None:
        """``sig`` (SIGTERM) to the group, wait, then SIGKILL whatever is left. Returns the
        leader's exit code."""
        timeout = self.stop_timeout_s if timeout_s is None else timeout_s
        if self.alive():
            self.signal_group(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                if sig != signal.SIGKILL:
                    log.warning("%s did not stop within %.0f s; killing it", self.name, timeout)
        # The leader may be gone while its pool children linger: sweep the whole group.
        deadline = time.monotonic() + KILL_WAIT_S
        while _group_alive(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                log.error("process group of %s (%d) survived SIGKILL", self.name, self.pid)
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(0.05)
        code = self.popen.poll()
        if code is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.popen.wait(KILL_WAIT_S)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code
