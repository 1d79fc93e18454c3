"""Cross-zone traffic through real processes: a global CP on a 3-member etcd cluster, zones `eu` and `us` each with
a zone CP and a zone ingress, sidecars and apps on loopback.

A service only `us` has is reached from `eu` through us's ingress, with the caller's SPIFFE identity seen by the app
in `us` (the ingress does not terminate TLS). A service both zones have is served locally; when eu's instance dies
under steady load the calls fail over to us with no failure beyond requests in flight, and come back to eu once its
instance is back. eu's edge gateway does the same for its routes (local first, us's ingress while eu has no
instance) and stays ready meanwhile. A policy applied at the global CP reaches the sidecars of both zones; with the
global etcd's quorum gone, local and cross-zone traffic keep flowing, even through a zone CP restarted meanwhile.
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_federation import wait_for
from tests.integration.test_gateway import Gateway
from tests.integration.test_sidecar_http import HttpApp
from tests.support.etcd import EtcdCluster
from tests.support.ports import free_port
from tests.support.process import stop_process
from tests.support.sidecar import SidecarProcess
from tests.support.zone import ZoneCPProcess, meshcast_cmd


def dataplane(name: str, service: str, app_port: int, outbound: dict[str, int]) -> dict[str, Any]:
    return {"type": "Dataplane", "mesh": "default", "name": name, "spec": {
        "address": "127.0.0.1",
        "inbound": [{"port": free_port(), "appPort": app_port, "service": service, "protocol": "http"}],
        "outbound": [{"port": port, "service": svc} for svc, port in outbound.items()]}}


def get(port: int, path: str = "/") -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (response.status, body)
        return dict(json.loads(body))
    finally:
        conn.close()


class SteadyLoad:
    """`workers` threads calling `get(port, path)` every 10 ms until stopped, recording who answered and every
    failure (judged by the test)."""

    def __init__(self, port: int, path: str = "/", workers: int = 1) -> None:
        self.served: list[str] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(port, path)) for _ in range(workers)]

    def _run(self, port: int, path: str) -> None:
        while not self._stop.is_set():
            try:
                self.served.append(get(port, path)["server"])
            except Exception as exc:  # every failure is recorded and judged by the test
                self.failures.append(repr(exc))
            time.sleep(0.01)

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


class Ingress:
    def __init__(self, workdir: Path, zone: ZoneCPProcess) -> None:
        import subprocess

        workdir.mkdir(parents=True, exist_ok=True)
        token = zone.cli("generate", "ingress-token")
        assert token.returncode == 0, token.stderr
        (workdir / "token").write_text(token.stdout.strip())
        self.port, self.admin = free_port(), free_port()
        self.log_path = workdir / "ingress.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                meshcast_cmd("ingress", "run", "--cp", zone.url, "--token-file", str(workdir / "token"),
                             "--addr", f"127.0.0.1:{self.port}", "--admin-addr", f"127.0.0.1:{self.admin}",
                             "--state-dir", str(workdir / "state")), stdout=log, stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        import httpx

        return httpx.get(f"http://127.0.0.1:{self.admin}/ready", timeout=1).status_code == 200

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture(scope="module")
def zones(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("cross-zone")
    (tmp / "etcd").mkdir()
    etcd = EtcdCluster(tmp / "etcd")
    endpoints = ",".join(etcd.client_urls)
    stoppable: list[Any] = []
    apps: list[HttpApp] = []
    try:
        etcd.start()
        global_cp = ZoneCPProcess(tmp / "global", "--etcd-endpoints", endpoints, component="global-cp")
        stoppable.append(global_cp)
        global_cp.start()
        cps, ingresses = {}, {}
        for name in ("eu", "us"):
            cp = ZoneCPProcess(tmp / name, "--zone", name, "--global-etcd", endpoints,
                               "--zone-lease-ttl", "2", "--heartbeat-timeout", "30")
            stoppable.append(cp)
            cp.start()
            cps[name] = cp
            ingress = Ingress(tmp / f"ingress-{name}", cp)
            stoppable.append(ingress)
            ingresses[name] = ingress
            wait_for(ingress.ready, f"ingress {name} ready")
        sidecars = {}
        out = {"backend": free_port(), "payments": free_port(), "us_backend": free_port()}
        for zone, name, service, outbound in (("us", "payments-us", "payments", {"backend": out["us_backend"]}),
                                              ("us", "backend-us", "backend", {}),
                                              ("eu", "backend-eu", "backend", {}),
                                              ("eu", "web-eu", "web", {"backend": out["backend"],
                                                                       "payments": out["payments"]})):
            app = HttpApp(name)
            apps.append(app)
            sidecar = SidecarProcess(tmp / name, cps[zone].url, cps[zone].token(service),
                                     dataplane(name, service, app.port, outbound))
            stoppable.append(sidecar)
            sidecar.start()
            sidecars[name] = sidecar
        # eu's edge gateway: a MeshGateway applied at the global CP, served by a gateway registered with eu's CP
        edge_port = free_port()
        edge_doc = {"type": "MeshGateway", "mesh": "default", "name": "edge", "spec": {
            "listeners": [{"port": edge_port, "address": "127.0.0.1"}],
            "routes": [{"match": {"pathPrefix": "/pay"}, "to": "payments"}, {"to": "backend"}]}}
        result = global_cp.cli("apply", "-f", "-", stdin=json.dumps(edge_doc))
        assert result.returncode == 0, result.stderr
        gateway = Gateway(tmp / "edge", cps["eu"])
        stoppable.append(gateway)
        wait_for(gateway.ready, "eu's edge gateway ready", timeout=30)
        yield {"global": global_cp, "cps": cps, "ingresses": ingresses, "sidecars": sidecars, "out": out, "tmp": tmp,
               "etcd": etcd, "gateway": gateway, "edge_port": edge_port, "stoppable": stoppable}
    finally:
        for item in reversed(stoppable):
            item.stop()
        for app in apps:
            app.close()
        etcd.stop()


def test_a_service_only_in_us_is_reached_from_eu_with_the_callers_identity(zones: dict[str, Any]) -> None:
    answer = wait_for(lambda: get(zones["out"]["payments"], "/pay"), "payments reachable from eu", timeout=30)
    assert answer["server"] == "payments-us" and answer["path"] == "/pay"
    assert answer["source"] == ["spiffe://default/web"]  # what the sidecar in us saw: mTLS end to end


def test_failover_to_us_under_load_and_back_to_eu(zones: dict[str, Any]) -> None:
    port = zones["out"]["backend"]
    wait_for(lambda: get(port)["server"] == "backend-eu", "backend served in eu", timeout=30)
    for _ in range(20):  # locality: every call stays in eu while eu's instance is healthy
        assert get(port)["server"] == "backend-eu"

    with SteadyLoad(port) as load:
        served = load.served
        wait_for(lambda: len(served) > 20, "steady load")
        zones["sidecars"]["backend-eu"].stop(kill=True)  # eu's instance dies without a word
        killed_at = len(served)
        wait_for(lambda: served[-1:] == ["backend-us"] and len(served) > killed_at + 50, "failover to us",
                 timeout=30)
        zones["sidecars"]["backend-eu"].start()  # back: calls return to eu
        wait_for(lambda: served[-20:] == ["backend-eu"] * 20, "failback to eu", timeout=30)
    assert len(load.failures) <= 1, load.failures  # at most the one request in flight at the kill
    assert "backend-us" in served and served[-1] == "backend-eu"


def test_the_edge_gateway_serves_locally_then_through_the_other_zones_ingress(zones: dict[str, Any]) -> None:
    """The gateway's routes go to mesh services like a sidecar's calls: local zone first, another zone's ingress
    when the local instances are gone (with the gateway's own identity), and the gateway stays ready meanwhile: a
    region whose backends are gone keeps its anycast route and is served through another zone."""
    port, gateway = zones["edge_port"], zones["gateway"]
    answer = wait_for(lambda: get(port, "/pay"), "payments through eu's gateway", timeout=30)
    assert answer["server"] == "payments-us" and answer["source"] == ["spiffe://default/edge"]
    wait_for(lambda: get(port)["server"] == "backend-eu", "backend through eu's gateway", timeout=30)
    for _ in range(10):
        assert get(port)["server"] == "backend-eu"

    zones["sidecars"]["backend-eu"].stop()  # a clean stop: deregistered, so eu has no backend instance left
    try:
        wait_for(lambda: get(port)["server"] == "backend-us", "the gateway failing over to us", timeout=30)
        for _ in range(10):
            assert get(port)["server"] == "backend-us"
        assert gateway.ready()
    finally:
        zones["sidecars"]["backend-eu"].start()
    wait_for(lambda: get(port)["server"] == "backend-eu", "the gateway back to eu", timeout=30)


def outbound(sidecar: SidecarProcess, service: str) -> dict[str, Any] | None:
    """The sidecar's outbound for `service` in the config in force (its /config), or None."""
    import httpx

    config = httpx.get(sidecar.admin + "/config", timeout=5).json()["config"]
    return next((o for o in config["outbound"] if o["service"] == service), None)


def outbound_endpoints(sidecar: SidecarProcess, service: str) -> list[str]:
    found = outbound(sidecar, service)
    return sorted(f"{e['address']}:{e['port']}" for e in found["endpoints"]) if found else []


def test_callers_use_every_ingress_of_a_zone_and_one_drains_under_load_losing_nothing(
        zones: dict[str, Any]) -> None:
    """A zone with two ingresses: other zones' sidecars get both as endpoints. One is stopped (SIGTERM) under steady
    load: it tells its zone CP it is leaving, so other zones stop calling it within seconds (not after INGRESS_TTL,
    30 s), closes its idle connections, and exits; no call fails."""
    port, web = zones["out"]["payments"], zones["sidecars"]["web-eu"]
    first = zones["ingresses"]["us"]
    second = Ingress(zones["tmp"] / "ingress-us-2", zones["cps"]["us"])
    zones["stoppable"].append(second)  # stopped with the module's processes
    zones["ingresses"]["us"] = second  # the tests after this one go through it
    wait_for(second.ready, "us's second ingress ready")
    addresses = {ingress: f"127.0.0.1:{ingress.port}" for ingress in (first, second)}
    wait_for(lambda: outbound_endpoints(web, "payments") == sorted(addresses.values()),
             "both us ingresses at eu's web", timeout=30)

    with SteadyLoad(port, "/pay", workers=2) as load:
        served = load.served
        wait_for(lambda: len(served) > 40, "steady load")
        started = time.monotonic()
        first.proc.send_signal(signal.SIGTERM)  # ours: started by this module
        wait_for(lambda: outbound_endpoints(web, "payments") == [addresses[second]],
                 "eu's web to stop calling the draining ingress", timeout=10)
        unpublished = time.monotonic() - started
        assert first.proc.wait(timeout=30) == 0
        exited = time.monotonic() - started
        before = len(served)
        wait_for(lambda: len(served) > before + 40, "load through the other ingress")
    print(f"TIMING SIGTERM -> the draining ingress gone from eu's config: {unpublished * 1000:.0f} ms; "
          f"-> exited: {exited * 1000:.0f} ms; calls: {len(served)}")
    assert load.failures == []
    assert set(served) == {"payments-us"}
    assert "leaving" in first.log_path.read_text() or "no longer publishes" in first.log_path.read_text()


def outbound_threshold(sidecar: SidecarProcess, service: str) -> float | None:
    found = outbound(sidecar, service)
    return float(found["failoverThreshold"]) if found else None


def test_a_policy_applied_at_the_global_cp_reaches_sidecars_in_both_zones(zones: dict[str, Any]) -> None:
    policy = {"type": "MeshLoadBalancingStrategy", "mesh": "default", "name": "backend-lb", "spec": {
        "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                "default": {"localityAwareness": {"crossZone": {"failoverThreshold": 50}}}}]}}
    result = zones["global"].cli("apply", "-f", "-", stdin=json.dumps(policy))
    assert result.returncode == 0, result.stderr
    for name in ("web-eu", "payments-us"):  # both call backend, which both zones have
        sidecar = zones["sidecars"][name]
        wait_for(lambda sidecar=sidecar: outbound_threshold(sidecar, "backend") == 0.5, f"the policy at {name}")
    assert zones["global"].cli("delete", "meshloadbalancingstrategy", "backend-lb").returncode == 0
    for name in ("web-eu", "payments-us"):
        sidecar = zones["sidecars"][name]
        wait_for(lambda sidecar=sidecar: outbound_threshold(sidecar, "backend") == 0.0, f"policy gone at {name}")


Sample = tuple[str, tuple[tuple[str, str], ...]]  # a series: its name and sorted labels


def ingress_metrics(ingress: Ingress) -> dict[Sample, float]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{ingress.admin}/metrics", timeout=5).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_the_ingress_counts_connections_and_bytes_per_destination_service(zones: dict[str, Any]) -> None:
    port = zones["out"]["payments"]
    wait_for(lambda: get(port, "/pay")["server"] == "payments-us", "payments reachable from eu", timeout=30)
    payments = (("destination_service", "payments"), ("mesh", "default"))
    spliced: Sample = ("meshcast_ingress_connections_total", (*payments, ("outcome", "spliced")))
    received: Sample = ("meshcast_ingress_downstream_received_bytes_total", payments)
    sent: Sample = ("meshcast_ingress_downstream_sent_bytes_total", payments)
    before = ingress_metrics(zones["ingresses"]["us"])
    for _ in range(5):
        assert get(port, "/pay")["server"] == "payments-us"
    after = ingress_metrics(zones["ingresses"]["us"])
    # eu's sidecar pools its connections to us's ingress: the calls ride a new connection (counted once routed)
    # or one still open (its bytes counted as they move).
    assert after[spliced] >= 1
    assert after[spliced] > before[spliced] or after[("meshcast_ingress_active_connections", payments)] >= 1
    assert after[received] - before[received] >= 5 * len(b"GET /pay HTTP/1.1\r\n")  # TLS records: more than that
    assert after[sent] > before[sent] > 0
    assert after[("meshcast_ingress_upstream_connect_duration_seconds_count", payments)] >= 1
    assert not any(labels == payments for _, labels in ingress_metrics(zones["ingresses"]["eu"]))  # eu routes none


def test_traffic_keeps_flowing_without_the_global_etcd(zones: dict[str, Any]) -> None:
    """Last in the module: it takes the global etcd's quorum away."""
    out = zones["out"]
    wait_for(lambda: get(out["payments"])["server"] == "payments-us", "cross-zone call", timeout=30)
    zones["etcd"].kill(1)
    zones["etcd"].kill(2)
    for _ in range(10):
        assert get(out["payments"])["server"] == "payments-us"  # cross-zone
        assert get(out["backend"])["server"] == "backend-eu"  # local
    zones["cps"]["eu"].stop()  # a zone CP restarted during the outage serves its saved global and remote views
    zones["cps"]["eu"].start()
    # The restarted CP starts with no local registrations (its store is in memory): until backend-eu's sidecar has
    # registered again, the calls may fail over to us; then they come back to eu.
    wait_for(lambda: get(out["backend"])["server"] == "backend-eu", "local backend after the CP restart", timeout=30)
    for _ in range(10):
        assert get(out["payments"])["server"] == "payments-us"
        assert get(out["backend"])["server"] == "backend-eu"
