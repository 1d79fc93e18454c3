"""The Grafana dashboard queries only metrics and labels that the code registers.

The metric names and label names come from the metric classes themselves, instantiated on a fresh registry (the
data plane's `SidecarMetrics` and `RequestMetrics`, the zone control plane's `ZoneMetrics`, the BGP speaker's
`SpeakerMetrics`), and from the zone ingress's collector, fed one connection, so renaming a metric without
updating docs/grafana/meshcast-dashboard.json fails here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from bgp.metrics import SpeakerMetrics
from dataplane.ingress.stats import IngressAccounts
from dataplane.metrics import SidecarMetrics
from dataplane.observe.requests import RequestMetrics
from meshcast.cli.run_ingress import ingress_registry
from zone_cp.metrics import ZoneMetrics

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana" / "meshcast-dashboard.json"
SCRAPE_LABELS = frozenset({"instance", "job"})  # added by Prometheus to every series it scrapes
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
FUNCTIONS = frozenset({"rate", "irate", "increase", "sum", "min", "max", "avg", "count", "topk", "bottomk", "sort",
                       "sort_desc", "time", "histogram_quantile", "clamp_min", "clamp_max", "abs", "vector"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset"})
NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"


def exposed_series() -> dict[str, frozenset[str]]:
    """Every series name the code exposes (as Prometheus stores it) -> its label names."""
    registry = CollectorRegistry()
    holders = [SidecarMetrics(registry), ZoneMetrics(registry), RequestMetrics(registry, zone="z"),
               SpeakerMetrics("r", ["192.0.2.1"], ["announced"], registry)]
    series: dict[str, frozenset[str]] = {}
    for holder in holders:
        for metric in vars(holder).values():
            if isinstance(metric, MetricWrapperBase):
                labels = frozenset(metric._labelnames)
                for suffix in SUFFIXES[metric._type]:
                    series[metric._name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series | ingress_series()


def ingress_series() -> dict[str, frozenset[str]]:
    """The zone ingress's series: its collector (a custom one, over plain statistics) exposes a series once it has
    something to say, so it is fed a refused connection, which carries every label."""
    accounts = IngressAccounts()
    accounts.opened(0.0).outcome = "unknown_sni"
    return {sample.name: frozenset(sample.labels)
            for family in ingress_registry(accounts.snapshot).collect() for sample in family.samples}


SERIES = exposed_series()


def problems(expr: str, series: dict[str, frozenset[str]] = SERIES) -> list[str]:
    """What in a PromQL expression names a series or label the code does not have (empty when all is known)."""
    found: list[str] = []
    grafana = re.fullmatch(rf"label_values\((.*),\s*({NAME})\)", expr.strip())
    if grafana:  # a template variable's query: a selector, then a label of it
        found += problems(grafana[1], series)
        metric = re.match(NAME, grafana[1].strip())
        if metric and grafana[2] not in series.get(metric[0], frozenset()):
            found.append(f"label {grafana[2]} not on {metric[0]}")
        return found
    text = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges and subqueries: [5m], [$__rate_interval]
    grouping: set[str] = set()

    def group(m: re.Match[str]) -> str:
        grouping.update(label.strip() for label in m[2].split(",") if label.strip())
        return " "

    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", group, text)
    used: set[str] = set()

    def selector(m: re.Match[str]) -> str:
        name, matchers = m[1], m[2]
        if name not in series:
            found.append(f"unknown series {name}")
            return " "
        used.add(name)
        for label in re.findall(rf"({NAME})\s*(?:=~|!~|!=|=)", re.sub(r'"(?:[^"\\]|\\.)*"', '""', matchers or "")):
            if label not in series[name] | SCRAPE_LABELS:
                found.append(f"label {label} not on {name}")
        return " "

    text = re.sub(rf"({NAME})(?![\w:])(?!\s*\()\s*(?:\{{([^}}]*)\}})?", lambda m: (
        m[0] if m[1] in KEYWORDS or m[1] in FUNCTIONS else selector(m)), text)
    for function in re.findall(rf"({NAME})\s*\(", text):
        if function not in FUNCTIONS:
            found.append(f"unknown function {function}")
    known = SCRAPE_LABELS.union(*(series[name] for name in used)) if used else SCRAPE_LABELS
    found += [f"grouping label {label} on none of {sorted(used)}" for label in sorted(grouping - known)]
    if not used and not found:
        found.append("no series named")
    return found


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and template variable query."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        query = variable["query"]
        yield f"${variable['name']}", query["query"] if isinstance(query, dict) else query


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_the_checker_catches_what_it_should() -> None:
    assert problems('sum by (destination_service) (rate(meshcast_requests_total{zone=~"$zone"}[5m]))') == []
    assert problems("histogram_quantile(0.99, sum by (le) (rate(meshcast_cp_config_push_latency_seconds_bucket"
                    "[$__rate_interval])))") == []
    assert problems("min(meshcast_dp_certificate_expiry_timestamp_seconds) - time()") == []
    assert problems("rate(meshcast_request_total[5m])") == ["unknown series meshcast_request_total"]
    assert problems("meshcast_dp_connections") == ["unknown series meshcast_dp_connections"]  # a counter: _total
    assert problems('rate(meshcast_retries_total{service="web"}[5m])') == [
        "label service not on meshcast_retries_total"]
    assert problems('meshcast_retries_total{destination_service="a=b,service=c"}') == []  # inside a value
    assert problems("sum by (zone) (meshcast_retries_total)") == [
        "grouping label zone on none of ['meshcast_retries_total']"]
    assert problems("label_values(meshcast_requests_total, code)") == ["label code not on meshcast_requests_total"]
    assert problems("avg_over_time(meshcast_dp_bytes_total[5m])") == ["unknown function avg_over_time"]
    assert problems("sum(rate(x_total[5m])) > bool 0") == ["unknown series x_total"]
    assert problems("vector(1)") == ["no series named"]


def test_every_query_names_only_metrics_and_labels_the_code_has(dashboard: dict[str, Any]) -> None:
    exprs = list(expressions(dashboard))
    assert len(exprs) > 20
    assert {where: problems(expr) for where, expr in exprs if problems(expr)} == {}


def test_the_panels_the_dashboard_is_for_are_there(dashboard: dict[str, Any]) -> None:
    charted = {name for _, expr in expressions(dashboard) for name in re.findall(NAME, expr) if name in SERIES}
    wanted = {"meshcast_requests_total", "meshcast_request_duration_seconds_bucket", "meshcast_retries_total",
              "meshcast_ejections_total", "meshcast_rate_limited_total", "meshcast_dp_active_connections",
              "meshcast_dp_certificate_expiry_timestamp_seconds", "meshcast_cp_config_pushes_total",
              "meshcast_cp_config_push_latency_seconds_bucket", "meshcast_cp_connected_dataplanes",
              "meshcast_ingress_connections_total", "meshcast_ingress_active_connections",
              "meshcast_ingress_downstream_received_bytes_total", "meshcast_ingress_downstream_sent_bytes_total",
              "meshcast_ingress_upstream_connect_duration_seconds_bucket"}
    assert wanted <= set(SERIES)  # still registered by the code
    assert wanted - charted == set()


def test_the_dashboard_is_importable(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] == 39
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in panels(dashboard):
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
            assert all(t["datasource"] == panel["datasource"] for t in panel["targets"])
