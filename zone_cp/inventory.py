"""What the zone knows of its meshes and dataplanes, and the snapshot each sidecar gets (pure, no IO).

Theory of operation: the control plane feeds `Inventory` every store change (`apply`) and every health change
(`set_healthy`). Each change bumps `generation` and records when it was observed, so stream sessions can tell they are
behind and the push latency can be measured from the change itself. Endpoints per (mesh, service) are indexed on
demand and cached until the next change, so computing the snapshots of N sidecars after one change costs
O(N x outbounds), not O(N²).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshcast.policies.resolve import POLICY_KINDS, Effective, Policy, backend_services, resolve
from meshcast.policies.targetref import ProxyFacts
from meshcast.resources import Resource
from meshcast.resources.types import DataplaneSpec, MeshGatewaySpec, MeshSpec
from meshcast.store import EventKind, ResourceChanged
from meshcast.wire.duration import format_duration
from meshcast.wire.sni import service_sni

DPKey = tuple[str, str]  # (mesh, name)


@dataclass(frozen=True)
class RemoteService:
    """A service another zone offers: where its ingress is, how many healthy instances, what protocol."""

    zone: str
    address: str
    port: int
    healthy: int
    protocol: str


class Inventory:
    def __init__(self, *, zone: str = "", heartbeat_interval: float = 2.0, policy_origin: str = "local") -> None:
        """`policy_origin`: where this zone's policies come from, shown by `meshcast inspect dataplane`
        ("global" when the zone is federated, "local" when it is standalone)."""
        self.zone = zone
        self.policy_origin = policy_origin
        self.heartbeat_interval = heartbeat_interval
        self.meshes: dict[str, MeshSpec] = {}
        self.dataplanes: dict[DPKey, Resource] = {}
        self.healthy: set[DPKey] = set()
        self.generation = 0
        self.changed_at: dict[int, float] = {0: time.monotonic()}
        self._index: dict[str, dict[str, list[dict[str, Any]]]] | None = None
        self._protocols: dict[tuple[str, str], str] | None = None
        # Policies by (mesh, kind, name); gateways; what the other zones offer through their ingresses.
        self.policies: dict[tuple[str, str, str], Policy] = {}
        self.gateways: dict[DPKey, MeshGatewaySpec] = {}
        self.remote: dict[tuple[str, str], list[RemoteService]] = {}
        self._upstreams: dict[tuple[str, str, str], tuple[list[dict[str, Any]], float]] = {}
        self._effective: dict[DPKey, Effective] = {}

    # --- feeding ---------------------------------------------------------------------------------------------

    def reset(self, resources: Iterable[Resource]) -> None:
        self.meshes.clear()
        self.dataplanes.clear()
        self.policies.clear()
        self.gateways.clear()
        for resource in resources:
            self._put(resource)
        self._bump()

    def apply(self, event: ResourceChanged) -> bool:
        """Apply one store change; True when it can change some sidecar's snapshot."""
        if event.type not in ("Mesh", "Dataplane", "MeshGateway") and event.type not in POLICY_KINDS:
            return False
        if event.kind is EventKind.DELETED:
            if event.type == "Mesh":
                self.meshes.pop(event.name, None)
            elif event.type == "Dataplane":
                self.dataplanes.pop((event.mesh, event.name), None)
            elif event.type == "MeshGateway":
                self.gateways.pop((event.mesh, event.name), None)
            else:
                self.policies.pop((event.mesh, event.type, event.name), None)
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
        elif resource.type == "MeshGateway":
            assert isinstance(resource.spec, MeshGatewaySpec)
            self.gateways[(resource.mesh, resource.name)] = resource.spec
        elif resource.type in POLICY_KINDS:
            self.policies[(resource.mesh, resource.type, resource.name)] = Policy.of(resource, self.policy_origin)

    def touch(self) -> None:
        """Something outside the store changed what sidecars or the zone's publication should see."""
        self._bump()

    def local_endpoints(self) -> dict[str, dict[str, list[tuple[str, int]]]]:
        """Every healthy local endpoint by mesh and service (what the zone ingress routes to)."""
        if self._index is None:
            self._index = self._build_index()
        return {mesh: {service: [(e["address"], e["port"]) for e in entries] for service, entries in services.items()}
                for mesh, services in self._index.items()}

    def set_remote(self, remote: dict[tuple[str, str], list[RemoteService]]) -> bool:
        """What other zones offer (from the global keyspace); True (and a new generation) when it changed."""
        if remote == self.remote:
            return False
        self.remote = remote
        self._bump()
        return True

    def _bump(self) -> None:
        self.generation += 1
        self.changed_at[self.generation] = time.monotonic()
        # Keep the recent past only: sessions more than 1,000 changes behind measure from the oldest kept.
        if len(self.changed_at) > 1000:
            for old in sorted(self.changed_at)[:-1000]:
                del self.changed_at[old]
        self._index = None
        self._protocols = None
        self._upstreams = {}
        self._effective = {}

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
            for key, offers in self.remote.items():  # a service only other zones have
                if key not in found:
                    found[key] = {offer.protocol for offer in offers}
            self._protocols = {key: next(iter(p)) if len(p) == 1 else "tcp" for key, p in found.items()}
        return self._protocols.get((mesh, service), "tcp")

    def effective(self, mesh: str, name: str) -> Effective | None:
        """The policies in force at one proxy (see `meshcast.policies.resolve`), or None if it is unknown."""
        cached = self._effective.get((mesh, name))
        if cached is not None:
            return cached
        dataplane = self.dataplanes.get((mesh, name))
        if dataplane is None:
            return None
        spec = dataplane.spec
        assert isinstance(spec, DataplaneSpec)
        zone = {"zone": self.zone} if self.zone else {}
        facts = ProxyFacts(inbound_tags=tuple({"service": i.service, **i.tags, **zone} for i in spec.inbound),
                           gateway=spec.gateway)
        policies = [policy for (policy_mesh, _, _), policy in self.policies.items() if policy_mesh == mesh]
        result = self._effective[(mesh, name)] = resolve(policies, facts, self._reachable(mesh, spec))
        return result

    def _reachable(self, mesh: str, spec: DataplaneSpec) -> set[str]:
        """The services a proxy may call: its outbounds, a gateway's routed services, every service in proxy mode."""
        found = {out.service for out in spec.outbound}
        if spec.gateway is not None:
            gateway = self.gateways.get((mesh, spec.gateway))
            found.update(route.to for route in gateway.routes) if gateway is not None else None
        if spec.http_proxy is not None:
            found.update(self._mesh_services(mesh))
        return found

    def _mesh_services(self, mesh: str) -> set[str]:
        return ({i.service for dp in self.dataplanes.values() if dp.mesh == mesh
                 for i in dp.spec.inbound}  # type: ignore[attr-defined]
                | {svc for (remote_mesh, svc) in self.remote if remote_mesh == mesh})

    def upstream(self, mesh: str, service: str, balancing: Mapping[str, Any] | None = None,
                 ) -> tuple[list[dict[str, Any]], float]:
        """The endpoints a sidecar gets for `service` and its failover threshold (0..1): this zone's instances
        (priority 0) and, per other zone offering it, that zone's ingress, with the SNI naming the service and a
        priority from the failover order; all priority 0 when locality awareness is off. `balancing`: the
        MeshLoadBalancingStrategy settings in force for the caller."""
        locality = (balancing or {}).get("localityAwareness") or {}
        cache_key = (mesh, service, json.dumps(locality, sort_keys=True) if locality else "")
        cached = self._upstreams.get(cache_key)
        if cached is not None:
            return cached
        local = self.endpoints(mesh, service)
        offers = self.remote.get((mesh, service), [])
        cross_zone = locality.get("crossZone") or {}
        threshold = cross_zone.get("failoverThreshold", 0) / 100
        if not offers:
            result = (local, 0.0)
        else:
            order = cross_zone.get("failover")
            entries = list(local)
            for offer in offers:
                if locality.get("disabled"):
                    priority = 0
                elif order is None:
                    priority = 1
                elif offer.zone in order:
                    priority = order.index(offer.zone) + 1
                else:
                    continue  # a failover list names the only zones to use
                entries.append({
                    "address": offer.address, "port": offer.port, "protocol": offer.protocol,
                    "tags": {"service": service, "zone": offer.zone}, "dataplane": f"ingress.{offer.zone}",
                    "priority": priority, "sni": service_sni(mesh, service),
                })
            result = (entries, threshold)
        self._upstreams[cache_key] = result
        return result

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
        effective = self.effective(mesh, name)
        if dataplane is None or mesh_spec is None or effective is None:
            return None
        spec = dataplane.spec
        assert isinstance(spec, DataplaneSpec)
        outbound = []
        for out in spec.outbound:
            entry = {"service": out.service, "address": out.address, "port": out.port,
                     **self._service_entry(mesh, out.service, effective)}
            outbound.append(entry)
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
        # Services reached other than through an outbound port: a gateway's routed services, every service in
        # proxy mode, and the backends of the proxy's routes (a split may send calls to another service).
        others: set[str] = backend_services(effective)
        if spec.gateway is not None:
            # An edge gateway: its MeshGateway's listeners and routes, and the endpoints of every routed service.
            gateway = self.gateways.get((mesh, spec.gateway))
            snapshot["gateway"] = None if gateway is None else {
                "name": spec.gateway, **gateway.model_dump(mode="json", by_alias=True, exclude_none=True)}
            others.update(route.to for route in gateway.routes) if gateway is not None else None
            snapshot["services"] = {}
        if spec.http_proxy is not None:
            snapshot["httpProxy"] = spec.http_proxy.model_dump(mode="json", by_alias=True)
            others.update(self._mesh_services(mesh))
        others -= {out.service for out in spec.outbound}
        if others or "services" in snapshot:
            snapshot["services"] = {svc: self._service_entry(mesh, svc, effective) for svc in sorted(others)}
        policies = effective.wire()
        if policies:
            snapshot["policies"] = policies
        return snapshot

    def _service_entry(self, mesh: str, service: str, effective: Effective) -> dict[str, Any]:
        """Protocol, endpoints and failover threshold of `service` as the proxy with `effective` policies sees it."""
        balancing = effective.outbound.get(service, {}).get("MeshLoadBalancingStrategy")
        endpoints, threshold = self.upstream(mesh, service, balancing)
        entry: dict[str, Any] = {"protocol": self.protocol(mesh, service), "endpoints": endpoints}
        if threshold:
            entry["failoverThreshold"] = threshold
        return entry
