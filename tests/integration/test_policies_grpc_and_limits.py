"""Policies on HTTP/2 and gRPC calls, and the connection-level ones, enforced by real sidecars: gRPC retries by
status within the budget, HTTP/2 retries on 5xx, passive health from gRPC answers, injected delays on gRPC,
MeshTimeout's connection, idle and stream-idle timeouts, MeshCircuitBreaker's maxConnections/maxPendingRequests.

Topology (one zone CP, memory store, mTLS on): `api` (HTTP/1.1 apps api-1, api-2, from tests.integration.
test_policies) and `rpc` (gRPC apps rpc-1, rpc-2, grpcio servers that can be told to fail a share of calls with
UNAVAILABLE), and `client`, a sidecar with outbounds to both. Real clients: grpcio, httpx over HTTP/2 with prior
knowledge, httpx over HTTP/1.1.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx
import pytest

from tests.integration.test_federation import wait_for
from tests.integration.test_policies import App, cp_apply, dataplane, scrape, sidecar_policies
from tests.support.ports import free_port
from tests.support.sidecar import SidecarProcess
from tests.support.zone import ZoneCPProcess

pytestmark = pytest.mark.slow


class GrpcApp:
    """demo.Echo/WhoAmI answering the instance's name; `fail` is the share of calls failed with UNAVAILABLE (a
    trailers-only answer), `delay` seconds before answering."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.fail = 0.0
        self.calls = 0
        self._lock = threading.Lock()
        self._rng = random.Random(11)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("demo.Echo", {
            "WhoAmI": grpc.unary_unary_rpc_method_handler(self._whoami)}),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _whoami(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self._lock:
            self.calls += 1
            failing = self._rng.random() < self.fail
        if failing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "told to fail")
        return self.name.encode()

    def reset(self) -> None:
        with self._lock:
            self.fail, self.calls = 0.0, 0

    def close(self) -> None:
        self.server.stop(0).wait(5)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("policies-grpc")
    # A long heartbeat timeout: a sidecar stopped with SIGSTOP stays an endpoint (the connection-timeout test).
    cp = ZoneCPProcess(tmp / "cp", "--heartbeat-timeout", "60", "--heartbeat-interval", "0.5")
    apps: dict[str, Any] = {"api-1": App("api-1"), "api-2": App("api-2"),
                            "rpc-1": GrpcApp("rpc-1"), "rpc-2": GrpcApp("rpc-2")}
    outs = {"api": free_port(), "rpc": free_port()}
    started: list[SidecarProcess] = []
    try:
        cp.start()
        cp_apply(cp, {"type": "Mesh", "name": "default", "spec": {"mtls": {}}})
        docs = [dataplane("api-1", "api", apps["api-1"].port), dataplane("api-2", "api", apps["api-2"].port),
                dataplane("rpc-1", "rpc", apps["rpc-1"].port, protocol="grpc"),
                dataplane("rpc-2", "rpc", apps["rpc-2"].port, protocol="grpc"),
                dataplane("client", "client", free_port(), outbound=outs)]
        sidecars = {}
        for doc in docs:
            sidecar = SidecarProcess(tmp / doc["name"], cp.url, cp.token(doc["spec"]["inbound"][0]["service"]), doc)
            started.append(sidecar)
            sidecar.start()
            sidecars[doc["name"]] = sidecar
        channel = grpc.insecure_channel(f"127.0.0.1:{outs['rpc']}")
        whoami = channel.unary_unary("/demo.Echo/WhoAmI")
        h2 = httpx.Client(http1=False, http2=True, timeout=10)
        h1 = httpx.Client(timeout=10)
        world = {"cp": cp, "apps": apps, "sidecars": sidecars, "whoami": whoami, "h2": h2, "h1": h1,
                 "api": f"http://127.0.0.1:{outs['api']}"}
        wait_for(lambda: {who(world) for _ in range(8)} == {"rpc-1", "rpc-2"}, "client reaches both rpc", timeout=30)
        wait_for(lambda: {h1.get(world["api"] + "/").json()["server"] for _ in range(8)} == {"api-1", "api-2"},
                 "client reaches both api", timeout=30)
        yield world
        channel.close()
        h2.close()
        h1.close()
    finally:
        for sidecar in started:
            sidecar.stop()
        cp.stop()
        for app in apps.values():
            app.close()


@pytest.fixture
def world(mesh: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The mesh, with the apps reset before and the test's policies deleted after."""
    for app in mesh["apps"].values():
        app.reset()
    applied: list[tuple[str, str]] = []
    mesh["applied"] = applied
    yield mesh
    for kind, name in applied:
        result = mesh["cp"].cli("delete", kind, name)
        assert result.returncode == 0, result.stderr
    for kind, _ in applied:
        wait_for(lambda kind=kind: all(kind not in str(sidecar_policies(s)) for s in mesh["sidecars"].values()),
                 f"{kind} gone from the sidecars")


def apply_policy(world: dict[str, Any], kind: str, name: str, spec: dict[str, Any], at: str = "client") -> None:
    cp_apply(world["cp"], {"type": kind, "mesh": "default", "name": name, "spec": spec})
    world["applied"].append((kind, name))
    wait_for(lambda: kind in str(sidecar_policies(world["sidecars"][at])), f"{kind} at {at}")


def who(world: dict[str, Any]) -> str:
    return bytes(world["whoami"](b"", timeout=10)).decode()


def grpc_calls(world: dict[str, Any], n: int) -> Counter[str]:
    """n WhoAmI calls, 8 at a time: the answers by server name, or by gRPC status for failed calls."""
    def one(_: int) -> str:
        try:
            return who(world)
        except grpc.RpcError as exc:
            return str(exc.code())

    with ThreadPoolExecutor(8) as pool:
        return Counter(pool.map(one, range(n)))


def metric(sidecar: SidecarProcess, name: str, **labels: str) -> float:
    return sum(value for (sample, labelled), value in scrape(sidecar).items()
               if sample == name and set(labels.items()) <= set(labelled))


def inbound_connections(world: dict[str, Any], *names: str) -> float:
    return sum(metric(world["sidecars"][n], "meshcast_dp_active_connections", direction="inbound") for n in names)


# --- HTTP/2 and gRPC ------------------------------------------------------------------------------------------------


def test_grpc_retries_hide_unavailable_answers_within_the_budget(world: dict[str, Any]) -> None:
    rpc = [world["apps"]["rpc-1"], world["apps"]["rpc-2"]]
    for app in rpc:
        app.fail = 0.3
    without = grpc_calls(world, 300)
    success_without = (without["rpc-1"] + without["rpc-2"]) / 300
    assert 0.55 <= success_without <= 0.85, without  # the 30 % failures reach the caller
    apply_policy(world, "MeshRetry", "rpc-retry", {"to": [{
        "targetRef": {"kind": "MeshService", "name": "rpc"},
        "default": {"grpc": {"numRetries": 5, "retryOn": ["Unavailable"], "backOff": {"baseInterval": "5ms"}},
                    "budget": {"percent": 50}}}]})
    for app in rpc:
        app.calls = 0
    answers = grpc_calls(world, 1000)
    success = (answers["rpc-1"] + answers["rpc-2"]) / 1000
    attempts = sum(app.calls for app in rpc)
    print(f"gRPC retries: success {success_without:.1%} -> {success:.2%}, extra load {attempts / 1000 - 1:.1%}")
    assert success >= 0.995, answers
    assert attempts <= 1000 * 1.5 + 100  # the budget: 50 % plus 10 retries per second over the 10 s window


def test_http2_retries_hide_5xx_answers(world: dict[str, Any]) -> None:
    for name in ("api-1", "api-2"):
        world["apps"][name].fail = 0.3
    apply_policy(world, "MeshRetry", "api-retry", {"to": [{
        "targetRef": {"kind": "MeshService", "name": "api"},
        "default": {"http": {"numRetries": 5, "backOff": {"baseInterval": "5ms"}}, "budget": {"percent": 100}}}]})
    answers = [world["h2"].get(world["api"] + "/h2") for _ in range(200)]
    assert {r.http_version for r in answers} == {"HTTP/2"}
    statuses = Counter(r.status_code for r in answers)
    received = world["apps"]["api-1"].received + world["apps"]["api-2"].received
    print(f"HTTP/2 retries: {statuses}, {received} attempts for 200 calls")
    assert statuses == {200: 200}, statuses
    assert received > 200  # failures were there, and retried


def test_passive_health_ejects_an_instance_failing_grpc_calls(world: dict[str, Any]) -> None:
    world["apps"]["rpc-2"].fail = 1.0
    apply_policy(world, "MeshCircuitBreaker", "rpc-breaker", {"to": [{
        "targetRef": {"kind": "MeshService", "name": "rpc"},
        "default": {"outlierDetection": {"baseEjectionTime": "2s", "maxEjectionPercent": 50,
                                         "detectors": {"gatewayFailures": {"consecutive": 3}}}}}]})
    answers = []
    for _ in range(40):
        try:
            answers.append(who(world))
        except grpc.RpcError as exc:
            answers.append(str(exc.code()))
    failures = [i for i, a in enumerate(answers) if a != "rpc-1"]
    assert len(failures) == 3, answers  # UNAVAILABLE counts as a gateway failure: ejected after the 3rd
    assert set(answers[failures[-1] + 1:]) == {"rpc-1"}
    world["apps"]["rpc-2"].fail = 0.0
    time.sleep(2.2)  # the ejection time
    assert "rpc-2" in {who(world) for _ in range(20)}  # back in rotation


def test_an_injected_delay_holds_grpc_calls(world: dict[str, Any]) -> None:
    apply_policy(world, "MeshFaultInjection", "rpc-slow", {
        "targetRef": {"kind": "MeshService", "name": "rpc"},
        "from": [{"targetRef": {"kind": "Mesh"}, "default": {"http": [{"delay": {"value": "400ms",
                                                                                  "percentage": 100}}]}}]}, at="rpc-1")
    wait_for(lambda: "MeshFaultInjection" in str(sidecar_policies(world["sidecars"]["rpc-2"])), "the fault at rpc-2")
    took = []
    for _ in range(6):
        start = time.monotonic()
        assert who(world) in ("rpc-1", "rpc-2")
        took.append(time.monotonic() - start)
    print(f"gRPC calls with a 400 ms injected delay took {sorted(took)}")
    assert min(took) >= 0.4  # every call was held (a lower bound: a loaded machine only adds to it)


def test_a_timeout_from_callers_bounds_what_the_app_may_take(world: dict[str, Any]) -> None:
    for name in ("api-1", "api-2"):
        world["apps"][name].delay = 1.5
    apply_policy(world, "MeshTimeout", "api-from-callers", {
        "targetRef": {"kind": "MeshService", "name": "api"},
        "from": [{"targetRef": {"kind": "Mesh"}, "default": {"http": {"requestTimeout": "300ms"}}}]}, at="api-1")
    wait_for(lambda: "MeshTimeout" in str(sidecar_policies(world["sidecars"]["api-2"])), "the timeout at api-2")
    for client in (world["h1"], world["h2"]):  # the callee's sidecar answers; the caller's passes it on
        answer = client.get(world["api"] + "/slow")
        assert (answer.status_code, answer.headers.get("x-meshcast-error")) == (504, "request_timeout"), answer


# --- connection-level policies (HTTP/1.1) ------------------------------------------------------------------------


def test_the_idle_timeout_closes_idle_connections(world: dict[str, Any]) -> None:
    apply_policy(world, "MeshTimeout", "api-idle", {"to": [{
        "targetRef": {"kind": "MeshService", "name": "api"}, "default": {"idleTimeout": "500ms"}}]})
    world["h1"].get(world["api"] + "/")  # opens (or reuses) a pooled connection client -> api-n
    with httpx.Client(timeout=10) as fresh:  # a new downstream connection: its upstream one is pooled afterwards
        assert fresh.get(world["api"] + "/").status_code == 200
        wait_for(lambda: inbound_connections(world, "api-1", "api-2") == 0,
                 "pooled connections to api closed after 500 ms idle", timeout=10)


def test_the_stream_idle_timeout_answers_504(world: dict[str, Any]) -> None:
    for name in ("api-1", "api-2"):
        world["apps"][name].delay = 1.5
    apply_policy(world, "MeshTimeout", "api-stream-idle", {"to": [{
        "targetRef": {"kind": "MeshService", "name": "api"}, "default": {"http": {"streamIdleTimeout": "300ms"}}}]})
    answer = world["h1"].get(world["api"] + "/slow")
    assert (answer.status_code, answer.headers.get("x-meshcast-error")) == (504, "timeout")
    answer = world["h2"].get(world["api"] + "/slow")
    assert (answer.status_code, answer.headers.get("x-meshcast-error")) == (504, "stream_idle_timeout")


def test_a_connection_limit_queues_then_refuses(world: dict[str, Any]) -> None:
    # Pooled connections opened before the limit are not counted: let them idle out first.
    apply_policy(world, "MeshTimeout", "api-idle-short", {"to": [{
        "targetRef": {"kind": "MeshService", "name": "api"}, "default": {"idleTimeout": "300ms"}}]})
    world["h1"].close()
    world["h1"] = httpx.Client(timeout=10)
    wait_for(lambda: inbound_connections(world, "api-1", "api-2") == 0, "no connection to api", timeout=10)
    apply_policy(world, "MeshCircuitBreaker", "api-one-connection", {"to": [{
        "targetRef": {"kind": "MeshService", "name": "api"},
        "default": {"connectionLimits": {"maxConnections": 1, "maxPendingRequests": 1}}}]})
    for name in ("api-1", "api-2"):
        world["apps"][name].delay = 1.0
    peak = 0.0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, inbound_connections(world, "api-1", "api-2"))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: httpx.get(world["api"] + "/", timeout=10), range(4)))
    finally:
        stop.set()
        watcher.join()
    statuses = Counter(r.status_code for r in answers)
    # one call on the one connection, one waiting for it (then carried by it), two refused at once
    assert statuses == {200: 2, 503: 2}, statuses
    assert {r.headers["x-meshcast-error"] for r in answers if r.status_code == 503} == {"overflow"}
    assert peak <= 1


def test_the_connection_timeout_moves_on_from_an_instance_that_does_not_answer(world: dict[str, Any]) -> None:
    apply_policy(world, "MeshTimeout", "api-connect", {"to": [{
        "targetRef": {"kind": "MeshService", "name": "api"},
        "default": {"connectionTimeout": "300ms", "idleTimeout": "200ms"}}]})
    wait_for(lambda: inbound_connections(world, "api-1", "api-2") == 0, "pooled connections gone", timeout=10)
    frozen = world["sidecars"]["api-2"].proc
    assert frozen is not None
    before = metric(world["sidecars"]["client"], "meshcast_dp_upstream_errors_total", service="api",
                    reason="connect_timeout")
    os.kill(frozen.pid, signal.SIGSTOP)  # its kernel still accepts TCP, nobody answers the TLS handshake
    try:
        # Without the policy a connect to api-2 waits 5 s; the clients here give up after 3 s.
        answers = [httpx.get(world["api"] + "/", timeout=3) for _ in range(10)]
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    assert {r.json()["server"] for r in answers} == {"api-1"}
    after = metric(world["sidecars"]["client"], "meshcast_dp_upstream_errors_total", service="api",
                   reason="connect_timeout")
    assert after > before
