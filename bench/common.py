"""Shared machinery of the benchmark scripts: a Redis to measure against, the bench resources,
unique message texts, an alternating runner, percentiles, tables and the JSON record.

Every script follows one protocol, because these machines are noisy:

- contenders run in *blocks* (a fixed number of operations per thread), and the blocks of one run
  alternate between contenders, the order rotating each round, so drift hits them all alike;
- a figure is the *median over rounds* of its per-block value (p50, p99, ops/s), and a ratio is the
  median of the per-round ratios (paired: both sides measured moments apart);
- every script prints a table and writes ``bench/results/<name>.json`` with the command, the
  machine and the date.

Redis: an :class:`~memory_engine.tooling.embedded_redis.EmbeddedRedis` (a private ``redis-server``
on a free
port) unless ``MEMORY_REDIS_URL`` is set. A server given that way must be disposable: the scripts
use their own key prefixes and delete what they create, but the trigger-storm and flush benchmarks
use the next database number as the Celery broker and empty it.
"""

from __future__ import annotations

import atexit
import datetime as dt
import importlib.metadata
import itertools
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.markup import escape
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/x.py` puts bench/ first, not the project root
    sys.path.insert(0, str(ROOT))

from memory_engine.client import MemoryClient  # noqa: E402
from memory_engine.settings import Settings  # noqa: E402
from memory_engine.tooling.embedded_redis import EmbeddedRedis, find_redis_server  # noqa: E402

__all__ = [
    "BENCH_RESOURCES_YAML",
    "RESULTS_DIR",
    "ROOT",
    "Contender",
    "Report",
    "Sample",
    "Target",
    "TextSource",
    "alternate",
    "bench_client",
    "bench_settings",
    "broker_url_for",
    "console",
    "delete_prefix",
    "elapsed_s",
    "machine_info",
    "median",
    "paired_ratio",
    "percentile",
    "print_table",
    "redis_server",
    "resources_dir",
    "run_block",
    "summarize_samples",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TEXT_CHARS = 150
_TEXT_POOL_SIZE = 4096
_UNIQUE_PREFIX_CHARS = 8  # "0000042 " -- makes every text unique so no cache hides the work

# Wide enough for the result tables when output goes to a file or a pipe (rich assumes 80).
console = Console(width=None if sys.stdout.isatty() else 200)

# Resources the benchmarks use. Limits are far away unless a script is about flushing, so an
# append benchmark never pays for a flush it did not ask for.
BENCH_RESOURCES_YAML = """
resource: memory
id: bench-plain
type: message_count_based
max_messages: 10000000
persistence: {ttl: 1h}
default_key_template: "plain:{{ workflow.input.conv }}"
---
resource: memory
id: bench-redact
type: message_count_based
max_messages: 10000000
persistence: {ttl: 1h}
privacy_policy:
  redact_patterns:
    - '[\\w.+-]+@[\\w-]+\\.[\\w.-]+'
    - '\\b\\d{3}-\\d{2}-\\d{4}\\b'
default_key_template: "redact:{{ workflow.input.conv }}"
---
resource: memory
id: bench-fifo
type: message_count_based
max_messages: 1000
flushing: {type: simple_fifo, summarize_threshold: 0.8}
persistence: {ttl: 1h}
default_key_template: "fifo:{{ workflow.input.conv }}"
---
resource: memory
id: bench-hybrid
type: message_count_based
max_messages: 1000
flushing: {type: hybrid_summary, summarize_threshold: 0.8, summary_tokens: 200}
persistence: {ttl: 1h}
default_key_template: "hybrid:{{ workflow.input.conv }}"
---
resource: memory
id: bench-storm
type: message_count_based
max_messages: 100
flushing: {type: simple_fifo, summarize_threshold: 0.8}
persistence: {ttl: 1h}
default_key_template: "storm:{{ workflow.input.conv }}"
"""

_WORD_TEXT = (
    "the customer asked about order status refund shipping address invoice account password "
    "reset delivery window weekend support agent replied checked system found delay warehouse "
    "package tracking number update email confirmation tomorrow morning apologise inconvenience "
    "discount code applied next purchase thanks patience issue resolved ticket closed follow up"
)
_WORDS = tuple(_WORD_TEXT.split())


# ---- Redis -----------------------------------------------------------------------------------


@contextmanager
def redis_server() -> Iterator[str]:
    """URL of the Redis to measure: ``MEMORY_REDIS_URL`` if set, else a private one."""
    url = os.environ.get("MEMORY_REDIS_URL")
    if url:
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


def broker_url_for(redis_url: str) -> str:
    """The next database number of ``redis_url``: the benchmarks' Celery broker."""
    base, _, db = redis_url.rpartition("/")
    number = int(db) if db.isdigit() else 0
    return f"{base}/{number + 1}"


_resources_dir: Path | None = None


def resources_dir() -> Path:
    """A temporary directory holding :data:`BENCH_RESOURCES_YAML` (removed at exit)."""
    global _resources_dir
    if _resources_dir is None:
        path = Path(tempfile.mkdtemp(prefix="memory-engine-bench-"))
        (path / "bench.yaml").write_text(BENCH_RESOURCES_YAML, encoding="utf-8")
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        _resources_dir = path
    return _resources_dir


def bench_settings(redis_url: str, **changes: Any) -> Settings:
    """Settings for a benchmark: its own key prefix, the bench resources, generous timeouts."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "broker_url": broker_url_for(redis_url),
        "key_prefix": f"b{uuid.uuid4().hex[:8]}",
        "resources_dir": resources_dir(),
        "socket_timeout_s": 10.0,
    }
    values.update(changes)
    return Settings(**values)


def bench_client(redis_url: str, **changes: Any) -> MemoryClient:
    return MemoryClient(bench_settings(redis_url, **changes))


def delete_prefix(r: redis.Redis, prefix: str) -> int:
    """Delete every key under ``prefix`` (SCAN: a one-off teardown, never measured)."""
    removed = 0
    batch: list[bytes] = []
    for key in r.scan_iter(match=f"{prefix}:*", count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            removed += int(r.unlink(*batch))
            batch = []
    if batch:
        removed += int(r.unlink(*batch))
    return removed


# ---- messages --------------------------------------------------------------------------------


class TextSource:
    """Unique message texts of exactly ``chars`` characters, thread-safe.

    Every text starts with a distinct number, so the token counter's cache never hits (chat
    messages are unique in real use); the rest comes from a pool of random word sequences.
    ``email_every`` puts an e-mail address (a redaction match) in every n-th text.
    """

    def __init__(self, chars: int = TEXT_CHARS, *, seed: int = 7, email_every: int = 10) -> None:
        rng = random.Random(seed)
        body_chars = chars - _UNIQUE_PREFIX_CHARS
        pool: list[str] = []
        for _ in range(_TEXT_POOL_SIZE):
            words: list[str] = []
            while sum(len(w) + 1 for w in words) < body_chars:
                words.append(rng.choice(_WORDS))
            pool.append(" ".join(words)[:body_chars])
        self._pool = pool
        self._email_every = email_every
        self._chars = chars
        self._counter = itertools.count()

    def next(self) -> str:
        n = next(self._counter)  # atomic under the GIL: no lock for the contenders to queue on
        text = f"{n % 10**7:07d} " + self._pool[n % _TEXT_POOL_SIZE]
        if self._email_every and n % self._email_every == 0:
            text = text[: self._chars - 18] + " ann@example.com"
        return text[: self._chars]

    def message(self, role: str | None = None) -> dict[str, str]:
        text = self.next()
        return {"role": role or ("user" if len(text) % 2 else "assistant"), "content": text}


# ---- measuring -------------------------------------------------------------------------------


@dataclass
class Sample:
    """One block of one contender: per-operation latencies and the wall time of the block."""

    latencies_ns: list[int]
    wall_s: float

    @property
    def ops(self) -> int:
        return len(self.latencies_ns)

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.wall_s if self.wall_s > 0 else math.inf

    def p(self, q: float) -> float:
        """Latency percentile ``q`` (0-100) in microseconds."""
        return percentile(self.latencies_ns, q) / 1000.0


Op = Callable[[int, int], object]
"""One operation: called with (thread index, operation index within the thread's block)."""


@dataclass(frozen=True)
class Contender:
    name: str
    op: Op
    setup: Callable[[], None] | None = None  # run before each block, untimed


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0-100) of ``values``."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[min(rank, len(ordered)) - 1])


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def run_block(op: Op, ops_per_thread: int, threads: int = 1) -> Sample:
    """Run ``op`` ``ops_per_thread`` times on each of ``threads`` threads, started together."""
    if threads == 1:
        lat: list[int] = []
        clock = time.perf_counter_ns
        start = clock()
        for i in range(ops_per_thread):
            t0 = clock()
            op(0, i)
            lat.append(clock() - t0)
        return Sample(lat, (clock() - start) / 1e9)

    per_thread: list[list[int]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)

    def worker(index: int) -> None:
        clock = time.perf_counter_ns
        out = per_thread[index]
        barrier.wait()
        try:
            for i in range(ops_per_thread):
                t0 = clock()
                op(index, i)
                out.append(clock() - t0)
        except BaseException as exc:  # surfaced below: a benchmark must not hide failures
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter_ns()
    for t in pool:
        t.join()
    wall = (time.perf_counter_ns() - start) / 1e9
    if errors:
        raise errors[0]
    return Sample([x for lat in per_thread for x in lat], wall)


def alternate(
    contenders: Sequence[Contender],
    *,
    rounds: int,
    ops_per_thread: int,
    threads: int = 1,
    warmup_ops: int = 50,
) -> dict[str, list[Sample]]:
    """Run every contender once per round, the order rotating each round; return the samples."""
    for c in contenders:  # warm caches, connections, scripts, JIT-free but lazy imports
        if c.setup:
            c.setup()
        run_block(c.op, warmup_ops, threads)
    samples: dict[str, list[Sample]] = {c.name: [] for c in contenders}
    for r in range(rounds):
        shift = r % len(contenders)
        for c in [*contenders[shift:], *contenders[:shift]]:
            if c.setup:
                c.setup()
            samples[c.name].append(run_block(c.op, ops_per_thread, threads))
    return samples


def summarize_samples(samples: Sequence[Sample]) -> dict[str, float]:
    """Medians over rounds of the per-block p50, p99 and ops/s (latencies in microseconds)."""
    return {
        "p50_us": round(median([s.p(50) for s in samples]), 1),
        "p99_us": round(median([s.p(99) for s in samples]), 1),
        "ops_s": round(median([s.ops_per_s for s in samples]), 1),
        "blocks": len(samples),
        "ops_per_block": samples[0].ops if samples else 0,
    }


def paired_ratio(
    a: Sequence[Sample], b: Sequence[Sample], metric: Callable[[Sample], float]
) -> float:
    """Median over rounds of ``metric(a[r]) / metric(b[r])``."""
    return round(median([metric(x) / metric(y) for x, y in zip(a, b, strict=True)]), 3)


# ---- reporting -------------------------------------------------------------------------------


@dataclass
class Target:
    """A target of the issue: ``measured <op> limit``."""

    name: str
    measured: float
    limit: float
    op: str = "<="  # "<=" or ">=" or "=="
    unit: str = ""

    @property
    def met(self) -> bool:
        if self.op == "<=":
            return self.measured <= self.limit
        if self.op == ">=":
            return self.measured >= self.limit
        return self.measured == self.limit

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "measured": self.measured,
            "op": self.op,
            "limit": self.limit,
            "unit": self.unit,
            "met": self.met,
        }


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(redis_url: str | None = None) -> dict[str, Any]:
    """Cores, CPU, Python, Redis (binary and, when given, the server measured), packages."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cores": os.cpu_count(),
        "cpu": cpu or platform.processor(),
        "os": platform.platform(),
        "python": platform.python_version(),
        # Others share these machines: the load says how quiet the run was (1, 5, 15 min).
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "redis_server_binary": _run([find_redis_server(), "--version"]),
        "hiredis": bool(getattr(redis.utils, "HIREDIS_AVAILABLE", False)),
        "packages": {
            name: _version(name)
            for name in ("redis", "tiktoken", "pydantic", "celery", "langchain-community")
        },
    }
    if redis_url:
        r = redis.Redis.from_url(redis_url)
        try:
            server = r.info("server")
            info["redis_server_measured"] = server.get("redis_version")
            conn = r.connection_pool.get_connection()
            info["redis_py_protocol"] = f"RESP{conn.protocol or 2}"
            r.connection_pool.release(conn)
            info["redis_url_embedded"] = not bool(os.environ.get("MEMORY_REDIS_URL"))
        finally:
            r.close()
    return info


@dataclass
class Report:
    """What a script prints and writes to ``bench/results/<name>.json``."""

    name: str
    title: str
    config: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def finish(self, redis_url: str | None) -> Path:
        print_table(self.title, self.rows)
        if self.targets:
            print_table(
                "targets",
                [
                    {
                        "target": t.name,
                        "measured": f"{t.measured:g}{t.unit}",
                        "required": f"{t.op} {t.limit:g}{t.unit}",
                        "met": "yes" if t.met else "NO",
                    }
                    for t in self.targets
                ],
            )
        for note in self.notes:
            console.print(f"[dim]- {escape(note)}[/dim]")
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        # BENCH_TAG=x writes <name>-x.json: a variant run (another Redis, hiredis) kept apart.
        tag = os.environ.get("BENCH_TAG", "").strip()
        path = RESULTS_DIR / (f"{self.name}-{tag}.json" if tag else f"{self.name}.json")
        payload = {
            "name": self.name,
            "title": self.title,
            "command": " ".join(
                [
                    *(
                        f"{k}={os.environ[k]}"
                        for k in ("BENCH_TAG", "PYTHONPATH")
                        if k in os.environ
                    ),
                    ".venv/bin/python",
                    *sys.argv,
                ]
            ),
            "machine": machine_info(redis_url),
            "config": self.config,
            "results": self.rows,
            "targets": [t.as_dict() for t in self.targets],
            "notes": self.notes,
            **self.extra,
        }
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
        console.print(f"[dim]wrote {path.relative_to(ROOT)}[/dim]")
        return path


def print_table(title: str, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    table = Table(title=title, title_justify="left")
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    for col in columns:
        table.add_column(
            col,
            justify="left" if col in ("contender", "target", "case", "step", "script") else "right",
        )
    for row in rows:
        table.add_row(*[_fmt(row.get(col, "")) for col in columns])
    console.print(table)


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return escape(str(value))  # names like "[seq,...]" are text, not rich markup


def elapsed_s(fn: Callable[[], object]) -> tuple[float, object]:
    """Run ``fn`` once; (seconds, its result)."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out
