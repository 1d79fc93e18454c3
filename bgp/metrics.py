"""The speaker's Prometheus metrics, served from a thread of its own (`serve_metrics`).

A thread, not a trio task: a speaker whose event loop hangs keeps answering scrapes, and its
`meshcast_bgp_last_probe_timestamp_seconds` stops moving. That is the alert for a hung speaker, which BGP itself
never notices (ExaBGP keeps announcing what the speaker last sent). Every series carries the region.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("meshcast.bgp.metrics")

PROBE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.08, 0.1, 0.25, 1.0)


class SpeakerMetrics:
    """What the speaker decides and sees, as Prometheus series. Cheap to update from the probe loop."""

    def __init__(self, region: str, peers: Iterable[str], states: Iterable[str],
                 registry: CollectorRegistry | None = None) -> None:
        self.region = region
        self.registry = r = registry if registry is not None else CollectorRegistry()
        self.announced = Gauge("meshcast_bgp_announced", "1 while this speaker announces the region's prefixes",
                               ["region"], registry=r).labels(region)
        self._state = Gauge("meshcast_bgp_route_state", "The route's state in the speaker's damper (1 = current)",
                            ["region", "state"], registry=r)
        self._states = tuple(states)
        self._changes = Counter("meshcast_bgp_route_changes", "Announces and withdraws sent to ExaBGP, by action",
                                ["region", "action"], registry=r)
        self._probes = Counter("meshcast_bgp_probes", "Probes of the gateway's readiness, by what they observed "
                               "(ready, unready, drained)", ["region", "observation"], registry=r)
        self.probe_seconds = Histogram("meshcast_bgp_probe_duration_seconds", "Time a readiness probe took (a "
                                       "probe that timed out counts its timeout)", ["region"],
                                       buckets=PROBE_BUCKETS, registry=r).labels(region)
        self.last_probe = Gauge("meshcast_bgp_last_probe_timestamp_seconds", "When the speaker last probed its "
                                "gateway (Unix time): stale means a hung speaker, which BGP does not notice",
                                ["region"], registry=r).labels(region)
        self._session = Gauge("meshcast_bgp_session_established", "1 while the BGP session with the peer is up",
                              ["region", "peer"], registry=r)
        self.commands = Counter("meshcast_bgp_commands", "Commands sent to ExaBGP", ["region"],
                                registry=r).labels(region)
        self.refused = Counter("meshcast_bgp_commands_refused", "Commands ExaBGP answered with an error",
                               ["region"], registry=r).labels(region)
        for peer in peers:
            self.session(peer, False)
        for action in ("announce", "withdraw"):
            self._changes.labels(region, action)
        for observation in ("ready", "unready", "drained"):
            self._probes.labels(region, observation)

    def probed(self, observation: str, seconds: float) -> None:
        self._probes.labels(self.region, observation).inc()
        self.probe_seconds.observe(seconds)
        self.last_probe.set(time.time())

    def route(self, state: str, announced: bool) -> None:
        for name in self._states:
            self._state.labels(self.region, name).set(1 if name == state else 0)
        self.announced.set(1 if announced else 0)

    def changed(self, action: str) -> None:
        self._changes.labels(self.region, action).inc()

    def session(self, peer: str, up: bool) -> None:
        self._session.labels(self.region, peer).set(1 if up else 0)


def serve_metrics(metrics: SpeakerMetrics, host: str, port: int) -> tuple[WSGIServer, threading.Thread] | None:
    """Serve `/metrics` on host:port from a daemon thread; None (and a warning) when it cannot listen: metrics
    must never stop the announcements."""
    try:
        return start_http_server(port, host, metrics.registry)
    except OSError as exc:
        log.warning("cannot serve metrics on %s:%d: %s", host, port, exc.strerror or exc)
        return None
