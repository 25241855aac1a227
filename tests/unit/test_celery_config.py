"""config/celery.py: no password in a configuration value Celery would show unmasked."""

from __future__ import annotations

import json

import pytest
from celery.app.utils import filter_hidden_settings
from pydantic import ValidationError

from config.celery import build_celery_config, split_password
from memory_engine.errors import ConfigError
from memory_engine.producer import TaskProducer
from memory_engine.settings import Settings
from memory_engine.task_contract import QUEUES

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


# ---- the broker side: RabbitMQ, result backend and RedBeat defaults, refused combinations ----

AMQP = f"amqp://app:{SECRET}@rabbit:5672/engine"


class ClusterSettings(Settings):
    """Settings whose data Redis is a Cluster. ``redis_mode`` belongs to the data-Redis block
    (``MEMORY_REDIS_MODE``); redeclared here so these checks run whichever block is merged."""

    redis_mode: str = "cluster"


def test_amqp_broker_keeps_results_and_beat_in_the_standalone_data_redis() -> None:
    data = f"redis://:{SECRET}@data:6379/0"
    settings = Settings(redis_url=data, broker_url=AMQP)  # type: ignore[arg-type]
    conf = build_celery_config(settings)
    assert conf["broker_url"] == AMQP
    assert (conf["result_backend"], conf["redbeat_redis_url"]) == ("redis://data:6379/0",) * 2
    assert conf["redis_password"] == SECRET
    assert conf["redbeat_redis_options"] == {"password": SECRET}
    assert "visibility_timeout" not in conf["broker_transport_options"]  # Redis-only option
    shown = json.dumps(filter_hidden_settings(conf), default=str)
    assert SECRET not in shown, shown  # the amqp URL's password is masked too


def test_redis_broker_still_hosts_results_and_beat() -> None:
    settings = Settings(redis_url="redis://data/0", broker_url="redis://broker/1")  # type: ignore[arg-type]
    conf = build_celery_config(settings)
    assert conf["result_backend"] == conf["redbeat_redis_url"] == "redis://broker/1"
    assert conf["broker_transport_options"]["visibility_timeout"] == settings.visibility_timeout_s


def test_explicit_result_backend_and_beat_store_win_and_hide_their_passwords() -> None:
    settings = Settings(
        broker_url=AMQP,  # type: ignore[arg-type]
        result_backend_url=f"redis://:{SECRET}@results:6379/2",  # type: ignore[arg-type]
        beat_redis_url=f"rediss://beat:{SECRET}@beat:6380/3",  # type: ignore[arg-type]
    )
    conf = build_celery_config(settings)
    assert conf["result_backend"] == "redis://results:6379/2"
    assert conf["redbeat_redis_url"] == "rediss://beat@beat:6380/3"
    assert SECRET not in json.dumps(filter_hidden_settings(conf), default=str)


@pytest.mark.parametrize("variable", ["result_backend_url", "beat_redis_url"])
def test_result_backend_and_beat_store_must_be_redis(variable: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(**{variable: f"amqp://u:{SECRET}@h//"})  # type: ignore[arg-type]
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({}, "MEMORY_BROKER_URL"),
        ({"broker_url": AMQP}, "MEMORY_RESULT_BACKEND_URL"),
        (
            {"broker_url": AMQP, "result_backend_url": "redis://results/0"},
            "MEMORY_BEAT_REDIS_URL",
        ),
    ],
)
def test_cluster_data_store_refuses_what_celery_cannot_use(
    fields: dict[str, str], named: str
) -> None:
    settings = ClusterSettings(redis_url="redis://node-1:7000", **fields)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=named) as caught:
        build_celery_config(settings)
    assert "MEMORY_REDIS_MODE=cluster" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_cluster_data_store_works_with_a_redis_broker_or_explicit_urls() -> None:
    with_redis_broker = ClusterSettings(
        redis_url="redis://node-1:7000",  # type: ignore[arg-type]
        broker_url="redis://broker:6379/1",  # type: ignore[arg-type]
    )
    assert build_celery_config(with_redis_broker)["result_backend"] == "redis://broker:6379/1"
    explicit = ClusterSettings(
        redis_url="redis://node-1:7000",  # type: ignore[arg-type]
        broker_url=AMQP,  # type: ignore[arg-type]
        result_backend_url="redis://results/0",  # type: ignore[arg-type]
        beat_redis_url="redis://results/1",  # type: ignore[arg-type]
    )
    conf = build_celery_config(explicit)
    assert (conf["result_backend"], conf["redbeat_redis_url"]) == (
        "redis://results/0",
        "redis://results/1",
    )


@pytest.mark.parametrize(
    ("broker", "queue_type", "arguments"),
    [
        (AMQP, "classic", {"x-queue-type": "classic"}),
        (AMQP, "quorum", {"x-queue-type": "quorum"}),
        ("redis://h/1", "quorum", None),  # Redis lists have no queue arguments
    ],
)
def test_queues_are_durable_and_typed_alike_for_client_and_workers(
    broker: str, queue_type: str, arguments: dict[str, str] | None
) -> None:
    settings = Settings(broker_url=broker, broker_queue_type=queue_type)  # type: ignore[arg-type]
    declared = build_celery_config(settings)["task_queues"]
    assert [q.name for q in declared] == list(QUEUES)
    assert all(q.durable and q.exchange.durable for q in declared)
    assert all(q.queue_arguments == arguments for q in declared)
    client = TaskProducer(settings).app.conf.task_queues
    assert [(q.name, q.queue_arguments) for q in client] == [
        (q.name, q.queue_arguments) for q in declared
    ]


@pytest.mark.parametrize(
    ("broker", "name"),
    [
        (AMQP, "broker.amqp@rabbit:5672"),
        ("amqps://u:p@mq.example:5671/v", "broker.amqp@mq.example:5671"),
        ("redis://h:6379/1", "broker.redis@h:6379"),
    ],
)
def test_publish_breaker_names_the_broker(broker: str, name: str) -> None:
    producer = TaskProducer(Settings(broker_url=broker))  # type: ignore[arg-type]
    assert producer.breaker.name == name
