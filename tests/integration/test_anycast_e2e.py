"""Anycast end to end (issue 5's acceptance test): real gateways in two regions behind a BGP router, a real client.

Topology (created and removed by the module's fixture; nothing is routed in the root namespace):

    [client 10.255.3.2] --veth-- [router: BIRD, AS 65000] --veth-- [region-a 10.255.1.2, AS 65001, primary]
                                                          --veth-- [region-b 10.255.2.2, AS 65002, backup]

Each region namespace runs its whole stack on its own loopback: a standalone zone CP (memory store), a backend app
that answers its region's name, the app's sidecar, `meshcast gateway run` listening on the anycast address
198.51.100.1:8080 (on the namespace's `lo`) with its admin on 127.0.0.1:9901, and `meshcast bgp run` (ExaBGP + the
speaker probing the gateway's `/ready`). Region B announces as a backup (3 extra prepends, MED + 100), so the
router's kernel table points at A while A is ready. The client namespace has only a default route via the router.

The client is one process in the client namespace making HTTP/1.1 requests, each on a new connection (a connection
established to one region stays there; only new ones follow the route), and printing one JSON line per request
stamped with `time.monotonic()` (one clock for every namespace), which the test reads as it goes.

Times are printed as `TIMING ...` lines (`pytest -rP`); nothing asserts on them.

A route change breaks TCP connections in flight across it: once the router points at B, the client's next
packets of a connection A accepted (its request, or the ACK of A's answer) reach B, which knows no such connection
and resets it; A never sees those packets. The drain avoids it: A tells open connections to go before the withdraw,
and from the start of the drain leaves new connections unanswered (`--while-withdrawing drop`, the default): their
SYNs are dropped, the client's kernel sends them again a second later, and by then the route points at B. So the
drain test asserts that no request fails at all (before this, 1-3 of ~200 requests were reset in 3 runs out of
11). A restore has no such help (B cannot know the route is about to leave it): the restore test asserts that no
request fails but those in flight at the route change, and prints how many there were (1 in 1 run out of 11).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from tests.support.bgp import REPO, Bird, BirdPeer, RegionConfig, RegionSpeaker, RouteWatcher, kernel_route, wait_until
from tests.support.netns import Fabric, Netns, namespaces_named
from tests.support.process import stop_process

pytestmark = pytest.mark.slow

ANYCAST = "198.51.100.1"
PREFIX = f"{ANYCAST}/32"
# inside each region namespace only: every region uses the same ports on its own loopback
GATEWAY_PORT = 8080
GATEWAY_ADMIN = "127.0.0.1:9901"
CP_API = "127.0.0.1:5681"
CP_DP = "127.0.0.1:5678"
APP_PORT = 9000
INBOUND_PORT = 10001
SIDECAR_ADMIN = "127.0.0.1:9902"
WITHDRAW_DELAY = 1.5  # the gateway keeps serving this long after turning unready: routers converge meanwhile
START_TIMEOUT = 40.0
# a request counts as in flight across a route change if it started before, and ended after, the change; the
# change's time stamp is when `ip monitor`'s line reached the test, so it may lag the kernel by some ms
FLIP_SLACK_AFTER = 0.005
FLIP_SLACK_BEFORE = 0.05

_APP = r"""
import http.server, sys
port, name = int(sys.argv[1]), sys.argv[2].encode()

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        # head and body in one write: the gateway then sends the client one segment (see "Known limit" above)
        head = f"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {len(name)}\r\n\r\n"
        self.wfile.write(head.encode() + name)
    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer.daemon_threads = True
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""

_CLIENT = r"""
import http.client, json, sys, threading, time
host, port, workers, pause = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
lock = threading.Lock()

def worker(index):
    while True:
        start = time.monotonic()
        conn = http.client.HTTPConnection(host, port, timeout=3)
        try:
            conn.request("GET", "/whoami", headers={"connection": "close"})
            response = conn.getresponse()
            record = {"status": response.status, "body": response.read().decode(errors="replace")}
        except Exception as exc:
            record = {"status": 0, "body": repr(exc)}
        finally:
            conn.close()
        record.update(start=start, end=time.monotonic(), worker=index)
        with lock:
            sys.stdout.write(json.dumps(record) + "\n")
            sys.stdout.flush()
        time.sleep(pause)

for index in range(workers):
    threading.Thread(target=worker, args=(index,), daemon=True).start()
threading.Event().wait()
"""


def _report(what: str, seconds: float) -> None:
    print(f"TIMING {what}: {seconds * 1000:.0f} ms")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@dataclass
class Region:
    """One region's namespace and the processes of its stack (each started in the namespace, killed by PID)."""

    name: str  # also what its backend answers
    ns: Netns
    workdir: Path
    via: str  # the router's next hop towards it
    speaker: RegionSpeaker
    gateway: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    def meshcast(self, *args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """The `meshcast` CLI inside the namespace, talking to the region's zone CP."""
        return subprocess.run(["ip", "netns", "exec", self.ns.name, sys.executable, "-m", "meshcast.cli.main",
                               *args], input=stdin, capture_output=True, text=True, timeout=timeout,
                              env={**_env(), "MESHCAST_CP": f"http://{CP_API}"})

    def spawn(self, what: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{what}.log"
        self.logs.append(log)
        with log.open("ab") as handle:
            return self.ns.popen(args, stdout=handle, stderr=subprocess.STDOUT, env=_env())

    def http_status(self, url: str) -> int:
        result = self.ns.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "1", url,
                             check=False)
        return int(result.stdout or 0)

    def start_stack(self) -> None:
        """Zone CP, app, sidecar, gateway and ExaBGP+speaker; returns once the gateway is ready."""
        cp = self.spawn("zone-cp", [sys.executable, "-m", "meshcast.cli.main", "zone-cp", "run", "--store",
                                    "memory", "--api-addr", CP_API, "--dp-addr", CP_DP, "--state-dir",
                                    str(self.workdir / "cp")])
        wait_until(lambda: cp.poll() is not None or self.http_status(f"http://{CP_API}/readyz") == 200,
                   START_TIMEOUT, f"{self.name}'s zone CP", interval=0.1)
        assert cp.poll() is None, f"{self.name}'s zone CP exited"
        self.spawn("app", [sys.executable, "-c", _APP, str(APP_PORT), self.name])
        gateway_doc = {"type": "MeshGateway", "mesh": "default", "name": "edge", "spec": {
            "listeners": [{"port": GATEWAY_PORT, "address": ANYCAST}],
            "routes": [{"to": "backend"}]}}
        result = self.meshcast("apply", "-f", "-", stdin=json.dumps(gateway_doc))
        assert result.returncode == 0, result.stderr
        for service, dataplane in (
            ("backend", {"address": "127.0.0.1", "inbound": [
                {"port": INBOUND_PORT, "appPort": APP_PORT, "service": "backend", "protocol": "http"}]}),
            ("edge", {"address": "127.0.0.1", "gateway": "edge"}),
        ):
            token = self.meshcast("generate", "dataplane-token", "--mesh", "default", "--service", service,
                                  "--valid-for", "1h")
            assert token.returncode == 0, token.stderr
            (self.workdir / f"{service}.token").write_text(token.stdout.strip())
            (self.workdir / f"{service}.json").write_text(json.dumps(
                {"type": "Dataplane", "mesh": "default", "name": f"{service}-1", "spec": dataplane}))
        self.spawn("sidecar", [sys.executable, "-m", "meshcast.cli.main", "dataplane", "run", "--cp",
                               f"http://{CP_API}", "--token-file", str(self.workdir / "backend.token"),
                               "--dataplane-file", str(self.workdir / "backend.json"), "--state-dir",
                               str(self.workdir / "sidecar"), "--admin-addr", SIDECAR_ADMIN, "--drain-timeout", "3"])
        self.start_gateway()
        self.speaker.start()
        self.wait_gateway_ready()

    def start_gateway(self) -> None:
        self.gateway = self.spawn("gateway", [
            sys.executable, "-m", "meshcast.cli.main", "gateway", "run", "--cp", f"http://{CP_API}", "--token-file",
            str(self.workdir / "edge.token"), "--dataplane-file", str(self.workdir / "edge.json"), "--state-dir",
            str(self.workdir / "gateway"), "--admin-addr", GATEWAY_ADMIN, "--workers", "1", "--withdraw-delay",
            str(WITHDRAW_DELAY), "--drain-timeout", "10"])

    def wait_gateway_ready(self) -> None:
        gateway = self.gateway
        assert gateway is not None
        wait_until(lambda: gateway.poll() is not None or self.http_status(f"http://{GATEWAY_ADMIN}/ready") == 200,
                   START_TIMEOUT, f"{self.name}'s gateway to be ready", interval=0.1)
        assert gateway.poll() is None, f"{self.name}'s gateway exited ({gateway.returncode})"

    def dump_logs(self) -> str:
        parts = [f"--- {self.name}: {log.name} ---\n{log.read_text(errors='replace')[-3000:]}"
                 for log in self.logs if log.exists()]
        return "\n".join([*parts, f"--- {self.name}: ExaBGP and speaker ---\n{self.speaker.logs()}"])


@dataclass(frozen=True)
class Answer:
    start: float
    end: float
    status: int
    body: str


class LoadClient:
    """`_CLIENT` in the client namespace: `workers` threads, each a request on a new connection every `pause` s."""

    def __init__(self, ns: Netns, workers: int = 1, pause: float = 0.01) -> None:
        self.answers: list[Answer] = []
        self._cond = threading.Condition()
        self.proc = ns.popen([sys.executable, "-c", _CLIENT, ANYCAST, str(GATEWAY_PORT), str(workers), str(pause)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        stdout: IO[bytes] | None = self.proc.stdout
        assert stdout is not None
        for raw in stdout:
            doc = json.loads(raw)
            with self._cond:
                self.answers.append(Answer(doc["start"], doc["end"], doc["status"], doc["body"]))
                self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.answers)

    def wait_for(self, predicate: Callable[[Answer], bool], since: int, timeout: float, what: str) -> Answer:
        """The first answer after index `since` matching `predicate` (in arrival order)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            index = since
            while True:
                while index < len(self.answers):
                    answer = self.answers[index]
                    index += 1
                    if predicate(answer):
                        return answer
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no answer {what} within {timeout} s; last: {self.answers[-5:]}")
                self._cond.wait(remaining)

    def since(self, index: int) -> list[Answer]:
        with self._cond:
            return list(self.answers[index:])

    def stop(self) -> None:
        stop_process(self.proc, kill=True)
        self._thread.join(timeout=5)


@dataclass
class Net:
    fabric: Fabric
    router: Netns
    client: Netns
    bird: Bird
    a: Region
    b: Region


def _via(net: Net) -> str:
    route = kernel_route(net.router, PREFIX)
    return route.split(" via ")[1].split()[0] if " via " in route else ""


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    for tool in ("bird", "birdc", "ip", "curl"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: apt-get install bird2 iproute2 curl", pytrace=False)
    workdir = tmp_path_factory.mktemp("anycast-e2e")
    fabric = Fabric()
    regions: list[Region] = []
    try:
        router, client = fabric.add("router"), fabric.add("client")
        ns_a, ns_b = fabric.add("a"), fabric.add("b")
        fabric.link(router, "r-a", "10.255.1.1/30", ns_a, "a-r", "10.255.1.2/30")
        fabric.link(router, "r-b", "10.255.2.1/30", ns_b, "b-r", "10.255.2.2/30")
        fabric.link(router, "r-c", "10.255.3.1/30", client, "c-r", "10.255.3.2/30")
        router.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        client.ip("route", "add", "default", "via", "10.255.3.1")
        for ns, router_side in ((ns_a, "10.255.1.1"), (ns_b, "10.255.2.1")):
            ns.ip("addr", "add", PREFIX, "dev", "lo")
            ns.ip("route", "add", "default", "via", router_side)  # the way back to the client
        bird = Bird(router, workdir, "10.255.0.1", 65000, [
            BirdPeer("region_a", "10.255.1.1", "10.255.1.2", 65001),
            BirdPeer("region_b", "10.255.2.1", "10.255.2.2", 65002),
        ])
        bird.start()
        for name, ns, config, via in (
            ("region-a", ns_a, RegionConfig("region-a", "10.255.1.2", 65001, "10.255.1.1", 65000, [PREFIX],
                                            int(GATEWAY_ADMIN.rsplit(":", 1)[1])), "10.255.1.2"),
            ("region-b", ns_b, RegionConfig("region-b", "10.255.2.2", 65002, "10.255.2.1", 65000, [PREFIX],
                                            int(GATEWAY_ADMIN.rsplit(":", 1)[1]), role="backup",
                                            backup={"extraPrepend": 3, "medIncrease": 100}), "10.255.2.2"),
        ):
            region_dir = workdir / name
            region_dir.mkdir()
            regions.append(Region(name, ns, region_dir, via, RegionSpeaker(ns, region_dir, config)))
        net = Net(fabric, router, client, bird, *regions)
        started = time.monotonic()
        try:
            with ThreadPoolExecutor(max_workers=2) as pool:  # the two regions come up side by side
                for future in [pool.submit(region.start_stack) for region in regions]:
                    future.result()
            wait_until(lambda: len(bird.routes(PREFIX)) == 2, START_TIMEOUT, "both regions' paths at the router")
            wait_until(lambda: _via(net) == net.a.via, 5, "the kernel route via region A")
        except BaseException:
            for region in regions:
                print(region.dump_logs())
            raise
        _report("both regions' stacks started -> both paths at the router", time.monotonic() - started)
        yield net
        bird.stop()
    finally:
        for region in regions:
            region.speaker.stop(kill=True)
        tag = fabric.tag
        fabric.close()
        assert namespaces_named(tag) == [], "namespaces left behind"
    root = subprocess.run(["ip", "route", "show", "exact", PREFIX], capture_output=True, text=True).stdout
    assert root.strip() == "", f"the anycast route leaked into the root namespace: {root}"


@pytest.fixture
def watcher(net: Net, request: pytest.FixtureRequest) -> Iterator[RouteWatcher]:
    w = RouteWatcher(net.router)
    time.sleep(0.05)  # let `ip monitor` subscribe before anything changes
    failed_before = request.session.testsfailed
    try:
        yield w
    finally:
        w.close()
        if request.session.testsfailed > failed_before:
            print(f"--- route changes at the router ---\n{[line for _, line in w.lines]}")
            for region in (net.a, net.b):
                print(region.dump_logs())


@pytest.fixture
def client(net: Net) -> Iterator[Callable[..., LoadClient]]:
    started: list[LoadClient] = []

    def start(workers: int = 1, pause: float = 0.01) -> LoadClient:
        started.append(LoadClient(net.client, workers, pause))
        return started[-1]

    try:
        yield start
    finally:
        for load in started:
            load.stop()


def _from(region: Region) -> Callable[[Answer], bool]:
    return lambda answer: answer.status == 200 and answer.body == region.name


def _failed(answers: list[Answer]) -> list[Answer]:
    return [answer for answer in answers if answer.status != 200]


def _across(answers: list[Answer], moment: float) -> tuple[list[Answer], list[Answer]]:
    """Failed requests split in two: those in flight when the route changed at `moment` (as `ip monitor` saw it,
    which may lag the kernel by some ms), and all the others."""
    failed = _failed(answers)
    across = [x for x in failed if x.start < moment + FLIP_SLACK_AFTER and x.end > moment - FLIP_SLACK_BEFORE]
    return across, [x for x in failed if x not in across]


def _around(answers: list[Answer], moment: float) -> list[str]:
    """Answers with their start and end in ms relative to `moment` (the route change), for failure messages."""
    return [f"{x.body} [{(x.start - moment) * 1000:+.1f} .. {(x.end - moment) * 1000:+.1f} ms]" for x in answers]


def test_the_client_reaches_the_primary_region(net: Net, watcher: RouteWatcher,
                                               client: Callable[..., LoadClient]) -> None:
    best, backup = net.bird.routes(PREFIX)
    assert (best.protocol, best.best, best.next_hop) == ("region_a", True, net.a.via)
    assert (backup.protocol, backup.best, backup.as_path) == ("region_b", False, [65002] * 4)
    assert _via(net) == net.a.via
    load = client()
    load.wait_for(lambda answer: True, 0, 10, "at all")
    time.sleep(0.3)
    load.stop()
    answers = load.since(0)
    assert answers and all(_from(net.a)(answer) for answer in answers), answers[:5]


def test_killing_a_gateway_moves_traffic_to_the_backup_and_restoring_it_brings_it_back(
        net: Net, watcher: RouteWatcher, client: Callable[..., LoadClient]) -> None:
    a, b = net.a, net.b
    load = client(workers=1, pause=0.01)
    load.wait_for(_from(a), 0, 10, "from region A")
    assert a.gateway is not None

    since, route_since = load.mark(), watcher.mark()
    killed = time.monotonic()
    a.gateway.send_signal(signal.SIGKILL)  # ours: started by this module in region A's namespace
    routed = watcher.wait_line(lambda line: line.startswith(f"{ANYCAST} via {b.via} "), route_since, 5)
    first_b = load.wait_for(_from(b), since, 10, "from region B")
    assert a.gateway.wait(timeout=5) == -signal.SIGKILL
    _report("gateway A SIGKILLed -> route via B in the router's kernel", routed - killed)
    _report("gateway A SIGKILLed -> first answer from B at the client", first_b.end - killed)
    lost = _failed([x for x in load.since(since) if x.start < first_b.start])
    print(f"requests failed between the kill and B's first answer: {len(lost)} ({sorted({x.body for x in lost})})")

    since, route_since = load.mark(), watcher.mark()
    restarted = time.monotonic()
    a.start_gateway()
    a.wait_gateway_ready()
    ready = time.monotonic()
    routed = watcher.wait_line(lambda line: line.startswith(f"{ANYCAST} via {a.via} "), route_since, 10)
    first_a = load.wait_for(_from(a), since, 10, "from region A again")
    _report("gateway A restarted -> ready (Python start-up, config from the zone CP)", ready - restarted)
    _report("gateway A ready again -> route via A in the router's kernel", routed - ready)
    _report("gateway A restarted -> first answer from A at the client", first_a.end - restarted)
    _report("gateway A ready again -> first answer from A at the client", first_a.end - ready)
    # B kept serving until the route came back: a restore fails no request but those in flight at the change
    across, others = _across(load.since(since), routed)
    assert others == [], _around(others, routed)
    print(f"requests in flight when the route came back to A, reset by A: {len(across)} {_around(across, routed)}")
    time.sleep(0.3)
    settled = [x for x in load.since(since) if x.start > first_a.end]
    assert settled and all(_from(a)(x) for x in settled), settled[:5]


def test_killing_exabgp_moves_traffic_to_the_backup_and_its_restart_brings_it_back(
        net: Net, watcher: RouteWatcher, client: Callable[..., LoadClient]) -> None:
    """A region host's ExaBGP dies (the gateway stays healthy): the router's session drops at once (the socket
    closes), so the route moves to B without waiting for the hold timer; the restarted ExaBGP announces again."""
    a, b = net.a, net.b
    assert _via(net) == a.via
    load = client(workers=1, pause=0.01)
    load.wait_for(_from(a), 0, 10, "from region A")

    since, route_since = load.mark(), watcher.mark()
    killed = time.monotonic()
    a.speaker.stop(kill=True)  # SIGKILLs ExaBGP (ours, by PID), then checks its speaker followed it
    routed = watcher.wait_line(lambda line: line.startswith(f"{ANYCAST} via {b.via} "), route_since, 10)
    first_b = load.wait_for(_from(b), since, 10, "from region B")
    _report("ExaBGP of region A SIGKILLed -> route via B in the router's kernel", routed - killed)
    _report("ExaBGP of region A SIGKILLed -> first answer from B at the client", first_b.end - killed)
    # A's gateway kept serving: the connections it had accepted finish there; only one in flight at the route
    # change can be reset by B (see the module's docstring)
    across, others = _across(load.since(since), routed)
    assert others == [], _around(others, routed)
    print(f"requests in flight when the route moved to B, reset by B: {len(across)} {_around(across, routed)}")

    since, route_since = load.mark(), watcher.mark()
    restarted = time.monotonic()
    a.speaker.start()
    routed = watcher.wait_line(lambda line: line.startswith(f"{ANYCAST} via {a.via} "), route_since, 30)
    first_a = load.wait_for(_from(a), since, 10, "from region A again")
    _report("ExaBGP of region A restarted -> route via A in the router's kernel (process start, session, rise)",
            routed - restarted)
    _report("ExaBGP of region A restarted -> first answer from A at the client", first_a.end - restarted)
    across, others = _across(load.since(since), routed)
    assert others == [], _around(others, routed)
    print(f"requests in flight when the route came back to A, reset by A: {len(across)} {_around(across, routed)}")
    wait_until(lambda: net.bird.session_up("region_a"), 10, "region A's session up")


def test_a_drain_under_steady_load_loses_no_request(net: Net, watcher: RouteWatcher,
                                                    client: Callable[..., LoadClient]) -> None:
    """Last in the module: A's gateway exits."""
    a, b = net.a, net.b
    assert _via(net) == a.via
    load = client(workers=4, pause=0.005)
    first = load.wait_for(_from(a), 0, 10, "from region A")
    wait_until(lambda: len(load.since(0)) > 100, 20, "steady load")

    since, route_since = load.mark(), watcher.mark()
    drained = time.monotonic()
    result = a.meshcast("gateway", "drain", "--admin-addr", GATEWAY_ADMIN, "--timeout", "30")
    done = time.monotonic()
    assert result.returncode == 0 and "drained" in result.stdout, result.stdout + result.stderr
    assert a.gateway is not None and a.gateway.wait(timeout=10) == 0
    routed = watcher.wait_line(lambda line: line.startswith(f"{ANYCAST} via {b.via} "), route_since, 5)
    first_b = load.wait_for(_from(b), since, 10, "from region B")
    load.wait_for(lambda answer: answer.start > done + 0.5, since, 10, "well after the drain")
    load.stop()

    answers = [x for x in load.since(0) if x.start >= first.start]
    during = [x for x in answers if x.start >= drained]
    # from the start of `meshcast gateway drain`: its Python start-up (~0.3-0.4 s) comes before the POST /drain
    _report("drain asked -> route via B in the router's kernel", routed - drained)
    _report("drain asked -> first answer from B at the client", first_b.end - drained)
    _report("drain asked -> gateway A exited (`meshcast gateway drain` returned)", done - drained)
    last_a = max((x.end for x in during if x.body == a.name), default=drained)
    _report("drain asked -> last answer from A", last_a - drained)
    print(f"requests: {len(answers)} in all, {len(during)} from the drain on "
          f"({sum(x.body == a.name for x in during)} from A, {sum(x.body == b.name for x in during)} from B)")
    _report("last answer from A -> route via B (A's drain in force: its new connections unanswered)",
            routed - last_a)
    slowest = max(during, key=lambda x: x.end - x.start)
    _report("slowest request from the drain on (a SYN left unanswered by A, sent again to B)",
            slowest.end - slowest.start)
    print(f"requests that waited for a second SYN: {sum(x.end - x.start > 0.9 for x in during)}")
    assert _failed(answers) == [], _around(_failed(answers), routed)
    assert any(x.body == a.name for x in during) and any(x.body == b.name for x in during)
    assert all(_from(b)(x) for x in answers if x.start > routed + 0.1)
