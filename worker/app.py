"""Builds the Celery app from settings: configuration from ``config.celery``, the schedule from
``beat_schedule.py``, tasks from ``tasks``, logging from ``config.logging``."""

from __future__ import annotations

import sys

from celery import Celery

from beat_schedule import build_beat_schedule
from config.celery import build_celery_config
from memory_engine.settings import Settings, load_settings
from worker import flower_auth

__all__ = ["app", "create_app"]


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or load_settings()
    celery_app = Celery("memory_engine", include=["tasks"])
    celery_app.conf.update(build_celery_config(settings))
    celery_app.conf.beat_schedule = build_beat_schedule(settings)
    celery_app.conf.memory_settings = settings
    return celery_app


app = create_app()
flower_auth.apply(app.conf.memory_settings, sys.argv)
