"""The Celery app: ``celery -A worker worker|beat|flower``.

Importing this package builds the app from ``MEMORY_*`` settings; only the service processes this
project starts import it (workflow code imports ``memory_engine`` alone).
"""

from worker.app import app, create_app

__all__ = ["app", "create_app"]
