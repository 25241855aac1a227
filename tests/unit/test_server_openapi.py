"""docs/openapi.json is the API's contract: it must be the document the app serves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from memory_engine.server.app import openapi_document

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
ENDPOINTS = {
    ("post", "/v1/memories/{resource_id}/{key}/messages"),
    ("get", "/v1/memories/{resource_id}/{key}/messages"),
    ("put", "/v1/memories/{resource_id}/{key}/messages"),
    ("delete", "/v1/memories/{resource_id}/{key}/messages"),
    ("delete", "/v1/memories/{resource_id}/{key}"),
    ("get", "/v1/memories/{resource_id}/{key}/stats"),
    ("get", "/v1/memories/{resource_id}/{key}/context"),
    ("post", "/v1/memories/{resource_id}/{key}/flush"),
    ("post", "/v1/resources/{resource_id}/resolve"),
    ("get", "/v1/resources"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
}


def test_checked_in_openapi_document_is_the_apps() -> None:
    checked_in = json.loads(DOC.read_text())
    assert checked_in == openapi_document(), (
        "docs/openapi.json is stale: python -m memory_engine.server.app > docs/openapi.json"
    )


def test_every_contract_endpoint_is_documented_with_the_error_body() -> None:
    document = openapi_document()
    found = {
        (m, p.replace("{key:path}", "{key}")) for p, ops in document["paths"].items() for m in ops
    }
    assert found >= ENDPOINTS, ENDPOINTS - found
    error = document["components"]["schemas"]["ErrorBody"]
    assert set(error["properties"]) == {"error", "message"}
    assert "HTTPBearer" in document["components"]["securitySchemes"]
