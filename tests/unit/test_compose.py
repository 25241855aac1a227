"""docker-compose.yml and the Dockerfile against the code (no Docker engine runs here).

Checks that the services exist, that every ``MEMORY_*`` variable is a Settings field and that the
interpolated environment builds valid Settings, that commands are ``celery -A worker ...`` with
queue names from ``memory_engine.task_contract`` (every queue consumed by some worker), that Redis
persists (AOF) and requires a password, that Flower has basic auth, that every service has a
health check, that the image installs the whole project, and that the ``monitoring`` profile is
real: every Prometheus target is a service serving that port (every worker sets
``MEMORY_METRICS_PORT``, Flower's ``/metrics`` is scraped) and Grafana's mounted provisioning
files exist and point at Prometheus and the dashboard (whose metric names
tests/unit/test_dashboard.py
checks against the code). The ``rabbitmq`` and ``cluster`` profiles switch every app service by
the variables the file's header tells an operator to export (``BROKER_URL``; ``REDIS_MODE`` and
``DATA_REDIS_URL``), and the ``cluster`` profile's nodes are cluster-enabled with a one-shot job
creating the cluster once they are healthy.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any, get_args
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import SecretStr

from memory_engine.settings import Settings
from memory_engine.task_contract import QUEUE_FLUSH, QUEUE_MAINTENANCE, QUEUE_SUMMARIZE, QUEUES
from worker.flower_auth import configure_flower_auth

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
APP_SERVICES = ("worker", "worker-summarize", "beat", "flower")
# What an operator exports before `docker compose up` (see the file's header).
SHELL_ENV = {"REDIS_PASSWORD": "redis-pw", "FLOWER_USER": "ops", "FLOWER_PASSWORD": "flower-pw"}

_NAME = re.compile(r"\w+")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's interpolation: ``$X``, ``${X}``, ``${X:-default}``, ``${X:?error}``, ``$$`` ->
    ``$``, with ``${...}`` nested in a default (``${A:-redis://${B}@h}``)."""
    out: list[str] = []
    i = 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$")
            i += 2
        elif value.startswith("${", i):
            depth, j = 1, i + 2
            while depth:  # the matching "}" (an unbalanced one raises IndexError: a bug)
                depth += {"{": 1, "}": -1}.get(value[j], 0)
                j += 1
            out.append(_expand(value[i + 2 : j - 1], env))
            i = j
        elif value[i] == "$" and (name := _NAME.match(value, i + 1)):
            out.append(env.get(name.group(0), ""))
            i = name.end()
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def _expand(inner: str, env: dict[str, str]) -> str:
    name = _NAME.match(inner)
    assert name, f"bad variable {inner!r}"
    rest = inner[name.end() :]
    op = next((o for o in (":-", ":?", "-", "?") if rest.startswith(o)), "")
    arg = rest[len(op) :]
    if env.get(name.group(0)):
        return env[name.group(0)]
    if op.endswith("?"):
        raise KeyError(f"{name.group(0)} is required: {arg}")
    return interpolate(arg, env) if op.endswith("-") else ""


def service_env(name: str, shell: dict[str, str] = SHELL_ENV) -> dict[str, str]:
    """The container environment: null values pass the shell's variable through, or nothing."""
    env = SERVICES[name].get("environment") or {}
    assert isinstance(env, dict), f"{name}: use the mapping form for environment"
    resolved = {}
    for key, value in env.items():
        if value is None:
            if key in shell:
                resolved[key] = shell[key]
        else:
            resolved[key] = interpolate(str(value), shell)
    return resolved


def settings_for(name: str) -> Settings:
    prefix = "MEMORY_"
    fields = {
        k[len(prefix) :].lower(): v for k, v in service_env(name).items() if k.startswith(prefix)
    }
    return Settings.model_validate(fields)


def argv(name: str) -> list[str]:
    command = SERVICES[name]["command"]
    text = command if isinstance(command, str) else shlex.join(command)
    return shlex.split(interpolate(text, SHELL_ENV))


def option(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag:
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def healthcheck_text(name: str) -> str:
    test = SERVICES[name].get("healthcheck", {}).get("test")
    assert test, f"{name} has no health check"
    return interpolate(test if isinstance(test, str) else " ".join(test), {})


def test_services_exist() -> None:
    assert set(SERVICES) >= {"redis", *APP_SERVICES}


# Variables the HTTP API reads itself (memory_engine/server/), not engine settings.
SERVER_VARIABLES = {
    "MEMORY_API_KEYS",
    "MEMORY_API_KEYS_FILE",
    "MEMORY_API_MAX_BODY_BYTES",
    "MEMORY_TRACING",
}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_memory_variable_is_a_settings_field(name: str) -> None:
    for key in SERVICES[name].get("environment") or {}:
        if key.startswith("MEMORY_") and key not in SERVER_VARIABLES:
            field = key[len("MEMORY_") :].lower()
            assert field in Settings.model_fields, f"{name}: {key} is not a Settings field"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_environment_builds_settings_that_reach_redis_with_the_password(name: str) -> None:
    settings = settings_for(name)
    for dsn in (settings.redis_dsn(), settings.broker_dsn()):
        assert dsn.startswith("redis://:redis-pw@redis:6379/"), dsn
    assert settings.redis_dsn() != settings.broker_dsn(), "broker and memory data on their own DBs"
    # The image's WORKDIR is /app and it copies config/: the resource files are there.
    assert settings.resources_dir == Path("/app/config/resources")
    assert list((ROOT / "config" / "resources").glob("*.yaml"))
    with pytest.raises(KeyError, match="REDIS_PASSWORD"):
        service_env(name, shell={})


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_secrets_come_from_the_environment_never_literals(name: str) -> None:
    secret_fields = {
        f for f, info in Settings.model_fields.items() if SecretStr in get_args(info.annotation)
    }
    for key, value in (SERVICES[name].get("environment") or {}).items():
        if key.startswith("MEMORY_") and key[len("MEMORY_") :].lower() in secret_fields:
            assert value is None or "${" in str(value), f"{name}: literal secret in {key}"


def test_app_commands_are_celery_with_the_worker_app() -> None:
    roles = {}
    for name in APP_SERVICES:
        args = argv(name)
        assert args[:3] == ["celery", "-A", "worker"], f"{name}: {args}"
        roles[name] = args[3]
        assert SERVICES[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert roles == {
        "worker": "worker",
        "worker-summarize": "worker",
        "beat": "beat",
        "flower": "flower",
    }


def test_worker_queues_are_the_code_queues_and_each_has_a_consumer() -> None:
    consumed: dict[str, set[str]] = {}
    for name in ("worker", "worker-summarize"):
        queues = option(argv(name), "-Q")
        assert queues, f"{name} names its queues"
        consumed[name] = set(queues.split(","))
        assert consumed[name] <= set(QUEUES), f"{name}: unknown queue in {queues}"
    assert consumed["worker"] == {QUEUE_FLUSH, QUEUE_MAINTENANCE}
    assert consumed["worker-summarize"] == {QUEUE_SUMMARIZE}
    assert set().union(*consumed.values()) == set(QUEUES)


@pytest.mark.parametrize("name", ["worker", "worker-summarize"])
def test_worker_health_check_pings_its_own_node(name: str) -> None:
    node = option(argv(name), "-n")
    assert node and node.endswith("@%h")
    check = healthcheck_text(name)
    assert "celery -A worker inspect ping" in check
    # Celery's %h is the host name, which is $HOSTNAME inside the container.
    assert f"-d {node.replace('%h', '$HOSTNAME')}" in check


def test_beat_runs_redbeat_from_the_app_config() -> None:
    from worker.app import create_app

    assert create_app(settings_for("beat")).conf.beat_scheduler == "redbeat.RedBeatScheduler"
    assert option(argv("beat"), "-S") in (None, "redbeat.RedBeatScheduler")


def test_redis_persists_requires_a_password_and_never_evicts() -> None:
    redis = SERVICES["redis"]
    assert str(redis["image"]).startswith("redis:7")
    command = " ".join(redis["command"]) if isinstance(redis["command"], list) else redis["command"]
    for setting in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction"):
        assert setting in command
    assert '--requirepass "$$REDIS_PASSWORD"' in command
    assert service_env("redis")["REDIS_PASSWORD"] == "redis-pw"
    with pytest.raises(KeyError):
        service_env("redis", shell={})
    assert "REDISCLI_AUTH" in healthcheck_text("redis") and "ping" in healthcheck_text("redis")
    assert any(v.endswith(":/data") for v in redis["volumes"]), "AOF files on a volume"


def test_flower_has_basic_auth_from_settings() -> None:
    settings = settings_for("flower")
    assert not settings.flower_unauthenticated_dev
    environ: dict[str, str] = {}
    configure_flower_auth(settings, argv("flower")[1:], environ)
    assert environ == {"FLOWER_BASIC_AUTH": "ops:flower-pw"}
    with pytest.raises(KeyError, match="FLOWER_PASSWORD"):
        service_env("flower", shell={"REDIS_PASSWORD": "x", "FLOWER_USER": "ops"})
    assert option(argv("flower"), "--port") == "5555"
    assert any(str(p).endswith(":5555") for p in SERVICES["flower"]["ports"])
    assert "/healthcheck" in healthcheck_text("flower")
    for name in set(APP_SERVICES) - {"flower"}:
        assert "MEMORY_FLOWER_PASSWORD" not in service_env(name), f"{name} gets no Flower secret"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_has_a_health_check(name: str) -> None:
    assert healthcheck_text(name)


def test_dockerfile_installs_the_whole_project() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in dockerfile.splitlines()]
    assert "FROM python:3.11-slim" in lines
    assert re.search(r'^RUN pip install "?\.(\[server\])?"?(\s|$)', dockerfile, re.MULTILINE)
    copied: set[str] = set()
    for line in lines:
        if line.startswith("COPY "):
            copied.update(p.rstrip("/") for p in line.split()[1:-1])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    needed = {p.rstrip("*") for p in setuptools["packages"]["find"]["include"]}
    needed |= {f"{m}.py" for m in setuptools.get("py-modules", [])}
    needed |= {"pyproject.toml", project["project"]["readme"]}
    assert needed <= copied, f"not copied into the image: {needed - copied}"
    assert "WORKDIR /app" in lines


# ---- profile `monitoring`: Prometheus scrapes every worker and Flower, Grafana is provisioned ----

MONITORING = ("prometheus", "grafana")
WORKERS = tuple(n for n in APP_SERVICES if argv(n)[3] == "worker")


def mounts(name: str) -> dict[str, Path]:
    """``{container path: host path}`` of the service's bind mounts (``./...`` sources)."""
    out = {}
    for volume in SERVICES[name].get("volumes") or []:
        source, target = str(volume).split(":")[:2]
        if source.startswith("./"):
            out[target] = ROOT / source
    return out


def prometheus_config() -> dict[str, Any]:
    """The configuration file the prometheus service loads (found through its mount)."""
    path = option(argv("prometheus"), "--config.file")
    assert path, "prometheus names its configuration file"
    host = mounts("prometheus").get(path)
    assert host is not None and host.is_file(), f"{path} is not mounted from the repository"
    config: dict[str, Any] = yaml.safe_load(host.read_text())
    return config


def scrape_targets() -> list[tuple[str, str, int, str]]:
    """``(job, host, port, metrics_path)`` of every static and DNS target."""
    targets = []
    for job in prometheus_config()["scrape_configs"]:
        path = job.get("metrics_path", "/metrics")
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                targets.append((job["job_name"], host, int(port), path))
        for dns in job.get("dns_sd_configs", []):
            assert dns.get("type", "SRV") == "A", "compose DNS answers A records"
            targets += [(job["job_name"], host, int(dns["port"]), path) for host in dns["names"]]
    return targets


def serves(name: str) -> set[int]:
    """Ports the service's process listens on: its metrics port, ``--port``, ``expose``."""
    ports = {int(p) for p in SERVICES[name].get("expose") or []}
    metrics_port = service_env(name).get("MEMORY_METRICS_PORT")
    if metrics_port:
        ports.add(int(metrics_port))
    if SERVICES[name].get("command") and option(argv(name), "--port"):
        ports.add(int(str(option(argv(name), "--port"))))
    return ports


def test_monitoring_profile_runs_prometheus_and_grafana_on_loopback() -> None:
    for name, port in (("prometheus", 9090), ("grafana", 3000)):
        assert SERVICES[name]["profiles"] == ["monitoring"], name
        assert SERVICES[name]["ports"] == [f"127.0.0.1:{port}:{port}"], name
        assert str(SERVICES[name]["image"]).split(":")[1] not in ("", "latest"), "pinned image"
    # Everything else runs without the profile.
    assert {n for n, s in SERVICES.items() if s.get("profiles")} == {
        *MONITORING,
        "rabbitmq",
        *CLUSTER_NODES,
        "redis-cluster-create",
    }
    assert "prometheus" in (SERVICES["grafana"].get("depends_on") or [])


@pytest.mark.parametrize("name", WORKERS)
def test_every_worker_serves_metrics_on_a_fixed_port(name: str) -> None:
    port = settings_for(name).metrics_port
    assert port, f"{name}: MEMORY_METRICS_PORT unset or 0 (a random port cannot be scraped)"
    assert port in {int(p) for p in SERVICES[name].get("expose") or []}


def test_every_prometheus_target_is_a_service_serving_that_port() -> None:
    targets = scrape_targets()
    assert targets
    for job, host, port, path in targets:
        assert host in SERVICES, f"{job}: {host} is not a compose service"
        assert not SERVICES[host].get("profiles"), f"{job}: {host} runs only in a profile"
        assert port in serves(host), f"{job}: {host} does not serve port {port}"
        assert path == "/metrics", job
    scraped = {(host, port) for _, host, port, _ in targets}
    for name in WORKERS:
        assert (name, settings_for(name).metrics_port) in scraped, f"{name} is not scraped"
    assert ("flower", int(str(option(argv("flower"), "--port")))) in scraped, "Flower's /metrics"


def test_grafana_mounts_valid_provisioning_and_the_dashboard() -> None:
    grafana = mounts("grafana")
    for host in grafana.values():
        assert host.exists(), f"grafana mounts {host}, which does not exist"
    sources_dir = grafana["/etc/grafana/provisioning/datasources"]
    boards_dir = grafana["/etc/grafana/provisioning/dashboards"]
    [source] = [
        d
        for f in sorted(sources_dir.glob("*.yml"))
        for d in yaml.safe_load(f.read_text())["datasources"]
    ]
    assert source["type"] == "prometheus"
    # The data source reaches the prometheus service on the port Prometheus listens on.
    assert source["url"] == "http://prometheus:9090"
    assert SERVICES["prometheus"]["ports"][0].endswith(":9090")
    [provider] = [
        p
        for f in sorted(boards_dir.glob("*.yml"))
        for p in yaml.safe_load(f.read_text())["providers"]
    ]
    assert provider["type"] == "file"
    dashboards = {t: h for t, h in grafana.items() if h.suffix == ".json"}
    assert dashboards, "no dashboard mounted"
    for target, host in dashboards.items():
        # The provider loads the directory the dashboard is mounted in.
        assert str(Path(target).parent) == provider["options"]["path"]
        board = json.loads(host.read_text())
        [variable] = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
        assert variable["query"] == source["type"]
        assert variable["current"]["value"] == source["uid"], "the default data source exists"
    home = service_env("grafana").get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    assert home is None or home in dashboards


def test_summaries_run_on_a_thread_pool_sized_for_io_and_flushes_on_prefork() -> None:
    summarize = argv("worker-summarize")
    assert option(summarize, "--pool") == "threads"
    assert int(str(option(summarize, "--concurrency"))) >= 16
    # The flush worker is CPU-bound (tokenizing, planning): processes, not threads.
    assert option(argv("worker"), "--pool") in (None, "prefork")
    assert settings_for("worker-summarize").summarizer_timeout_s > 0, "bounds each call"


# ---- profile `rabbitmq`: RabbitMQ as the broker, results and RedBeat stay in Redis ------------

RABBIT_ENV = {
    **SHELL_ENV,
    "RABBITMQ_PASSWORD": "mq-pw",
    "BROKER_URL": "amqp://memory:mq-pw@rabbitmq:5672/memory-engine",
}
"""What the compose header tells an operator to export for the profile."""


def test_rabbitmq_profile_runs_a_management_broker_with_durable_storage() -> None:
    rabbit = SERVICES["rabbitmq"]
    assert rabbit["profiles"] == ["rabbitmq"]
    image, tag = str(rabbit["image"]).split(":")
    assert image == "rabbitmq" and tag.startswith("3.") and tag.endswith("-management")
    assert any(str(v).endswith(":/var/lib/rabbitmq") for v in rabbit["volumes"])
    assert rabbit.get("hostname"), "a fixed node name keeps the data directory across re-creation"
    assert rabbit["ports"] == ["127.0.0.1:15672:15672"]
    env = service_env("rabbitmq", RABBIT_ENV)
    assert env["RABBITMQ_DEFAULT_PASS"] == "mq-pw"
    assert "rabbitmq-diagnostics" in healthcheck_text("rabbitmq")
    header = (ROOT / "docker-compose.yml").read_text().split("\nname:")[0]
    for variable in ("RABBITMQ_PASSWORD", "BROKER_URL", "--profile rabbitmq"):
        assert variable in header, f"the header documents {variable}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_rabbitmq_profile_points_every_app_service_at_rabbitmq(name: str) -> None:
    fields = {
        k[len("MEMORY_") :].lower(): v
        for k, v in service_env(name, RABBIT_ENV).items()
        if k.startswith("MEMORY_")
    }
    settings = Settings.model_validate(fields)
    assert settings.broker_kind() == "amqp"
    user, vhost = "memory", "memory-engine"
    assert settings.broker_dsn() == f"amqp://{user}:mq-pw@rabbitmq:5672/{vhost}"
    assert service_env("rabbitmq", RABBIT_ENV)["RABBITMQ_DEFAULT_USER"] == user
    assert service_env("rabbitmq", RABBIT_ENV)["RABBITMQ_DEFAULT_VHOST"] == vhost
    # Results and RedBeat's schedule stay in Redis (Celery has no amqp result backend).
    for dsn in (settings.result_backend_dsn(), settings.beat_redis_dsn()):
        assert dsn == "redis://:redis-pw@redis:6379/1"
    rabbit_dependency = SERVICES[name]["depends_on"]["rabbitmq"]
    assert rabbit_dependency == {"condition": "service_healthy", "required": False}
    # Without the profile nothing changes: the Redis broker on DB 1.
    assert settings_for(name).broker_dsn() == "redis://:redis-pw@redis:6379/1"
    assert settings_for(name).broker_queue_type == "classic"


# ---- profile `cluster`: memory data on a 3-master Redis Cluster, Celery's side on `redis` -------

CLUSTER_NODES = ("redis-node-1", "redis-node-2", "redis-node-3")
CLUSTER_ENV = {
    **SHELL_ENV,
    "REDIS_MODE": "cluster",
    "DATA_REDIS_URL": "redis://:redis-pw@redis-node-1:6379/0",
}
"""What the compose header tells an operator to export for the profile."""


def command_text(name: str, shell: dict[str, str] = SHELL_ENV) -> str:
    command = SERVICES[name]["command"]
    return interpolate(command if isinstance(command, str) else " ".join(command), shell)


@pytest.mark.parametrize("name", CLUSTER_NODES)
def test_cluster_profile_nodes_are_cluster_enabled_persistent_and_password_protected(
    name: str,
) -> None:
    node = SERVICES[name]
    assert node["profiles"] == ["cluster"]
    assert (
        str(node["image"]).split(":")[0] == "redis" and str(node["image"]).split(":")[1][0] == "7"
    )
    command = command_text(name)
    for setting in (
        "--cluster-enabled yes",
        "--appendonly yes",
        "--maxmemory-policy noeviction",
        '--requirepass "$REDIS_PASSWORD"',
        '--masterauth "$REDIS_PASSWORD"',
        '--cluster-announce-hostname "$NODE_NAME"',
    ):
        assert setting in command, f"{name}: {setting}"
    env = service_env(name)
    assert env["NODE_NAME"] == name, "each node announces its own service name"
    assert env["REDIS_PASSWORD"] == "redis-pw"
    with pytest.raises(KeyError, match="REDIS_PASSWORD"):
        service_env(name, shell={})
    [volume] = node["volumes"]
    assert volume == f"{name}-data:/data", "each node has its own data volume"
    assert f"{name}-data" in COMPOSE["volumes"]
    assert "ping" in healthcheck_text(name) and "REDISCLI_AUTH" in healthcheck_text(name)


def test_cluster_profile_creates_the_cluster_once_the_nodes_are_healthy() -> None:
    create = SERVICES["redis-cluster-create"]
    assert create["profiles"] == ["cluster"]
    assert create["depends_on"] == {n: {"condition": "service_healthy"} for n in CLUSTER_NODES}
    assert create["restart"] == "no", "a one-shot job"
    command = command_text("redis-cluster-create")
    assert "redis-cli --cluster create" in command and "--cluster-yes" in command
    assert "--cluster-replicas 0" in command
    for node in CLUSTER_NODES:
        assert f"getent hosts {node} " in command, f"{node} is one of the masters"
    # A second run finds the cluster formed and leaves it alone.
    assert command.index("cluster_state:ok") < command.index("--cluster create")
    assert "cluster_state:ok" in healthcheck_text("redis-cluster-create")
    assert service_env("redis-cluster-create")["REDIS_PASSWORD"] == "redis-pw"
    header = (ROOT / "docker-compose.yml").read_text().split("\nname:")[0]
    for variable in ("REDIS_MODE=cluster", "DATA_REDIS_URL", "--profile cluster"):
        assert variable in header, f"the header documents {variable}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_cluster_profile_points_app_services_at_the_cluster_and_celery_at_redis(
    name: str,
) -> None:
    from config.celery import check_broker_side

    fields = {
        k[len("MEMORY_") :].lower(): v
        for k, v in service_env(name, CLUSTER_ENV).items()
        if k.startswith("MEMORY_")
    }
    settings = Settings.model_validate(fields)
    assert settings.redis_mode == "cluster"
    assert settings.redis_dsn() == "redis://:redis-pw@redis-node-1:6379/0"
    assert urlsplit(settings.redis_dsn()).hostname in CLUSTER_NODES
    # The broker, results and RedBeat are named explicitly, on the standalone `redis`.
    for variable in ("BROKER_URL", "RESULT_BACKEND_URL", "BEAT_REDIS_URL"):
        assert fields[variable.lower()] == "redis://:redis-pw@redis:6379/1", variable
    check_broker_side(settings)  # config/celery.py accepts the combination
    dependency = SERVICES[name]["depends_on"]["redis-cluster-create"]
    assert dependency == {"condition": "service_completed_successfully", "required": False}
    # Without the profile's variables: standalone data on `redis` DB 0.
    plain = settings_for(name)
    assert plain.redis_mode == "standalone"
    assert plain.redis_dsn() == "redis://:redis-pw@redis:6379/0"


def test_cluster_profile_without_explicit_celery_urls_is_refused() -> None:
    """What the explicit URLs prevent: a Cluster data store as Celery's default Redis."""
    from config.celery import check_broker_side
    from memory_engine.errors import ConfigError

    settings = Settings.model_validate(
        {"redis_mode": "cluster", "redis_url": CLUSTER_ENV["DATA_REDIS_URL"]}
    )
    with pytest.raises(ConfigError, match="MEMORY_BROKER_URL"):
        check_broker_side(settings)


def test_beat_health_check_pings_redbeats_store_not_the_broker() -> None:
    check = healthcheck_text("beat")
    assert "beat_redis_dsn()" in check and "broker_dsn()" not in check


# ---- service `api`: the HTTP API and MCP server ------------------------------------------------


def test_api_serves_the_http_api_on_loopback_with_keys_from_the_environment() -> None:
    from memory_engine.server.auth import API_KEYS_ENV, API_KEYS_FILE_ENV

    api = SERVICES["api"]
    assert argv("api") == ["memory-engine", "serve", "--host", "0.0.0.0", "--port", "8080"]
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert api["ports"] == ["127.0.0.1:8080:8080"]
    env = api["environment"]
    # Tokens pass through from the shell, never literals in the file.
    assert env[API_KEYS_ENV] is None and env[API_KEYS_FILE_ENV] is None
    assert "/healthz" in healthcheck_text("api") and "8080" in healthcheck_text("api")
    settings = settings_for("api")
    assert settings.redis_dsn().startswith("redis://:redis-pw@redis:6379/")
    assert re.search(r'^RUN pip install "\.\[server\]"', (ROOT / "Dockerfile").read_text(), re.M)
