"""Request metrics as Prometheus scrapes them: render the registry, parse the text, check the series."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dataplane.observe.requests import DURATION_BUCKETS, RequestMetrics, code_class

Labels = tuple[tuple[str, str], ...]


def scrape(registry: CollectorRegistry) -> dict[str, dict[Labels, float]]:
    """sample name -> {sorted labels: value}, from the exposition text."""
    out: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def labels(**kv: str) -> Labels:
    return tuple(sorted(kv.items()))


@pytest.mark.parametrize(("status", "expected"), [
    (101, "1xx"), (200, "2xx"), (204, "2xx"), (302, "3xx"), (404, "4xx"), (499, "4xx"), (503, "5xx"),
    (None, "none"), (99, "none"), (600, "none"),
])
def test_code_class(status: int | None, expected: str) -> None:
    assert code_class(status) == expected


def test_recorded_requests_are_counted_per_label_set() -> None:
    registry = CollectorRegistry()
    metrics = RequestMetrics(registry, zone="zone-1")
    metrics.record("outbound", "frontend", "web", status=200, duration=0.0004, request_bytes=10, response_bytes=500)
    metrics.record("outbound", "frontend", "web", status=201, duration=0.003, response_bytes=20, retries=2)
    metrics.record("outbound", "frontend", "web", status=503, duration=0.2, retries=1)
    metrics.record("inbound", None, "web", status=None, duration=20.0)
    metrics.ejected("web")
    metrics.ejected("web")
    metrics.rate_limited("api")
    s = scrape(registry)

    def req(direction: str, source: str, code: str) -> Labels:
        return labels(direction=direction, source_service=source, destination_service="web", zone="zone-1",
                      code_class=code)

    assert s["meshcast_requests_total"] == {
        req("outbound", "frontend", "2xx"): 2, req("outbound", "frontend", "5xx"): 1,
        req("inbound", "unknown", "none"): 1,
    }
    # every series of a label set exists from its first request on, at 0 if need be (rate() then sees its start)
    out_web, in_web = labels(direction="outbound", destination_service="web"), labels(direction="inbound",
                                                                                       destination_service="web")
    assert s["meshcast_request_bytes_total"] == {out_web: 10, in_web: 0}
    assert s["meshcast_response_bytes_total"] == {out_web: 520, in_web: 0}
    assert s["meshcast_retries_total"] == {labels(destination_service="web"): 3}
    assert s["meshcast_ejections_total"] == {labels(destination_service="web"): 2}
    assert s["meshcast_rate_limited_total"] == {labels(service="api"): 1}

    hist = labels(direction="outbound", destination_service="web", zone="zone-1")
    assert s["meshcast_request_duration_seconds_count"][hist] == 3
    assert s["meshcast_request_duration_seconds_sum"][hist] == pytest.approx(0.2034)
    buckets = {dict(k)["le"]: v for k, v in s["meshcast_request_duration_seconds_bucket"].items()
               if dict(k)["direction"] == "outbound"}
    assert (buckets["0.0005"], buckets["0.005"], buckets["0.25"], buckets["+Inf"]) == (1, 2, 3, 3)
    inbound = {dict(k)["le"]: v for k, v in s["meshcast_request_duration_seconds_bucket"].items()
               if dict(k)["direction"] == "inbound"}
    assert inbound["10.0"] == 0 and inbound["+Inf"] == 1  # 20 s is past the last bucket


def test_buckets_span_half_a_millisecond_to_ten_seconds() -> None:
    assert DURATION_BUCKETS[0] == 0.0005 and DURATION_BUCKETS[-1] == 10.0
    assert list(DURATION_BUCKETS) == sorted(set(DURATION_BUCKETS))


def test_each_instance_owns_its_registry() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    RequestMetrics(first, zone="a").record("inbound", "x", "y", status=200, duration=0.001)
    RequestMetrics(second, zone="b")
    assert "meshcast_requests_total" not in scrape(second)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        RequestMetrics(first, zone="a")  # the same names twice on one registry
