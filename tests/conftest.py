"""Shared fixtures: a private redis-server per test session, isolated key prefixes per test.

Set ``MEMORY_TEST_REDIS_URL`` to run against another server instead (it must be disposable).
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from memory_engine.client import MemoryClient
from memory_engine.settings import Settings
from memory_engine.tooling.embedded_redis import EmbeddedRedis
from memory_engine.tooling.loopback_llm import FakeLLMServer, running_llm_server

# The in-process Celery worker and its settings, shared by integration and end-to-end tests.
pytest_plugins = ["fixtures_worker"]

ROOT = Path(__file__).resolve().parent.parent
RESOURCES_DIR = ROOT / "config" / "resources"
_prefixes = itertools.count()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    override = os.environ.get("MEMORY_TEST_REDIS_URL")
    if override:
        yield override
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def key_prefix() -> str:
    # A fresh prefix per test isolates tests without FLUSHDB (which would break a running worker).
    return f"t{next(_prefixes)}{uuid.uuid4().hex[:6]}"


@pytest.fixture
def settings(redis_url: str, key_prefix: str) -> Settings:
    return Settings(
        redis_url=redis_url,  # type: ignore[arg-type]
        key_prefix=key_prefix,
        resources_dir=RESOURCES_DIR,
        socket_timeout_s=5.0,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[MemoryClient]:
    with MemoryClient(settings) as c:
        yield c


@pytest.fixture(name="llm_server")
def llm_server_fixture() -> Iterator[FakeLLMServer]:
    """A fresh loopback LLM provider per test (OpenAI and Anthropic APIs)."""
    with running_llm_server() as server:
        yield server
