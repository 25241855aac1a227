"""Tests for memory_engine.settings: where the resource files come from when nothing says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from memory_engine.errors import ConfigError
from memory_engine.registry import ResourceRegistry
from memory_engine.settings import Settings, default_resources_dir, load_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENT_RESOURCES = ROOT / "config" / "resources"


def _env_without_memory_settings() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MEMORY_")}


def test_shipped_defaults_are_the_deployment_resources_byte_for_byte() -> None:
    # config/resources is the deployment's copy (the image points MEMORY_RESOURCES_DIR at it);
    # the package ships the same files for when the setting is unset. They must never drift.
    shipped = default_resources_dir()
    deployment = {p.name: p.read_bytes() for p in DEPLOYMENT_RESOURCES.glob("*.y*ml")}
    packaged = {p.name: p.read_bytes() for p in shipped.glob("*.y*ml")}
    assert deployment, "config/resources holds no resource file"
    assert sorted(packaged) == sorted(deployment)
    for name, data in deployment.items():
        assert packaged[name] == data, f"{name} differs: copy config/resources/{name} to {shipped}"


def test_unset_resources_dir_is_the_packaged_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEMORY_RESOURCES_DIR", raising=False)
    monkeypatch.chdir("/")  # nowhere near the repository
    settings = load_settings()
    assert settings.resources_dir == default_resources_dir()
    assert settings.resources_dir.is_absolute()
    registry = ResourceRegistry.from_directory(settings.resources_dir)
    assert registry.ids() == ["agent-scratchpad", "chat-window", "customer-support"]


def test_set_but_missing_resources_dir_stays_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere"
    monkeypatch.setenv("MEMORY_RESOURCES_DIR", str(missing))
    settings = load_settings()
    assert settings.resources_dir == missing  # no silent fallback to the defaults
    with pytest.raises(ConfigError, match="does not exist") as info:
        ResourceRegistry.from_directory(settings.resources_dir)
    assert info.value.source == str(missing)


def test_replace_keeps_an_explicit_directory(tmp_path: Path) -> None:
    settings = Settings().replace(resources_dir=tmp_path)
    assert settings.resources_dir == tmp_path


_FROM_ENV_SCRIPT = """
import json, os
from memory_engine.client import MemoryClient
with MemoryClient.from_env() as client:
    memory = client.memory("chat-window", {"workflow": {"input": {"session_id": "s1"}}})
    memory.append({"role": "user", "content": "hello from " + os.getcwd()})
    print(json.dumps({"ids": client.registry.ids(),
                      "contents": [m.content for m in memory.read()]}))
"""


def test_from_env_outside_the_repository(redis_url: str, key_prefix: str, tmp_path: Path) -> None:
    # A workflow process started anywhere (here: an empty directory) with only the Redis URL set.
    env = _env_without_memory_settings()
    env.update(MEMORY_REDIS_URL=redis_url, MEMORY_KEY_PREFIX=key_prefix)
    result = subprocess.run(
        [sys.executable, "-c", _FROM_ENV_SCRIPT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["ids"] == ["agent-scratchpad", "chat-window", "customer-support"]
    assert out["contents"] == [f"hello from {tmp_path.resolve()}"]


def test_from_env_in_tmp_with_a_missing_directory_fails_naming_it(
    redis_url: str, tmp_path: Path
) -> None:
    env = _env_without_memory_settings()
    env.update(MEMORY_REDIS_URL=redis_url, MEMORY_RESOURCES_DIR="config/resources")
    result = subprocess.run(
        [sys.executable, "-c", _FROM_ENV_SCRIPT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "ConfigError" in result.stderr and "config/resources" in result.stderr
