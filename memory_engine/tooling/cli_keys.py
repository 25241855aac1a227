"""The ``memory-engine keys`` commands: encryption at rest (docs/encryption.md).

``keys show`` lists the key ring's ids (never key material) and which key each kind of memory
gets; ``keys rotate`` enqueues ``memory.reencrypt`` (a worker re-encrypts every memory under
the keys the ring chooses now), or, with ``--inline``, runs it in this process."""

from __future__ import annotations

from typing import Annotated

import typer

from memory_engine.tooling.cli_support import (
    JsonOption,
    cli_client,
    cli_settings,
    emit_json,
    handled,
    kv_table,
    stdout_console,
)

__all__ = ["keys_app"]

keys_app = typer.Typer(help="Encryption at rest: the key ring and key rotation.")


def _require_keyring() -> None:
    from memory_engine.crypto import keyring_from_settings
    from memory_engine.errors import ConfigError

    if keyring_from_settings(cli_settings()) is None:
        raise ConfigError(
            "encryption at rest is off: set MEMORY_ENCRYPTION_KEYS (or "
            "MEMORY_ENCRYPTION_KEYS_FILE) and MEMORY_ENCRYPTION_ACTIVE_KEY"
        )


@keys_app.command("show")
@handled
def show(json_output: JsonOption = False) -> None:
    """The key ring's ids, the active key and each project's own key (no key material)."""
    from memory_engine.crypto import keyring_from_settings

    keyring = keyring_from_settings(cli_settings())
    if keyring is None:
        if json_output:
            emit_json({"ok": True, "enabled": False})
        else:
            stdout_console().print("encryption at rest is off (MEMORY_ENCRYPTION_KEYS is not set)")
        return
    projects = sorted({k.split("/", 1)[0] for k in keyring.key_ids if "/" in k})
    project_keys = {p: keyring.key_id_for(f"{p}:x") for p in projects}
    if json_output:
        emit_json(
            {
                "ok": True,
                "enabled": True,
                "key_ids": keyring.key_ids,
                "active_key": keyring.active_key_id,
                "project_keys": project_keys,
            }
        )
        return
    rows: list[tuple[str, object]] = [
        ("key ids", ", ".join(keyring.key_ids)),
        ("active key", keyring.active_key_id),
        *((f"project {p}", k) for p, k in project_keys.items()),
    ]
    stdout_console().print(kv_table("encryption keys", rows))


@keys_app.command("rotate")
@handled
def rotate(
    inline: Annotated[
        bool,
        typer.Option("--inline", help="Re-encrypt in this process instead of a worker."),
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Re-encrypt every memory under the keys the ring chooses now (after a new active or
    project key was added, or to encrypt data stored before encryption was switched on).
    Concurrent appends are never lost. Without ``--inline``: enqueue ``memory.reencrypt``."""
    from memory_engine.task_contract import TASK_REENCRYPT

    _require_keyring()
    with cli_client() as client:
        if inline:
            from memory_engine.engine.rotation import reencrypt_memories

            report = reencrypt_memories(client)
            data = {"ok": report.missed == 0, "done": True, **report.as_dict()}
        else:
            task_id = client.producer.send(TASK_REENCRYPT, {})
            data = {"ok": True, "task": TASK_REENCRYPT, "task_id": task_id}
    if json_output:
        emit_json(data)
        return
    out = stdout_console()
    if inline:
        out.print(
            f"re-encrypted {data['rewrapped']} field(s) in {data['memories']} memories; "
            f"{data['unreadable']} unreadable (no key), {data['missed']} still moving"
        )
    else:
        out.print(f"enqueued {TASK_REENCRYPT} (task {data['task_id']}); a worker re-encrypts")
    if not data["ok"]:
        raise typer.Exit(1)
