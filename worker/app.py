"""Builds the Celery app from settings: configuration from ``config.celery``, the schedule from
``beat_schedule.py``, tasks from ``tasks``, logging from ``config.logging``."""

from __future__ import annotations

import sys
from functools import partial

from celery import Celery
from celery.signals import setup_logging, worker_process_init

from beat_schedule import build_beat_schedule
from config.celery import build_celery_config
from config.logging import configure_logging
from memory_engine.settings import Settings, load_settings
from worker import flower_auth, metrics, poison, tracing

__all__ = ["EngineCelery", "app", "create_app"]


class EngineCelery(Celery):  # type: ignore[misc]  # celery is untyped
    """The Celery app with the engine's settings on it.

    The settings are an attribute, not a ``conf`` key: ``celery inspect conf`` and Flower show
    every ``conf`` key whose name Celery does not recognise as secret (the repr of a settings
    object included, with whatever URL a field holds).
    """

    memory_settings: Settings


def create_app(settings: Settings | None = None) -> EngineCelery:
    settings = settings or load_settings()
    poison.install()  # a malformed queue item never stops a worker (worker/poison.py)
    celery_app = EngineCelery("memory_engine", include=["tasks"])
    celery_app.conf.update(build_celery_config(settings))
    celery_app.conf.beat_schedule = build_beat_schedule(settings)
    celery_app.memory_settings = settings
    metrics.install(celery_app)  # /metrics on settings.metrics_port, from worker start-up
    tracing.install()  # spans continue the publisher's trace, when tracing is configured
    # Replaces Celery's own logging setup in the processes it starts (worker, Beat).
    setup_logging.connect(
        partial(configure_logging, settings), weak=False, dispatch_uid="memory-engine-logging"
    )
    # Prefork children load the client and tokenizers at start, not on their first task.
    from tasks.runtime import warm_up

    worker_process_init.connect(warm_up, weak=False, dispatch_uid="memory-engine-warm-up")
    return celery_app


app = create_app()
flower_auth.apply(app.memory_settings, sys.argv)
