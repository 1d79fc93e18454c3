"""Traffic policies enforced by real sidecars (issue 6): each test applies a policy at the zone CP with `meshcast
apply`, waits until the caller's or the callee's sidecar has it, sends real HTTP/1.1 traffic through the mesh and
measures the outcome; the policy is deleted again at the end of each test.

Topology (one zone CP, memory store, mTLS on): `web` (a client, its sidecar with an outbound to `backend`),
`backend` instances `backend-v1` (tags version=v1) and `backend-v2` (version=v2), and `other` (a second caller
with an outbound to `backend`, so permissions can tell callers apart). The two backend instances also have an
outbound to `web`, so permissions can tell callers of one service apart by their tags. Each app counts what it
received and can be told to fail a share of its requests or to answer slowly.
"""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dataplane.observe.accesslog import AccessRecord
from tests.integration.test_federation import wait_for
from tests.support.otlp import otlp_receiver
from tests.support.ports import free_port
from tests.support.sidecar import SidecarProcess
from tests.support.zone import ZoneCPProcess

pytestmark = pytest.mark.slow


class App:
    """A backend answering its name; `fail` is the share of requests answered 503, `delay` seconds before any."""

    def __init__(self, name: str) -> None:
        app = self
        self.name = name
        self.fail = 0.0
        self.delay = 0.0
        self.unhealthy = False  # answers 503 on /healthz
        self.probes = 0
        self.received = 0
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._rng = random.Random(7)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            wbufsize = 65536  # head and body leave in one write (no Nagle / delayed-ACK stall between them)

            def do_GET(self) -> None:
                if self.path == "/healthz":
                    with app._lock:
                        app.probes += 1
                    self.send_response(503 if app.unhealthy else 200)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    self.wfile.flush()
                    return
                with app._lock:
                    app.received += 1
                    app.headers.append({k.lower(): v for k, v in self.headers.items()})
                    failing = app._rng.random() < app.fail
                if app.delay:
                    time.sleep(app.delay)
                body = json.dumps({"server": app.name, "path": self.path}).encode()
                self.send_response(503 if failing else 200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.fail, self.delay, self.received, self.unhealthy = 0.0, 0.0, 0, False
            self.headers.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def dataplane(name: str, service: str, app_port: int, tags: dict[str, str] | None = None,
              outbound: dict[str, int] | None = None, protocol: str = "http") -> dict[str, Any]:
    return {"type": "Dataplane", "mesh": "default", "name": name, "spec": {
        "address": "127.0.0.1",
        "inbound": [{"port": free_port(), "appPort": app_port, "service": service, "protocol": protocol,
                     "tags": tags or {}}],
        "outbound": [{"port": port, "service": upstream} for upstream, port in (outbound or {}).items()]}}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("policies")
    cp = ZoneCPProcess(tmp / "cp", "--heartbeat-timeout", "3", "--heartbeat-interval", "0.5")
    apps = {name: App(name) for name in ("backend-v1", "backend-v2", "web", "other")}
    outs = {"web": free_port(), "other": free_port(), "plain": free_port(), "v1": free_port(), "v2": free_port()}
    started: list[SidecarProcess] = []
    try:
        cp.start()
        cp_apply(cp, {"type": "Mesh", "name": "default", "spec": {"mtls": {}}})
        docs = [dataplane("backend-v1", "backend", apps["backend-v1"].port, {"version": "v1"}, {"web": outs["v1"]}),
                dataplane("backend-v2", "backend", apps["backend-v2"].port, {"version": "v2"}, {"web": outs["v2"]}),
                dataplane("web", "web", apps["web"].port, outbound={"backend": outs["web"], "plain": outs["plain"]}),
                dataplane("other", "other", apps["other"].port, outbound={"backend": outs["other"]}),
                # `plain`: the same two apps as an opaque TCP service (for MeshTCPRoute)
                dataplane("plain-v1", "plain", apps["backend-v1"].port, {"version": "v1"}, protocol="tcp"),
                dataplane("plain-v2", "plain", apps["backend-v2"].port, {"version": "v2"}, protocol="tcp")]
        sidecars = {}
        for doc in docs:
            sidecar = SidecarProcess(tmp / doc["name"], cp.url, cp.token(doc["spec"]["inbound"][0]["service"]), doc)
            started.append(sidecar)
            sidecar.start()
            sidecars[doc["name"]] = sidecar
        client = httpx.Client(timeout=10)
        urls = {name: f"http://127.0.0.1:{port}" for name, port in outs.items()}
        wait_for(lambda: {client.get(urls["web"] + "/warm").json()["server"] for _ in range(8)} ==
                 {"backend-v1", "backend-v2"}, "web reaches both backends", timeout=30)
        yield {"cp": cp, "apps": apps, "urls": urls, "sidecars": sidecars, "client": client}
        client.close()
    finally:
        for sidecar in started:
            sidecar.stop()
        cp.stop()
        for app in apps.values():
            app.close()


@pytest.fixture
def world(mesh: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The mesh, with the backends reset before and the test's policies deleted after."""
    for app in mesh["apps"].values():
        app.reset()
    applied: list[tuple[str, str]] = []
    mesh["applied"] = applied
    yield mesh
    for kind, name in applied:
        result = mesh["cp"].cli("delete", kind, name)
        assert result.returncode == 0, result.stderr
    for kind, name in applied:
        wait_for(lambda kind=kind: not has_policy(mesh, kind), f"{kind} {name} gone from the sidecars")


def cp_apply(cp: ZoneCPProcess, doc: dict[str, Any]) -> None:
    result = cp.cli("apply", "-f", "-", stdin=json.dumps(doc))
    assert result.returncode == 0, result.stderr


def sidecar_policies(sidecar: SidecarProcess) -> dict[str, Any]:
    return dict(httpx.get(sidecar.admin + "/config", timeout=5).json()["config"].get("policies") or {})


def has_policy(world: dict[str, Any], kind: str) -> bool:
    return any(kind in json.dumps(sidecar_policies(s)) for s in world["sidecars"].values())


def apply_policy(world: dict[str, Any], kind: str, name: str, spec: dict[str, Any], at: str) -> None:
    """Apply a policy and wait until the sidecar `at` enforces it."""
    cp_apply(world["cp"], {"type": kind, "mesh": "default", "name": name, "spec": spec})
    world["applied"].append((kind, name))
    wait_for(lambda: kind in json.dumps(sidecar_policies(world["sidecars"][at])), f"{kind} at {at}")


def calls(world: dict[str, Any], n: int, caller: str = "web", path: str = "/x", workers: int = 8,
          headers: dict[str, str] | None = None) -> list[httpx.Response]:
    url = world["urls"][caller] + path
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda _: world["client"].get(url, headers=headers), range(n)))


def test_a_denied_caller_gets_403_and_the_app_sees_nothing(world: dict[str, Any]) -> None:
    apply_policy(world, "MeshTrafficPermission", "backend-only-web", {
        "targetRef": {"kind": "MeshService", "name": "backend"},
        "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Deny"}},
                 {"targetRef": {"kind": "MeshService", "name": "web"}, "default": {"action": "Allow"}}]},
        at="backend-v1")
    wait_for(lambda: "MeshTrafficPermission" in json.dumps(sidecar_policies(world["sidecars"]["backend-v2"])),
             "the permission at backend-v2")
    before = world["apps"]["backend-v1"].received + world["apps"]["backend-v2"].received
    denied = calls(world, 50, caller="other")
    assert Counter(r.status_code for r in denied) == {403: 50}
    assert {r.headers["x-meshcast-error"] for r in denied} == {"forbidden"}
    assert world["apps"]["backend-v1"].received + world["apps"]["backend-v2"].received == before  # nothing logged
    allowed = calls(world, 50, caller="web")
    assert Counter(r.status_code for r in allowed) == {200: 50}


def test_a_shadow_deny_lets_calls_through_and_counts_them(world: dict[str, Any]) -> None:
    apply_policy(world, "MeshTrafficPermission", "try-denying-other", {
        "targetRef": {"kind": "MeshService", "name": "backend"},
        "from": [{"targetRef": {"kind": "MeshService", "name": "other"},
                  "default": {"action": "AllowWithShadowDeny"}}]},
        at="backend-v1")
    wait_for(lambda: "AllowWithShadowDeny" in json.dumps(sidecar_policies(world["sidecars"]["backend-v2"])),
             "the permission at backend-v2")
    assert Counter(r.status_code for r in calls(world, 30, caller="other")) == {200: 30}
    counted = sum(value for sidecar in ("backend-v1", "backend-v2")
                  for (name, labels), value in scrape(world["sidecars"][sidecar]).items()
                  if name == "meshcast_dp_shadow_denied_total")
    assert counted == 30


def test_callers_of_one_service_are_told_apart_by_the_tags_in_their_certificates(world: dict[str, Any]) -> None:
    """backend-v1 and backend-v2 call web with certificates for the same service, `backend`; the zone CP signed
    their registered `version` tags into them, and web's sidecar lets v2 through and refuses v1."""
    client, web = world["client"], world["apps"]["web"]
    for caller in ("v1", "v2"):  # both reach web before the permission
        wait_for(lambda caller=caller: client.get(world["urls"][caller] + "/warm").status_code == 200,
                 f"backend-{caller} reaches web")
    apply_policy(world, "MeshTrafficPermission", "web-from-backend-v2", {
        "targetRef": {"kind": "MeshService", "name": "web"},
        "from": [{"targetRef": {"kind": "Mesh"}, "default": {"action": "Deny"}},
                 {"targetRef": {"kind": "MeshSubset", "tags": {"version": "v1"}}, "default": {"action": "Deny"}},
                 {"targetRef": {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}},
                  "default": {"action": "Allow"}}]},
        at="web")
    before = web.received
    denied = calls(world, 30, caller="v1")
    assert Counter(r.status_code for r in denied) == {403: 30}
    assert {r.headers["x-meshcast-error"] for r in denied} == {"forbidden"}
    assert web.received == before  # nothing reached the app
    allowed = calls(world, 30, caller="v2")
    assert Counter(r.status_code for r in allowed) == {200: 30}
    assert {r.json()["server"] for r in allowed} == {"web"} and web.received == before + 30
    # `meshcast inspect dataplane` lists the items in merge order, each with the callers it covers
    detail = json.loads(world["cp"].cli("inspect", "dataplane", "web", "-o", "json").stdout)
    rows = [(row["where"], row["settings"]) for row in detail["policies"] if row["kind"] == "MeshTrafficPermission"]
    assert rows == [("inbound web from *", {"action": "Deny"}), ("inbound web from * version=v1", {"action": "Deny"}),
                    ("inbound web from backend version=v2", {"action": "Allow"})]


def test_a_90_10_split_between_subsets(world: dict[str, Any]) -> None:
    apply_policy(world, "MeshHTTPRoute", "backend-canary", {
        "targetRef": {"kind": "MeshService", "name": "web"},
        "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "default": {"backendRefs": [
                {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v1"}, "weight": 90},
                {"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}, "weight": 10}],
                "filters": [{"type": "RequestHeaderModifier",
                             "requestHeaderModifier": {"set": [{"name": "x-route", "value": "canary"}]}}]}}]}]},
        at="web")
    answers = calls(world, 2000)
    servers = Counter(r.json()["server"] for r in answers if r.status_code == 200)
    assert sum(servers.values()) == 2000, Counter(r.status_code for r in answers)
    share = servers["backend-v2"] / 2000 * 100
    print(f"MEASURED 90/10 split: v2 got {share:.1f}% of 2,000 requests")
    assert 5 <= share <= 15
    assert world["apps"]["backend-v1"].headers[-1].get("x-route") == "canary"


def test_a_tcp_route_splits_connections_by_weight(world: dict[str, Any]) -> None:
    apply_policy(world, "MeshTCPRoute", "plain-split", {"to": [{
        "targetRef": {"kind": "MeshService", "name": "plain"},
        "rules": [{"default": {"backendRefs": [
            {"kind": "MeshServiceSubset", "name": "plain", "tags": {"version": "v1"}, "weight": 80},
            {"kind": "MeshServiceSubset", "name": "plain", "tags": {"version": "v2"}, "weight": 20}]}}]}]}, at="web")

    def one_connection(_: int) -> str:  # HTTP over the opaque TCP service, a new connection each time
        answer = httpx.get(world["urls"]["plain"] + "/tcp", headers={"connection": "close"}, timeout=10)
        return str(answer.json()["server"])

    with ThreadPoolExecutor(8) as pool:
        servers = Counter(pool.map(one_connection, range(600)))
    share = servers["backend-v2"] / 6
    print(f"MEASURED 80/20 TCP split: v2 got {share:.1f}% of 600 connections")
    assert 15 <= share <= 25


def test_retries_hide_a_30_percent_failure_within_the_budget(world: dict[str, Any]) -> None:
    for name in ("backend-v1", "backend-v2"):
        world["apps"][name].fail = 0.3
    baseline = calls(world, 200)
    baseline_ok = sum(r.status_code == 200 for r in baseline) / len(baseline)
    apply_policy(world, "MeshRetry", "backend-retries", {"to": [{
        "targetRef": {"kind": "MeshService", "name": "backend"},
        "default": {"http": {"numRetries": 5, "retryOn": ["503"], "backOff": {"baseInterval": "5ms"}},
                    "budget": {"percent": 50, "minRetriesPerSecond": 5}}}]}, at="web")
    for name in ("backend-v1", "backend-v2"):
        world["apps"][name].received = 0
    answers = calls(world, 1000)
    ok = sum(r.status_code == 200 for r in answers) / len(answers)
    sent = world["apps"]["backend-v1"].received + world["apps"]["backend-v2"].received
    print(f"MEASURED retries: success {baseline_ok:.1%} without, {ok:.2%} with MeshRetry; "
          f"{sent} requests reached the backends for 1,000 calls ({sent / 1000 - 1:.1%} extra)")
    assert baseline_ok < 0.8 and ok >= 0.995
    assert sent <= 1000 * 1.5 + 5 * 10 + 50  # the budget: 50 % of the requests plus 5/s over 10 s


def test_the_retry_budget_caps_extra_load_when_everything_fails(world: dict[str, Any]) -> None:
    for name in ("backend-v1", "backend-v2"):
        world["apps"][name].fail = 1.0
    apply_policy(world, "MeshRetry", "backend-retries-default-budget", {"to": [{
        "targetRef": {"kind": "MeshService", "name": "backend"},
        "default": {"http": {"numRetries": 5, "retryOn": ["5xx"], "backOff": {"baseInterval": "1ms"}},
                    "budget": {"minRetriesPerSecond": 1, "ttl": "10s"}}}]}, at="web")
    for name in ("backend-v1", "backend-v2"):
        world["apps"][name].received = 0
    answers = calls(world, 500)
    sent = world["apps"]["backend-v1"].received + world["apps"]["backend-v2"].received
    print(f"MEASURED retry budget: {sent} requests reached failing backends for 500 calls "
          f"(without a budget up to {500 * 6})")
    assert {r.status_code for r in answers} == {503}
    assert sent <= 500 * 1.2 + 1 * 10 + 1  # 20 % of the requests plus 1/s over 10 s


def test_a_request_timeout_answers_504(world: dict[str, Any]) -> None:
    for name in ("backend-v1", "backend-v2"):
        world["apps"][name].delay = 1.5
    apply_policy(world, "MeshTimeout", "backend-fast", {"to": [{
        "targetRef": {"kind": "MeshService", "name": "backend"},
        "default": {"http": {"requestTimeout": "300ms"}}}]}, at="web")
    started = time.monotonic()
    answer = world["client"].get(world["urls"]["web"] + "/slow")
    took = time.monotonic() - started
    print(f"MEASURED request timeout 300ms: answered {answer.status_code} after {took * 1000:.0f} ms")
    assert answer.status_code == 504 and answer.headers["x-meshcast-error"] == "request_timeout"


def test_rate_limit_admits_the_configured_rate(world: dict[str, Any]) -> None:
    apply_policy(world, "MeshRateLimit", "backend-20rps", {
        "targetRef": {"kind": "MeshService", "name": "backend"},
        "from": [{"targetRef": {"kind": "Mesh"}, "default": {"local": {"http": {
            "requestRate": {"num": 20, "interval": "1s"}, "onRateLimit": {"headers": {"x-limited": "yes"}}}}}}]},
        at="backend-v1")
    wait_for(lambda: "MeshRateLimit" in json.dumps(sidecar_policies(world["sidecars"]["backend-v2"])),
             "the limit at backend-v2")
    time.sleep(1.1)  # full buckets
    duration = 3.0
    statuses: list[int] = []
    limited: list[httpx.Response] = []
    lock = threading.Lock()
    started = time.monotonic()

    def load() -> None:  # more than the limit: as fast as four callers go, over both instances
        while time.monotonic() < started + duration:
            answer = world["client"].get(world["urls"]["web"] + "/x")
            with lock:
                statuses.append(answer.status_code)
                if answer.status_code == 429:
                    limited.append(answer)

    with ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(load) for _ in range(4)]:
            future.result()
    admitted = statuses.count(200)
    expected = 2 * (20 + 20 * duration)  # two instances: a burst of 20 each, then 20/s each
    print(f"MEASURED rate limit 20/s per instance x 2 over {duration:.0f} s: {admitted} admitted "
          f"(expected {expected:.0f}), {len(limited)} refused with 429 of {len(statuses)}")
    assert set(statuses) <= {200, 429} and limited
    assert abs(admitted - expected) <= 0.1 * expected
    assert limited[0].headers["x-limited"] == "yes" and int(limited[0].headers["retry-after"]) >= 1


def test_fault_injection_aborts_the_configured_share(world: dict[str, Any]) -> None:
    apply_policy(world, "MeshFaultInjection", "backend-chaos", {
        "targetRef": {"kind": "MeshService", "name": "backend"},
        "from": [{"targetRef": {"kind": "MeshService", "name": "web"}, "default": {"http": [
            {"abort": {"httpStatus": 500, "percentage": 30}}]}}]}, at="backend-v1")
    wait_for(lambda: "MeshFaultInjection" in json.dumps(sidecar_policies(world["sidecars"]["backend-v2"])),
             "the fault at backend-v2")
    answers = calls(world, 1000)
    aborted = sum(r.status_code == 500 for r in answers)
    print(f"MEASURED fault injection 30% abort: {aborted / 10:.1f}% of 1,000 requests aborted")
    assert 25 <= aborted / 10 <= 35  # 3.5 standard deviations
    assert sum(r.status_code == 200 for r in answers) == 1000 - aborted
    # the other caller is not covered by the fault
    assert {r.status_code for r in calls(world, 50, caller="other")} == {200}


def test_a_circuit_breaker_ejects_a_failing_instance_and_brings_it_back(world: dict[str, Any]) -> None:
    world["apps"]["backend-v2"].fail = 1.0
    apply_policy(world, "MeshCircuitBreaker", "backend-breaker", {"to": [{
        "targetRef": {"kind": "MeshService", "name": "backend"},
        "default": {"outlierDetection": {"baseEjectionTime": "2s", "maxEjectionPercent": 50,
                                         "detectors": {"totalFailures": {"consecutive": 3}}}}}]}, at="web")
    answers = calls(world, 40, workers=1)
    failures = [r for r in answers if r.status_code == 503]
    assert len(failures) == 3, [r.status_code for r in answers]  # ejected after the 3rd consecutive 5xx
    assert all(r.status_code == 200 for r in answers[answers.index(failures[-1]) + 1:])
    world["apps"]["backend-v2"].fail = 0.0
    world["apps"]["backend-v2"].received = 0
    time.sleep(2.2)  # the ejection time
    calls(world, 20, workers=1)
    assert world["apps"]["backend-v2"].received > 0  # back in rotation


def test_a_circuit_breaker_limits_calls_in_flight(world: dict[str, Any]) -> None:
    for name in ("backend-v1", "backend-v2"):
        world["apps"][name].delay = 1.0
    apply_policy(world, "MeshCircuitBreaker", "backend-max-2", {"to": [{
        "targetRef": {"kind": "MeshService", "name": "backend"},
        "default": {"connectionLimits": {"maxRequests": 2}}}]}, at="web")
    answers = calls(world, 6, workers=6)
    statuses = Counter(r.status_code for r in answers)
    assert statuses == {200: 2, 503: 4}, statuses
    assert {r.headers["x-meshcast-error"] for r in answers if r.status_code == 503} == {"overflow"}
    # `meshcast inspect dataplane` shows the setting in force at web, and the policy it came from
    table = world["cp"].cli("inspect", "dataplane", "web")
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if "MeshCircuitBreaker" in line)
    assert row.split()[:3] == ["outbound", "backend", "MeshCircuitBreaker"]
    assert '"maxRequests":2' in row and "MeshCircuitBreaker/backend-max-2 (local)" in row
    detail = json.loads(world["cp"].cli("inspect", "dataplane", "web", "-o", "json").stdout)
    assert {"where": "outbound backend", "kind": "MeshCircuitBreaker",
            "settings": {"connectionLimits": {"maxRequests": 2}},
            "from": ["MeshCircuitBreaker/backend-max-2 (local)"]} in detail["policies"]


def test_active_health_checks_take_an_instance_out_and_back(world: dict[str, Any]) -> None:
    apply_policy(world, "MeshHealthCheck", "backend-healthz", {"to": [{
        "targetRef": {"kind": "MeshService", "name": "backend"},
        "default": {"interval": "200ms", "timeout": "500ms", "unhealthyThreshold": 2, "healthyThreshold": 2,
                    "http": {"path": "/healthz"}}}]}, at="web")
    v2 = world["apps"]["backend-v2"]
    wait_for(lambda: v2.probes >= 2, "probes reach backend-v2")
    v2.unhealthy = True  # its answers to calls stay 200: only the active check can tell
    flipped = v2.probes
    wait_for(lambda: v2.probes >= flipped + 8, "failing probes (two callers, threshold 2)")
    v2.received = 0
    answers = calls(world, 100)
    assert {r.json()["server"] for r in answers} == {"backend-v1"} and v2.received == 0
    v2.unhealthy = False
    wait_for(lambda: "backend-v2" in {r.json()["server"] for r in calls(world, 20)}, "backend-v2 back", timeout=10)


def h2_get(url: str, *headers: str) -> tuple[int, str, str]:
    """curl over HTTP/2 with prior knowledge: (status, body, the x-meshcast-error header)."""
    args = ["curl", "-sS", "--http2-prior-knowledge", "--max-time", "10", "-D", "-", url]
    for item in headers:
        args += ["-H", item]
    done = subprocess.run(args, capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    head, _, body = done.stdout.partition("\n\n")  # text mode: CRLF read as LF
    assert head.startswith("HTTP/2 "), head
    error = next((line.split(":", 1)[1].strip() for line in head.splitlines()
                  if line.lower().startswith("x-meshcast-error:")), "")
    return int(head.split()[1]), body, error


def test_http2_calls_follow_routes_and_timeouts_and_are_counted(world: dict[str, Any]) -> None:
    apply_policy(world, "MeshHTTPRoute", "canary-by-header", {
        "targetRef": {"kind": "MeshService", "name": "web"},
        "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "rules": [
            {"matches": [{"headers": [{"name": "x-canary", "value": "yes"}]}],
             "default": {"backendRefs": [{"kind": "MeshServiceSubset", "name": "backend", "tags": {"version": "v2"}}],
                         "filters": [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                             "set": [{"name": "x-route", "value": "canary"}]}}]}},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
             "default": {"backendRefs": [{"kind": "MeshServiceSubset", "name": "backend",
                                          "tags": {"version": "v1"}}]}}]}]}, at="web")
    before = requests_counted(scrape(world["sidecars"]["web"]), direction="outbound", destination_service="backend")
    url = world["urls"]["web"] + "/h2"
    canary = [h2_get(url, "x-canary: yes") for _ in range(10)]
    stable = [h2_get(url) for _ in range(10)]
    assert all(status == 200 for status, _, _ in canary + stable), canary[:2] + stable[:2]
    assert {json.loads(body)["server"] for _, body, _ in canary} == {"backend-v2"}
    assert {json.loads(body)["server"] for _, body, _ in stable} == {"backend-v1"}
    after = requests_counted(scrape(world["sidecars"]["web"]), direction="outbound", destination_service="backend")
    assert after - before == 20
    apply_policy(world, "MeshTimeout", "h2-fast", {"to": [{
        "targetRef": {"kind": "MeshService", "name": "backend"}, "default": {"http": {"requestTimeout": "300ms"}}}]},
        at="web")
    world["apps"]["backend-v1"].delay = 1.5
    status, _, error = h2_get(url)
    assert (status, error) == (504, "request_timeout")
    # the timeout resets the stream to backend-v1's sidecar while its app is still answering: that sidecar goes on
    # (it used to die of the reset: an HTTP/2 stream bridged to an HTTP/1.1 app raised through a nursery)
    time.sleep(1.5)
    assert httpx.get(world["sidecars"]["backend-v1"].admin + "/ready", timeout=5).status_code == 200


# --- observability ------------------------------------------------------------------------------------------------


def scrape(sidecar: SidecarProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The sidecar's Prometheus text, parsed by prometheus-client's own parser: value by (sample name, labels)."""
    text = httpx.get(sidecar.admin + "/metrics", timeout=5).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def requests_counted(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], **labels: str) -> float:
    return sum(value for (name, found), value in samples.items()
               if name == "meshcast_requests_total" and labels.items() <= dict(found).items())


def test_request_metrics_count_what_was_sent(world: dict[str, Any]) -> None:
    web, v1, v2 = (world["sidecars"][n] for n in ("web", "backend-v1", "backend-v2"))
    before = [scrape(s) for s in (web, v1, v2)]
    world["apps"]["backend-v2"].fail = 1.0  # every answer from v2 is a 503
    answers = calls(world, 300)
    after = [scrape(s) for s in (web, v1, v2)]
    ok, failed = (sum(r.status_code == code for r in answers) for code in (200, 503))
    assert ok + failed == 300 and ok and failed

    def delta(i: int, **labels: str) -> float:
        return requests_counted(after[i], **labels) - requests_counted(before[i], **labels)

    out = {"direction": "outbound", "source_service": "web", "destination_service": "backend"}
    assert delta(0, **out, code_class="2xx") == ok and delta(0, **out, code_class="5xx") == failed
    inbound = {"direction": "inbound", "source_service": "web", "destination_service": "backend"}
    assert delta(1, **inbound, code_class="2xx") + delta(2, **inbound, code_class="2xx") == ok
    assert delta(2, **inbound, code_class="5xx") == failed
    durations = [v for (name, labels), v in after[0].items() if name == "meshcast_request_duration_seconds_count"
                 and dict(labels).get("destination_service") == "backend"]
    assert sum(durations) >= 300
    response_bytes = sum(v for (name, _), v in after[0].items() if name == "meshcast_response_bytes_total")
    assert response_bytes >= sum(len(r.content) for r in answers)


def test_a_trace_crosses_two_sidecars_as_one_trace(world: dict[str, Any]) -> None:
    with otlp_receiver() as receiver:
        apply_policy(world, "MeshTrace", "to-collector", {"default": {
            "backends": [{"openTelemetry": {"endpoint": receiver.endpoint}}], "sampling": {"overall": 100}}},
            at="web")
        wait_for(lambda: "MeshTrace" in json.dumps(sidecar_policies(world["sidecars"]["backend-v1"])) and
                 "MeshTrace" in json.dumps(sidecar_policies(world["sidecars"]["backend-v2"])), "MeshTrace at backends")
        answer = world["client"].get(world["urls"]["web"] + "/traced")
        assert answer.status_code == 200
        spans = receiver.wait_for(2, timeout=10)
        client = next(s for s in spans if s.kind == "client")
        server = next(s for s in spans if s.kind == "server")
        assert client.trace_id == server.trace_id and server.parent_span_id == client.span_id
        assert client.parent_span_id == "" and client.service_name == "web" and server.service_name == "backend"
        app = world["apps"][answer.json()["server"]]
        traceparent = app.headers[-1]["traceparent"]  # the app gets the server span's context, to propagate
        assert traceparent.split("-")[1:3] == [server.trace_id, server.span_id]

        # A caller's own traceparent is the parent of the client span: the trace continues.
        parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        world["client"].get(world["urls"]["web"] + "/continued", headers={"traceparent": parent})
        spans = receiver.wait_for(4, timeout=10)
        continued = [s for s in spans if s.trace_id == "0af7651916cd43dd8448eb211c80319c"]
        assert {s.kind for s in continued} == {"client", "server"}
        assert next(s for s in continued if s.kind == "client").parent_span_id == "b7ad6b7169203331"


def test_access_logs_are_json_lines_with_the_documented_fields(world: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "web-access.log"
    apply_policy(world, "MeshAccessLog", "web-log", {
        "targetRef": {"kind": "MeshService", "name": "web"},
        "to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                "default": {"backends": [{"type": "File", "file": {"path": str(path)}}]}}]}, at="web")
    calls(world, 20, headers={"x-request-id": "req-42", "user-agent": "test-agent"})
    wait_for(lambda: path.exists() and len(path.read_text().splitlines()) >= 20, "20 access-log lines")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert list(records[0]) == [f.name for f in dataclasses.fields(AccessRecord)]
    assert {(r["direction"], r["protocol"], r["method"], r["path"], r["status"], r["source_service"],
             r["destination_service"], r["request_id"], r["user_agent"]) for r in records} == {
        ("outbound", "HTTP/1.1", "GET", "/x", 200, "web", "backend", "req-42", "test-agent")}
    assert all(r["bytes_sent"] > 0 and r["duration_ms"] > 0 and r["upstream_address"] for r in records)
