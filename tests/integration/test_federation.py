"""Federation over a real 3-member etcd cluster: a global CP process and two zone CP processes (`eu`, `us`).

Policies flow down (applied at the global CP, mirrored into each zone's own store, refused as local edits), each
zone's inventory flows up on a lease (`get zones`, `inspect services`), and the zones keep serving their last
global state through an etcd member's death, a lost quorum, and a zone CP restart during the outage.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.etcd import EtcdCluster
from tests.support.zone import ZoneCPProcess

LEASE_TTL = 2


def wait_for(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (httpx.HTTPError, AssertionError, KeyError) as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def metric(cp: ZoneCPProcess, name: str, **labels: str) -> float | None:
    """A sample of the control plane's Prometheus text, parsed by prometheus-client's parser."""
    text = httpx.get(cp.url + "/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return None


def mesh_names(cp: ZoneCPProcess) -> set[str]:
    return {m["name"] for m in httpx.get(cp.url + "/v1/meshes", timeout=5).json()["items"]}


def zone_status(global_cp: ZoneCPProcess) -> dict[str, str]:
    return {z["name"]: z["status"] for z in httpx.get(global_cp.url + "/v1/inspect/zones", timeout=5).json()}


def apply(cp: ZoneCPProcess, *docs: dict[str, Any]) -> Any:
    return cp.cli("apply", "-f", "-", stdin=json.dumps(list(docs)))


def mesh(name: str) -> dict[str, Any]:
    return {"type": "Mesh", "name": name, "spec": {"mtls": {"enabled": True, "backend": "builtin"}}}


def register(zone: ZoneCPProcess, name: str, service: str) -> None:
    doc = {"type": "Dataplane", "mesh": "default", "name": name,
           "spec": {"address": "127.0.0.1", "inbound": [{"port": 18080, "service": service, "protocol": "http"}]}}
    response = httpx.post(zone.url + "/v1/dataplanes/register", json=doc, timeout=5,
                          headers={"authorization": f"Bearer {zone.token(service)}"})
    assert response.status_code in (200, 201), response.text


@pytest.fixture
def federation(etcd_cluster: EtcdCluster, tmp_path: Path) -> Iterator[dict[str, Any]]:
    endpoints = ",".join(etcd_cluster.client_urls)
    started: list[ZoneCPProcess] = []
    try:
        global_cp = ZoneCPProcess(tmp_path / "global", "--etcd-endpoints", endpoints, component="global-cp")
        started.append(global_cp)
        global_cp.start()
        zones = {}
        for name in ("eu", "us"):
            zone = ZoneCPProcess(tmp_path / name, "--zone", name, "--global-etcd", endpoints,
                                 "--zone-lease-ttl", str(LEASE_TTL), "--heartbeat-timeout", "30")
            started.append(zone)
            zone.start()
            zones[name] = zone
        yield {"global": global_cp, "zones": zones, "etcd": etcd_cluster, "tmp": tmp_path}
    finally:
        for cp in started:
            cp.stop()


def test_policies_flow_down_and_zones_refuse_local_edits(federation: dict[str, Any]) -> None:
    global_cp, zones = federation["global"], federation["zones"]
    for zone in zones.values():  # the global CP's default mesh reached every zone
        wait_for(lambda zone=zone: "default" in mesh_names(zone), "mesh default in a zone")
    result = apply(global_cp, mesh("payments"))
    assert result.returncode == 0, result.stderr
    for zone in zones.values():
        wait_for(lambda zone=zone: "payments" in mesh_names(zone), "mesh payments in a zone")

    refused = apply(zones["eu"], mesh("local-only"))
    assert refused.returncode != 0
    assert "Mesh local-only is managed by the global control plane" in refused.stderr, refused.stderr
    refused = zones["us"].cli("delete", "mesh", "payments")
    assert refused.returncode != 0 and "managed by the global control plane" in refused.stderr, refused.stderr
    assert "payments" in mesh_names(zones["us"])
    # ... and the global CP refuses what belongs to a zone.
    doc = {"type": "Dataplane", "mesh": "default", "name": "x", "spec": {
        "address": "127.0.0.1", "inbound": [{"port": 1, "service": "x"}]}}
    refused = apply(global_cp, doc)
    assert refused.returncode != 0 and "belongs to a zone" in refused.stderr, refused.stderr

    assert global_cp.cli("delete", "mesh", "payments").returncode == 0
    for zone in zones.values():
        wait_for(lambda zone=zone: "payments" not in mesh_names(zone), "mesh payments gone from a zone")


def test_zones_publish_inventory_and_go_offline_within_the_lease(federation: dict[str, Any]) -> None:
    global_cp, zones = federation["global"], federation["zones"]
    wait_for(lambda: zone_status(global_cp) == {"eu": "online", "us": "online"}, "both zones online")
    wait_for(lambda: metric(global_cp, "meshcast_cp_zone_online", zone="us") == 1, "us online in the metrics")
    register(zones["eu"], "web-1", "web")
    register(zones["us"], "backend-1", "backend")
    register(zones["us"], "web-2", "web")

    def where() -> dict[str, list[str]]:
        items = httpx.get(global_cp.url + "/v1/inspect/services", timeout=5).json()
        return {i["service"]: [f"{z['zone']}:{z['healthy']}" for z in i["zones"]] for i in items}

    wait_for(lambda: where() == {"web": ["eu:1", "us:1"], "backend": ["us:1"]}, "services in both zones")
    table = global_cp.cli("inspect", "services")
    assert table.returncode == 0 and "eu (1), us (1)" in table.stdout, table.stdout + table.stderr
    table = global_cp.cli("get", "zones")
    assert table.returncode == 0 and "online" in table.stdout, table.stdout + table.stderr

    zones["us"].stop(kill=True)  # no clean shutdown: only the lease TTL tells
    killed = time.monotonic()
    wait_for(lambda: zone_status(global_cp) == {"eu": "online", "us": "offline"}, "us offline", timeout=15)
    assert time.monotonic() - killed <= LEASE_TTL + 3  # the lease TTL plus the tracker's poll
    assert where() == {"web": ["eu:1"]}
    wait_for(lambda: metric(global_cp, "meshcast_cp_zone_online", zone="us") == 0, "us offline in the metrics")
    zones["eu"].stop()  # a clean stop revokes the lease: offline at once
    wait_for(lambda: zone_status(global_cp)["eu"] == "offline", "eu offline after a clean stop", timeout=3)


def test_zones_serve_their_last_global_state_through_etcd_failures(federation: dict[str, Any]) -> None:
    global_cp, zones, etcd = federation["global"], federation["zones"], federation["etcd"]
    assert apply(global_cp, mesh("before")).returncode == 0
    for zone in zones.values():
        wait_for(lambda zone=zone: "before" in mesh_names(zone), "mesh before in a zone")

    etcd.kill(0)  # one member of three: nothing visible changes
    assert apply(global_cp, mesh("one-down")).returncode == 0
    for zone in zones.values():
        wait_for(lambda zone=zone: "one-down" in mesh_names(zone), "mesh one-down in a zone")

    etcd.kill(1)  # quorum lost: the global side cannot change, the zones keep what they have
    refused = apply(global_cp, mesh("no-quorum"))
    assert refused.returncode != 0 and "unavailable" in refused.stderr, refused.stderr
    zones["eu"].stop()
    zones["eu"].start()  # restarted during the outage: serves the global state saved on disk
    for zone in zones.values():
        assert {"default", "before", "one-down"} <= mesh_names(zone)
        assert httpx.get(zone.url + "/readyz", timeout=5).status_code == 200
    lag = metric(zones["eu"], "meshcast_cp_global_sync_lag_seconds")
    assert lag is not None and lag > 0  # it says it is not following the global state
    # us was following through a watch, which stays open and silent without a quorum: it notices all the same
    wait_for(lambda: (metric(zones["us"], "meshcast_cp_global_sync_lag_seconds") or 0) > 1, "us lagging",
             timeout=15)

    etcd.restart(1)
    etcd.restart(0)
    assert apply(global_cp, mesh("after")).returncode == 0
    for zone in zones.values():
        wait_for(lambda zone=zone: {"before", "one-down", "after"} <= mesh_names(zone), "zones in sync again",
                 timeout=20)
    assert "no-quorum" not in mesh_names(zones["eu"])
    wait_for(lambda: metric(zones["eu"], "meshcast_cp_global_sync_lag_seconds") == 0, "eu following again")


def test_every_zone_signs_under_the_global_mesh_root(federation: dict[str, Any]) -> None:
    from cryptography import x509

    from meshcast.pki import build_csr, generate_workload_key, verify_chain
    from meshcast.pki.certinfo import read_pem

    zones, tmp = federation["zones"], federation["tmp"]
    issued = {}
    for zone_name, zone in zones.items():
        register(zone, f"web-{zone_name}", "web")
        csr = build_csr(generate_workload_key(), "spiffe://default/web").decode()
        token = zone.token("web")

        def sign(zone: ZoneCPProcess = zone, name: str = f"web-{zone_name}", token: str = token,
                 csr: str = csr) -> Any:
            response = httpx.post(f"{zone.url}/v1/dataplanes/default/{name}/certificate", json={"csr": csr},
                                  headers={"authorization": f"Bearer {token}"}, timeout=5)
            assert response.status_code in (200, 503), response.text
            return response.json() if response.status_code == 200 else None

        issued[zone_name] = wait_for(sign, f"a certificate from zone {zone_name}", timeout=15)
    # One root for the mesh, held by the global CP; each zone's chain goes through its own intermediate.
    root = (tmp / "global" / "ca" / "default" / "ca.crt").read_bytes()
    assert issued["eu"]["trustBundle"].encode() == issued["us"]["trustBundle"].encode() == root
    issuers = set()
    for zone_name, answer in issued.items():
        chain = x509.load_pem_x509_certificates(answer["certificate"].encode())
        assert len(chain) == 2 and f"{zone_name} intermediate CA" in chain[1].subject.rfc4514_string()
        issuers.add(chain[1].subject.rfc4514_string())
        verify_chain(answer["certificate"].encode(), answer["trustBundle"].encode())
        assert read_pem(answer["certificate"].encode()).tags == {"zone": zone_name}  # the signing zone, as a tag
        # The intermediate's key never left the zone: only the zone's state dir holds it.
        assert (tmp / zone_name / "ca" / "default" / "ca.key").exists()
        assert not (tmp / "global" / "ca" / "default" / "zones").exists()
    assert len(issuers) == 2
