"""The zone control plane's Prometheus metrics, registered on a registry passed in (tests get a fresh one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PUSH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ZoneMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.api_requests = Counter(
            "meshcast_cp_api_requests", "API requests served", ["method", "route", "code"], registry=registry
        )
        self.connected = Gauge(
            "meshcast_cp_connected_dataplanes", "Dataplanes with an open config stream", registry=registry
        )
        self.healthy = Gauge("meshcast_cp_healthy_dataplanes", "Dataplanes heard from recently", registry=registry)
        self.pushes = Counter(
            "meshcast_cp_config_pushes", "Config snapshots sent, acknowledged or rejected", ["result"],
            registry=registry,
        )
        self.push_latency = Histogram(
            "meshcast_cp_config_push_latency_seconds",
            "From a change observed by the control plane to the sidecar's acknowledgement",
            buckets=PUSH_BUCKETS, registry=registry,
        )
        self.certificates = Counter(
            "meshcast_cp_certificates_issued", "Workload certificates signed", ["mesh"], registry=registry
        )
        self.registrations = Counter(
            "meshcast_cp_registrations", "Dataplane registrations", ["result"], registry=registry
        )
        self.ca_expiry = Gauge(
            "meshcast_cp_ca_expiry_timestamp_seconds", "When a CA this control plane uses expires (Unix time): a "
            "zone's intermediate (renewed at 2/3 of its life), the global CP's mesh roots", ["mesh", "ca"],
            registry=registry)
        self.store_errors = Counter(
            "meshcast_cp_store_errors", "Failed calls to the resource store", registry=registry
        )
        # Federation: a zone CP's view of the global side, the global CP's view of each zone.
        self.global_sync_lag = Gauge(
            "meshcast_cp_global_sync_lag_seconds",
            "Zone CP: 0 while it follows the global state live; else seconds since it last did (serving the last "
            "known state meanwhile)", registry=registry)
        self.global_revision = Gauge(
            "meshcast_cp_global_revision", "Zone CP: the global store revision its mirror has applied",
            registry=registry)
        self.zone_online = Gauge(
            "meshcast_cp_zone_online", "Global CP: 1 while the zone publishes its inventory (its lease lives)",
            ["zone"], registry=registry)
        self.zone_services = Gauge(
            "meshcast_cp_zone_services", "Global CP: services the zone publishes", ["zone"], registry=registry)
