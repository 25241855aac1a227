"""config/celery.py: no password in a configuration value Celery would show unmasked."""

from __future__ import annotations

import json

import pytest
from celery.app.utils import filter_hidden_settings

from config.celery import build_celery_config, split_password
from memory_engine.settings import Settings

SECRET = "s3cr3t-pw"


@pytest.mark.parametrize(
    ("url", "stripped", "password"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0", None),
        (f"redis://:{SECRET}@h:6379/1", "redis://h:6379/1", SECRET),
        (f"rediss://app:{SECRET}@h:6380/0?ssl_cert_reqs=required", None, SECRET),
        ("redis://:p%40ss@h/0", "redis://h/0", "p@ss"),
        (f"redis://h/0?password={SECRET}&health_check_interval=5", None, SECRET),
        (f"unix://:{SECRET}@/run/redis.sock?db=2", "unix:///run/redis.sock?db=2", SECRET),
        ("redis://app@h/0", "redis://app@h/0", None),
    ],
)
def test_split_password(url: str, stripped: str | None, password: str | None) -> None:
    without, found = split_password(url)
    assert found == password
    assert SECRET not in without and "p%40ss" not in without
    if stripped is not None:
        assert without == stripped
    if "app" in url:
        assert "app@" in without  # the user name is kept


@pytest.mark.parametrize("url", [f"redis://:{SECRET}@h:6379/1", f"rediss://app:{SECRET}@h:6380/0"])
def test_no_conf_value_shows_the_password(url: str) -> None:
    settings = Settings(redis_url=url, broker_url=url)  # type: ignore[arg-type]
    conf = build_celery_config(settings)
    assert SECRET in json.dumps(conf, default=str)  # it is there, to be used...
    shown = json.dumps(filter_hidden_settings(conf), default=str)
    assert SECRET not in shown  # ...and never shown (what `inspect conf` and Flower print)
    assert conf["redbeat_redis_options"] == {"password": SECRET}
    assert conf["redis_password"] == SECRET
