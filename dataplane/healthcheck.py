"""Active health checks of a service's endpoints by their callers (MeshHealthCheck).

Theory of operation. For every outbound service with a MeshHealthCheck in force, the sidecar probes each endpoint
every `interval`: an HTTP check opens a connection the way a call would (mTLS to the endpoint's sidecar, ALPN
http/1.1, the endpoint's SNI for another zone's ingress), sends `GET <path>` and expects a status in
`expectedStatuses` (2xx by default) within `timeout`; a gRPC check connects with ALPN h2 and calls
`grpc.health.v1.Health/Check` for `serviceName`, expecting SERVING (`dataplane.grpchealth`); a TCP check only needs
the mTLS connection to succeed. A policy naming several takes gRPC over HTTP over TCP. `HealthState` (pure) counts
consecutive results: `unhealthyThreshold` failures take an endpoint out of balancing, `healthyThreshold` successes
bring it back. Active health combines with passive health (outlier detection) by intersection: an endpoint must be
neither failing its checks nor ejected. When every endpoint of a service fails its checks, all are kept (a panic, as
Envoy's): checks that fail everywhere more likely point at the check than at every instance.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from meshcast.wire.duration import parse_duration


@dataclass(frozen=True)
class HealthCheckSpec:
    interval: float = 10.0
    timeout: float = 2.0
    unhealthy_threshold: int = 3
    healthy_threshold: int = 1
    path: str | None = None  # None: a TCP (connection) check, or a gRPC one
    expected: frozenset[int] | None = None  # None: any 2xx
    grpc_service: str | None = None  # set: a gRPC check asking about this service ("": the server as a whole)

    @classmethod
    def of(cls, conf: dict[str, Any]) -> HealthCheckSpec:
        def seconds(key: str, default: float) -> float:
            return parse_duration(conf[key]).total_seconds() if key in conf else default

        grpc = conf.get("grpc")
        http = conf.get("http") if grpc is None else None
        return cls(interval=seconds("interval", 10.0), timeout=seconds("timeout", 2.0),
                   unhealthy_threshold=int(conf.get("unhealthyThreshold", 3)),
                   healthy_threshold=int(conf.get("healthyThreshold", 1)),
                   path=http.get("path", "/") if http is not None else None,
                   grpc_service=str(grpc.get("serviceName", "")) if grpc is not None else None,
                   expected=frozenset(http["expectedStatuses"]) if http and http.get("expectedStatuses") else None)

    def passes(self, status: int) -> bool:
        return status in self.expected if self.expected is not None else 200 <= status < 300


@dataclass
class HealthState:
    """Consecutive results per endpoint key, and the keys currently failing their checks."""

    spec: HealthCheckSpec
    failing: set[str] = field(default_factory=set)
    _streak: dict[str, int] = field(default_factory=dict)  # > 0: successes in a row; < 0: failures in a row

    def record(self, key: str, ok: bool) -> bool:
        """Count one result; True when the endpoint changed state."""
        streak = self._streak.get(key, 0)
        streak = (max(streak, 0) + 1) if ok else (min(streak, 0) - 1)
        self._streak[key] = streak
        if ok and key in self.failing and streak >= self.spec.healthy_threshold:
            self.failing.discard(key)
            return True
        if not ok and key not in self.failing and -streak >= self.spec.unhealthy_threshold:
            self.failing.add(key)
            return True
        return False

    def keep(self, keys: Iterable[str]) -> None:
        """Forget endpoints that are gone."""
        wanted = set(keys)
        self.failing &= wanted
        self._streak = {k: v for k, v in self._streak.items() if k in wanted}

    def usable(self, keys: list[str]) -> set[str]:
        """The keys to balance over: those passing, or all of them when none does."""
        passing = {k for k in keys if k not in self.failing}
        return passing or set(keys)
