"""``memory-engine subject export|erase --project P SUBJECT``: a data subject's memories as JSON
Lines, or their erasure (``docs/data-protection.md``). The subject is hashed with
``MEMORY_SUBJECT_SALT`` as the clients do; it is never printed back."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from memory_engine.tooling.cli_support import (
    JsonOption,
    cli_client,
    emit_json,
    handled,
    kv_table,
    stdout_console,
)

__all__ = ["subject_app"]

subject_app = typer.Typer(help="Export or erase the memories of one data subject.")

SubjectArg = Annotated[
    str, typer.Argument(help="The data subject (what subject_template renders).")
]
ProjectOption = Annotated[
    str | None,
    typer.Option("--project", "-p", help="Project id (default: MEMORY_DEFAULT_PROJECT_ID)."),
]


@subject_app.command("export")
@handled
def export(subject: SubjectArg, project: ProjectOption = None) -> None:
    """Print every memory of SUBJECT as JSON Lines: one object per memory (id, resource, stats,
    summary, messages, archive)."""
    with cli_client() as client:
        for record in client.export_subject(subject, project):
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        sys.stdout.flush()


@subject_app.command("erase")
@handled
def erase(
    subject: SubjectArg,
    project: ProjectOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Erase every memory of SUBJECT (messages, summaries, archives, index entries) and record
    the erasure (subject hash, time, counts) in <prefix>:erasures."""
    if not yes and not json_output:
        typer.confirm(
            f"Erase every memory of this subject in project {project or 'default'}?", abort=True
        )
    with cli_client() as client:
        report = client.erase_subject(subject, project)
    data = {"ok": True, **report.model_dump(mode="json")}
    if json_output:
        emit_json(data)
        return
    rows = [(name, value) for name, value in data.items() if name != "ok"]
    stdout_console().print(kv_table("Erasure", rows))
