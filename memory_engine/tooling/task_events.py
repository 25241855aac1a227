"""Flush latency from Celery task events, as Flower sees them.

The client's producer emits ``task-sent`` for every ``memory.flush`` it enqueues; the worker emits
``task-received`` and ``task-succeeded`` (with the task's result) or ``task-failed``. A flush is
timed from its ``task-sent`` to the end of the task that finished it: a ``hybrid_summary`` flush
returns ``handed_off`` and continues in ``memory.summarize``, whose events carry the flush task's
id as ``root_id``. Why events and not the memory's metadata: ``last_flush_at`` is overwritten by
every later flush and eviction of the memory, so it cannot pair a request with its commit.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from typing import Any

from memory_engine.task_contract import TASK_FLUSH

__all__ = ["TaskEvents", "percentile"]

RECEIVER_STOP_TIMEOUT_S = 5.0
# The worker sends results as repr(); FlushResult dicts carry their status as a plain string.
_STATUS = re.compile(r"'status': '(\w+)'")
_HANDED_OFF = "handed_off"


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile, rounded to 0.1; None without samples."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil without floats drifting
    return round(ordered[int(rank) - 1], 1)


class TaskEvents:
    """Collects Celery task events in a background thread and pairs flush requests with the
    task that finished them (by ``root_id``). ``app`` is a Celery app on the broker (the
    producer's); :meth:`start` before the work, :meth:`stop` after it."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._lock = threading.Lock()
        self._sent: dict[str, float] = {}  # root flush task id -> task-sent time
        self._root: dict[str, str] = {}  # task id -> root id
        self._done: dict[str, tuple[float, str]] = {}  # root id -> (finish time, outcome)
        self._pending: dict[str, tuple[float, str]] = {}  # finished before its root was known
        self._hosts: set[str] = set()
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, name="task-events", daemon=True)
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._app.connection_for_read() as conn:
                self._receiver = self._app.events.Receiver(conn, handlers={"*": self._on_event})
                self._receiver.capture(limit=None, timeout=None, wakeup=False)
        except Exception as exc:  # reported as "no latency figures", never a crash
            self._error = exc

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=RECEIVER_STOP_TIMEOUT_S)

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = str(event.get("type", ""))
        with self._lock:
            if kind.startswith("worker-"):
                self._hosts.add(str(event.get("hostname")))
                return
            task_id = event.get("uuid")
            if not task_id:
                return
            if kind in ("task-sent", "task-received"):
                root = str(event.get("root_id") or task_id)
                self._root.setdefault(task_id, root)
                if root == task_id and event.get("name") == TASK_FLUSH:
                    self._sent.setdefault(task_id, float(event["timestamp"]))
                early = self._pending.pop(task_id, None)
                if early is not None:
                    self._finish(task_id, *early)
            elif kind == "task-succeeded":
                match = _STATUS.search(str(event.get("result", "")))
                self._finish(task_id, float(event["timestamp"]), match[1] if match else "done")
            elif kind in ("task-failed", "task-rejected", "task-revoked"):
                self._finish(task_id, float(event["timestamp"]), "failed")

    def _finish(self, task_id: str, at: float, outcome: str) -> None:
        root = self._root.get(task_id)
        if root is None:
            self._pending[task_id] = (at, outcome)
        elif outcome != _HANDED_OFF:  # the chain goes on in memory.summarize
            self._done[root] = (at, outcome)

    @property
    def error(self) -> str | None:
        """Why the receiver stopped early (no latency figures then), or None."""
        return f"{type(self._error).__name__}: {self._error}" if self._error else None

    def seen_host(self, hostname: str) -> bool:
        with self._lock:
            return hostname in self._hosts

    def open_flushes(self) -> int:
        with self._lock:
            return sum(1 for root in self._sent if root not in self._done)

    def results(self) -> tuple[dict[str, int], list[float]]:
        """Outcome counts of the flushes seen, and latencies (ms) of the committed ones."""
        with self._lock:
            outcomes: Counter[str] = Counter()
            latencies: list[float] = []
            for root, sent_at in self._sent.items():
                done = self._done.get(root)
                if done is None:
                    outcomes["unfinished"] += 1
                    continue
                outcomes[done[1]] += 1
                if done[1] == "committed":
                    latencies.append(max(0.0, (done[0] - sent_at) * 1000))
            return dict(outcomes), latencies
