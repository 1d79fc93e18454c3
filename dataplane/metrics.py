"""The sidecar's Prometheus metrics, registered on a registry passed in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class SidecarMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.connections = Counter("meshcast_dp_connections", "Connections accepted", ["direction", "service"],
                                   registry=registry)
        self.active = Gauge("meshcast_dp_active_connections", "Connections open", ["direction"], registry=registry)
        self.upstream_errors = Counter("meshcast_dp_upstream_errors", "Failed attempts to reach an endpoint",
                                       ["service", "reason"], registry=registry)
        self.upstream_connects = Counter("meshcast_dp_upstream_connects", "New connections to endpoints (a pooled "
                                         "connection reused is not one)", ["service"], registry=registry)
        self.refused = Counter("meshcast_dp_inbound_refused", "Inbound connections refused before the app",
                               ["reason"], registry=registry)
        self.shadow_denied = Counter("meshcast_dp_shadow_denied", "Calls a MeshTrafficPermission AllowWithShadowDeny "
                                     "let through that a Deny would refuse", ["service"], registry=registry)
        self.bytes = Counter("meshcast_dp_bytes", "Bytes proxied", ["direction"], registry=registry)
        self.cert_expiry = Gauge("meshcast_dp_certificate_expiry_timestamp_seconds",
                                 "When the sidecar's certificate expires (Unix time)", registry=registry)
        self.config_version = Gauge("meshcast_dp_config_info", "The config version in force", ["version"],
                                    registry=registry)
