"""The edge gateway (`meshcast gateway run`) with real clients: HTTP and HTTPS by SNI, routes by host, path, method
and header to mesh services over mTLS, readiness, and a drain under steady load that fails no accepted request."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_federation import wait_for
from tests.integration.test_sidecar_http import HttpApp
from tests.support.ports import free_port
from tests.support.process import stop_process
from tests.support.sidecar import SidecarProcess
from tests.support.tls import make_host_certs
from tests.support.zone import ZoneCPProcess, meshcast_cmd


def service_dp(name: str, service: str, app_port: int) -> dict[str, Any]:
    return {"type": "Dataplane", "mesh": "default", "name": name, "spec": {
        "address": "127.0.0.1", "inbound": [{"port": free_port(), "appPort": app_port, "service": service,
                                             "protocol": "http"}]}}


class Gateway:
    def __init__(self, workdir: Path, cp: ZoneCPProcess) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "token").write_text(cp.token("edge"))
        (workdir / "dp.json").write_text(json.dumps({"type": "Dataplane", "mesh": "default", "name": "edge-1",
                                                     "spec": {"address": "127.0.0.1", "gateway": "edge"}}))
        self.admin_port = free_port()
        self.admin = f"127.0.0.1:{self.admin_port}"
        self.log_path = workdir / "gateway.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(meshcast_cmd(
                "gateway", "run", "--cp", cp.url, "--token-file", str(workdir / "token"), "--dataplane-file",
                str(workdir / "dp.json"), "--state-dir", str(workdir / "state"), "--admin-addr", self.admin,
                "--workers", "1", "--withdraw-delay", "0.5", "--drain-timeout", "10",
                # no BGP here: new connections are served during the withdraw delay, as behind a load balancer
                # (the anycast end-to-end test drains with the default, `drop`)
                "--while-withdrawing", "serve"),
                stdout=log, stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        return httpx.get(f"http://{self.admin}/ready", timeout=1).status_code == 200

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("edge")
    ca, certs = make_host_certs(tmp / "certs", {"shop": ["shop.example.com"], "org": ["*.example.org"]})
    ports = {"http": free_port(), "https": free_port()}
    gateway_doc = {"type": "MeshGateway", "mesh": "default", "name": "edge", "spec": {
        "listeners": [
            {"port": ports["http"], "address": "127.0.0.1"},
            {"port": ports["https"], "address": "127.0.0.1", "protocol": "https", "tls": {"certificates": [
                {"hosts": ["shop.example.com"], "certFile": str(certs["shop"][0]), "keyFile": str(certs["shop"][1])},
                {"hosts": ["*.example.org"], "certFile": str(certs["org"][0]), "keyFile": str(certs["org"][1])},
            ]}}],
        "routes": [
            {"match": {"headers": {"x-env": "canary"}}, "to": "canary"},
            {"match": {"hosts": ["shop.example.com"], "pathPrefix": "/api"}, "to": "backend"},
            {"match": {"hosts": ["*.example.org"], "methods": ["GET"]}, "to": "web"},
        ]}}
    cp = ZoneCPProcess(tmp / "cp")
    started: list[Any] = []
    apps = [HttpApp("backend-1"), HttpApp("canary-1"), HttpApp("web-1")]
    try:
        cp.start()
        result = cp.cli("apply", "-f", "-", stdin=json.dumps(gateway_doc))
        assert result.returncode == 0, result.stderr
        for app, service in zip(apps, ("backend", "canary", "web"), strict=True):
            sidecar = SidecarProcess(tmp / service, cp.url, cp.token(service), service_dp(app.server.name, service,
                                                                                          app.port))
            started.append(sidecar)
            sidecar.start()
        gateway = Gateway(tmp / "gateway", cp)
        started.append(gateway)
        wait_for(gateway.ready, "gateway ready", timeout=30)
        yield {"cp": cp, "gateway": gateway, "ports": ports, "ca": ca, "tmp": tmp}
    finally:
        for item in reversed(started):
            item.stop()
        cp.stop()
        for app in apps:
            app.close()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=20)


def test_http_routes_by_host_path_method_and_header(edge: dict[str, Any]) -> None:
    url = f"http://127.0.0.1:{edge['ports']['http']}"
    answer = json.loads(curl("-H", "host: shop.example.com", f"{url}/api/orders?x=1").stdout)
    assert answer["server"] == "backend-1" and answer["path"] == "/api/orders?x=1"
    assert answer["source"] == ["spiffe://default/edge"]  # mTLS from the gateway's own identity
    # The edge says who the client is; what the client claimed is dropped.
    spoofed = json.loads(curl("-H", "host: shop.example.com", "-H", "x-forwarded-for: 203.0.113.9",
                              "-H", "x-forwarded-proto: https", f"{url}/api").stdout)
    assert spoofed["forwardedFor"] == ["127.0.0.1"] and spoofed["forwardedProto"] == ["http"]
    assert json.loads(curl("-H", "host: shop.example.com", "-H", "x-env: canary", f"{url}/api")
                      .stdout)["server"] == "canary-1"
    assert json.loads(curl("-H", "host: a.b.example.org", f"{url}/anything").stdout)["server"] == "web-1"
    for args in (["-H", "host: shop.example.com", f"{url}/apix"],  # a path segment, not a string prefix
                 ["-X", "POST", "-H", "host: www.example.org", f"{url}/"],  # GET only
                 ["-H", "host: example.org", f"{url}/"]):  # *.example.org needs a label before the domain
        result = curl("-o", "/dev/null", "-w", "%{http_code}", "-D", "-", *args)
        assert result.stdout.endswith("404") and "x-meshcast-error: no_route" in result.stdout.lower(), result


def test_https_picks_the_certificate_by_sni_and_speaks_http2(edge: dict[str, Any]) -> None:
    port, ca = edge["ports"]["https"], str(edge["ca"])
    for host, server, http2 in (("shop.example.com", "backend-1", False), ("shop.example.com", "backend-1", True),
                                ("www.example.org", "web-1", True)):
        path = "/api/x" if host.startswith("shop") else "/"
        result = curl("--resolve", f"{host}:{port}:127.0.0.1", "--cacert", ca, "-w", "\\n%{http_version}",
                      *(["--http2"] if http2 else ["--http1.1"]), f"https://{host}:{port}{path}")
        body, version = result.stdout.rsplit("\n", 1)
        assert result.returncode == 0, result.stderr
        answer = json.loads(body)
        assert answer["server"] == server and version == ("2" if http2 else "1.1")
        assert answer["forwardedProto"] == ["https"] and answer["forwardedFor"] == ["127.0.0.1"]


def test_readiness_reports_the_gateway(edge: dict[str, Any]) -> None:
    status = httpx.get(f"http://{edge['gateway'].admin}/ready", timeout=5).json()
    assert status["ready"] is True


def test_drain_under_load_fails_no_accepted_request(edge: dict[str, Any]) -> None:
    """Last in the module: the gateway exits."""
    port = edge["ports"]["http"]
    ok: list[int] = []
    failed: list[str] = []
    told_to_go: list[int] = []  # responses that said `Connection: close`
    refused = threading.Event()  # the listener is gone: a real client's traffic is routed elsewhere by then
    stop = threading.Event()

    def client() -> None:
        conn: http.client.HTTPConnection | None = None
        while not stop.is_set() and not refused.is_set():
            fresh = conn is None
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                conn.request("GET", "/api/load", headers={"host": "shop.example.com"})
                response = conn.getresponse()
                response.read()
                (ok if response.status == 200 else failed).append(response.status)  # type: ignore[arg-type]
                if response.getheader("connection", "").lower() == "close":
                    told_to_go.append(1)
                    conn.close()
                    conn = None
            except ConnectionRefusedError:
                refused.set()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                conn.close()
                conn = None
                if fresh:  # a new connection the gateway accepted and dropped: a failure
                    failed.append(repr(exc))
                # else: an idle keep-alive connection closed by the drain before it read our request; HTTP lets
                # the client send it again on a new connection, as every client library does
            time.sleep(0.005)

    workers = [threading.Thread(target=client) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        wait_for(lambda: len(ok) > 100, "steady load")
        before = len(ok)
        result = subprocess.run(meshcast_cmd("gateway", "drain", "--admin-addr", edge["gateway"].admin,
                                             "--timeout", "30"), capture_output=True, text=True, timeout=60,
                                env={**os.environ})
        assert result.returncode == 0 and "drained" in result.stdout, result.stdout + result.stderr
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert len(ok) > before and not failed, failed
    # Told to go from the start of the drain, not only once the listener closed: every connection accepted during
    # the withdraw delay served one request and closed (more than one per worker), so none is left open across
    # the route change.
    assert len(told_to_go) > len(workers), told_to_go
    assert edge["gateway"].proc.wait(timeout=10) == 0
    assert "draining" in edge["gateway"].log_path.read_text()
