"""The speaker with real daemons: ExaBGP (+ `meshcast bgp speaker`) in region namespaces, BIRD 2 as the router.

Topology (created and removed by the module's fixture; nothing is routed in the root namespace):

    [eu: 10.255.1.2/30, AS 65001]--veth--[router: BIRD, AS 65000]--veth--[us: 10.255.2.2/30, AS 65002]
    198.51.100.1/32 on eu's and us's loopback; BIRD's kernel protocol installs the best path in the router's table.

Times are measured from the moment the test flips the gateway (state file replaced) to the arrival of the route's
deletion (or replacement) in `ip monitor route` of the router namespace; each test prints them (`pytest -rP`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.bgp import (
    MESHCAST,
    Bird,
    BirdPeer,
    ReadinessServer,
    RegionConfig,
    RegionSpeaker,
    RouteWatcher,
    kernel_route,
    wait_until,
)
from tests.support.netns import Fabric, Netns, namespaces_named

pytestmark = pytest.mark.slow

ANYCAST = "198.51.100.1"
PREFIX = f"{ANYCAST}/32"
PORT = 18080  # inside each region namespace only
ANNOUNCE_TIMEOUT = 15.0


@dataclass
class Net:
    fabric: Fabric
    router: Netns
    eu: Netns
    us: Netns
    bird: Bird
    workdir: Path


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    for tool in ("bird", "birdc", "ip"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: apt-get install bird2 iproute2 (make test installs them)", pytrace=False)
    workdir = tmp_path_factory.mktemp("bgp")
    fabric = Fabric()
    try:
        router, eu, us = fabric.add("router"), fabric.add("eu"), fabric.add("us")
        fabric.link(router, "r-eu", "10.255.1.1/30", eu, "eu-r", "10.255.1.2/30")
        fabric.link(router, "r-us", "10.255.2.1/30", us, "us-r", "10.255.2.2/30")
        for region in (eu, us):
            region.ip("addr", "add", PREFIX, "dev", "lo")
        bird = Bird(router, workdir, "10.255.0.1", 65000, [
            BirdPeer("region_eu", "10.255.1.1", "10.255.1.2", 65001),
            BirdPeer("region_us", "10.255.2.1", "10.255.2.2", 65002),
        ])
        bird.start()
        yield Net(fabric, router, eu, us, bird, workdir)
        bird.stop()
    finally:
        tag = fabric.tag
        fabric.close()
        assert namespaces_named(tag) == [], "namespaces left behind"
    root = subprocess.run(["ip", "route", "show", "exact", PREFIX], capture_output=True, text=True).stdout
    assert root.strip() == "", f"the anycast route leaked into the root namespace: {root}"


@pytest.fixture
def watcher(net: Net) -> Iterator[RouteWatcher]:
    w = RouteWatcher(net.router)
    time.sleep(0.05)  # let `ip monitor` subscribe before anything changes
    try:
        yield w
    finally:
        w.close()


@dataclass
class Region:
    server: ReadinessServer
    speaker: RegionSpeaker
    via: str


def _region(net: Net, request: pytest.FixtureRequest, name: str, **overrides: object) -> Iterator[Region]:
    if name == "eu":
        ns, config = net.eu, RegionConfig("eu-west", "10.255.1.2", 65001, "10.255.1.1", 65000, [PREFIX], PORT,
                                          med=100, prepend=1, communities=["65001:100", "65001:1:2"])
        via = "10.255.1.2"
    else:
        ns, config = net.us, RegionConfig("us-east", "10.255.2.2", 65002, "10.255.2.1", 65000, [PREFIX], PORT,
                                          role="backup", med=100, backup={"extraPrepend": 3, "medIncrease": 100})
        via = "10.255.2.2"
    for key, value in (getattr(request, "param", None) or {}).items():
        setattr(config, key, value)
    for key, value in overrides.items():
        setattr(config, key, value)
    workdir = net.workdir / request.node.name.replace("/", "_").replace("[", "_").replace("]", "")
    region = Region(ReadinessServer(ns, workdir, PORT, config.region), RegionSpeaker(ns, workdir, config), via)
    failed_before = request.session.testsfailed
    try:
        yield region
    finally:
        region.speaker.stop()
        region.server.kill()
        # with graceful restart the router keeps a stopped speaker's route as stale for a while: wait it out, so the
        # next test starts from an empty table
        protocol = f"region_{name}"
        wait_until(lambda: not any(r.protocol == protocol for r in net.bird.routes(PREFIX)),
                   config.graceful_restart + 5, "the router to drop the stopped region's route")
        if request.session.testsfailed > failed_before:
            print(f"--- {config.region}: ExaBGP and speaker log ---\n{region.speaker.logs()}")


@pytest.fixture
def eu(net: Net, request: pytest.FixtureRequest) -> Iterator[Region]:
    yield from _region(net, request, "eu")


@pytest.fixture
def us(net: Net, request: pytest.FixtureRequest) -> Iterator[Region]:
    yield from _region(net, request, "us")


def _via(net: Net) -> str:
    route = kernel_route(net.router, PREFIX)
    return route.split(" via ")[1].split()[0] if " via " in route else ""


def _start(net: Net, region: Region, *, ready: str = "200") -> float:
    """Start the gateway stand-in and ExaBGP+speaker; returns seconds until the router's kernel has the route."""
    region.server.set(ready)
    region.server.start()
    region.speaker.start()
    try:
        took = wait_until(lambda: _via(net) == region.via, ANNOUNCE_TIMEOUT, f"the route via {region.via}")
        assert region.speaker.status().get("announced") is True
        return took
    except AssertionError:
        print(region.speaker.logs())
        raise


def _deleted(line: str) -> bool:
    return line.startswith(f"Deleted {ANYCAST} ")


def _report(what: str, seconds: float) -> None:
    print(f"TIMING {what}: {seconds * 1000:.0f} ms")


def _curl(net: Net) -> str:
    result = net.router.run("curl", "-s", "--max-time", "2", f"http://{ANYCAST}:{PORT}/whoami", check=False)
    return result.stdout


def test_announces_while_ready_with_the_region_attributes(net: Net, eu: Region) -> None:
    took = _start(net, eu)
    _report("start of ExaBGP+speaker -> route in the router's kernel", took)
    [route] = net.bird.routes(PREFIX)
    assert route.protocol == "region_eu" and route.best
    assert route.as_path == [65001, 65001]  # local AS + one prepend, as received by BIRD
    assert route.med == 100
    assert route.next_hop == "10.255.1.2"  # next-hop self
    assert route.communities == ["65001:100"]
    assert route.large_communities == ["65001:1:2"]
    assert _curl(net) == "eu-west"  # traffic to the anycast address reaches the region

    status = eu.speaker.status()
    assert status["announced"] is True and status["state"] == "announced"
    out = subprocess.run([*MESHCAST, "bgp", "status", "--region-file", str(eu.speaker.region_file)],
                         capture_output=True, text=True, check=True).stdout
    assert "ANNOUNCED" in out and "rise" in out

    # the speaker's Prometheus metrics, on its default address inside the region's namespace
    assert status["metricsAddress"] == "127.0.0.1:9179"
    metrics = net.eu.run("curl", "-s", "--max-time", "2", "http://127.0.0.1:9179/metrics").stdout
    for line in ('meshcast_bgp_announced{region="eu-west"} 1.0',
                 'meshcast_bgp_session_established{peer="10.255.1.1",region="eu-west"} 1.0',
                 'meshcast_bgp_route_changes_total{action="announce",region="eu-west"} 1.0',
                 'meshcast_bgp_commands_refused_total{region="eu-west"} 0.0'):
        assert line in metrics, metrics


def test_nothing_is_announced_while_the_gateway_is_unready(net: Net, eu: Region) -> None:
    eu.server.set("503")
    eu.server.start()
    eu.speaker.start()
    wait_until(lambda: eu.speaker.status().get("state") == "withdrawn", ANNOUNCE_TIMEOUT, "the speaker to decide")
    wait_until(lambda: net.bird.session_up("region_eu"), ANNOUNCE_TIMEOUT, "the BGP session")
    time.sleep(0.3)
    assert net.bird.routes(PREFIX) == []
    assert kernel_route(net.router, PREFIX) == ""


@pytest.mark.parametrize("cause", ["unready", "server-killed", "server-hangs", "drained"])
def test_withdraws_within_500_ms(net: Net, eu: Region, watcher: RouteWatcher, cause: str) -> None:
    _start(net, eu)
    time.sleep(0.3)
    since = watcher.mark()
    flipped = time.monotonic()
    if cause == "unready":
        eu.server.set("503")
    elif cause == "server-killed":
        eu.server.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    elif cause == "server-hangs":
        eu.server.set("hang")
    else:
        subprocess.run([*MESHCAST, "bgp", "drain", "--region-file", str(eu.speaker.region_file)], check=True,
                       capture_output=True)
        flipped = time.monotonic()  # from the flag's existence, not from the CLI's start-up (~0.2 s of Python)
    took = watcher.wait_line(_deleted, since, 5) - flipped
    _report(f"withdraw on {cause}", took)
    assert kernel_route(net.router, PREFIX) == ""

    status = eu.speaker.status()
    assert status["announced"] is False
    assert status["state"] == ("drained" if cause == "drained" else "withdrawn")

    # and back
    since = watcher.mark()
    flipped = time.monotonic()
    if cause == "server-killed":
        eu.server.kill()
        eu.server.start()
    elif cause == "drained":
        subprocess.run([*MESHCAST, "bgp", "undrain", "--region-file", str(eu.speaker.region_file)], check=True,
                       capture_output=True)
    else:
        eu.server.set("200")
    took = watcher.wait_line(lambda line: line.startswith(f"{ANYCAST} via 10.255.1.2"), since, 5) - flipped
    _report(f"re-announce after {cause} ends", took)


def test_recovers_when_the_router_restarts(net: Net, eu: Region, watcher: RouteWatcher) -> None:
    _start(net, eu)
    net.bird.stop()
    assert kernel_route(net.router, PREFIX) == ""  # BIRD removes its kernel routes on a clean stop
    start = time.monotonic()
    net.bird.start()
    took = wait_until(lambda: _via(net) == eu.via, 15, "the route after BIRD restarted")
    _report("BIRD restart -> route back", time.monotonic() - start)
    assert took < 10


def test_recovers_when_the_link_flaps(net: Net, eu: Region) -> None:
    _start(net, eu)
    net.router.ip("link", "set", "r-eu", "down")
    try:
        # BIRD drops the session at once ("Neighbor lost"); the kernel flushes routes through a downed device
        # without a netlink notification, so this one is polled rather than watched
        took = wait_until(lambda: kernel_route(net.router, PREFIX) == "", 10, "the route to go with the link")
        _report("link down -> route gone (polled)", took)
        assert "Established" not in net.bird.birdc("show", "protocols", "region_eu").stdout
        time.sleep(0.5)
    finally:
        net.router.ip("link", "set", "r-eu", "up")
    took = wait_until(lambda: _via(net) == eu.via, 20, "the route after the link came back")
    _report("link up -> route back", took)


def test_recovers_when_exabgp_restarts(net: Net, eu: Region, watcher: RouteWatcher) -> None:
    """Without graceful restart (the default): the route goes with the session and comes back with it."""
    _start(net, eu)
    since = watcher.mark()
    killed = time.monotonic()
    eu.speaker.stop(kill=True)  # SIGKILL ExaBGP; asserts the speaker exits on its own (stdin closed)
    gone = watcher.wait_line(_deleted, since, 5) - killed
    _report("ExaBGP SIGKILLed -> route gone", gone)
    took = _start_again(net, eu)
    _report("ExaBGP restarted -> route back", took)


@pytest.mark.parametrize("eu", [{"graceful_restart": 5}], indirect=True)
def test_graceful_restart_keeps_the_route_across_an_exabgp_restart(net: Net, eu: Region,
                                                                   watcher: RouteWatcher) -> None:
    _start(net, eu)
    since = watcher.mark()
    eu.speaker.stop(kill=True)
    eu.speaker.start()
    wait_until(lambda: eu.speaker.status().get("announced"), ANNOUNCE_TIMEOUT, "the new speaker to announce")
    wait_until(lambda: net.bird.session_up("region_eu"), 10, "the session")
    time.sleep(1.0)  # past the End-of-RIB, when BIRD flushes what was not re-announced
    changes = [line for _, line in watcher.lines[since:] if ANYCAST in line]
    assert not any(_deleted(line) for line in changes), changes
    assert _via(net) == eu.via
    # the flip side: with graceful restart ExaBGP closes silently, so a stopped speaker's route stays (stale) for
    # up to gracefulRestart seconds; drain first to take it away at once
    since = watcher.mark()
    subprocess.run([*MESHCAST, "bgp", "drain", "--region-file", str(eu.speaker.region_file)], check=True,
                   capture_output=True)
    watcher.wait_line(_deleted, since, 2)


def test_speaker_restart_keeps_the_route(net: Net, eu: Region, watcher: RouteWatcher) -> None:
    """ExaBGP respawns a dead speaker and keeps its routes; the new speaker re-asserts them: no route change."""
    _start(net, eu)
    # The route's installation reaches the watcher (`ip monitor`) a moment after the kernel has it; under load that
    # moment can be long: mark only once the watcher has been quiet for a while, so the installation is not taken
    # for a change after the kill.
    wait_until(lambda: watcher.quiet_for(0.5), 10, "the route watcher settled")
    old = eu.speaker.speaker_pid()
    assert old is not None
    since = watcher.mark()
    os.kill(old, signal.SIGKILL)  # ours: started by our ExaBGP for this test
    wait_until(lambda: eu.speaker.speaker_pid() not in (None, old) and eu.speaker.status().get("announced"),
               10, "a respawned speaker announcing")
    time.sleep(0.3)
    assert [line for _, line in watcher.lines[since:] if ANYCAST in line] == []


def _start_again(net: Net, region: Region) -> float:
    start = time.monotonic()
    region.speaker.start()
    wait_until(lambda: _via(net) == region.via, ANNOUNCE_TIMEOUT, "the route after a restart")
    return time.monotonic() - start


def test_backup_region_is_a_worse_path_and_takes_over(net: Net, eu: Region, us: Region,
                                                      watcher: RouteWatcher) -> None:
    _start(net, eu)
    us.server.start()
    us.speaker.start()
    wait_until(lambda: len(net.bird.routes(PREFIX)) == 2, ANNOUNCE_TIMEOUT, "both regions' paths")
    best, backup = net.bird.routes(PREFIX)
    assert (best.protocol, best.best) == ("region_eu", True)
    assert (backup.protocol, backup.best) == ("region_us", False)
    assert backup.as_path == [65002] * 4  # local AS + 3 extra prepends
    assert backup.med == 200  # 100 + medIncrease 100
    assert _via(net) == eu.via and _curl(net) == "eu-west"

    since = watcher.mark()
    flipped = time.monotonic()
    eu.server.set("503")
    took = watcher.wait_line(lambda line: line.startswith(f"{ANYCAST} via {us.via}"), since, 5) - flipped
    _report("primary unready -> backup region's path in the kernel", took)
    assert _curl(net) == "us-east"

    since = watcher.mark()
    flipped = time.monotonic()
    eu.server.set("200")
    took = watcher.wait_line(lambda line: line.startswith(f"{ANYCAST} via {eu.via}"), since, 5) - flipped
    _report("primary ready again -> primary's path back", took)
    assert _curl(net) == "eu-west"


@pytest.mark.parametrize(
    "eu", [{"damping": {"rise": 2, "fall": 3, "flapWindow": 4, "maxChanges": 4, "reuse": 1.5}}], indirect=True)
def test_a_flapping_gateway_does_not_flap_the_route(net: Net, eu: Region, watcher: RouteWatcher) -> None:
    _start(net, eu)  # change 1 (announce)
    since = watcher.mark()
    for _ in range(6):  # ~5.4 s of a gateway that is ready 0.4 s, unready 0.5 s
        eu.server.set("503")
        time.sleep(0.5)
        eu.server.set("200")
        time.sleep(0.4)
    changes = [line for _, line in watcher.lines[since:] if ANYCAST in line]
    # the budget is 4 changes per 4 s: announce (at start), withdraw, announce, withdraw -> suppressed
    assert len(changes) <= 3, changes
    status = eu.speaker.status()
    assert status["state"] == "suppressed" and status["announced"] is False, status
    assert "flapped" in status["reason"]
    print(f"route changes while flapping for 5.4 s: {len(changes) + 1} (incl. the first announce)")
    # once the gateway is steadily ready for `reuse` and the window has room, the route comes back
    took = wait_until(lambda: _via(net) == eu.via, 10, "the route after the flapping stopped")
    _report("steady again -> re-announced after suppression", took)
