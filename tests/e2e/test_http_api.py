"""The HTTP API and MCP server from outside: a real ``memory-engine serve`` (uvicorn) process on
loopback over a private redis-server, driven by httpx and by the ``mcp`` client SDK.

Tests run in file order and share one server; the last one kills its Redis mid-traffic.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from memory_engine.client import MemoryClient
from memory_engine.keys import memory_id_for
from memory_engine.settings import default_resources_dir
from memory_engine.tooling.embedded_redis import EmbeddedRedis, free_port
from tests.builders import fifo, resource_yaml
from tests.integration.accounting import Ledger, assert_all_accounted
from tests.integration.procs import ServiceProcess, memory_env, settings_from_env

pytest.importorskip("fastapi")
pytest.importorskip("mcp")

TOKEN_A = "token-of-acme-0123456789"
TOKEN_B = "token-of-beta-0123456789"
A = {"authorization": f"Bearer {TOKEN_A}"}
B = {"authorization": f"Bearer {TOKEN_B}"}
RES = "chat-window"  # a packaged resource (max_messages 50)
SUBJ = "subjects"  # indexed by data subject, archive on (written next to the packaged ones)
SUBJECT_RESOURCE = resource_yaml(
    SUBJ,
    max_messages=50,
    flushing=fifo(),
    archive={"enabled": True, "ttl": "1h"},
    subject_template="{{ workflow.input.user }}",
)
CLI = str(Path(sys.executable).parent / "memory-engine")


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.01)


class Server:
    def __init__(self, tmp: Path) -> None:
        self.redis = EmbeddedRedis(port=free_port())
        self.redis.start()
        self.port = free_port()
        resources = tmp / "resources"
        resources.mkdir()
        for packaged in default_resources_dir().glob("*.yaml"):
            (resources / packaged.name).write_text(packaged.read_text())
        (resources / "subjects.yaml").write_text(SUBJECT_RESOURCE)
        self.env = {
            **memory_env(
                redis_url=self.redis.url,
                key_prefix="http",
                socket_timeout_s=1.0,
                socket_connect_timeout_s=1.0,
                resources_dir=resources,
                subject_salt="e2e-salt-not-secret",
            ),
            "MEMORY_API_KEYS": f"acme:{TOKEN_A},beta:{TOKEN_B}",
        }
        self.proc = ServiceProcess(
            [CLI, "serve", "--port", str(self.port), "--log-level", "warning"],
            self.env,
            tmp / "serve.log",
        ).start()
        self.url = f"http://127.0.0.1:{self.port}"
        wait_until(self.ready, 30.0, "the server to answer /healthz")

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200
        except httpx.TransportError:
            assert self.proc.alive, self.proc.tail()
            return False

    def client(self) -> MemoryClient:
        return MemoryClient(settings_from_env(self.env))

    def stop(self) -> None:
        self.proc.stop()
        self.redis.cleanup()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("http"))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture()
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10.0) as c:
        yield c


def messages(*texts: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": t} for t in texts]}


def assert_error(r: httpx.Response, status: int, name: str | None = None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "message"}, body
    if name:
        assert body["error"] == name, body
    assert "Traceback" not in r.text and TOKEN_A not in r.text and TOKEN_B not in r.text


# ---- the contract ------------------------------------------------------------------------------


def test_the_whole_contract(http: httpx.Client) -> None:
    base = f"/v1/memories/{RES}/conv:contract"
    r = http.post(f"{base}/messages", json=messages("hello", "world"), headers=A)
    assert r.status_code == 200, r.text
    assert r.json()["appended"] == 2 and r.json()["last_seq"] == 2

    page = http.get(f"{base}/messages", params={"offset": 1, "limit": 5}, headers=A).json()
    assert [m["content"] for m in page["messages"]] == ["world"] and page["total"] == 2

    stats = http.get(f"{base}/stats", headers=A).json()
    assert stats["key"] == "acme:conv:contract" and stats["message_count"] == 2

    window = http.get(f"{base}/context", params={"max_tokens": 1000}, headers=A).json()
    assert [m["content"] for m in window["messages"]] == ["hello", "world"]

    flushed = http.post(f"{base}/flush", json={"strategy": None, "dry_run": True}, headers=A)
    assert flushed.status_code == 200 and flushed.json()["dry_run"] is True

    assert http.put(f"{base}/messages", json=messages("only"), headers=A).json() == {
        "message_count": 1
    }
    assert http.delete(f"{base}/messages", headers=A).json() == {"cleared": 1}
    assert http.delete(base, headers=A).json() == {"deleted": True}
    assert_error(http.delete(base, headers=A), 404, "MemoryNotFound")
    assert_error(http.get(f"{base}/stats", headers=A), 404, "MemoryNotFound")

    resolved = http.post(
        f"/v1/resources/{RES}/resolve",
        json={"context": {"workflow": {"input": {"session_id": "s-9"}}}},
        headers=A,
    )
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["memory_id"] == f"acme:{resolved.json()['key']}"
    assert_error(
        http.post(f"/v1/resources/{RES}/resolve", json={"context": {}}, headers=A),
        400,
        "KeyTemplateError",  # fail-closed: a missing variable is an error, never a shared key
    )
    assert_error(http.get("/v1/memories/nope/k/stats", headers=A), 404, "ResourceNotFound")

    ids = [r["id"] for r in http.get("/v1/resources", headers=A).json()["resources"]]
    assert RES in ids
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").status_code == 200
    assert "memory_engine_http_requests_total" in http.get("/metrics").text
    assert http.get("/openapi.json").json()["paths"]


def test_missing_or_unknown_token_is_401_without_detail(http: httpx.Client) -> None:
    for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": TOKEN_A}):
        r = http.get(f"/v1/memories/{RES}/k/messages", headers=headers)
        assert_error(r, 401, "Unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
    assert_error(http.post("/mcp", json={}), 401, "Unauthorized")


# ---- tenant isolation ----------------------------------------------------------------------------

ATTACK_KEYS = [
    "conv:secret",
    "acme:conv:secret",
    "..%2Facme%3Aconv:secret",
    "../acme:conv:secret",
    "%2E%2E%2F%2E%2E%2Facme%3Aconv%3Asecret",
    "acme%3Aconv%3Asecret",
    "{acme:conv:secret}",
    "%7Bacme:conv:secret%7D",
    "x/../../acme:conv:secret",
    "%00acme:conv:secret",
]


def test_a_token_never_reaches_another_projects_memory(server: Server, http: httpx.Client) -> None:
    r = http.post(f"/v1/memories/{RES}/conv:secret/messages", json=messages("s1", "s2"), headers=A)
    assert r.status_code == 200
    with server.client() as client:
        victim = client.memory_by_id("acme:conv:secret", RES)
        before = [m.model_dump() for m in victim.read()], victim.stats().last_seq
        for key in ATTACK_KEYS:
            base = f"{server.url}/v1/memories/{RES}/{key}"
            attempts = [
                ("GET", f"{base}/messages", None),
                ("GET", f"{base}/stats", None),
                ("GET", f"{base}/context", None),
                ("POST", f"{base}/messages", messages("intruder")),
                ("PUT", f"{base}/messages", messages("intruder")),
                ("DELETE", f"{base}/messages", None),
                ("POST", f"{base}/flush", {"strategy": None, "dry_run": False}),
                ("DELETE", base, None),
            ]
            for method, url, body in attempts:
                resp = http.request(method, httpx.URL(url), json=body, headers=B)
                assert resp.status_code < 500, (method, url, resp.text)
                assert "s1" not in resp.text and "s2" not in resp.text, (method, url, resp.text)
                if resp.status_code == 200 and method == "GET" and url.endswith("/stats"):
                    assert resp.json()["key"].startswith("beta:"), resp.text
        resolve = http.post(
            f"/v1/resources/{RES}/resolve",
            json={
                "context": {"project": {"id": "acme"}, "workflow": {"input": {"session_id": "x"}}}
            },
            headers=B,
        )
        assert_error(resolve, 403, "ProjectMismatch")
        after = [m.model_dump() for m in victim.read()], victim.stats().last_seq
        assert after == before, "project beta's token changed project acme's memory"
        # Every memory beta's token created lives in beta's namespace.
        ids = {k.decode() for k in client.redis.scan_iter(match="http:{*}:meta")}
        assert all(i.startswith(("http:{acme:", "http:{beta:")) for i in ids), ids
        assert "http:{acme:conv:secret}:meta" in ids


@pytest.mark.parametrize(
    "key",
    [
        "..",
        "a/../b",
        "a//b",
        "a/messages",
        "a/archive",
        "{tag}",
        "has space",
        "__x",
        "a::b",
        "x" * 300,
    ],
)
def test_keys_outside_the_rules_are_refused(http: httpx.Client, key: str) -> None:
    r = http.get(httpx.URL(f"/v1/memories/{RES}/{key}/stats"), headers=A)
    assert 400 <= r.status_code < 500, r.text
    assert set(r.json()) == {"error", "message"}


# ---- bad bodies ----------------------------------------------------------------------------------


def test_bad_bodies_get_typed_4xx_and_write_nothing(server: Server, http: httpx.Client) -> None:
    url = f"/v1/memories/{RES}/conv:bad/messages"
    json_h = {**A, "content-type": "application/json"}
    deep_metadata: Any = "x"
    for _ in range(200):
        deep_metadata = {"k": deep_metadata}
    cases = [
        (b"{not json", 400, "InvalidJSON"),
        (b"[" * 200_000 + b"]" * 200_000, 400, "InvalidJSON"),
        (b"x" * (6 * 1024 * 1024), 413, "BodyTooLarge"),
        (json.dumps({"messages": "hi"}).encode(), 422, "RequestValidationError"),
        (json.dumps({"messages": [{"role": 5, "content": "x"}]}).encode(), 422, None),
        (json.dumps({"messages": [{"role": "user", "content": 7}]}).encode(), 422, None),
        (json.dumps({"messages": [{"role": "user"}]}).encode(), 422, None),
        (json.dumps({"messages": [{"role": "user", "content": ""}]}).encode(), 422, None),
        (json.dumps({"messages": [], "extra": 1}).encode(), 422, None),
        (
            json.dumps(
                {"messages": [{"role": "user", "content": "x", "metadata": deep_metadata}]}
            ).encode(),
            422,
            None,
        ),
        (
            json.dumps({"messages": [{"role": "user", "content": "y" * 100_000}]}).encode(),
            422,
            "MessageValidationError",
        ),
    ]
    for body, status, name in cases:
        assert_error(http.post(url, content=body, headers=json_h), status, name)
    # A declared length over the limit is refused before a byte of the body is read.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            f"POST {url} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN_A}\r\n"
            "Content-Type: application/json\r\nContent-Length: 999999999\r\n\r\n".encode()
        )
        head = b""
        while b"BodyTooLarge" not in head and (chunk := sock.recv(65536)):
            head += chunk
    assert head.startswith(b"HTTP/1.1 413") and b'"BodyTooLarge"' in head, head
    assert_error(http.get(f"/v1/memories/{RES}/conv:bad/stats", headers=A), 404, "MemoryNotFound")
    assert_error(
        http.get(f"/v1/memories/{RES}/conv:bad/messages?limit=abc", headers=A),
        422,
        "RequestValidationError",
    )


# ---- concurrency ---------------------------------------------------------------------------------


def test_concurrent_clients_keep_exact_accounting(server: Server) -> None:
    ledger = Ledger()
    keys = [f"conv:acct-{i}" for i in range(4)]
    per_client = 40

    async def one(n: int) -> None:
        async with httpx.AsyncClient(base_url=server.url, headers=A, timeout=10.0) as c:
            for i in range(per_client):
                key = keys[(n + i) % len(keys)]
                content = f"c{n}-m{i}"
                started = Ledger.now_ns()
                r = await c.post(f"/v1/memories/{RES}/{key}/messages", json=messages(content))
                assert r.status_code == 200, r.text
                ledger.acked(
                    memory_id_for("acme", key),
                    content,
                    r.json()["last_seq"],
                    started,
                    Ledger.now_ns(),
                )

    async def main() -> None:
        await asyncio.gather(*(one(n) for n in range(16)))

    asyncio.run(main())
    assert ledger.acked_count == 16 * per_client
    with server.client() as client:
        assert_all_accounted(client, ledger)


# ---- MCP -----------------------------------------------------------------------------------------


async def _exercise_mcp(session: Any) -> None:
    from mcp_types import TextContent

    await session.initialize()
    tools = {t.name for t in (await session.list_tools()).tools}
    assert tools >= {
        "append_messages",
        "get_context",
        "read_messages",
        "memory_stats",
        "clear_memory",
    }
    args = {"resource_id": RES, "key": "conv:mcp"}
    r = await session.call_tool(
        "append_messages", {**args, "messages": [{"role": "user", "content": "via mcp"}]}
    )
    assert not r.is_error, r
    r = await session.call_tool("get_context", args)
    assert "via mcp" in r.content[0].text
    r = await session.call_tool("read_messages", {**args, "limit": 10})
    assert json.loads(r.content[0].text)["total"] == 1
    r = await session.call_tool("memory_stats", args)
    assert json.loads(r.content[0].text)["message_count"] == 1
    r = await session.call_tool("clear_memory", args)
    assert json.loads(r.content[0].text) == {"cleared": 1}
    r = await session.call_tool("memory_stats", {"resource_id": "nope", "key": "k"})
    assert r.is_error and isinstance(r.content[0], TextContent)
    assert "ResourceNotFound: " in r.content[0].text


def test_mcp_over_streamable_http_with_bearer_auth(server: Server) -> None:
    import httpx2
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def main() -> None:
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN_B}"}) as http_client,
            streamable_http_client(f"{server.url}/mcp", http_client=http_client) as streams,
            ClientSession(streams[0], streams[1]) as session,
        ):
            await _exercise_mcp(session)

    asyncio.run(main())
    with server.client() as client:  # beta's token wrote in beta's namespace
        assert client.memory_by_id("beta:conv:mcp", RES).stats().last_seq == 1
        assert client.memory_by_id("acme:conv:mcp", RES).stats().ttl_s == -2


def test_mcp_over_stdio(server: Server) -> None:
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(
        command=CLI, args=["mcp", "--project", "gamma"], env=server.env, cwd=str(Path.cwd())
    )

    async def main() -> None:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await _exercise_mcp(session)

    asyncio.run(main())
    with server.client() as client:
        assert client.memory_by_id("gamma:conv:mcp", RES).stats().last_seq == 1


# ---- data subjects and the archive --------------------------------------------------------------


def subject_ctx(user: str, conv: str, project: str) -> dict[str, Any]:
    return {"project": {"id": project}, "workflow": {"input": {"user": user, "conv": conv}}}


def export_lines(http: httpx.Client, subject: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    body = {"subject": subject}
    with http.stream("POST", "/v1/subjects/export", json=body, headers=headers) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("application/x-ndjson")
        return [json.loads(line) for line in r.iter_lines() if line]


def test_subject_export_and_erasure_stay_in_the_tokens_project(
    server: Server, http: httpx.Client
) -> None:
    with server.client() as client:  # an application writes through the library
        for project in ("acme", "beta"):
            for conv in ("c0", "c1"):
                memory = client.memory(SUBJ, subject_ctx("user-17", conv, project))
                memory.append_many(
                    [{"role": "user", "content": f"{project}-{conv}-{i}"} for i in range(3)]
                )
        bystander = client.memory(SUBJ, subject_ctx("user-18", "c9", "acme"))
        bystander.append({"role": "user", "content": "not user-17"})

    exported = export_lines(http, "user-17", A)
    assert sorted(r["memory_id"] for r in exported) == ["acme:subjects:c0", "acme:subjects:c1"]
    for record in exported:
        conv = record["memory_id"].rsplit(":", 1)[1]
        assert [m["content"] for m in record["messages"]] == [f"acme-{conv}-{i}" for i in range(3)]
        assert record["resource_id"] == SUBJ
    assert len(export_lines(http, "user-17", B)) == 2
    assert export_lines(http, "nobody", A) == []

    r = http.post("/v1/subjects/erase", json={"subject": "user-17"}, headers=A)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["memories"] == 2 and report["project_id"] == "acme" and report["keys_deleted"] > 0
    assert "user-17" not in r.text  # the report holds the subject's hash, never the subject

    assert export_lines(http, "user-17", A) == []
    for conv in ("c0", "c1"):  # the same subject in project beta is untouched
        page = http.get(f"/v1/memories/{SUBJ}/subjects:{conv}/messages", headers=B).json()
        assert [m["content"] for m in page["messages"]] == [f"beta-{conv}-{i}" for i in range(3)]
    assert len(export_lines(http, "user-17", B)) == 2
    page = http.get(f"/v1/memories/{SUBJ}/subjects:c9/messages", headers=A).json()
    assert [m["content"] for m in page["messages"]] == ["not user-17"]
    # For the tombstone's life, an erased memory refuses appends (typed, not a 500).
    late = http.post(f"/v1/memories/{SUBJ}/subjects:c0/messages", json=messages("x"), headers=A)
    assert_error(late, 409, "MemoryErased")


def test_the_archive_returns_what_a_clear_removed(http: httpx.Client) -> None:
    base = f"/v1/memories/{SUBJ}/conv:archived"
    assert http.post(f"{base}/messages", json=messages("a", "b", "c"), headers=A).status_code == 200
    assert http.delete(f"{base}/messages", headers=A).json() == {"cleared": 3}
    page = http.get(f"{base}/archive", headers=A).json()
    assert page["total"] == 3
    assert [(m["seq"], m["content"]) for m in page["messages"]] == [(1, "a"), (2, "b"), (3, "c")]
    page = http.get(f"{base}/archive", params={"offset": 1, "limit": 1}, headers=A).json()
    assert [m["content"] for m in page["messages"]] == ["b"] and page["total"] == 3
    assert http.get(f"{base}/messages", headers=A).json()["total"] == 0
    # Another project's token names another memory, which does not exist.
    assert_error(http.get(f"{base}/archive", headers=B), 404, "MemoryNotFound")
    assert_error(http.get(f"{base}/archive", params={"limit": 0}, headers=A), 422)
    # A resource without an archive: an existing memory's archive is empty.
    other = f"/v1/memories/{RES}/conv:no-archive"
    assert http.post(f"{other}/messages", json=messages("x"), headers=A).status_code == 200
    assert http.get(f"{other}/archive", headers=A).json()["total"] == 0


def test_subject_bodies_are_bounded_and_authenticated(http: httpx.Client) -> None:
    for path in ("/v1/subjects/export", "/v1/subjects/erase"):
        for body in ({"subject": "x" * 257}, {"subject": ""}, {"subject": 17}, {}):
            assert_error(http.post(path, json=body, headers=A), 422, "RequestValidationError")
        extra = {"subject": "user-17", "project_id": "beta"}  # the project is the token's
        assert_error(http.post(path, json=extra, headers=A), 422, "RequestValidationError")
        blank = http.post(path, json={"subject": "   "}, headers=A)
        assert_error(blank, 400, "KeyTemplateError")
        r = http.post(path, json={"subject": "user-17"})
        assert_error(r, 401, "Unauthorized")
    assert http.post("/v1/subjects/export", json={"subject": "x" * 256}, headers=A).text == ""
    assert_error(http.get(f"/v1/memories/{SUBJ}/conv:archived/archive"), 401, "Unauthorized")


# ---- Redis down ---------------------------------------------------------------------------------


def test_redis_killed_mid_traffic_gives_503_then_recovers(server: Server) -> None:
    """Last in the file: it kills the module's Redis, then starts it again on the same port."""
    statuses: list[int] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=server.url, headers=A, timeout=10.0) as c:
            while not stop.is_set() and len(statuses) < 5000:
                r = c.post(f"/v1/memories/{RES}/conv:outage/messages", json=messages("x"))
                statuses.append(r.status_code)
                if r.status_code == 503:
                    assert r.json()["error"] == "StoreUnavailable", r.text

    t = threading.Thread(target=traffic)
    t.start()
    try:
        wait_until(lambda: statuses.count(200) >= 20, 30.0, "appends before the kill")
        server.redis.kill()
        wait_until(lambda: statuses.count(503) >= 3, 30.0, "503s while Redis is down")
        with httpx.Client(base_url=server.url, timeout=10.0) as c:
            assert c.get("/readyz").status_code == 503
            assert c.get("/healthz").status_code == 200
        server.redis = EmbeddedRedis(port=server.redis.port)
        server.redis.start()
        seen = len(statuses)
        wait_until(lambda: statuses[seen:].count(200) >= 10, 30.0, "recovery")
    finally:
        stop.set()
        t.join(timeout=30)
    assert set(statuses) <= {200, 503}, set(statuses)
    with httpx.Client(base_url=server.url, timeout=10.0) as c:
        assert c.get("/readyz").status_code == 200
