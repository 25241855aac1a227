# The service image: worker, Beat and Flower all run `celery -A worker ...` from it
# (see docker-compose.yml). Workflow code only needs `pip install memory-engine`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The library is installed as a wheel (it carries only `memory_engine`); the service's top-level
# packages (worker, tasks, config, beat_schedule.py) run from /app, on PYTHONPATH.
COPY pyproject.toml README.md ./
COPY memory_engine ./memory_engine
# The `server` extra: the HTTP API and MCP server (`memory-engine serve`, compose service `api`).
RUN pip install ".[server]" \
    && useradd --create-home --uid 10001 memory
COPY beat_schedule.py ./
COPY config ./config
COPY tasks ./tasks
COPY worker ./worker
ENV PYTHONPATH=/app MEMORY_SERVICE_ROOT=/app

# Resource YAML files shipped with the image; mount a volume over it to bring your own.
ENV MEMORY_RESOURCES_DIR=/app/config/resources

# Celery warns about workers running as root (SecurityWarning); nothing here needs root.
USER memory
CMD ["celery", "-A", "worker", "worker", "--loglevel=INFO"]
