"""``memory-engine demo``: the engine end to end on one machine, then nothing left running.

It starts an embedded Redis (unless ``MEMORY_REDIS_URL`` is set), a ``celery -A worker`` worker
(Beat and Flower on request), simulates N support conversations appending through
:class:`~memory_engine.client.MemoryClient` from a few threads, waits for the flushes the appends
triggered, reports what happened, and stops every process it started.

Task latency is timed with Celery task events (:mod:`~memory_engine.tooling.task_events`), from the
moment an append requested a flush to the moment the task that committed it finished.
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from memory_engine.client import Memory, MemoryClient
from memory_engine.errors import ConfigError, ResourceNotFound
from memory_engine.messages import Message
from memory_engine.producer import TaskProducer
from memory_engine.registry import ResourceRegistry
from memory_engine.settings import Settings
from memory_engine.store import inspect, translate_errors
from memory_engine.task_contract import QUEUES
from memory_engine.tooling.demo_conversations import (
    DEMO_RESOURCE_IDS,
    DEMO_RESOURCES_YAML,
    Conversation,
    make_conversation,
)
from memory_engine.tooling.embedded_redis import free_port
from memory_engine.tooling.processes import pid_alive, raise_if_shutdown_requested
from memory_engine.tooling.services import (
    ServiceError,
    Services,
    describe,
    flower_credentials,
)
from memory_engine.tooling.task_events import TaskEvents, percentile

__all__ = ["DemoHooks", "DemoOptions", "DemoReport", "run_demo"]

DEFAULT_CONVERSATIONS = 20
DEFAULT_MESSAGES_PER_CONVERSATION = 60
DEFAULT_THREADS = 4
DEFAULT_DRAIN_TIMEOUT_S = 60.0
# A pause after each append: agents wait for their LLM between turns, so flushes run while the
# conversations go on (with no pause every append lands before the first flush runs).
DEFAULT_TURN_DELAY_MS = 10.0
EVENTS_READY_TIMEOUT_S = 10.0
EVENTS_GRACE_S = 3.0
POLL_INTERVAL_S = 0.1
CONTEXT_PREVIEW_CHARS = 110

Progress = Callable[[int], None]


@dataclass(frozen=True)
class DemoOptions:
    conversations: int = DEFAULT_CONVERSATIONS
    messages_per_conversation: int = DEFAULT_MESSAGES_PER_CONVERSATION
    resource_id: str = DEMO_RESOURCE_IDS[0]
    beat: bool = False
    flower: bool = False
    seed: int = 7
    threads: int = DEFAULT_THREADS
    drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S
    turn_delay_ms: float = DEFAULT_TURN_DELAY_MS
    keep: bool = False


@dataclass
class DemoReport:
    """Everything the demo measured; ``as_dict`` is the ``--json`` output."""

    resource_id: str
    memories: int = 0
    messages_appended: int = 0
    redactions: int = 0
    tokens_before: int = 0
    tokens_after: int = 0
    flushes_requested: int = 0
    flush_outcomes: dict[str, int] = field(default_factory=dict)
    trimmed: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    settled: bool = False
    duration_s: float = 0.0
    services: dict[str, Any] = field(default_factory=dict)
    flower: dict[str, Any] | None = None
    context_key: str = ""
    context: list[Message] = field(default_factory=list)
    leftover_pids: list[int] = field(default_factory=list)
    events_error: str | None = None

    @property
    def flushes_run(self) -> int:
        return self.flush_outcomes.get("committed", 0)

    @property
    def messages_trimmed(self) -> int:
        return sum(self.trimmed.values())

    @property
    def pids(self) -> list[int]:
        return sorted({pid for pids in self.services.get("pids", {}).values() for pid in pids})

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.settled and not self.leftover_pids,
            "resource": self.resource_id,
            "memories": self.memories,
            "messages_appended": self.messages_appended,
            "redactions": self.redactions,
            "flushes_requested": self.flushes_requested,
            "flushes_run": self.flushes_run,
            "flush_outcomes": self.flush_outcomes,
            "messages_trimmed": self.messages_trimmed,
            "trimmed": self.trimmed,
            "tokens_before": self.tokens_before,
            "tokens_after": self.tokens_after,
            "task_latency_ms": {
                "p50": percentile(self.latencies_ms, 50),
                "p95": percentile(self.latencies_ms, 95),
                "samples": len(self.latencies_ms),
                "events_error": self.events_error,
            },
            "settled": self.settled,
            "duration_s": round(self.duration_s, 3),
            "services": self.services,
            "pids": self.pids,
            "leftover_pids": self.leftover_pids,
            "flower": self.flower,
            "context": {
                "memory_id": self.context_key,
                "messages": [_context_row(m) for m in self.context],
            },
        }


def _context_row(message: Message) -> dict[str, Any]:
    return {
        "role": message.role.value,
        "content": message.content,
        "token_count": message.token_count,
        "summary": bool(message.metadata.get("summary")),
        "tool_calls": len(message.tool_calls or []),
        "tool_call_id": message.tool_call_id,
    }


# ---- set-up --------------------------------------------------------------------------------


def demo_settings(base: Settings, resource_id: str, workdir: Path) -> Settings:
    """Settings whose resource directory holds ``resource_id``: the demo's own set (written to
    ``workdir``) for a demo id, else the configured ``MEMORY_RESOURCES_DIR``."""
    demo_dir = workdir / "resources"
    demo_dir.mkdir(parents=True, exist_ok=True)
    (demo_dir / "demo.yaml").write_text(DEMO_RESOURCES_YAML, encoding="utf-8")
    if resource_id in DEMO_RESOURCE_IDS:
        return base.replace(resources_dir=demo_dir)
    configured = Path(base.resources_dir).resolve()
    try:
        registry = ResourceRegistry.from_directory(configured)
    except ConfigError:
        if configured.is_dir():
            raise  # a broken file is worth reporting as such
        raise ResourceNotFound(resource_id, list(DEMO_RESOURCE_IDS)) from None
    if resource_id not in registry:
        raise ResourceNotFound(resource_id, [*DEMO_RESOURCE_IDS, *registry.ids()])
    return base.replace(resources_dir=configured)


# ---- the simulation ------------------------------------------------------------------------


@dataclass
class _Tally:
    appended: int = 0
    tokens: int = 0
    flushes: int = 0
    redacted: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def simulate(
    client: MemoryClient,
    resource_id: str,
    conversations: list[Conversation],
    threads: int,
    progress: Progress | None = None,
    turn_delay_s: float = 0.0,
) -> tuple[list[Memory], _Tally]:
    """Append every conversation's messages, turn by turn, from ``threads`` threads. Each thread
    interleaves its conversations, as an agent serving several users at once would."""
    memories = [client.memory(resource_id, conv.context) for conv in conversations]
    resource = memories[0].resource if memories else client.registry.get(resource_id)
    redactor, counter = client.redactor_for(resource), client.counter_for(resource)
    tally = _Tally()
    errors: list[BaseException] = []

    def stored_tokens(raw: dict[str, Any]) -> int:
        # The same steps the client takes before storing, so "tokens before" is exact.
        message = Message.model_validate(raw)
        if not redactor.is_persistable(message.role.value):
            return 0
        if redactor.enabled:
            message, _hits = redactor.redact_message(message)
        return counter.count_message(message)

    def run(share: list[int]) -> None:
        try:
            cursors = dict.fromkeys(share, 0)
            while cursors and not stop.is_set():
                for index in list(cursors):
                    raw = conversations[index].messages[cursors[index]]
                    result = memories[index].append(raw)
                    tokens = stored_tokens(raw) if result.stored else 0
                    with tally.lock:
                        tally.appended += result.appended
                        tally.tokens += tokens
                        tally.flushes += int(result.flush_requested)
                        tally.redacted += result.redacted
                    if progress is not None:
                        progress(1)
                    cursors[index] += 1
                    if cursors[index] == len(conversations[index].messages):
                        del cursors[index]
                    if turn_delay_s:
                        time.sleep(turn_delay_s)
        except BaseException as exc:
            errors.append(exc)

    stop = threading.Event()
    shares = [list(range(i, len(conversations), threads)) for i in range(threads)]
    pool = [
        threading.Thread(target=run, args=(s,), name=f"demo-agent-{i}")
        for i, s in enumerate(shares)
        if s
    ]
    for thread in pool:
        thread.start()
    try:
        for thread in pool:
            while thread.is_alive():
                thread.join(POLL_INTERVAL_S)
                raise_if_shutdown_requested()
    finally:
        # Ctrl-C lands in the main thread: tell the agents to stop before the services go.
        stop.set()
        for thread in pool:
            thread.join()
    if errors:
        raise errors[0]
    return memories, tally


def _drain(
    client: MemoryClient,
    memories: list[Memory],
    events: TaskEvents,
    services: Services,
    timeout_s: float,
) -> bool:
    """Wait until no memory has a flush pending and the queues are empty; True if that happened
    before ``timeout_s``. A service dying meanwhile is an error."""
    settings = client.settings
    broker_url = settings.broker_dsn()
    broker = (
        inspect.client_for_url(broker_url, timeout_s=settings.socket_timeout_s)
        if urlsplit(broker_url).scheme in ("redis", "rediss", "unix")
        else None  # another broker: rely on the flush markers alone
    )
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            raise_if_shutdown_requested()
            dead = services.dead()
            if dead:
                tail = dead[0].log_tail()
                raise ServiceError(
                    f"{dead[0].name} exited with code {dead[0].popen.returncode} during the demo"
                    + (f"; last log lines:\n{tail}" if tail else "")
                )
            with translate_errors("demo drain"):
                pending = inspect.flushes_pending(client.redis, (m.keys.flush for m in memories))
                backlog = sum(inspect.queue_lengths(broker, QUEUES)[0].values()) if broker else 0
            if not pending and not backlog:
                break
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL_INTERVAL_S)
        # Markers clear inside the commit, a moment before the task's success event is sent.
        grace = time.monotonic() + EVENTS_GRACE_S
        while events.open_flushes() and time.monotonic() < grace:
            raise_if_shutdown_requested()
            time.sleep(POLL_INTERVAL_S)
        return True
    finally:
        if broker is not None:
            broker.close()


# ---- the run -------------------------------------------------------------------------------


@dataclass
class DemoHooks:
    """Optional callbacks for a front end (the CLI's progress bar and status lines)."""

    status: Callable[[str], None] = lambda text: None
    progress_start: Callable[[int], Progress | None] = lambda total: None
    progress_stop: Callable[[], None] = lambda: None


def run_demo(base: Settings, options: DemoOptions, hooks: DemoHooks | None = None) -> DemoReport:
    """Run the demo; every process it started is stopped before this returns or raises."""
    hooks = hooks or DemoHooks()
    started = time.monotonic()
    report = DemoReport(resource_id=options.resource_id)
    run_id = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="memory-engine-demo-") as tmp:
        workdir = Path(tmp)
        settings = demo_settings(base, options.resource_id, workdir)
        logs = workdir / "logs"
        logs.mkdir()
        with Services(settings, log_dir=logs) as services:
            try:
                _run(services, options, run_id, report, hooks)
            finally:
                report.services = {**describe(services), "worker_node": _nodename(run_id)}
        report.leftover_pids = [pid for pid in report.pids if pid_alive(pid)]
    report.duration_s = time.monotonic() - started
    return report


def _run(
    services: Services, options: DemoOptions, run_id: str, report: DemoReport, hooks: DemoHooks
) -> None:
    settings = services.ensure_redis()
    where = "embedded Redis" if services.redis is not None else "the configured Redis"
    hooks.status(f"Redis: {where} at {describe(services)['redis_url']}")
    producer = TaskProducer(settings)
    events = TaskEvents(producer.app)
    events.start()
    try:
        nodename = _nodename(run_id)
        worker = services.start_worker(nodename=nodename)
        if options.beat:
            services.start_beat()
        flower = None
        if options.flower:
            report.flower = flower_credentials(settings, services, user="demo")
            report.flower["port"] = free_port()
            flower = services.start_flower(port=report.flower["port"])
        services.wait_for_worker(worker, nodename)
        hooks.status(f"Worker {nodename} answered a ping (pid {worker.pid})")
        if flower is not None and report.flower is not None:
            services.wait_for_port(flower, report.flower["port"])
            report.flower["url"] = f"http://127.0.0.1:{report.flower['port']}/"
            hooks.status(f"Flower at {report.flower['url']} (user {report.flower['user']})")
        deadline = time.monotonic() + EVENTS_READY_TIMEOUT_S
        while not events.seen_host(nodename) and time.monotonic() < deadline:
            raise_if_shutdown_requested()
            time.sleep(POLL_INTERVAL_S)
        conversations = [
            make_conversation(i, options.messages_per_conversation, options.seed, run_id)
            for i in range(options.conversations)
        ]
        total = sum(len(c.messages) for c in conversations)
        with MemoryClient(settings) as client:
            progress = hooks.progress_start(total)
            try:
                memories, tally = simulate(
                    client,
                    options.resource_id,
                    conversations,
                    options.threads,
                    progress,
                    turn_delay_s=options.turn_delay_ms / 1000,
                )
            finally:
                hooks.progress_stop()
            hooks.status("Waiting for the flushes to finish")
            report.settled = _drain(client, memories, events, services, options.drain_timeout_s)
            _measure(report, memories, tally)
            if memories:
                report.context_key = memories[0].key
                report.context = memories[0].context()
            if services.redis is None and not options.keep:
                for memory in memories:
                    memory.delete()
    finally:
        events.stop()
        producer.close()
    report.flush_outcomes, report.latencies_ms = events.results()
    report.events_error = events.error


def _nodename(run_id: str) -> str:
    return f"demo-{run_id}@{socket.gethostname()}"


def _measure(report: DemoReport, memories: list[Memory], tally: _Tally) -> None:
    report.memories = len(memories)
    report.messages_appended = tally.appended
    report.tokens_before = tally.tokens
    report.flushes_requested = tally.flushes
    report.redactions = tally.redacted
    trimmed = Counter[str]()
    after = 0
    for memory in memories:
        stats = memory.stats()
        trimmed["flushed"] += stats.flushed_count
        trimmed["summarized"] += stats.summarized_count
        trimmed["evicted"] += stats.evicted_count
        after += stats.token_count + stats.summary_tokens
    report.trimmed = dict(trimmed)
    report.tokens_after = after
