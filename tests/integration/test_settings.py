"""Tests for memory_engine.settings: where the resource files come from when nothing says; URLs
and durations refused with a ConfigError naming the variable, never echoing a password; broker
URLs reach kombu in its form."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from kombu.utils.url import parse_url as kombu_parse_url

from memory_engine.errors import ConfigError
from memory_engine.registry import ResourceRegistry
from memory_engine.settings import (
    MAX_SOCKET_TIMEOUT_S,
    Settings,
    check_redis_url,
    default_resources_dir,
    kombu_url,
    load_settings,
)

ROOT = Path(__file__).resolve().parents[2]
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


PASSWORD = "s3cr3t-pw"


def refusal(monkeypatch: pytest.MonkeyPatch, **env: str) -> ConfigError:
    for name, value in env.items():
        monkeypatch.setenv(f"MEMORY_{name.upper()}", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    return caught.value


def rendered(error: BaseException) -> str:
    """Everything a traceback of ``error`` would print, chained causes included."""
    return "".join(traceback.format_exception(error))


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{PASSWORD}@host:notaport/0",
        f"redis://:{PASSWORD}@host:99999/0",
        f"http://:{PASSWORD}@host:6379/0",
        f"redis://:{PASSWORD}@host:6379/zero",
        f"redis://:{PASSWORD}@:6379/0",
        f"unix://:{PASSWORD}@",
        f"{PASSWORD}",
        f"redis://:{PASSWORD}@[::1/0",
    ],
)
def test_malformed_redis_url_is_a_config_error_without_the_password(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    # A broker may be any kombu transport: only Redis-scheme brokers get the Redis checks.
    variables = ["redis_url"] if url.startswith("http") else ["redis_url", "broker_url"]
    for variable in variables:
        monkeypatch.delenv("MEMORY_REDIS_URL", raising=False)
        error = refusal(monkeypatch, **{variable: url})
        assert f"MEMORY_{variable.upper()}" in str(error)
        assert PASSWORD not in rendered(error)


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://:p@h/2", "unix:///run/r.sock?db=3"])
def test_good_redis_urls_pass(url: str) -> None:
    check_redis_url(url)
    assert Settings(redis_url=url).redis_dsn() == url  # type: ignore[arg-type]


def test_other_brokers_keep_their_scheme() -> None:
    url = "amqp://guest:guest@localhost:5672//"
    assert Settings(broker_url=url).celery_broker_url() == url  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e300", "0", "-1", "301"])
@pytest.mark.parametrize("variable", ["socket_timeout_s", "socket_connect_timeout_s"])
def test_timeouts_are_finite_positive_and_bounded(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    error = refusal(monkeypatch, **{variable: value})
    assert f"MEMORY_{variable.upper()}" in str(error)


@pytest.mark.parametrize(
    "variable",
    ["summarizer_timeout_s", "token_count_timeout_s", "breaker_reset_timeout_s",
     "cleanup_interval_s", "reconcile_interval_s", "marker_sweep_interval_s"],
)  # fmt: skip
def test_every_duration_is_finite(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    assert f"MEMORY_{variable.upper()}" in str(refusal(monkeypatch, **{variable: "inf"}))


def test_the_maximum_timeout_is_accepted() -> None:
    settings = Settings(socket_timeout_s=MAX_SOCKET_TIMEOUT_S)
    assert math.isfinite(settings.socket_timeout_s)


def test_password_in_the_query_moves_into_the_userinfo_for_kombu() -> None:
    settings = Settings(redis_url=f"redis://h:6379/0?password={PASSWORD}")  # type: ignore[arg-type]
    assert settings.broker_dsn() == f"redis://h:6379/0?password={PASSWORD}"  # redis-py reads it
    url = settings.celery_broker_url()
    parsed = kombu_parse_url(url)  # raised TypeError (password given twice) before
    assert (parsed["hostname"], parsed["port"], parsed["password"]) == ("h", 6379, PASSWORD)
    assert parsed["virtual_host"] == "0"
    assert kombu_url("redis://u@h/1?username=v&password=p%40ss&x=1") == "redis://v:p%40ss@h/1?x=1"


def test_unix_socket_becomes_kombus_redis_socket() -> None:
    assert (
        kombu_url("unix:///run/redis.sock?db=2") == "redis+socket:///run/redis.sock?virtual_host=2"
    )
    assert kombu_url("unix:///run/redis.sock") == "redis+socket:///run/redis.sock"
