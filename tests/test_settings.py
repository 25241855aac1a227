"""Settings validation (memory_engine/settings.py): URLs and durations are refused with a
ConfigError naming the variable, never echoing a password; broker URLs reach kombu in its form."""

from __future__ import annotations

import math
import traceback

import pytest
from kombu.utils.url import parse_url as kombu_parse_url

from memory_engine.errors import ConfigError
from memory_engine.settings import (
    MAX_SOCKET_TIMEOUT_S,
    Settings,
    check_redis_url,
    kombu_url,
    load_settings,
)

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
