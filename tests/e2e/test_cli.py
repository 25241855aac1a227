"""``memory-engine`` as operators run it: subprocesses against the private Redis and a real worker.

Each test gets its own key prefix; the environment is the parent's minus every ``MEMORY_*`` and
``FLOWER_*`` variable, so a developer's shell cannot leak in.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from memory_engine.client import MemoryClient
from memory_engine.settings import Settings
from memory_engine.task_contract import QUEUES
from memory_engine.tooling.embedded_redis import free_port
from memory_engine.tooling.processes import pid_alive
from tests.fixtures_worker import broker_url_for, wait_for

ROOT = Path(__file__).resolve().parents[2]
RESOURCES_DIR = ROOT / "config" / "resources"
CLI_TIMEOUT_S = 60.0
IDLE_BROKER_DB = 9  # no worker consumes here


def clean_env(**memory: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEMORY_", "FLOWER_"))}
    env.update({f"MEMORY_{k.upper()}": v for k, v in memory.items()})
    return env


def cli(
    *args: str, env: dict[str, str], timeout: float = CLI_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memory_engine.tooling.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(
            f"not JSON (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
        ) from exc


@pytest.fixture
def env(redis_url: str, key_prefix: str) -> dict[str, str]:
    return clean_env(redis_url=redis_url, key_prefix=key_prefix, resources_dir=str(RESOURCES_DIR))


def support_context(conv: str) -> str:
    return json.dumps({"project": {"id": "p1"}, "workflow": {"input": {"session_id": conv}}})


def fill_chat(client: MemoryClient, conv: str, n: int) -> str:
    """``n`` messages in a chat-window memory (threshold 40: keep n below it, no task sent)."""
    memory = client.memory("chat-window", json.loads(support_context(conv)))
    for i in range(n):
        memory.append({"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}"})
    return memory.key


# ---- resources ---------------------------------------------------------------------------------


def test_help_lists_every_command(env: dict[str, str]) -> None:
    result = cli("--help", env=env)
    assert result.returncode == 0
    commands = "resources inspect read flush stats cleanup health up demo worker beat flower"
    for command in commands.split():
        assert command in result.stdout


def test_resources_list_json(env: dict[str, str]) -> None:
    data = as_json(cli("resources", "list", "--json", env=env))
    ids = {r["id"] for r in data["resources"]}
    assert {"chat-window", "customer-support", "agent-scratchpad"} <= ids
    support = next(r for r in data["resources"] if r["id"] == "customer-support")
    assert support["flushing"] == "hybrid_summary" and support["max_tokens"] == 4000
    assert support["source"].endswith("support.yaml")


def test_resources_validate_accepts_the_shipped_resources(env: dict[str, str]) -> None:
    result = cli("resources", "validate", str(RESOURCES_DIR), env=env)
    assert result.returncode == 0, result.stderr
    assert "customer-support" in result.stdout


def test_invalid_yaml_exits_2_naming_file_and_line(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("resource: memory\nid: x\ntype: [token_based\nmax_tokens: 10\n")
    result = cli("resources", "validate", str(bad), env=env)
    assert result.returncode == 2
    assert str(bad) in result.stderr and "line 4" in result.stderr
    data = as_json(cli("resources", "validate", str(bad), "--json", env=env))
    assert data["valid"] is False and data["errors"][0]["source"] == str(bad)
    # A command that loads the registry fails the same way.
    listed = cli("resources", "list", env={**env, "MEMORY_RESOURCES_DIR": str(tmp_path)})
    assert listed.returncode == 2 and str(bad) in listed.stderr and "line 4" in listed.stderr


def test_invalid_field_names_the_field_path(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "resource: memory\nid: a\ntype: token_based\nmax_tokens: 100\n"
        "flushing: {type: hybrid_summary, summary_tokens: 500}\n"
    )
    (tmp_path / "b.yaml").write_text("resource: memory\nid: b\ntype: buffer\nmax_messages: 5\n")
    data = as_json(cli("resources", "validate", str(tmp_path), "--json", env=env))
    assert data["valid"] is False
    assert [e["field"] for e in data["errors"]] == ["flushing.summary_tokens"]
    assert [r["id"] for r in data["resources"]] == ["b"]


COMPOZY_FILE = """\
resource: memory
id: user_memory
version: 0.1.0

key: "user:{{.workflow.input.user_id}}"  # Go template

type: token_based
max_tokens: 2000

flushing_strategy:
  type: simple_fifo
  threshold: 0.9
"""


def test_resources_migrate_prints_a_diff_then_writes_a_file_that_validates(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "user_memory.yaml"
    path.write_text(COMPOZY_FILE)
    refused = cli("resources", "validate", str(path), env=env)
    assert refused.returncode == 2 and "use default_key_template" in refused.stderr
    diff = cli("resources", "migrate", str(path), env=env)
    assert diff.returncode == 0, diff.stderr
    assert '-key: "user:{{.workflow.input.user_id}}"' in diff.stdout
    assert '+default_key_template: "user:{{ workflow.input.user_id }}"' in diff.stdout
    assert "+flushing:" in diff.stdout and "+  summarize_threshold: 0.9" in diff.stdout
    assert path.read_text() == COMPOZY_FILE  # a diff only
    written = cli("resources", "migrate", str(path), "--write", env=env)
    assert written.returncode == 0, written.stderr
    assert cli("resources", "validate", str(path), env=env).returncode == 0
    assert "# Go template" in path.read_text()


def test_resources_migrate_refuses_what_it_cannot_translate_with_exit_2(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "piped.yaml"
    original = COMPOZY_FILE.replace("{{.workflow.input.user_id}}", '{{ .id | default \\"x\\" }}')
    path.write_text(original)
    result = cli("resources", "migrate", str(path), "--write", env=env)
    assert result.returncode == 2
    assert str(path) in result.stderr and "key:" in result.stderr and "pipeline" in result.stderr
    assert path.read_text() == original
    data = as_json(cli("resources", "migrate", str(path), "--json", env=env))
    assert data["ok"] is False and "pipeline" in data["files"][0]["error"]


def test_duplicate_ids_across_files_are_invalid(env: dict[str, str], tmp_path: Path) -> None:
    for name in ("one.yaml", "two.yaml"):
        (tmp_path / name).write_text("resource: memory\nid: same\ntype: buffer\nmax_messages: 5\n")
    result = cli("resources", "validate", str(tmp_path), env=env)
    assert result.returncode == 2 and "duplicate" in result.stderr


# ---- bad input, Redis down ---------------------------------------------------------------------


def test_unknown_resource_exits_2_listing_known_ids(env: dict[str, str]) -> None:
    result = cli("inspect", "nope", "--context", "{}", env=env)
    assert result.returncode == 2
    assert "chat-window" in result.stderr and "customer-support" in result.stderr
    data = as_json(cli("inspect", "nope", "--context", "{}", "--json", env=env))
    assert data["ok"] is False and data["error"]["type"] == "ResourceNotFound"
    assert "customer-support" in data["error"]["known"] and data["error"]["exit_code"] == 2


@pytest.mark.parametrize(
    "args",
    [
        ("inspect", "chat-window", "--context", "{not json"),
        ("inspect", "chat-window", "--context", "[1, 2]"),
        ("inspect", "chat-window"),  # no context
        ("inspect", "chat-window", "--context", "{}"),  # template variable missing
        ("read", "--limit", "0", "--key", "p1:x"),  # click's own validation
        ("no-such-command",),
    ],
)
def test_usage_errors_exit_2(env: dict[str, str], args: tuple[str, ...]) -> None:
    result = cli(*args, env=env)
    assert result.returncode == 2, (result.stdout, result.stderr)


def test_redis_down_exits_3(env: dict[str, str]) -> None:
    down = {**env, "MEMORY_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    for args in (
        ("inspect", "chat-window", "--context", support_context("x")),
        ("read", "chat-window", "--context", support_context("x")),
        ("stats",),
        ("cleanup", "--dry-run"),
    ):
        result = cli(*args, env=down)
        assert result.returncode == 3, (args, result.stderr)
    data = as_json(cli("stats", "--json", env=down))
    assert data["error"]["type"] == "StoreUnavailable" and data["error"]["exit_code"] == 3


# ---- one memory ----------------------------------------------------------------------------------


def test_cli_read_of_an_lru_memory_records_no_use(
    env: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "lru.yaml").write_text(
        "resource: memory\nid: lru-chat\ntype: message_count_based\nmax_messages: 50\n"
        "flushing: {type: lru}\ndefault_key_template: 'lru:{{ workflow.input.session_id }}'\n"
    )
    with MemoryClient(settings.replace(resources_dir=tmp_path)) as client:
        memory = client.memory("lru-chat", json.loads(support_context("looked-at")))
        memory.append_many([{"role": "user", "content": f"message {i}"} for i in range(6)])
        client.store.record_use(memory.keys, [2], ttl_s=3600, now=1_000.0)
        before = client.redis.zrange(memory.keys.used, 0, -1, withscores=True)
        page = as_json(
            cli(
                "read",
                "--key",
                memory.key,
                "--json",
                env={**env, "MEMORY_RESOURCES_DIR": str(tmp_path)},
            )
        )
        assert [m["seq"] for m in page["messages"]] == [1, 2, 3, 4, 5, 6]
        assert client.redis.zrange(memory.keys.used, 0, -1, withscores=True) == before
        # The application's own page read still counts as a use.
        memory.read_page(0, 1)
        assert client.redis.zscore(memory.keys.used, "1") is not None


def test_inspect_read_flush_round_trip(env: dict[str, str], client: MemoryClient) -> None:
    key = fill_chat(client, "round-trip", 30)
    ctx = support_context("round-trip")

    stats = as_json(cli("inspect", "chat-window", "--context", ctx, "--json", env=env))
    assert stats["exists"] and stats["key"] == key
    assert stats["message_count"] == 30 and stats["max_messages"] == 50
    assert stats["budget_used_percent"] == 60.0
    assert stats["flush_pending"] is False and stats["last_flush_at"] is None
    assert 0 < stats["ttl_s"] <= 3600

    page = as_json(cli("read", "--key", key, "--offset", "5", "--limit", "10", "--json", env=env))
    assert page["total"] == 30 and page["has_more"] is True
    assert [m["seq"] for m in page["messages"]] == list(range(6, 16))
    assert page["messages"][0]["content"] == "message 5"

    dry = as_json(cli("flush", "chat-window", "--context", ctx, "--dry-run", "--json", env=env))
    assert dry["dry_run"] is True and dry["status"] == "dry_run" and dry["removed"] == 5
    assert dry["would_remove"] == [1, 2, 3, 4, 5]
    assert client.memory_by_id(key, "chat-window").stats().message_count == 30

    done = as_json(cli("flush", "--key", key, "--json", env=env))
    assert done["status"] == "committed" and done["removed"] == 5 and done["message_count"] == 25

    after = as_json(cli("inspect", "--key", key, "--resource", "chat-window", "--json", env=env))
    assert after["message_count"] == 25 and after["flushed_count"] == 5
    assert after["last_flush_at"] is not None and after["epoch"] > stats["epoch"]

    human = cli("inspect", "--key", key, env=env)
    assert human.returncode == 0 and "25 / 50" in human.stdout


def test_inspect_of_a_missing_memory_exits_1(env: dict[str, str]) -> None:
    args = ("inspect", "--key", "p1:chat:absent", "--resource", "chat-window", "--json")
    result = cli(*args, env=env)
    assert result.returncode == 1 and as_json(result)["exists"] is False
    # Without --resource the id is read from the memory, which does not exist: a usage error.
    assert cli("inspect", "--key", "p1:chat:absent", env=env).returncode == 2


def test_unknown_strategy_is_a_usage_error(env: dict[str, str], client: MemoryClient) -> None:
    key = fill_chat(client, "strategy", 3)
    result = cli("flush", "--key", key, "--strategy", "bogus", "--json", env=env)
    assert result.returncode == 2, result.stdout


# ---- across memories -----------------------------------------------------------------------------


def test_stats_through_the_indexes(env: dict[str, str], client: MemoryClient) -> None:
    keys = [fill_chat(client, f"stats-{i}", 3 + i) for i in range(3)]
    data = as_json(cli("stats", "--json", "--top", "2", env=env))
    assert data["memories"] == 3 and data["with_expiry"] == 3 and data["flush_pending"] == 0
    assert data["sampled"] == 3 and data["totals"]["message_count"] == 3 + 4 + 5
    assert [row["memory_id"] for row in data["recent"]] == [keys[2], keys[1]]
    assert data["recent"][0]["resource_id"] == "chat-window"
    assert cli("stats", env=env).returncode == 0


SHORT_TTL_RESOURCE = """
resource: memory
id: brief
type: message_count_based
max_messages: 100
persistence: {ttl: 1s}
default_key_template: "brief:{{ workflow.input.session_id }}"
"""


def test_cleanup_removes_expired_memories_and_dry_run_only_counts(
    env: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "brief.yaml").write_text(SHORT_TTL_RESOURCE)
    env = {**env, "MEMORY_RESOURCES_DIR": str(tmp_path)}
    with MemoryClient(settings.replace(resources_dir=tmp_path)) as client:
        memory = client.memory("brief", json.loads(support_context("cleanup")))
        memory.append({"role": "user", "content": "soon gone"})
        wait_for(lambda: not client.redis.exists(memory.keys.meta), what="the TTL to expire")
    dry = as_json(cli("cleanup", "--dry-run", "--json", env=env))
    assert dry["dry_run"] is True and dry["expired_removed"] == 1
    assert as_json(cli("stats", "--json", env=env))["with_expiry"] == 1
    done = as_json(cli("cleanup", "--json", env=env))
    assert done["dry_run"] is False and done["expired_removed"] == 1
    after = as_json(cli("stats", "--json", env=env))
    assert after["with_expiry"] == 0 and after["memories"] == 0
    assert cli("cleanup", env=env).returncode == 0


# ---- health ----------------------------------------------------------------------------------


def test_health_with_a_live_worker(
    celery_worker: Any, worker_settings: Settings, redis_url: str, key_prefix: str
) -> None:
    env = clean_env(
        redis_url=redis_url,
        broker_url=worker_settings.broker_dsn(),
        key_prefix=key_prefix,  # own prefix: another test's Beat must not be judged here
        resources_dir=str(worker_settings.resources_dir),
    )
    result = cli("health", "--json", env=env)
    data = as_json(result)
    assert result.returncode == 0, data
    checks = data["checks"]
    assert data["healthy"] is True
    assert checks["redis"]["status"] == "ok" and checks["redis"]["latency_ms"] >= 0
    assert checks["broker"]["status"] == "ok"
    assert checks["workers"]["status"] == "ok" and checks["workers"]["count"] >= 1
    assert checks["beat"]["status"] == "unknown"
    assert set(checks["queues"]["backlog"]) == set(QUEUES)
    assert checks["breakers"]["status"] in {"ok", "skipped"}
    human = cli("health", env=env)
    assert human.returncode == 0 and "healthy" in human.stdout
    # Beat required but none ever ran: unhealthy.
    required = cli("health", "--require-beat", "--json", env=env)
    assert required.returncode == 1
    assert as_json(required)["checks"]["beat"]["status"] == "fail"


def test_health_fails_without_a_worker(redis_url: str, key_prefix: str) -> None:
    env = clean_env(
        redis_url=redis_url,
        broker_url=broker_url_for(redis_url, IDLE_BROKER_DB),
        key_prefix=key_prefix,
    )
    result = cli("health", "--json", "--timeout", "0.5", env=env)
    data = as_json(result)
    assert result.returncode == 1
    assert data["healthy"] is False and data["checks"]["workers"]["status"] == "fail"
    assert data["checks"]["redis"]["status"] == "ok"


def test_health_fails_when_redis_is_down(key_prefix: str) -> None:
    env = clean_env(redis_url=f"redis://127.0.0.1:{free_port()}/0", key_prefix=key_prefix)
    result = cli("health", "--json", env=env)
    data = as_json(result)
    assert result.returncode == 1
    assert {data["checks"][c]["status"] for c in ("redis", "broker", "workers")} == {"fail"}


# ---- services ----------------------------------------------------------------------------------


def test_flower_shortcut_refuses_to_start_without_credentials(redis_url: str) -> None:
    env = clean_env(redis_url=redis_url, broker_url=broker_url_for(redis_url, IDLE_BROKER_DB))
    result = cli("flower", "--port", str(free_port()), env=env)
    assert result.returncode != 0
    assert "refusing to start Flower without authentication" in result.stderr + result.stdout


@contextmanager
def running_up(
    tmp_path: Path, *options: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """`memory-engine up --json` with ``options``; yields the process and its "started" event,
    and kills it on the way out if the test left it running."""
    log = tmp_path / "up.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "memory_engine.tooling.cli", "up", "--json", *options],
        env=env if env is not None else clean_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    try:
        assert proc.stdout is not None
        started = json.loads(proc.stdout.readline() or "{}")
        assert started.get("event") == "started", log.read_text()
        yield proc, started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_up_runs_the_services_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(flower_port=str(port))  # no Redis configured: `up` embeds one
    with running_up(tmp_path, "--loglevel", "WARNING", env=env) as (proc, started):
        assert proc.stdout is not None
        pids = [pid for group in started["pids"].values() for pid in group]
        assert set(started["pids"]) == {"redis", "worker", "beat", "flower"}
        assert all(pid_alive(pid) for pid in pids)
        flower = started["flower"]
        auth = (flower["user"], flower["password"])
        assert flower["url"] == f"http://127.0.0.1:{port}/" and flower["password"]
        assert httpx.get(f"{flower['url']}api/workers", timeout=5).status_code == 401
        workers = wait_for(
            lambda: httpx.get(f"{flower['url']}api/workers?refresh=1", auth=auth, timeout=5).json(),
            what="Flower to list the worker",
        )
        assert started["worker"] in workers

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        stopped = json.loads(proc.stdout.readline())
        assert stopped["event"] == "stopped"
        assert [pid for pid in pids if pid_alive(pid)] == []


def test_up_stops_everything_when_a_service_dies(tmp_path: Path) -> None:
    with running_up(tmp_path, "--no-beat", "--no-flower") as (proc, started):
        assert proc.stdout is not None
        os.killpg(started["pids"]["worker"][0], signal.SIGKILL)
        assert proc.wait(timeout=60) == 1
        assert not pid_alive(started["pids"]["redis"][0])
        assert "worker exited" in (tmp_path / "up.log").read_text() + proc.stdout.read()


def test_up_leaves_nothing_running_when_the_cli_itself_is_killed(tmp_path: Path) -> None:
    # SIGKILL gives the CLI no chance to stop its children: PR_SET_PDEATHSIG must (Linux).
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux-only")
    with running_up(tmp_path, "--no-beat", "--no-flower") as (proc, started):
        pids = {name: group[0] for name, group in started["pids"].items()}
        assert set(pids) == {"redis", "worker"} and all(pid_alive(p) for p in pids.values())
        proc.kill()
        proc.wait(10)
        wait_for(
            lambda: not any(pid_alive(p) for p in pids.values()),
            timeout=60,
            what=f"the embedded Redis and the worker to stop after the CLI died ({pids})",
        )


# ---- bad input: a clean error and exit 2, never a traceback ------------------------------------


def test_deep_or_endless_context_files_exit_2(env: dict[str, str], tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text('{"a":' * 5000 + "1" + "}" * 5000)
    just_too_deep = tmp_path / "33.json"
    just_too_deep.write_text('{"a":' * 33 + "1" + "}" * 33)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b'{"a": "\xff"}')
    for source in (deep, just_too_deep, binary, Path("/dev/zero")):
        result = cli("inspect", "chat-window", "--context", f"@{source}", env=env, timeout=30)
        assert result.returncode == 2, (source, result.stderr)
        assert "Traceback" not in result.stderr and "--context" in result.stderr


def test_bad_settings_exit_2_naming_the_variable_without_the_password(
    env: dict[str, str],
) -> None:
    for variable, value in (
        ("MEMORY_REDIS_URL", "redis://:hunter2-pw@127.0.0.1:notaport/0"),
        ("MEMORY_BROKER_URL", "redis://:hunter2-pw@127.0.0.1:6379/zero"),
        ("MEMORY_SOCKET_TIMEOUT_S", "inf"),
        ("MEMORY_SOCKET_CONNECT_TIMEOUT_S", "1e300"),
    ):
        result = cli("stats", env={**env, variable: value})
        assert result.returncode == 2, (variable, result.stderr)
        assert variable in result.stderr and "Traceback" not in result.stderr
        assert "hunter2" not in result.stdout + result.stderr


def test_health_with_the_password_in_the_query_string(tmp_path: Path, key_prefix: str) -> None:
    """redis://host/0?password=... worked for data but crashed health and up inside kombu."""
    from memory_engine.tooling.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(data_dir=tmp_path, password="hunter2-pw")
    server.start()
    try:
        url = f"redis://127.0.0.1:{server.port}/0?password=hunter2-pw"
        env = clean_env(redis_url=url, key_prefix=key_prefix)
        result = cli("health", "--json", "--timeout", "0.5", env=env)
        data = as_json(result)
        assert data["checks"]["redis"]["status"] == "ok"
        assert data["checks"]["broker"]["status"] == "ok", data["checks"]["broker"]
        assert data["checks"]["workers"]["status"] == "fail"  # none runs on this server
        assert "hunter2" not in result.stdout + result.stderr
    finally:
        server.cleanup()
