"""Cross-zone failover through a real zone ingress: real sidecar processes, a real zone CP, the real IngressServer.

The "other zone" is on the same loopback: backend and echo sidecars registered with the zone CP as usual, reached
through an `IngressServer` run in the test's trio loop. The calling sidecar (web) is given a snapshot with
locality: its own zone's backend at priority 0 and the ingress, with the service's SNI, at priority 1. It gets
that snapshot the way a sidecar restarted during a control-plane outage does: web runs once against the CP (to
register and get its certificate), then again against a CP address that refuses connections, serving the saved
snapshot, rewritten with the locality fields. So the whole sidecar path is real (config parsing, balancing, dials
with SNI over mTLS, the peer's SPIFFE ID checked end to end through the ingress) without depending on federation.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from dataplane.ingress.router import Address, IngressServer, resolve_service_sni
from meshcast.wire.sni import service_sni
from tests.integration.test_sidecar_http import HttpApp, http_dataplane
from tests.integration.test_sidecar_tcp import EchoApp, tcp_dataplane
from tests.support.sidecar import SidecarProcess
from tests.support.zone import ZoneCPProcess, free_port

MESH = "default"
BACKEND_SNI = service_sni(MESH, "backend")
ECHO_SNI = service_sni(MESH, "echo")


class Ingress:
    """The other zone's ingress, in-process: routes by SNI to `routes[service]`, and records each name asked."""

    def __init__(self, port: int, routes: dict[str, list[Address]]) -> None:
        self.routes = routes
        self.asked: list[str] = []
        self.server = IngressServer("127.0.0.1", port, resolve_service_sni(self._endpoints))

    def _endpoints(self, mesh: str, service: str) -> list[Address]:
        self.asked.append(service_sni(mesh, service))
        return self.routes.get(service, []) if mesh == MESH else []


def locality_snapshot(saved: dict[str, Any], ports: dict[str, int]) -> dict[str, Any]:
    """web's snapshot from the CP with locality: backend local (priority 0) and behind the ingress (1); echo only
    behind the ingress."""
    ingress = {"address": "127.0.0.1", "port": ports["ingress"], "dataplane": "ingress.zone-2", "priority": 1}
    endpoints = {
        "backend": [
            {"address": "127.0.0.1", "port": ports["local"], "protocol": "http", "dataplane": "backend-local",
             "tags": {"service": "backend", "zone": "zone-1"}},
            {**ingress, "protocol": "http", "tags": {"service": "backend", "zone": "zone-2"}, "sni": BACKEND_SNI},
        ],
        "echo": [{**ingress, "protocol": "tcp", "tags": {"service": "echo", "zone": "zone-2"}, "sni": ECHO_SNI}],
    }
    snapshot = dict(saved)
    snapshot["outbound"] = [{**o, "protocol": "http" if o["service"] == "backend" else "tcp",
                             "endpoints": endpoints[o["service"]]} for o in saved["outbound"]]
    return snapshot


@pytest.fixture
def zones(tmp_path: Path) -> Iterator[dict[str, Any]]:
    cp = ZoneCPProcess(tmp_path / "cp", "--heartbeat-timeout", "3", "--heartbeat-interval", "0.5")
    apps = {"local": HttpApp("backend-local"), "remote": HttpApp("backend-remote"), "web": HttpApp("web")}
    echo = EchoApp()
    ports = {k: free_port() for k in ("local", "remote", "echo", "web_in", "web_http", "web_tcp", "ingress")}
    dead_cp = socket.socket()  # bound, never listening: web's control plane is "down" for good
    dead_cp.bind(("127.0.0.1", 0))
    started: list[SidecarProcess] = []
    try:
        cp.start()
        sidecars = {
            "local": SidecarProcess(tmp_path / "backend-local", cp.url, cp.token("backend"),
                                    http_dataplane("backend-local", "backend", ports["local"], apps["local"].port)),
            "remote": SidecarProcess(tmp_path / "backend-remote", cp.url, cp.token("backend"),
                                     http_dataplane("backend-remote", "backend", ports["remote"],
                                                    apps["remote"].port)),
            "echo": SidecarProcess(tmp_path / "echo-remote", cp.url, cp.token("echo"),
                                   tcp_dataplane("echo-remote", "echo", ports["echo"], echo.port)),
        }
        web_doc = http_dataplane("web-1", "web", ports["web_in"], apps["web"].port,
                                 {"backend": ports["web_http"], "echo": ports["web_tcp"]})
        first_web = SidecarProcess(tmp_path / "web-1", cp.url, cp.token("web"), web_doc)
        for sidecar in [*sidecars.values(), first_web]:
            started.append(sidecar)
            sidecar.start()
        first_web.stop()  # registered, certificate and snapshot saved
        state = tmp_path / "web-1" / "state" / "config.json"
        saved = json.loads(state.read_text())
        state.write_text(json.dumps({"version": "locality", "snapshot": locality_snapshot(saved["snapshot"], ports)}))
        web = SidecarProcess(tmp_path / "web-1", f"http://127.0.0.1:{dead_cp.getsockname()[1]}",
                             cp.token("web"), web_doc)
        started.append(web)
        web.start()
        yield {"ports": ports, "sidecars": sidecars, "web": web}
    finally:
        for sidecar in started:
            sidecar.stop()
        cp.stop()
        for app in apps.values():
            app.close()
        echo.close()
        dead_cp.close()


async def curl_json(url: str, *args: str) -> dict[str, Any]:
    with trio.fail_after(30):
        done = await trio.run_process(["curl", "-sS", "--max-time", "20", *args, url], capture_stdout=True,
                                      capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr
    try:
        return dict(json.loads(done.stdout))
    except ValueError:
        raise AssertionError(f"not JSON from {url}: {done.stdout[:300]!r}") from None


async def echo_roundtrip(port: int, payload: bytes) -> bytes:
    """What comes back through the sidecar; b"" when it closes the connection (a reset included)."""
    received = b""
    with trio.fail_after(20):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            try:
                await stream.send_all(payload)
                await stream.send_eof()
                while chunk := await stream.receive_some(65536):
                    received += chunk
            except trio.BrokenResourceError:
                pass
    return received


async def upstream_errors(admin: str, service: str, reason: str) -> float:
    with trio.fail_after(20):
        done = await trio.run_process(["curl", "-sS", admin + "/metrics"], capture_stdout=True, check=True)
    for line in done.stdout.decode().splitlines():
        name, _, value = line.rpartition(" ")
        if (name.startswith("meshcast_dp_upstream_errors_total{") and f'service="{service}"' in name
                and f'reason="{reason}"' in name):
            return float(value)
    return 0.0


async def test_failover_to_the_other_zone_and_back(zones: dict[str, Any], nursery: trio.Nursery) -> None:
    ports, local = zones["ports"], zones["sidecars"]["local"]
    ingress = Ingress(ports["ingress"], {"backend": [("127.0.0.1", ports["remote"])]})
    await nursery.start(ingress.server.run)  # closed with the test's nursery
    url = f"http://127.0.0.1:{ports['web_http']}/hello"
    # The own zone serves while it can: the ingress is never asked.
    for _ in range(4):
        assert (await curl_json(url))["server"] == "backend-local"
    assert ingress.asked == []
    # The own zone's instance goes away: the retry of the failed connect goes through the ingress, whose SNI routes
    # it to the other zone's instance; the caller's identity arrives intact (the TLS session is end to end).
    await trio.to_thread.run_sync(lambda: local.stop(kill=True))
    answer = await curl_json(url)
    assert answer["server"] == "backend-remote"
    assert answer["source"] == ["spiffe://default/web"]
    assert ingress.asked == [BACKEND_SNI]
    # Fewer failures than eject the local endpoint (5): it stays first choice and takes traffic back once it is up.
    await trio.to_thread.run_sync(local.start)
    assert {(await curl_json(url))["server"] for _ in range(3)} == {"backend-local"}


async def test_every_hop_protocol_sends_the_sni_and_checks_the_identity(
        zones: dict[str, Any], nursery: trio.Nursery) -> None:
    ports, web = zones["ports"], zones["web"]
    ingress = Ingress(ports["ingress"], {"backend": [("127.0.0.1", ports["remote"])],
                                         "echo": [("127.0.0.1", ports["echo"])]})
    await nursery.start(ingress.server.run)
    await trio.to_thread.run_sync(lambda: zones["sidecars"]["local"].stop(kill=True))
    url = f"http://127.0.0.1:{ports['web_http']}/h2"
    # HTTP/2 (the multiplexed pool) and HTTP/1.1 (the pooled exchange): one connection each through the ingress.
    h2 = await curl_json(url, "--http2-prior-knowledge")
    h1 = await curl_json(url)
    assert h2["server"] == h1["server"] == "backend-remote"
    # Opaque TCP (a connection per connection), to a service only the other zone has.
    payload = bytes(range(256)) * 256
    assert await echo_roundtrip(ports["web_tcp"], payload) == payload
    assert sorted(ingress.asked) == sorted([BACKEND_SNI, BACKEND_SNI, ECHO_SNI])
    # An ingress that routes the name to another service's sidecar: its certificate is not echo's, so the sidecar
    # refuses it (the SNI is only a routing key; the identity is the peer's SPIFFE ID).
    ingress.routes["echo"] = [("127.0.0.1", ports["remote"])]
    assert await echo_roundtrip(ports["web_tcp"], b"hello") == b""
    assert await upstream_errors(web.admin, "echo", "identity_mismatch") == 1
