"""The zone inventory's federation logic, pure: other zones' offers become ingress endpoints with priorities."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from meshcast.federation.keyspace import info_key, parse_zones, service_key, services_view
from meshcast.resources import parse_resource
from meshcast.store import EventKind, ResourceChanged
from zone_cp.federation import remote_offers
from zone_cp.inventory import Inventory, RemoteService

ZONES = ["us", "ap", "sa"]


def resource_event(doc: dict[str, Any]) -> ResourceChanged:
    resource = parse_resource(doc)
    return ResourceChanged(kind=EventKind.CREATED, type=resource.type, mesh=resource.mesh, name=resource.name,
                           resource=resource, revision=1)


def inventory(*docs: dict[str, Any]) -> Inventory:
    inv = Inventory(zone="eu")
    inv.apply(resource_event({"type": "Mesh", "name": "default", "spec": {"mtls": {}}}))
    for doc in docs:
        inv.apply(resource_event(doc))
    return inv


def local_backend(inv: Inventory) -> None:
    doc = {"type": "Dataplane", "mesh": "default", "name": "backend-1", "spec": {
        "address": "10.0.0.1", "inbound": [{"port": 8080, "service": "backend", "protocol": "http"}]}}
    inv.apply(resource_event(doc))
    inv.set_healthy(("default", "backend-1"), True)


def offers(*zones: str) -> dict[tuple[str, str], list[RemoteService]]:
    return {("default", "backend"): [RemoteService(z, f"192.0.2.{i + 1}", 10001, 2, "http")
                                     for i, z in enumerate(zones)]}


def policy(spec: dict[str, Any], name: str = "lb") -> dict[str, Any]:
    return {"type": "MeshLoadBalancingStrategy", "mesh": "default", "name": name, "spec": spec}


def lb_to(service: str, default: dict[str, Any]) -> dict[str, Any]:
    ref = {"kind": "Mesh"} if service == "*" else {"kind": "MeshService", "name": service}
    return {"to": [{"targetRef": ref, "default": default}]}


def lb_of(inv: Inventory, service: str = "backend") -> dict[str, Any] | None:
    """The MeshLoadBalancingStrategy settings a caller in this zone gets for `service`."""
    doc = {"type": "Dataplane", "mesh": "default", "name": "caller", "spec": {
        "address": "10.0.0.9", "inbound": [{"port": 8080, "service": "caller"}],
        "outbound": [{"port": 10000, "service": service}]}}
    inv.apply(resource_event(doc))
    effective = inv.effective("default", "caller")
    assert effective is not None
    return effective.outbound.get(service, {}).get("MeshLoadBalancingStrategy")


def test_local_first_then_every_other_zone_through_its_ingress() -> None:
    inv = inventory()
    local_backend(inv)
    inv.set_remote(offers("us", "ap"))
    endpoints, threshold = inv.upstream("default", "backend")
    assert threshold == 0
    assert [(e["address"], e.get("priority", 0), e.get("sni")) for e in endpoints] == [
        ("10.0.0.1", 0, None),
        ("192.0.2.1", 1, "backend.default.mesh.meshcast"),
        ("192.0.2.2", 1, "backend.default.mesh.meshcast"),
    ]
    assert endpoints[1]["tags"] == {"service": "backend", "zone": "us"}


def test_a_service_only_other_zones_have_keeps_its_protocol() -> None:
    inv = inventory()
    inv.set_remote(offers("us"))
    assert inv.protocol("default", "backend") == "http"
    assert [e["priority"] for e in inv.upstream("default", "backend")[0]] == [1]


def test_failover_order_threshold_and_disabled_locality() -> None:
    inv = inventory(policy(lb_to("backend", {"localityAwareness": {
        "crossZone": {"failover": ["ap", "us"], "failoverThreshold": 50}}})))
    local_backend(inv)
    inv.set_remote(offers("us", "ap", "sa"))
    endpoints, threshold = inv.upstream("default", "backend", lb_of(inv))
    assert threshold == 0.5
    assert {e["tags"]["zone"]: e.get("priority", 0) for e in endpoints} == {"eu": 0, "ap": 1, "us": 2}  # no sa
    inv.apply(resource_event(policy(lb_to("backend", {"localityAwareness": {"disabled": True}}))))
    assert {e.get("priority", 0) for e in inv.upstream("default", "backend", lb_of(inv))[0]} == {0}


def test_a_policy_naming_the_service_beats_one_for_every_service() -> None:
    inv = inventory(policy(lb_to("*", {"localityAwareness": {"disabled": True}}), name="z-all"),
                    policy(lb_to("backend", {"localityAwareness": {"crossZone": {"failover": ["us"]}}}), name="a"))
    inv.set_remote(offers("us", "ap"))
    # the MeshService item wins over the Mesh one although its policy's name comes first; fields merge
    assert lb_of(inv) == {"localityAwareness": {"disabled": True, "crossZone": {"failover": ["us"]}}}
    assert lb_of(inv, "web") == {"localityAwareness": {"disabled": True}}


def test_unchanged_remote_view_does_not_bump_the_generation() -> None:
    inv = inventory()
    assert inv.set_remote(offers("us"))
    generation = inv.generation
    assert not inv.set_remote(offers("us"))
    assert inv.generation == generation


def keys(zone: str, ingress: str | None, services: dict[str, int]) -> dict[str, bytes]:
    out = {info_key(zone): json.dumps({"zone": zone, "ingressAddress": ingress}).encode()}
    for service, healthy in services.items():
        out[service_key(zone, "default", service)] = json.dumps({"healthy": healthy, "protocol": "http"}).encode()
    return out


def test_remote_offers_skip_our_zone_zones_without_ingress_and_empty_services() -> None:
    raw = {**keys("eu", "127.0.0.1:1", {"backend": 1}), **keys("us", "127.0.0.2:10001", {"backend": 2, "db": 0}),
           **keys("ap", None, {"backend": 3})}
    remote = remote_offers(parse_zones(raw), "eu")
    assert remote == {("default", "backend"): [RemoteService("us", "127.0.0.2", 10001, 2, "http")]}


def test_every_ingress_of_a_zone_is_offered() -> None:
    raw = keys("us", None, {"backend": 2})
    raw[info_key("us")] = json.dumps({"zone": "us", "ingressAddress": "127.0.0.2:10001", "ingressAddresses": [
        "127.0.0.2:10001", "127.0.0.3:10001", "127.0.0.3:10001", "no port", 7]}).encode()
    remote = remote_offers(parse_zones(raw), "eu")
    assert remote == {("default", "backend"): [RemoteService("us", "127.0.0.2", 10001, 2, "http"),
                                               RemoteService("us", "127.0.0.3", 10001, 2, "http")]}
    # a zone CP from before `ingressAddresses`: its one address
    raw[info_key("us")] = json.dumps({"zone": "us", "ingressAddress": "127.0.0.2:10001"}).encode()
    assert remote_offers(parse_zones(raw), "eu") == {
        ("default", "backend"): [RemoteService("us", "127.0.0.2", 10001, 2, "http")]}


def test_a_zone_without_its_info_key_offers_nothing() -> None:
    raw = keys("us", "127.0.0.2:10001", {"backend": 2})
    del raw[info_key("us")]
    zones = parse_zones(raw)
    assert not zones["us"].online and services_view(zones) == []


@given(st.dictionaries(st.text(max_size=40), st.binary(max_size=40), max_size=8))
def test_parse_zones_never_fails_on_whatever_zones_wrote(raw: dict[str, bytes]) -> None:
    prefixed = {f"/meshcast/v1/zones/{k}": v for k, v in raw.items()}
    zones = parse_zones(prefixed)
    remote_offers(zones, "eu")
    services_view(zones)
