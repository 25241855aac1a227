"""How the demo looks in a terminal: live progress and the final report, drawn with rich.
The run itself (:mod:`memory_engine.tooling.demo`) only calls :class:`DemoHooks` and returns a
:class:`DemoReport`; ``--json`` prints the report without this module."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from memory_engine.core.context import SUMMARY_TAG
from memory_engine.tooling.demo import CONTEXT_PREVIEW_CHARS, DemoHooks, DemoReport

__all__ = ["render_report", "rich_hooks"]


def rich_hooks(console: Any) -> DemoHooks:
    """Status lines and a progress bar on ``console`` (a rich Console, normally stderr)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    state: dict[str, Any] = {}

    def start(total: int) -> Callable[[int], None]:
        bar = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        task = bar.add_task("Appending messages", total=total)
        bar.start()
        state["bar"] = bar
        return lambda n: bar.advance(task, n)

    def stop() -> None:
        bar = state.pop("bar", None)
        if bar is not None:
            bar.stop()

    return DemoHooks(status=console.print, progress_start=start, progress_stop=stop)


def render_report(report: DemoReport, console: Any) -> None:
    """The summary table, one memory's context window, and what was stopped."""
    from rich.table import Table
    from rich.text import Text

    data = report.as_dict()
    latency = data["task_latency_ms"]
    p50, p95 = _ms(latency["p50"]), _ms(latency["p95"])
    before, after = report.tokens_before, report.tokens_after
    saved = f" ({100 * (before - after) / before:.0f}% less)" if before else ""
    trimmed = ", ".join(f"{kind} {count}" for kind, count in report.trimmed.items())
    title = f"Demo summary: {report.resource_id}"
    summary = Table(title=title, show_header=False, title_justify="left")
    summary.add_column(style="bold")
    summary.add_column(justify="right")
    rows = [
        ("memories", report.memories),
        ("messages appended", report.messages_appended),
        ("e-mail addresses redacted", report.redactions),
        ("flushes requested by appends", report.flushes_requested),
        ("flushes run (committed)", report.flushes_run),
        ("messages trimmed", f"{report.messages_trimmed} ({trimmed})"),
        ("tokens before (appended)", before),
        ("tokens after (messages + summaries)", f"{after}{saved}"),
        ("task latency p50 / p95", f"{p50} / {p95} ({latency['samples']} flushes)"),
        ("duration", f"{report.duration_s:.1f} s"),
    ]
    for name, value in rows:
        summary.add_row(name, str(value))
    console.print(summary)
    window = Table(title=f"context() of {report.context_key}", title_justify="left")
    for column in ("role", "tokens", "content"):
        window.add_column(column)
    for message in report.context:
        content = " ".join(message.content.split())
        if message.tool_calls:
            names = ", ".join(str(c.get("function", {}).get("name")) for c in message.tool_calls)
            content = f"[tool call: {names}]"
        label = "summary" if message.metadata.get("summary") else message.role.value
        if label == "summary":  # preview what was summarized, not the notice that quotes it
            content = content.split(f"<{SUMMARY_TAG}>", 1)[-1].strip()
        window.add_row(label, str(message.token_count), Text(content[:CONTEXT_PREVIEW_CHARS]))
    console.print(window)
    pids = ", ".join(f"{name} {pids}" for name, pids in report.services.get("pids", {}).items())
    if report.leftover_pids:
        console.print(Text(f"still running: {report.leftover_pids}", style="red"))
    else:
        console.print(f"Stopped everything the demo started ({pids}).")
    if not report.settled:
        console.print(Text("flushes were still pending at the drain deadline", style="yellow"))


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"
