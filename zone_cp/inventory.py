"""What the zone knows of its meshes and dataplanes, and the snapshot each sidecar gets (pure, no IO).

Theory of operation: the control plane feeds `Inventory` every store change (`apply`) and every health change
(`set_healthy`). Each change bumps `generation` and records when it was observed, so stream sessions can tell they are
behind and the push latency can be measured from the change itself. Endpoints per (mesh, service) are indexed on
demand and cached until the next change, so computing the snapshots of N sidecars after one change costs
O(N x outbounds), not O(N²).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from meshcast.resources import Resource
from meshcast.resources.duration import format_duration
from meshcast.resources.types import DataplaneSpec, MeshSpec
from meshcast.store import EventKind, ResourceChanged

DPKey = tuple[str, str]  # (mesh, name)


class Inventory:
    def __init__(self, *, zone: str = "", heartbeat_interval: float = 2.0) -> None:
        self.zone = zone
        self.heartbeat_interval = heartbeat_interval
        self.meshes: dict[str, MeshSpec] = {}
        self.dataplanes: dict[DPKey, Resource] = {}
        self.healthy: set[DPKey] = set()
        self.generation = 0
        self.changed_at: dict[int, float] = {0: time.monotonic()}
        self._index: dict[str, dict[str, list[dict[str, Any]]]] | None = None
        self._protocols: dict[tuple[str, str], str] | None = None

    # --- feeding ---------------------------------------------------------------------------------------------

    def reset(self, resources: Iterable[Resource]) -> None:
        self.meshes.clear()
        self.dataplanes.clear()
        for resource in resources:
            self._put(resource)
        self._bump()

    def apply(self, event: ResourceChanged) -> bool:
        """Apply one store change; True when it can change some sidecar's snapshot."""
        if event.type not in ("Mesh", "Dataplane"):
            return False
        if event.kind is EventKind.DELETED:
            if event.type == "Mesh":
                self.meshes.pop(event.name, None)
            else:
                self.dataplanes.pop((event.mesh, event.name), None)
        elif event.resource is not None:
            self._put(event.resource)
        self._bump()
        return True

    def set_healthy(self, key: DPKey, healthy: bool) -> None:
        if (key in self.healthy) == healthy:
            return
        if healthy:
            self.healthy.add(key)
        else:
            self.healthy.discard(key)
        self._bump()

    def _put(self, resource: Resource) -> None:
        if resource.type == "Mesh":
            assert isinstance(resource.spec, MeshSpec)
            self.meshes[resource.name] = resource.spec
        elif resource.type == "Dataplane":
            self.dataplanes[(resource.mesh, resource.name)] = resource

    def _bump(self) -> None:
        self.generation += 1
        self.changed_at[self.generation] = time.monotonic()
        # Keep the recent past only: sessions more than 1,000 changes behind measure from the oldest kept.
        if len(self.changed_at) > 1000:
            for old in sorted(self.changed_at)[:-1000]:
                del self.changed_at[old]
        self._index = None
        self._protocols = None

    def change_time(self, generation: int) -> float:
        return self.changed_at.get(generation) or min(self.changed_at.values())

    # --- reading ----------------------------------------------------------------------------------------------

    def endpoints(self, mesh: str, service: str) -> list[dict[str, Any]]:
        if self._index is None:
            self._index = self._build_index()
        return self._index.get(mesh, {}).get(service, [])

    def protocol(self, mesh: str, service: str) -> str:
        """The protocol a service's instances declare, healthy or not (so a sidecar keeps speaking HTTP, and
        answering 503, while every instance is down); opaque TCP when unknown or when instances disagree."""
        if self._protocols is None:
            found: dict[tuple[str, str], set[str]] = defaultdict(set)
            for (dp_mesh, _), dataplane in self.dataplanes.items():
                spec = dataplane.spec
                assert isinstance(spec, DataplaneSpec)
                for inbound in spec.inbound:
                    found[(dp_mesh, inbound.service)].add(inbound.protocol)
            self._protocols = {key: next(iter(p)) if len(p) == 1 else "tcp" for key, p in found.items()}
        return self._protocols.get((mesh, service), "tcp")

    def services(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Every (mesh, service) with instances in this zone: its healthy endpoint count and protocol (what the
        zone publishes to the global keyspace; individual dataplanes stay zone-local)."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for (mesh, _), dataplane in self.dataplanes.items():
            spec = dataplane.spec
            assert isinstance(spec, DataplaneSpec)
            for service in spec.services:
                out[(mesh, service)] = {"healthy": len(self.endpoints(mesh, service)),
                                        "protocol": self.protocol(mesh, service)}
        return out

    def _build_index(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        index: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
        for key in sorted(self.healthy):
            dataplane = self.dataplanes.get(key)
            if dataplane is None:
                continue
            spec = dataplane.spec
            assert isinstance(spec, DataplaneSpec)
            for inbound in spec.inbound:
                tags = {"service": inbound.service, **inbound.tags}
                if self.zone:
                    tags.setdefault("zone", self.zone)
                index[key[0]][inbound.service].append(
                    {
                        "address": spec.address,
                        "port": inbound.port,
                        "protocol": inbound.protocol,
                        "tags": tags,
                        "dataplane": key[1],
                    }
                )
        return index

    def snapshot_for(self, mesh: str, name: str) -> dict[str, Any] | None:
        """The whole configuration of one sidecar, or None if it is no longer registered."""
        dataplane = self.dataplanes.get((mesh, name))
        mesh_spec = self.meshes.get(mesh)
        if dataplane is None or mesh_spec is None:
            return None
        spec = dataplane.spec
        assert isinstance(spec, DataplaneSpec)
        outbound = []
        for out in spec.outbound:
            outbound.append(
                {
                    "service": out.service,
                    "address": out.address,
                    "port": out.port,
                    "protocol": self.protocol(mesh, out.service),
                    "endpoints": self.endpoints(mesh, out.service),
                }
            )
        snapshot: dict[str, Any] = {
            "mesh": mesh,
            "dataplane": name,
            "zone": self.zone,
            "address": spec.address,
            "mtls": {
                "enabled": mesh_spec.mtls_enabled,
                "certTTL": format_duration(mesh_spec.cert_ttl),
            },
            "inbound": [i.model_dump(mode="json", by_alias=True) for i in spec.inbound],
            "outbound": outbound,
            "heartbeatInterval": self.heartbeat_interval,
        }
        if spec.http_proxy is not None:
            # Proxy mode reaches any service of the mesh by name, so the sidecar gets all of them.
            snapshot["httpProxy"] = spec.http_proxy.model_dump(mode="json", by_alias=True)
            services = sorted({i.service for dp in self.dataplanes.values() if dp.mesh == mesh
                               for i in dp.spec.inbound})  # type: ignore[attr-defined]
            snapshot["services"] = {svc: {"protocol": self.protocol(mesh, svc), "endpoints": self.endpoints(mesh, svc)}
                                    for svc in services}
        return snapshot
