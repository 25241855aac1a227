"""Subject export/erasure on a server without MEMORY_SUBJECT_SALT: a typed 501 before any I/O
(the Redis URL below is never connected to)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from memory_engine.server.app import create_app
from memory_engine.server.auth import ApiKeys
from memory_engine.settings import Settings


def test_subjects_without_a_salt_are_a_typed_501() -> None:
    app = create_app(
        Settings(redis_url="redis://127.0.0.1:1/0"),  # type: ignore[arg-type]
        keys=ApiKeys.of([("acme", "token-of-acme-0123456789")]),
        mcp=False,
    )
    headers = {"authorization": "Bearer token-of-acme-0123456789"}
    with TestClient(app) as http:
        for path in ("/v1/subjects/export", "/v1/subjects/erase"):
            r = http.post(path, json={"subject": "user-17"}, headers=headers)
            assert r.status_code == 501, r.text
            assert r.json()["error"] == "SubjectsNotConfigured"
            assert "user-17" not in r.text
