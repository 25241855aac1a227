"""Flower authentication from settings: ``celery -A worker flower`` gets basic auth from
``MEMORY_FLOWER_USER`` / ``MEMORY_FLOWER_PASSWORD`` and refuses to start without credentials,
unless ``MEMORY_FLOWER_UNAUTHENTICATED_DEV=true`` says this is a development machine.

Flower reads ``FLOWER_*`` environment variables after Celery has imported the app, so setting
``FLOWER_BASIC_AUTH`` here (when the command is ``flower``) is enough.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from memory_engine.settings import Settings

__all__ = ["FlowerAuthMissing", "configure_flower_auth", "is_flower_command"]


class FlowerAuthMissing(SystemExit):
    """Raised (exits the process) when Flower would start without authentication."""


def is_flower_command(argv: Sequence[str]) -> bool:
    return "flower" in argv[1:]


def configure_flower_auth(settings: Settings, argv: Sequence[str], environ: dict[str, str]) -> None:
    explicit = any(a.startswith(("--basic-auth", "--basic_auth", "--auth")) for a in argv)
    if explicit or environ.get("FLOWER_BASIC_AUTH") or environ.get("FLOWER_AUTH"):
        return
    if settings.flower_user and settings.flower_password:
        environ["FLOWER_BASIC_AUTH"] = (
            f"{settings.flower_user}:{settings.flower_password.get_secret_value()}"
        )
        return
    if settings.flower_unauthenticated_dev:
        environ.setdefault("FLOWER_UNAUTHENTICATED_API", "true")
        return
    raise FlowerAuthMissing(
        "refusing to start Flower without authentication: set MEMORY_FLOWER_USER and "
        "MEMORY_FLOWER_PASSWORD (or pass --basic-auth), or MEMORY_FLOWER_UNAUTHENTICATED_DEV=true "
        "on a development machine"
    )


def apply(settings: Settings, argv: Sequence[str]) -> None:
    if is_flower_command(argv):
        configure_flower_auth(settings, argv, os.environ)  # type: ignore[arg-type]
