"""The deployment's configuration: Celery settings derived from the engine's settings, logging,
and the memory resource YAML files (``config/resources/``). Loaded only by service processes."""
