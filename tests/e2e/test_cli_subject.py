"""``memory-engine subject export|erase`` as operators run it: a subprocess against the private
Redis. Export is JSON Lines that reads back into what the client exports; erase removes it all."""

from __future__ import annotations

import json
from pathlib import Path

from memory_engine.client import MemoryClient
from memory_engine.settings import Settings
from tests.builders import resource_yaml
from tests.e2e.test_cli import clean_env, cli

SALT = "cli-test-salt"


def test_subject_export_then_erase(redis_url: str, key_prefix: str, tmp_path: Path) -> None:
    (tmp_path / "chat.yaml").write_text(
        resource_yaml(
            "chat",
            max_messages=50,
            archive={"enabled": True},
            subject_template="{{ workflow.input.user }}",
        )
    )
    env = clean_env(
        redis_url=redis_url,
        broker_url=redis_url.rsplit("/", 1)[0] + "/9",
        key_prefix=key_prefix,
        resources_dir=str(tmp_path),
        subject_salt=SALT,
    )
    settings = Settings(
        redis_url=redis_url,  # type: ignore[arg-type]
        key_prefix=key_prefix,
        resources_dir=tmp_path,
        subject_salt=SALT,  # type: ignore[arg-type]
    )
    with MemoryClient(settings) as client:
        for conv in ("a", "b"):
            context = {"project": {"id": "P"}, "workflow": {"input": {"user": "ivy", "conv": conv}}}
            memory = client.memory("chat", context)
            for i in range(4):
                memory.append({"role": "user", "content": f"ivy {conv} {i}"})
            memory.clear()
            memory.append({"role": "user", "content": f"ivy {conv} last"})
        expected = list(client.export_subject("ivy", "P"))

        exported = cli("subject", "export", "--project", "P", "ivy", env=env)
        assert exported.returncode == 0, exported.stderr
        lines = [json.loads(line) for line in exported.stdout.splitlines()]
        for record in (*lines, *expected):
            record["stats"].pop("ttl_s")  # read a moment apart
        assert lines == expected and len(lines) == 2
        assert all(len(r["archive"]) == 4 and len(r["messages"]) == 1 for r in lines)

        erased = cli("subject", "erase", "--project", "P", "ivy", "--json", env=env)
        assert erased.returncode == 0, erased.stderr
        report = json.loads(erased.stdout)
        assert report["ok"] and report["memories"] == 2 and "ivy" not in erased.stdout
        assert list(client.export_subject("ivy", "P")) == []
        again = cli("subject", "export", "--project", "P", "ivy", env=env)
        assert again.returncode == 0 and again.stdout == ""

    unsalted = clean_env(redis_url=redis_url, key_prefix=key_prefix, resources_dir=str(tmp_path))
    refused = cli("subject", "erase", "--project", "P", "ivy", "--json", env=unsalted)
    assert refused.returncode == 2 and "MEMORY_SUBJECT_SALT" in refused.stdout
