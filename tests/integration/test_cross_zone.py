"""Cross-zone traffic through real processes: a global CP on etcd, zones `eu` and `us` each with a zone CP and a
zone ingress, sidecars and apps on loopback.

A service only `us` has is reached from `eu` through us's ingress, with the caller's SPIFFE identity seen by the app
in `us` (the ingress does not terminate TLS). A service both zones have is served locally; when eu's instance dies
under steady load the calls fail over to us with no failure beyond requests in flight, and come back to eu once its
instance is back.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_federation import wait_for
from tests.integration.test_sidecar_http import HttpApp
from tests.support.etcd import EtcdProcess
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
    etcd = EtcdProcess("g0", tmp / "etcd")
    stoppable: list[Any] = []
    apps: list[HttpApp] = []
    try:
        etcd.start()
        global_cp = ZoneCPProcess(tmp / "global", "--etcd-endpoints", etcd.client_url, component="global-cp")
        stoppable.append(global_cp)
        global_cp.start()
        cps = {}
        for name in ("eu", "us"):
            cp = ZoneCPProcess(tmp / name, "--zone", name, "--global-etcd", etcd.client_url,
                               "--zone-lease-ttl", "2", "--heartbeat-timeout", "30")
            stoppable.append(cp)
            cp.start()
            cps[name] = cp
            ingress = Ingress(tmp / f"ingress-{name}", cp)
            stoppable.append(ingress)
            wait_for(ingress.ready, f"ingress {name} ready")
        sidecars = {}
        out = {"backend": free_port(), "payments": free_port()}
        for zone, name, service, outbound in (("us", "payments-us", "payments", {}),
                                              ("us", "backend-us", "backend", {}),
                                              ("eu", "backend-eu", "backend", {}),
                                              ("eu", "web-eu", "web", out)):
            app = HttpApp(name)
            apps.append(app)
            sidecar = SidecarProcess(tmp / name, cps[zone].url, cps[zone].token(service),
                                     dataplane(name, service, app.port, outbound))
            stoppable.append(sidecar)
            sidecar.start()
            sidecars[name] = sidecar
        yield {"global": global_cp, "cps": cps, "sidecars": sidecars, "out": out, "tmp": tmp}
    finally:
        for item in reversed(stoppable):
            item.stop()
        for app in apps:
            app.close()
        etcd.kill()


def test_a_service_only_in_us_is_reached_from_eu_with_the_callers_identity(zones: dict[str, Any]) -> None:
    answer = wait_for(lambda: get(zones["out"]["payments"], "/pay"), "payments reachable from eu", timeout=30)
    assert answer["server"] == "payments-us" and answer["path"] == "/pay"
    assert answer["source"] == ["spiffe://default/web"]  # what the sidecar in us saw: mTLS end to end


def test_failover_to_us_under_load_and_back_to_eu(zones: dict[str, Any]) -> None:
    port = zones["out"]["backend"]
    wait_for(lambda: get(port)["server"] == "backend-eu", "backend served in eu", timeout=30)
    for _ in range(20):  # locality: every call stays in eu while eu's instance is healthy
        assert get(port)["server"] == "backend-eu"

    served: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                served.append(get(port)["server"])
            except Exception as exc:  # every failure is recorded and judged below
                failures.append(repr(exc))
            time.sleep(0.01)

    worker = threading.Thread(target=load)
    worker.start()
    try:
        wait_for(lambda: len(served) > 20, "steady load")
        zones["sidecars"]["backend-eu"].stop(kill=True)  # eu's instance dies without a word
        killed_at = len(served)
        wait_for(lambda: served[-1:] == ["backend-us"] and len(served) > killed_at + 50, "failover to us",
                 timeout=30)
        zones["sidecars"]["backend-eu"].start()  # back: calls return to eu
        wait_for(lambda: served[-20:] == ["backend-eu"] * 20, "failback to eu", timeout=30)
    finally:
        stop.set()
        worker.join()
    assert len(failures) <= 1, failures  # at most the one request in flight at the kill
    assert "backend-us" in served and served[-1] == "backend-eu"
