"""The deploy files: the Grafana dashboard is valid, every metric it queries exists in the code
(and every metric in the code is on it), and the Prometheus and provisioning files parse."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from memory_engine.metrics import METRIC_PREFIX, EngineMetrics
from worker.metrics import QueueDepthCollector, WorkerMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "memory-engine.json"

# Sample suffixes each metric type exposes (prometheus_client's text format).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}
_PROMQL_WORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
    | {"and", "or", "unless", "inf", "nan"}
)


def exposed_series() -> dict[str, str]:
    """``{series name: metric family}`` for every metric registered by the engine and worker."""
    registry = CollectorRegistry()
    EngineMetrics(registry)
    WorkerMetrics(registry)
    families = list(registry.collect()) + list(
        QueueDepthCollector(client=None, queues=()).describe()  # type: ignore[arg-type]
    )
    series: dict[str, str] = {}
    for family in families:
        for suffix in _SUFFIXES[family.type]:
            series[family.name + suffix] = family.name
    return series


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords, label
    names (in ``{...}`` or ``by (...)``), strings, durations or numbers."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings (label values, legend text)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"(?<![\w:])\d+(?:\.\d*)?(?:[eE][+-]?\d+)?", "", text)  # numbers: 1e-9
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group()
        after = text[match.end() :].lstrip()
        if after.startswith("(") or word.lower() in _PROMQL_WORDS:
            continue
        names.add(word)
    return names


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows nest their panels


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def queries(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append(re.sub(r"label_values\((\w+),\s*\w+\)", r"\1", query["query"]))
    return exprs


def test_metric_names_parser() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, strategy) (rate(a_seconds_bucket{x=~"$r"}[5m])))'
        " / on (job) group_left b_total or vector(0) + clamp_min(c, 1e-9) * 2.5"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c"}


def test_dashboard_is_a_grafana_dashboard_with_queries(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    graphs = [p for p in panels(dashboard) if p["type"] != "row"]
    assert len(graphs) >= 10
    for panel in graphs:
        assert panel["title"] and panel["description"], panel["id"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    used = {v for e in queries(dashboard) for v in re.findall(r"\$(\w+)", e)}
    assert used - {"__rate_interval"} <= variables


def test_every_queried_metric_exists_in_the_code(dashboard: dict[str, Any]) -> None:
    exposed = exposed_series()
    queried = {name for expr in queries(dashboard) for name in metric_names(expr)}
    assert queried, "no metric names found in the dashboard"
    missing = sorted(queried - set(exposed))
    assert not missing, f"the dashboard queries metrics the code does not export: {missing}"


def test_every_metric_of_the_code_is_on_the_dashboard(dashboard: dict[str, Any]) -> None:
    exposed = exposed_series()
    queried = {name for expr in queries(dashboard) for name in metric_names(expr)}
    shown = {exposed[name] for name in queried}
    assert set(exposed.values()) - shown == set()
    assert all(name.startswith(METRIC_PREFIX) for name in exposed)


def test_prometheus_config_scrapes_workers_and_flower() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"memory-engine-worker", "flower"} <= set(jobs)
    for job in jobs.values():
        # Static targets, or DNS discovery of every replica of a service (names + port);
        # tests/unit/test_compose.py checks that each is a compose service serving that port.
        targets = [t for sc in job.get("static_configs", []) for t in sc["targets"]]
        for dns in job.get("dns_sd_configs", []):
            targets += [f"{name}:{dns['port']}" for name in dns["names"]]
        assert targets and all(re.fullmatch(r"[\w.-]+:\d+", t) for t in targets)


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    [source] = sources["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == "prometheus"
    boards = yaml.safe_load((provisioning / "dashboards" / "memory-engine.yml").read_text())
    [provider] = boards["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
