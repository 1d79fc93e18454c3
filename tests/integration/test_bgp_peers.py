"""One region, two kinds of peer: BIRD 2 (the router, installing routes) and gobgpd (a second reader of the wire).

Topology (created and removed by the module's fixture; nothing is routed in the root namespace):

    [router: BIRD, AS 65000]--veth--[eu: ExaBGP + speaker, AS 65001]--veth--[reader: gobgpd, AS 65100]
     10.255.1.1/30, 2001:db8:1::1/64     10.255.1.2, 2001:db8:1::2 | 10.255.3.2, 2001:db8:3::2     10.255.3.1/30,
                                                                                                    2001:db8:3::1/64
    198.51.100.1/32 and 2001:db8:ff::1/128 on eu's loopback.

The region peers with both over IPv4 (an IPv4 prefix) or over IPv6 (an IPv6 prefix): next-hop self is the region's
own address on each session, so BIRD and gobgpd each see a different next hop for the same announcement. gobgpd
runs without zebra: it installs nothing, and its RIB is read as JSON through its API on its namespace's loopback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import yaml

from tests.support.bgp import (
    MESHCAST,
    Bird,
    BirdPeer,
    Gobgp,
    GobgpNeighbor,
    GobgpPath,
    ReadinessServer,
    RegionConfig,
    RegionSpeaker,
    kernel_route,
    wait_until,
)
from tests.support.netns import Fabric, Netns, namespaces_named

pytestmark = pytest.mark.slow

PREFIX4 = "198.51.100.1/32"
ANYCAST6 = "2001:db8:ff::1"
PREFIX6 = f"{ANYCAST6}/128"
PORT = 18080  # inside the region namespace only
LOCAL_AS, ROUTER_AS, READER_AS = 65001, 65000, 65100
# the region's address on each session, i.e. what next-hop self must resolve to there
EU_TO_ROUTER = {4: "10.255.1.2", 6: "2001:db8:1::2"}
EU_TO_READER = {4: "10.255.3.2", 6: "2001:db8:3::2"}
ROUTER = {4: "10.255.1.1", 6: "2001:db8:1::1"}
READER = {4: "10.255.3.1", 6: "2001:db8:3::1"}
BIRD_PROTOCOL = {4: "region_eu", 6: "region_eu6"}
TIMEOUT = 15.0


@dataclass
class Net:
    fabric: Fabric
    router: Netns
    eu: Netns
    reader: Netns
    bird: Bird
    gobgp: Gobgp
    workdir: Path


def _add6(ns: Netns, ifname: str, address: str) -> None:
    # nodad: usable at once, instead of "tentative" for the second or so of duplicate address detection
    ns.ip("-6", "addr", "add", address, "dev", ifname, "nodad")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    for tool in ("bird", "birdc", "gobgpd", "gobgp", "ip", "curl"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: apt-get install bird2 gobgpd iproute2 curl (make test installs them)",
                        pytrace=False)
    workdir = tmp_path_factory.mktemp("bgp-peers")
    fabric = Fabric()
    bird: Bird | None = None
    gobgp: Gobgp | None = None
    try:
        router, eu, reader = fabric.add("router"), fabric.add("eu"), fabric.add("reader")
        fabric.link(router, "r-eu", "10.255.1.1/30", eu, "eu-r", "10.255.1.2/30")
        fabric.link(reader, "g-eu", "10.255.3.1/30", eu, "eu-g", "10.255.3.2/30")
        _add6(router, "r-eu", "2001:db8:1::1/64")
        _add6(eu, "eu-r", "2001:db8:1::2/64")
        _add6(reader, "g-eu", "2001:db8:3::1/64")
        _add6(eu, "eu-g", "2001:db8:3::2/64")
        eu.ip("addr", "add", PREFIX4, "dev", "lo")
        _add6(eu, "lo", PREFIX6)
        bird = Bird(router, workdir, "10.255.0.1", ROUTER_AS, [
            BirdPeer(BIRD_PROTOCOL[v], ROUTER[v], EU_TO_ROUTER[v], LOCAL_AS) for v in (4, 6)])
        bird.start()
        gobgp = Gobgp(reader, workdir, "10.255.0.3", READER_AS, [
            GobgpNeighbor(EU_TO_READER[v], LOCAL_AS, READER[v]) for v in (4, 6)])
        gobgp.start()
        yield Net(fabric, router, eu, reader, bird, gobgp, workdir)
    finally:
        try:
            if gobgp is not None:
                gobgp.stop()
            if bird is not None:
                bird.stop()
        finally:
            tag = fabric.tag
            fabric.close()
            assert namespaces_named(tag) == [], "namespaces left behind"
    for family, prefix in (("-4", PREFIX4), ("-6", PREFIX6)):
        root = subprocess.run(["ip", family, "route", "show", "exact", prefix], capture_output=True, text=True)
        assert root.stdout.strip() == "", f"an anycast route leaked into the root namespace: {root.stdout}"


@dataclass
class Region:
    server: ReadinessServer
    speaker: RegionSpeaker
    version: int

    @property
    def prefix(self) -> str:
        return PREFIX6 if self.version == 6 else PREFIX4


def region_config(version: int, role: str = "primary") -> RegionConfig:
    """eu-west peering over IPv`version` with BIRD and gobgpd; every attribute the settings can carry is set."""
    reader = {"address": READER[version], "as": READER_AS, "holdTime": 3, "localAddress": EU_TO_READER[version],
              "description": "gobgpd"}
    return RegionConfig("eu-west", "10.255.1.2", LOCAL_AS, ROUTER[version], ROUTER_AS,
                        [PREFIX6 if version == 6 else PREFIX4], PORT, role=role, med=100, prepend=1,
                        communities=["65001:100", "65001:1:2", "no-export"],
                        backup={"extraPrepend": 3, "medIncrease": 100},
                        local_address=EU_TO_ROUTER[version], extra_peers=[reader])


StartRegion = Callable[[RegionConfig], Region]


@pytest.fixture
def start_region(net: Net, request: pytest.FixtureRequest) -> Iterator[StartRegion]:
    """Starts a region (gateway stand-in, then ExaBGP + speaker); stops it after the test and waits until neither
    BIRD nor gobgpd holds its routes, so the next test starts from empty tables."""
    started: list[Region] = []
    failed_before = request.session.testsfailed

    def start(config: RegionConfig) -> Region:
        version = 6 if ":" in config.prefixes[0] else 4
        workdir = net.workdir / request.node.name.replace("/", "_").replace("[", "_").replace("]", "")
        server = ReadinessServer(net.eu, workdir, PORT, config.region, host="::")
        region = Region(server, RegionSpeaker(net.eu, workdir, config), version)
        started.append(region)
        # a previous test's session with gobgpd ended moments ago: let gobgpd's idle hold pass first, so this
        # ExaBGP does not start with a few refused connections and a longer back-off
        wait_until(lambda: net.gobgp.accepting(EU_TO_READER[version]), 15, "gobgpd to accept the region again")
        server.start()
        region.speaker.start()
        return region

    yield start
    for region in started:
        try:
            region.speaker.stop()
        finally:
            region.server.kill()
        if request.session.testsfailed > failed_before:
            print(f"--- {region.speaker.config.region}: ExaBGP and speaker log ---\n{region.speaker.logs()}")
            print(f"--- gobgpd log ---\n{net.gobgp.logs()}")
        wait_until(partial(_dropped, net, region.prefix), 10, "BIRD and gobgpd to drop the stopped region's routes")


def _dropped(net: Net, prefix: str) -> bool:
    return net.bird.routes(prefix) == [] and net.gobgp.paths(prefix) == []


# What a peer must receive from `region_config(...)` (AS path, MED), by role: the local AS once plus asPathPrepend 1,
# and med 100; a backup region adds backup.extraPrepend 3 and backup.medIncrease 100.
EXPECTED = {"primary": ([LOCAL_AS] * 2, 100), "backup": ([LOCAL_AS] * 5, 200)}


def _one_path(net: Net, region: Region) -> GobgpPath | None:
    paths = net.gobgp.paths(region.prefix)
    return paths[0] if len(paths) == 1 else None


def _via(net: Net, region: Region) -> str:
    route = kernel_route(net.router, region.prefix)
    return route.split(" via ")[1].split()[0] if " via " in route else ""


def _report(what: str, seconds: float) -> None:
    print(f"TIMING {what}: {seconds * 1000:.0f} ms")


def _check_received(net: Net, region: Region) -> None:
    """Both peers hold exactly one path with the region's attributes; next hop = the region's end of each session."""
    config, v = region.speaker.config, region.version
    as_path, med = EXPECTED[config.role]
    path = _one_path(net, region)
    assert path is not None, net.gobgp.paths(region.prefix)
    print(f"gobgpd received: {path}")
    assert path.prefix == region.prefix and path.best
    assert path.neighbor == EU_TO_READER[v]
    assert path.next_hop == EU_TO_READER[v]  # next-hop self on the gobgpd session
    assert path.as_path == as_path
    assert path.med == med
    assert path.communities == ["65001:100", "65535:65281"]  # no-export is 0xFFFFFF01
    assert path.large_communities == ["65001:1:2"]
    assert path.extended_communities == []  # the settings have none to send
    assert path.origin == 0  # IGP

    [route] = net.bird.routes(region.prefix)
    assert route.protocol == BIRD_PROTOCOL[v] and route.best
    assert route.next_hop == EU_TO_ROUTER[v]  # next-hop self on the BIRD session
    assert route.as_path == as_path and route.med == med
    assert route.communities == ["65001:100", "65535:65281"]
    assert route.large_communities == ["65001:1:2"]
    assert _via(net, region) == EU_TO_ROUTER[v]
    status = region.speaker.status()
    assert status["announced"] is True and status["state"] == "announced", status
    assert status["sessions"] == {ROUTER[v]: "established", READER[v]: "established"}, status


def _check_withdrawn(net: Net, region: Region) -> None:
    """The gateway turns unready: both peers lose the route by an UPDATE, their sessions stay up."""
    region.server.set("503")
    took = wait_until(lambda: net.gobgp.paths(region.prefix) == [], 5, "gobgpd to see the withdraw")
    _report(f"IPv{region.version} unready -> gone from gobgpd (polled)", took)
    wait_until(lambda: kernel_route(net.router, region.prefix) == "", 5, "the router's kernel route to go")
    assert net.bird.routes(region.prefix) == []
    assert net.gobgp.session_up(EU_TO_READER[region.version])
    assert net.bird.session_up(BIRD_PROTOCOL[region.version])
    status = region.speaker.status()
    assert status["announced"] is False and status["state"] == "withdrawn", status


def _check_reannounced(net: Net, region: Region) -> None:
    region.server.set("200")
    took = wait_until(lambda: _one_path(net, region) is not None and _via(net, region) == EU_TO_ROUTER[
        region.version], 5, "the route back in gobgpd and in the router's kernel")
    _report(f"IPv{region.version} ready again -> back in gobgpd and the kernel (polled)", took)
    _check_received(net, region)


@pytest.mark.parametrize("role", ["primary", "backup"])
def test_gobgpd_receives_the_region_attributes_and_the_withdraw(net: Net, start_region: StartRegion,
                                                                role: str) -> None:
    region = start_region(region_config(4, role))
    took = wait_until(lambda: _one_path(net, region) is not None and _via(net, region) == EU_TO_ROUTER[4],
                      TIMEOUT, "the route in gobgpd and in the router's kernel")
    _report("start of ExaBGP+speaker -> route in gobgpd and the kernel (polled)", took)
    _check_received(net, region)
    _check_withdrawn(net, region)
    _check_reannounced(net, region)


def test_ipv6_prefix_over_ipv6_sessions(net: Net, start_region: StartRegion) -> None:
    region = start_region(region_config(6))
    took = wait_until(lambda: _via(net, region) == EU_TO_ROUTER[6], TIMEOUT, "the IPv6 route in the kernel")
    _report("start of ExaBGP+speaker -> IPv6 route in the router's kernel (polled)", took)
    wait_until(lambda: _one_path(net, region) is not None, 5, "the IPv6 route in gobgpd")
    route = kernel_route(net.router, PREFIX6)
    print(f"router's kernel: {route}")
    assert route.startswith(f"{ANYCAST6} via {EU_TO_ROUTER[6]} dev r-eu proto bird")
    _check_received(net, region)
    # and traffic to the anycast address reaches the region over IPv6
    curl = net.router.run("curl", "-s", "-g", "--max-time", "2", f"http://[{ANYCAST6}]:{PORT}/whoami", check=False)
    assert curl.stdout == "eu-west", curl

    _check_withdrawn(net, region)
    assert net.router.run("curl", "-s", "-g", "--max-time", "2", f"http://[{ANYCAST6}]:{PORT}/whoami",
                          check=False).returncode != 0
    _check_reannounced(net, region)


@pytest.mark.parametrize(("peer", "prefix", "message"), [
    ("10.255.1.1", PREFIX6, "prefixes[0]: an IPv6 prefix needs IPv6 peers"),
    ("2001:db8:1::1", PREFIX4, "prefixes[0]: an IPv4 prefix needs IPv4 peers"),
])
def test_bgp_config_refuses_a_prefix_of_the_other_family_in_one_line(tmp_path: Path, peer: str, prefix: str,
                                                                     message: str) -> None:
    """A session of one family cannot carry the other's prefixes with next-hop self (it would have to make up a
    next hop): `meshcast bgp config` says so on one line, naming the field, and renders nothing."""
    doc = {"region": "eu-west", "routerId": "10.255.1.2", "localAs": LOCAL_AS, "prefixes": [prefix],
           "peers": [{"address": peer, "as": ROUTER_AS}]}
    region_file = tmp_path / "region.yaml"
    region_file.write_text(yaml.safe_dump(doc))
    result = subprocess.run([*MESHCAST, "bgp", "config", "--region-file", str(region_file)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"Error: {region_file}: ") and message in lines[0], lines[0]
