"""The ``memory-engine`` command: inspect and operate memories, run the services and the demo.

Every command takes ``--json`` (one JSON document on stdout, errors included) and exits with
``0`` ok, ``1`` failure or unhealthy, ``2`` usage or configuration error (bad option, invalid YAML,
unknown resource, bad ``--context``), ``3`` Redis unavailable. Settings come from ``MEMORY_*``
environment variables. This module holds the commands about resources and memories; the
service commands (``up``, ``demo``, ``worker``, ``beat``, ``flower``) live in
:mod:`memory_engine.tooling.cli_services`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from memory_engine.errors import ConfigError
from memory_engine.tooling.cli_keys import keys_app
from memory_engine.tooling.cli_server import server_app
from memory_engine.tooling.cli_services import services_app
from memory_engine.tooling.cli_subject import subject_app
from memory_engine.tooling.cli_support import (
    EXIT_FAILURE,
    EXIT_USAGE,
    ContextOption,
    JsonOption,
    KeyOption,
    ResourceArg,
    ResourceOption,
    UsageProblem,
    cli_client,
    cli_settings,
    emit_json,
    fmt_time,
    handled,
    kv_table,
    preview,
    resolve_memory,
    stderr_console,
    stdout_console,
)

__all__ = ["app", "main"]

STATS_TOP_DEFAULT = 10
STATS_SAMPLE_DEFAULT = 200
_STAT_FIELDS = (
    "message_count",
    "token_count",
    "summary_tokens",
    "flushed",
    "summarized",
    "evicted",
)

app = typer.Typer(
    name="memory-engine",
    help="Conversation memory for LLM agents: inspect memories, run workers, Beat, Flower, demo.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
resources_app = typer.Typer(help="Memory resources (YAML files).", no_args_is_help=True)
app.add_typer(resources_app, name="resources")
app.add_typer(services_app)
app.add_typer(server_app)
app.add_typer(keys_app, name="keys")
app.add_typer(subject_app, name="subject")


# ---- resources -------------------------------------------------------------------------------


def _resource_row(resource: Any, source: str) -> dict[str, Any]:
    return {
        "id": resource.id,
        "type": resource.type.value,
        "max_tokens": resource.effective_max_tokens,
        "max_messages": resource.max_messages,
        "flushing": resource.flushing.type.value,
        "eviction": resource.eviction.policy.value,
        "ttl_s": resource.ttl_s,
        "key_template": resource.default_key_template,
        "source": source,
    }


@resources_app.command("list")
@handled
def resources_list(json_output: JsonOption = False) -> None:
    """List the resources in MEMORY_RESOURCES_DIR."""
    from memory_engine.registry import ResourceRegistry

    settings = cli_settings()
    registry = ResourceRegistry.from_directory(settings.resources_dir)
    rows = [_resource_row(r, registry.source_of(r.id)) for r in registry]
    if json_output:
        emit_json({"ok": True, "directory": str(settings.resources_dir), "resources": rows})
        return
    table = Table(title=f"Resources in {settings.resources_dir}", title_justify="left")
    for column in ("id", "type", "max_tokens", "max_messages", "flushing", "ttl_s", "template"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["id"],
            row["type"],
            str(row["max_tokens"] or "-"),
            str(row["max_messages"] or "-"),
            row["flushing"],
            str(row["ttl_s"]),
            row["key_template"] or "-",
        )
    stdout_console().print(table)


@resources_app.command("validate")
@handled
def resources_validate(
    path: Annotated[Path, typer.Argument(help="A resource YAML file or a directory of them.")],
    json_output: JsonOption = False,
) -> None:
    """Validate resource YAML; every problem names its file, line or field path. Exit 2 if any."""
    from memory_engine.registry import (
        RESOURCE_FILE_SUFFIXES,
        ResourceRegistry,
        load_resource_file,
    )

    if path.is_dir():
        files = sorted(
            p for p in path.iterdir() if p.suffix.lower() in RESOURCE_FILE_SUFFIXES and p.is_file()
        )
    elif path.exists():
        files = [path]
    else:
        raise UsageProblem(f"{path} does not exist")
    errors: list[dict[str, Any]] = []
    found: list[dict[str, Any]] = []
    for file in files:
        try:
            found += [{"id": r.id, "source": str(file)} for r in load_resource_file(file)]
        except ConfigError as exc:
            errors.append({"source": exc.source, "field": exc.field, "message": str(exc)})
    if not errors:
        try:  # duplicate ids across files
            if path.is_dir():
                ResourceRegistry.from_directory(path)
            else:
                ResourceRegistry.from_sources((r, str(path)) for r in load_resource_file(path))
        except ConfigError as exc:
            errors.append({"source": exc.source, "field": exc.field, "message": str(exc)})
    valid = not errors
    if json_output:
        result = {"valid": valid, "path": str(path), "resources": found, "errors": errors}
        emit_json({"ok": valid, **result})
    else:
        out = stdout_console()
        for error in errors:
            stderr_console().print(Text.assemble(("invalid", "red"), f": {error['message']}"))
        if valid:
            ids = ", ".join(r["id"] for r in found) or "no resources"
            out.print(f"valid: {len(files)} file(s), {len(found)} resource(s): {ids}")
    if not valid:
        raise typer.Exit(EXIT_USAGE)


@resources_app.command("migrate")
@handled
def resources_migrate(
    files: Annotated[
        list[Path], typer.Argument(help="Resource YAML files written for Compozy's Go engine.")
    ],
    write: Annotated[
        bool, typer.Option("--write", help="Rewrite the files instead of printing a diff.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Translate Compozy resource files to this schema: print a unified diff (or --write).

    Go-template keys become Jinja2 ({{.a.b}} -> {{ a.b }}), key -> default_key_template,
    flushing_strategy.threshold -> flushing.summarize_threshold, eviction_policy.type ->
    eviction.policy, and fields Compozy never read are removed (each with a note on stderr).
    Exit 2 if any file cannot be translated (the reason names the field); nothing is written
    for that file.
    """
    import difflib
    import sys

    from memory_engine.migrate import migrate_resource_text

    reports: list[dict[str, Any]] = []
    for path in files:
        report: dict[str, Any] = {"path": str(path), "changed": False, "notes": []}
        reports.append(report)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            report["error"] = f"{path}: cannot read: {exc}"
            continue
        try:
            migration = migrate_resource_text(text)
        except ConfigError as exc:
            report["error"] = f"{path}: {exc}"
            continue
        diff = "".join(
            difflib.unified_diff(
                text.splitlines(keepends=True),
                migration.text.splitlines(keepends=True),
                fromfile=str(path),
                tofile=f"{path} (migrated)",
            )
        )
        report.update(changed=migration.changed, notes=list(migration.notes), diff=diff)
        if write and migration.changed:
            path.write_text(migration.text, encoding="utf-8")
            report["written"] = True
    failed = [r for r in reports if "error" in r]
    if json_output:
        emit_json({"ok": not failed, "write": write, "files": reports})
    else:
        out, err = stdout_console(), stderr_console()
        for report in reports:
            if "error" in report:
                err.print(Text.assemble(("cannot migrate", "red"), f": {report['error']}"))
                continue
            for note in report["notes"]:
                err.print(f"{report['path']}: {note}")
            if write:
                state = "rewritten" if report.get("written") else "already in this schema"
                out.print(f"{report['path']}: {state}")
            elif report["diff"]:
                sys.stdout.write(report["diff"])  # as it is: a patch can be applied
            else:
                err.print(f"{report['path']}: already in this schema")
    if failed:
        raise typer.Exit(EXIT_USAGE)


# ---- one memory --------------------------------------------------------------------------------


@app.command()
@handled
def inspect(
    resource: ResourceArg = None,
    context: ContextOption = None,
    key: KeyOption = None,
    resource_opt: ResourceOption = None,
    json_output: JsonOption = False,
) -> None:
    """Counts, tokens, % of budget, TTL, summary point, flush pending, last flush of a memory."""
    with cli_client() as client:
        memory = resolve_memory(client, resource or resource_opt, context, key)
        stats = memory.stats()
    exists = stats.ttl_s != -2
    data = {"ok": exists, "exists": exists, **stats.model_dump(mode="json")}
    data["budget_used_percent"] = (
        round(stats.budget_used * 100, 1) if stats.budget_used is not None else None
    )
    if json_output:
        emit_json(data)
    else:
        ttl = "none" if stats.ttl_s == -1 else ("gone" if stats.ttl_s == -2 else f"{stats.ttl_s}s")
        budget = data["budget_used_percent"]
        limit = stats.max_tokens or "-"
        trimmed = (
            f"flushed {stats.flushed_count}, summarized {stats.summarized_count}, "
            f"evicted {stats.evicted_count}"
        )
        rows: list[tuple[str, Any]] = [
            ("resource", stats.resource_id),
            ("messages", f"{stats.message_count} / {stats.max_messages or '-'}"),
            ("tokens", f"{stats.token_count} + summary {stats.summary_tokens} / {limit}"),
            ("budget used", f"{budget}%" if budget is not None else "-"),
            ("ttl", ttl),
            ("summary point", f"seq {stats.summary_point}"),
            ("flush pending", stats.flush_pending),
            ("last flush", fmt_time(stats.last_flush_at)),
            ("trimmed", trimmed),
            ("last seq / epoch", f"{stats.last_seq} / {stats.epoch}"),
        ]
        stdout_console().print(kv_table(f"Memory {stats.key}", rows))
        if not exists:
            stderr_console().print("this memory does not exist (nothing stored, or it expired)")
    if not exists:
        raise typer.Exit(EXIT_FAILURE)


@app.command()
@handled
def read(
    resource: ResourceArg = None,
    context: ContextOption = None,
    key: KeyOption = None,
    resource_opt: ResourceOption = None,
    offset: Annotated[int, typer.Option(min=0, help="First message, 0 = oldest.")] = 0,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Messages per page.")] = 50,
    json_output: JsonOption = False,
) -> None:
    """Read a page of a memory's messages, oldest first (the summary: see `inspect`)."""
    with cli_client() as client:
        memory = resolve_memory(client, resource or resource_opt, context, key)
        # An operator's look is not a use: it must not change what an LRU flush drops.
        page = memory.read_page(offset, limit, record_use=False)
    if json_output:
        emit_json({"ok": True, "memory_id": memory.key, **page.model_dump(mode="json")})
        return
    table = Table(
        title=f"{memory.key}: {offset + 1}-{offset + len(page.messages)} of {page.total}",
        title_justify="left",
    )
    for column in ("seq", "role", "tokens", "content"):
        table.add_column(column)
    for m in page.messages:
        content = m.content or (f"[{len(m.tool_calls or [])} tool call(s)]" if m.tool_calls else "")
        table.add_row(str(m.seq), m.role.value, str(m.token_count), Text(preview(content)))
    stdout_console().print(table)


@app.command()
@handled
def flush(
    resource: ResourceArg = None,
    context: ContextOption = None,
    key: KeyOption = None,
    resource_opt: ResourceOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report, change nothing.")] = False,
    strategy: Annotated[
        str | None, typer.Option(help="Flush strategy instead of the resource's.")
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Flush a memory now, inline (the same code the memory.flush task runs)."""
    with cli_client() as client:
        memory = resolve_memory(client, resource or resource_opt, context, key)
        try:
            result = memory.flush(strategy=strategy, dry_run=dry_run)
        except KeyError as exc:  # unknown strategy name
            raise UsageProblem(f"unknown flush strategy {strategy!r}: {exc}") from exc
    data = {"ok": True, **result.model_dump(mode="json")}
    if json_output:
        emit_json(data)
        return
    verb = "would remove" if dry_run else "removed"
    stdout_console().print(
        f"{result.status.value}: {verb} {result.removed} message(s) "
        f"(summarized {result.summarized}, dropped {result.dropped}, evicted {result.evicted}); "
        f"now {result.message_count} messages / {result.token_count} tokens"
        + (f"; seqs {result.would_remove}" if dry_run and result.would_remove else "")
    )


# ---- across memories ---------------------------------------------------------------------------


@app.command()
@handled
def stats(
    top: Annotated[int, typer.Option(min=0, max=1000, help="Most recent memories listed.")] = (
        STATS_TOP_DEFAULT
    ),
    sample: Annotated[
        int, typer.Option(min=1, max=10_000, help="Most recent memories summed for totals.")
    ] = STATS_SAMPLE_DEFAULT,
    json_output: JsonOption = False,
) -> None:
    """Totals across memories through the indexes (no KEYS, no SCAN): counts of the access,
    expiry and pending indexes, the most recently written memories, and sums over a sample."""
    from memory_engine.store import translate_errors

    with cli_client() as client:
        ks, r = client.keyspace, client.redis
        with translate_errors("stats"):
            pipe = r.pipeline(transaction=False)
            pipe.zcard(ks.access_index)
            pipe.zcard(ks.expiry_index)
            pipe.zcard(ks.pending_index)
            pipe.zrevrange(ks.access_index, 0, max(top, sample) - 1, withscores=True)
            memories, expiring, pending, recent = pipe.execute()
            ids = [(_text(member), float(score)) for member, score in recent]
            pipe = r.pipeline(transaction=False)
            for memory_id, _ in ids:
                pipe.hmget(ks.memory(memory_id).meta, "resource_id", *_STAT_FIELDS)
            metas = pipe.execute()
    rows: list[dict[str, Any]] = []
    for (memory_id, last_write), (resource_id, *counts) in zip(ids, metas):
        row: dict[str, Any] = {
            "memory_id": memory_id,
            "resource_id": _text(resource_id) if resource_id else None,
            "last_write_at": last_write,
        }
        row.update({name: int(value or 0) for name, value in zip(_STAT_FIELDS, counts)})
        rows.append(row)
    sampled = rows[:sample]
    totals = {name: sum(int(row[name]) for row in sampled) for name in _STAT_FIELDS}
    data = {
        "ok": True,
        "memories": int(memories),
        "with_expiry": int(expiring),
        "flush_pending": int(pending),
        "sampled": len(sampled),
        "totals": totals,
        "recent": rows[:top],
    }
    if json_output:
        emit_json(data)
        return
    out = stdout_console()
    summed = ", ".join(f"{name} {value}" for name, value in totals.items())
    overview = [
        ("memories (access index)", data["memories"]),
        ("with expiry (expiry index)", data["with_expiry"]),
        ("flush pending (pending index)", data["flush_pending"]),
        (f"totals over the {len(sampled)} most recent", summed),
    ]
    out.print(kv_table("Memories", overview))
    if top and rows:
        table = Table(title="Most recently written", title_justify="left")
        for column in ("memory", "resource", "messages", "tokens", "last write"):
            table.add_column(column)
        for row in rows[:top]:
            table.add_row(
                row["memory_id"],
                str(row["resource_id"]),
                str(row["message_count"]),
                str(row["token_count"]),
                fmt_time(row["last_write_at"]),
            )
        out.print(table)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@app.command()
@handled
def cleanup(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count, remove nothing.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Remove leftovers of expired memories (through the expiry index)."""
    from memory_engine.engine import maintenance

    with cli_client() as client:
        if json_output:
            report = maintenance.cleanup(client, dry_run=dry_run)
        else:
            with stderr_console().status("cleaning up expired memories"):
                report = maintenance.cleanup(client, dry_run=dry_run)
    data = {"ok": True, **report.as_dict()}
    if json_output:
        emit_json(data)
        return
    verb = "would remove" if dry_run else "removed"
    stdout_console().print(
        f"{verb} {report.expired_removed} expired memories ({report.keys_unlinked} keys); "
        f"re-indexed {report.reindexed}"
    )


@app.command()
@handled
def health(
    require_beat: Annotated[
        bool, typer.Option("--require-beat", help="Fail when no Beat ever ran.")
    ] = False,
    timeout: Annotated[float, typer.Option(min=0.1, help="Ping timeout, seconds.")] = 1.0,
    max_backlog: Annotated[int, typer.Option(min=0, help="Queued tasks that count as failure.")] = (
        10_000
    ),
    json_output: JsonOption = False,
) -> None:
    """Check Redis, the broker, workers, Beat, queues and breakers. Exit 0 healthy, 1 not."""
    from memory_engine.tooling.health import CheckStatus, check_health

    report = check_health(
        cli_settings(), require_beat=require_beat, ping_timeout_s=timeout, max_backlog=max_backlog
    )
    if json_output:
        emit_json({"ok": report.healthy, **report.as_dict()})
    else:
        colour = {CheckStatus.OK: "green", CheckStatus.WARN: "yellow", CheckStatus.FAIL: "red"}
        table = Table(title="healthy" if report.healthy else "UNHEALTHY", title_justify="left")
        table.add_column("check")
        table.add_column("status")
        table.add_column("detail")
        for check in report.checks:
            style = colour.get(check.status, "dim")
            table.add_row(check.name, Text(check.status.value, style=style), check.detail)
        stdout_console().print(table)
    if not report.healthy:
        raise typer.Exit(EXIT_FAILURE)


def main() -> None:
    """Console-script entry point (``memory-engine``)."""
    app()


if __name__ == "__main__":
    main()
