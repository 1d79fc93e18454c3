"""Per-request Prometheus metrics of the data plane, registered on a registry passed in.

Interface:

    metrics = RequestMetrics(registry, zone="zone-1")  # this dataplane's zone, the `zone` label of its series
    metrics.record("outbound", "frontend", "web", status=200, duration=0.0042, request_bytes=0, response_bytes=512,
                   retries=1)                        # once per finished request
    metrics.ejected("web")                           # outlier detection took an endpoint of "web" out
    metrics.rate_limited("web")                      # a request to "web" was refused by a rate limit

Exposed series (counters get `_total` from the client library):

| metric                                  | type      | labels                                                  |
|-----------------------------------------|-----------|---------------------------------------------------------|
| meshcast_requests_total                 | counter   | direction, source_service, destination_service, zone,  |
|                                         |           | code_class ("1xx".."5xx"; "none": no response at all)   |
| meshcast_request_duration_seconds       | histogram | direction, destination_service, zone                    |
| meshcast_request_bytes_total            | counter   | direction, destination_service (request bodies)         |
| meshcast_response_bytes_total           | counter   | direction, destination_service (response bodies)        |
| meshcast_retries_total                  | counter   | destination_service                                     |
| meshcast_ejections_total                | counter   | destination_service                                     |
| meshcast_rate_limited_total             | counter   | service                                                 |

A service that is not known (a TCP peer without a certificate) is labelled "unknown". The hot path is one dict
lookup for the label children of a (direction, source, destination, status class) combination, then the increments:
children are cached, since `labels()` costs a lock and a tuple build per call.
"""

from __future__ import annotations

from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Histogram

# From half a millisecond (a proxied hop on loopback) to ten seconds (a long poll or a timeout).
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNKNOWN = "unknown"
_CODE_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


def code_class(status: int | None) -> str:
    """The status class: "2xx" for 200..299 and so on; "none" for no response (or a status outside 100..599)."""
    return _CODE_CLASSES.get(status // 100, "none") if status is not None else "none"


class _Children(NamedTuple):
    requests: Counter
    duration: Histogram
    request_bytes: Counter
    response_bytes: Counter
    retries: Counter


class RequestMetrics:
    """Owns the per-request metrics on `registry`, and the cache of their label children (one per combination)."""

    def __init__(self, registry: CollectorRegistry, *, zone: str) -> None:
        self.zone = zone
        self.requests = Counter(
            "meshcast_requests", "Requests proxied, by the class of the status sent back",
            ["direction", "source_service", "destination_service", "zone", "code_class"], registry=registry)
        self.duration = Histogram(
            "meshcast_request_duration_seconds", "From the request's arrival to the response's last byte",
            ["direction", "destination_service", "zone"], buckets=DURATION_BUCKETS, registry=registry)
        self.request_bytes = Counter("meshcast_request_bytes", "Request body bytes proxied",
                                     ["direction", "destination_service"], registry=registry)
        self.response_bytes = Counter("meshcast_response_bytes", "Response body bytes proxied",
                                      ["direction", "destination_service"], registry=registry)
        self.retries = Counter("meshcast_retries", "Attempts beyond the first", ["destination_service"],
                               registry=registry)
        self.ejections = Counter("meshcast_ejections", "Endpoints ejected by outlier detection",
                                 ["destination_service"], registry=registry)
        self.rate_limited_requests = Counter("meshcast_rate_limited", "Requests refused by a rate limit",
                                             ["service"], registry=registry)
        self._children: dict[tuple[str, str, str, str], _Children] = {}

    def record(self, direction: str, source_service: str | None, destination_service: str | None, *,
               status: int | None, duration: float, request_bytes: int = 0, response_bytes: int = 0,
               retries: int = 0) -> None:
        """Count one finished request: `duration` in seconds, body bytes each way, `retries` beyond the first."""
        key = (direction, source_service or UNKNOWN, destination_service or UNKNOWN, code_class(status))
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = self._make_children(*key)
        children.requests.inc()
        children.duration.observe(duration)
        if request_bytes:
            children.request_bytes.inc(request_bytes)
        if response_bytes:
            children.response_bytes.inc(response_bytes)
        if retries:
            children.retries.inc(retries)

    def ejected(self, destination_service: str) -> None:
        self.ejections.labels(destination_service).inc()

    def rate_limited(self, service: str) -> None:
        self.rate_limited_requests.labels(service).inc()

    def _make_children(self, direction: str, source: str, destination: str, code: str) -> _Children:
        return _Children(
            self.requests.labels(direction, source, destination, self.zone, code),
            self.duration.labels(direction, destination, self.zone),
            self.request_bytes.labels(direction, destination),
            self.response_bytes.labels(direction, destination),
            self.retries.labels(destination))
