"""Worker-side Prometheus metrics, served on ``/metrics`` by the worker's main process.

Enabled by ``MEMORY_METRICS_PORT`` (``Settings.metrics_port``; ``0`` picks a free port and logs
it). What a worker exports:

- ``memory_engine_task_runs_total{task,outcome}`` and ``memory_engine_task_duration_seconds{task}``
  from Celery's task signals: ``task_prerun``/``task_postrun`` in the process that ran the task
  (outcome = the final state, lower-cased: ``success``, ``failure``, ``retry``, ...), and
  ``task_failure`` for the two ends that never reach ``task_postrun`` because the pool child died
  (``time_limit``, ``worker_lost``: the main process reports them). ``task_retry`` is not used:
  ``task_postrun`` already reports a retry as state ``RETRY``, so counting both would double it;
- every engine metric of :mod:`memory_engine.metrics` the tasks record (flush runs, messages
  summarized and evicted, tokens saved, lock contention, breaker states);
- ``memory_engine_queue_depth{queue}``: ``LLEN`` of each engine queue on a Redis broker
  (:class:`QueueDepthCollector`), a passive ``queue.declare`` on RabbitMQ
  (:class:`BrokerQueueDepthCollector`), read at scrape time.

Prefork: tasks run in pool children, so prometheus_client runs in multiprocess mode. Each child
writes its values to files in ``PROMETHEUS_MULTIPROC_DIR`` and the main process merges them on
scrape (``MultiProcessCollector``). The mode must be chosen before the first instrument exists and
the directory must start empty, so on ``worker_init`` (main process, before the pool forks) this
module creates a clean directory for this worker start, ``worker-<host>-<pid>`` under
``$PROMETHEUS_MULTIPROC_DIR`` (or under ``<tmp>/memory-engine-metrics`` when unset), points the
variable at it for the children, switches prometheus_client to multiprocess mode and rebuilds the
engine's instruments. Directories of dead workers of the same host are removed then, and the
worker's own on shutdown. Beat and Flower import the same app but never send ``worker_init``, so
they start nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import redis
from celery import Celery, signals
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from memory_engine import metrics as engine_metrics
from memory_engine.errors import BrokerUnavailable
from memory_engine.metrics import FLUSH_DURATION_BUCKETS_S, METRIC_PREFIX
from memory_engine.producer import TaskProducer
from memory_engine.settings import Settings
from memory_engine.task_contract import QUEUES

__all__ = [
    "METRICS_BIND_ADDRESS",
    "BrokerQueueDepthCollector",
    "MULTIPROC_ENV",
    "QueueDepthCollector",
    "WorkerMetrics",
    "install",
]

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
METRICS_BIND_ADDRESS = "0.0.0.0"  # Prometheus scrapes from another host or container
DEFAULT_MULTIPROC_BASE = Path(tempfile.gettempdir()) / "memory-engine-metrics"
QUEUE_DEPTH_TIMEOUT_S = 2.0  # a scrape must answer even when the broker does not
TASK_DURATION_BUCKETS_S = FLUSH_DURATION_BUCKETS_S

# Exceptions the main process reports through task_failure when the pool child died before
# task_postrun could run: the child is gone, so nothing else would count the run.
_CHILD_DIED = {"TimeLimitExceeded": "time_limit", "WorkerLostError": "worker_lost"}


class WorkerMetrics:
    """The task-level instruments, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        p = METRIC_PREFIX
        self.task_runs = Counter(
            f"{p}task_runs",
            "Task runs by task name and outcome (the final state, lower-cased: success, "
            "failure, retry, ...; time_limit and worker_lost when the pool child died).",
            ["task", "outcome"],
            registry=registry,
        )
        self.task_duration = Histogram(
            f"{p}task_duration_seconds",
            "Duration of task runs that ended in their process (any outcome), by task name.",
            ["task"],
            buckets=TASK_DURATION_BUCKETS_S,
            registry=registry,
        )


class QueueDepthCollector(Collector):
    """``memory_engine_queue_depth{queue}``: messages waiting in each queue (``LLEN`` on the
    broker), read in one pipelined round trip per scrape. When the broker does not answer the
    metric is left out of that scrape (alert on ``absent()``), and the scrape still succeeds."""

    NAME = f"{METRIC_PREFIX}queue_depth"
    HELP = "Messages waiting in each engine queue on the broker (LLEN), read at scrape time."

    def __init__(self, client: redis.Redis, queues: Sequence[str] = QUEUES) -> None:
        self._redis = client
        self._queues = tuple(queues)
        self._warned = False

    def describe(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(self.NAME, self.HELP, labels=["queue"])

    def collect(self) -> Iterable[Metric]:
        try:
            pipe = self._redis.pipeline(transaction=False)
            for queue in self._queues:
                pipe.llen(queue)
            depths = pipe.execute()
        except redis.RedisError as exc:
            if not self._warned:
                log.warning("queue depth not exported: broker unavailable (%s)", exc)
                self._warned = True
            return
        self._warned = False
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["queue"])
        for queue, depth in zip(self._queues, depths):
            family.add_metric([queue], float(depth))
        yield family


class BrokerQueueDepthCollector(QueueDepthCollector):
    """:class:`QueueDepthCollector` for a RabbitMQ broker: depths from a passive
    ``queue.declare`` per queue (:meth:`TaskProducer.queue_depths`), same metric and same
    behaviour when the broker does not answer."""

    HELP = "Messages waiting in each engine queue on the broker, read at scrape time."

    def __init__(self, producer: TaskProducer, queues: Sequence[str] = QUEUES) -> None:
        self._producer = producer
        self._queues = tuple(queues)
        self._warned = False

    def collect(self) -> Iterable[Metric]:
        try:
            depths = self._producer.queue_depths()
        except BrokerUnavailable as exc:
            if not self._warned:
                log.warning("queue depth not exported: broker unavailable (%s)", exc)
                self._warned = True
            return
        self._warned = False
        family = GaugeMetricFamily(self.NAME, self.HELP, labels=["queue"])
        for queue in self._queues:
            family.add_metric([queue], float(depths.get(queue, 0)))
        yield family


class _Exporter:
    """Per-app lifecycle: prepare on worker_init, serve on worker_ready, clean on shutdown."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.metrics: WorkerMetrics | None = None
        self.directory: Path | None = None
        self.server: Any = None
        self._started: dict[str, float] = {}  # task id -> perf_counter at prerun (this process)
        self._lock = threading.Lock()

    def _settings(self) -> Settings | None:
        settings = getattr(self.app, "memory_settings", None)
        return settings if isinstance(settings, Settings) else None

    # ---- worker lifecycle (main process) ---------------------------------------------------

    def on_worker_init(self, sender: Any = None, **_: Any) -> None:
        settings = self._settings()
        if getattr(sender, "app", None) is not self.app or settings is None:
            return
        if settings.metrics_port is None:
            return
        self.directory = _prepare_directory()
        os.environ[MULTIPROC_ENV] = str(self.directory)
        # The value class is picked when prometheus_client is imported, usually before this
        # signal; pick it again now that the directory is set, then rebuild what exists.
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        engine_metrics.rebuild()
        self.metrics = WorkerMetrics(CollectorRegistry(auto_describe=True))
        uid = f"memory-engine-metrics-{id(self.app)}"
        signals.task_prerun.connect(self.on_task_prerun, weak=False, dispatch_uid=f"{uid}-pre")
        signals.task_postrun.connect(self.on_task_postrun, weak=False, dispatch_uid=f"{uid}-post")
        signals.task_failure.connect(self.on_task_failure, weak=False, dispatch_uid=f"{uid}-fail")

    def on_worker_ready(self, sender: Any = None, **_: Any) -> None:
        settings = self._settings()
        if getattr(sender, "app", None) is not self.app or settings is None:
            return
        if self.directory is None or settings.metrics_port is None or self.server is not None:
            return
        exposition = CollectorRegistry(auto_describe=True)
        MultiProcessCollector(exposition, path=str(self.directory))  # type: ignore[no-untyped-call]
        if settings.broker_kind() == "redis":
            broker = redis.Redis.from_url(
                settings.broker_dsn(),
                socket_timeout=QUEUE_DEPTH_TIMEOUT_S,
                socket_connect_timeout=QUEUE_DEPTH_TIMEOUT_S,
            )
            exposition.register(QueueDepthCollector(broker))
        elif settings.broker_kind() == "amqp":
            exposition.register(BrokerQueueDepthCollector(TaskProducer(settings)))
        try:
            server, _thread = start_http_server(
                settings.metrics_port, addr=METRICS_BIND_ADDRESS, registry=exposition
            )
        except OSError as exc:
            # Metrics are secondary: a worker that runs tasks without them beats one that
            # refuses to start. The error says why the scrape target is down.
            log.error("metrics endpoint not started on port %s: %s", settings.metrics_port, exc)
            return
        self.server = server
        log.info(
            "metrics on http://%s:%d/metrics (multiprocess dir %s)",
            METRICS_BIND_ADDRESS,
            server.server_port,
            self.directory,
        )

    def on_worker_shutdown(self, sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not self.app:
            return
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    # ---- task signals (the process that runs the task; task_failure also in main) ----------

    def on_task_prerun(self, task_id: str | None = None, **_: Any) -> None:
        if task_id:
            with self._lock:
                self._started[task_id] = time.perf_counter()

    def on_task_postrun(
        self, task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any
    ) -> None:
        if self.metrics is None or task is None:
            return
        with self._lock:
            started = self._started.pop(task_id or "", None)
        name = str(task.name)
        self.metrics.task_runs.labels(name, (state or "unknown").lower()).inc()
        if started is not None:
            self.metrics.task_duration.labels(name).observe(time.perf_counter() - started)

    def on_task_failure(
        self, sender: Any = None, exception: BaseException | None = None, **_: Any
    ) -> None:
        outcome = _CHILD_DIED.get(type(exception).__name__)
        if self.metrics is None or sender is None or outcome is None:
            return
        self.metrics.task_runs.labels(str(sender.name), outcome).inc()


def _prepare_directory() -> Path:
    """A clean multiprocess directory for this worker start; removes those of dead workers."""
    base = Path(os.environ.get(MULTIPROC_ENV) or DEFAULT_MULTIPROC_BASE)
    base.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().replace(os.sep, "_")
    for stale in base.glob(f"worker-{host}-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    own = base / f"worker-{host}-{os.getpid()}"
    shutil.rmtree(own, ignore_errors=True)  # a restarted container reuses its pid
    own.mkdir()
    return own


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def install(app: Celery) -> None:
    """Wire the exporter's signals for ``app`` (idempotent per app; does nothing until a worker
    of ``app`` starts with ``metrics_port`` set)."""
    exporter = _Exporter(app)
    uid = f"memory-engine-metrics-{id(app)}"
    signals.worker_init.connect(exporter.on_worker_init, weak=False, dispatch_uid=f"{uid}-init")
    signals.worker_ready.connect(exporter.on_worker_ready, weak=False, dispatch_uid=f"{uid}-ready")
    signals.worker_shutdown.connect(
        exporter.on_worker_shutdown, weak=False, dispatch_uid=f"{uid}-stop"
    )
