"""MeshHealthCheck with the gRPC health-checking protocol, against real grpcio servers.

First `dataplane.grpchealth.check` alone against a grpcio server (cleartext, no sidecar): every answer a real server
gives. Then the mesh (one zone CP, memory store, mTLS on): two instances of the gRPC service `echo` behind their
sidecars, and a `client` sidecar whose outbound port a real grpcio client calls. A MeshHealthCheck with
`grpc: {serviceName: demo.Echo}` applied with `meshcast apply` makes the client's sidecar call Health/Check on each
instance (through its sidecar, over an mTLS h2 connection); an instance that answers NOT_SERVING, or has no health
service (UNIMPLEMENTED), gets no more calls until it serves again.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import trio

from dataplane.grpchealth import CheckResult, check
from tests.integration.test_federation import wait_for
from tests.support.grpchealth import SERVICE, HealthApp
from tests.support.ports import free_port
from tests.support.sidecar import SidecarProcess
from tests.support.zone import ZoneCPProcess

# --- the check alone, against grpcio ------------------------------------------------------------------------------


@pytest.fixture
def app() -> Iterator[HealthApp]:
    app = HealthApp("echo-1")
    yield app
    app.close()


async def check_app(port: int, service: str = SERVICE) -> CheckResult:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        with trio.fail_after(10):
            return await check(stream, service, authority="echo")
    finally:
        await stream.aclose()


async def test_the_check_reads_every_answer_of_a_grpcio_server(app: HealthApp) -> None:
    assert await check_app(app.port) == CheckResult(True, "SERVING")
    assert app.asked == {SERVICE} and {ua.split()[0] for ua in app.user_agents} == {"meshcast-health-check"}
    app.flip("NOT_SERVING")
    assert await check_app(app.port) == CheckResult(False, "NOT_SERVING")
    assert await check_app(app.port, "other.Service") == CheckResult(False, "SERVICE_UNKNOWN")
    app.flip("UNIMPLEMENTED")  # grpcio's abort: a trailers-only answer
    assert await check_app(app.port) == CheckResult(False, "grpc-status 12 UNIMPLEMENTED: no health service")


async def test_a_server_without_a_health_service_fails_the_check() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        result = await check_app(port)
    finally:
        server.stop(0).wait(5)
    assert not result.healthy and result.reason.startswith("grpc-status 12 UNIMPLEMENTED"), result


# --- through the mesh ---------------------------------------------------------------------------------------------


def dataplane(name: str, service: str, app_port: int, outbound: dict[str, int] | None = None) -> dict[str, Any]:
    return {"type": "Dataplane", "mesh": "default", "name": name, "spec": {
        "address": "127.0.0.1",
        "inbound": [{"port": free_port(), "appPort": app_port, "service": service, "protocol": "grpc"}],
        "outbound": [{"port": port, "service": upstream} for upstream, port in (outbound or {}).items()]}}


def cp_apply(cp: ZoneCPProcess, doc: dict[str, Any]) -> None:
    result = cp.cli("apply", "-f", "-", stdin=json.dumps(doc))
    assert result.returncode == 0, result.stderr


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[dict[str, Any]]:
    cp = ZoneCPProcess(tmp_path / "cp")
    apps = {name: HealthApp(name) for name in ("echo-1", "echo-2")}
    out_port = free_port()
    started: list[SidecarProcess] = []
    channel: grpc.Channel | None = None
    try:
        cp.start()
        cp_apply(cp, {"type": "Mesh", "name": "default", "spec": {"mtls": {}}})
        docs = [dataplane("echo-1", "echo", apps["echo-1"].port), dataplane("echo-2", "echo", apps["echo-2"].port),
                dataplane("client", "client", apps["echo-1"].port, {"echo": out_port})]
        sidecars = {}
        for doc in docs:
            sidecar = SidecarProcess(tmp_path / doc["name"], cp.url, cp.token(doc["spec"]["inbound"][0]["service"]),
                                     doc)
            started.append(sidecar)
            sidecar.start()
            sidecars[doc["name"]] = sidecar
        channel = grpc.insecure_channel(f"127.0.0.1:{out_port}")
        yield {"cp": cp, "apps": apps, "sidecars": sidecars, "whoami": channel.unary_unary(f"/{SERVICE}/WhoAmI")}
    finally:
        if channel is not None:
            channel.close()
        for sidecar in started:
            sidecar.stop()
        cp.stop()
        for one in apps.values():
            one.close()


def answered_by(mesh: dict[str, Any], n: int) -> Counter[str]:
    """Who answered `n` calls through the client's outbound port (an error counts as "error")."""
    names: Counter[str] = Counter()
    for _ in range(n):
        try:
            names[mesh["whoami"](b"", timeout=10).decode()] += 1
        except grpc.RpcError as exc:
            names[f"error {exc.code()}"] += 1
    return names


@pytest.mark.slow
def test_a_grpc_health_check_takes_an_instance_out_and_back(mesh: dict[str, Any]) -> None:
    echo1, echo2 = mesh["apps"]["echo-1"], mesh["apps"]["echo-2"]
    wait_for(lambda: set(answered_by(mesh, 20)) == {"echo-1", "echo-2"}, "the client reaches both instances",
             timeout=30)
    assert echo1.probes == echo2.probes == 0  # no check without the policy
    cp_apply(mesh["cp"], {"type": "MeshHealthCheck", "mesh": "default", "name": "echo-grpc", "spec": {"to": [{
        "targetRef": {"kind": "MeshService", "name": "echo"},
        "default": {"interval": "200ms", "timeout": "1s", "unhealthyThreshold": 2, "healthyThreshold": 2,
                    "grpc": {"serviceName": SERVICE}}}]}})
    wait_for(lambda: echo1.probes >= 2 and echo2.probes >= 2, "Health/Check calls reach both instances")
    assert echo1.asked == echo2.asked == {SERVICE}
    assert set(answered_by(mesh, 20)) == {"echo-1", "echo-2"}  # both serving: both in rotation

    for failure in ("NOT_SERVING", "UNIMPLEMENTED"):
        flipped = echo2.flip(failure)
        # unhealthyThreshold 2: after the 2nd failing probe's round echo-2 is out of balancing; the 3rd probe of
        # a round only starts after that round's result was applied
        wait_for(lambda flipped=flipped: echo2.probes >= flipped + 3, f"three {failure} probes at echo-2")
        calls_before = echo2.calls
        answers = answered_by(mesh, 100)
        assert answers == {"echo-1": 100}, (failure, answers)
        assert echo2.calls == calls_before
        started = time.monotonic()
        echo2.flip("SERVING")
        wait_for(lambda: "echo-2" in answered_by(mesh, 20), f"echo-2 back after {failure}")
        print(f"MEASURED gRPC health check ({failure}): echo-2 got 0 of 100 calls while failing its checks, and "
              f"calls again {(time.monotonic() - started) * 1000:.0f} ms after serving again "
              "(interval 200 ms, healthyThreshold 2)")
    assert {ua.split()[0] for ua in echo2.user_agents} == {"meshcast-health-check"}
    sidecar_config = httpx.get(mesh["sidecars"]["client"].admin + "/config", timeout=5).json()["config"]
    assert "MeshHealthCheck" in json.dumps(sidecar_config.get("policies") or {})
