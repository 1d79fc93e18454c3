"""One region, two kinds of peer: BIRD 2 (the router, installing routes) and gobgpd (a second reader of the wire).

Topology (created and removed by the module's fixture; nothing is routed in the root namespace):

    [router: BIRD, AS 65000]--veth--[eu: ExaBGP + speaker, AS 65001]--veth--[reader: gobgpd, AS 65100]
     10.255.1.1/30, 2001:db8:1::1/64     10.255.1.2, 2001:db8:1::2 | 10.255.3.2, 2001:db8:3::2     10.255.3.1/30,
                                                                                                    2001:db8:3::1/64
    198.51.100.1/32 and 2001:db8:ff::1/128 on eu's loopback.

The region peers with both over IPv4 (an IPv4 prefix), or is dual-stack: one region file with IPv4 and IPv6 sessions
to both and a prefix of each family, each prefix announced only over the sessions of its family. next-hop self is
the region's own address on each session, so BIRD and gobgpd each see a different next hop for the same
announcement. gobgpd runs without zebra: it installs nothing, and its RIB is read as JSON through its API on its
namespace's loopback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

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
    versions: tuple[int, ...]  # the IP families of its prefixes, hence of the sessions that carry them


PREFIX = {4: PREFIX4, 6: PREFIX6}
ANYCAST = {4: "198.51.100.1", 6: ANYCAST6}
# every attribute the settings can carry is set, so each one is checked on the wire
ATTRIBUTES: dict[str, Any] = {"med": 100, "prepend": 1, "communities": ["65001:100", "65001:1:2", "no-export"],
                              "backup": {"extraPrepend": 3, "medIncrease": 100}}


def _reader(version: int) -> dict[str, Any]:
    return {"address": READER[version], "as": READER_AS, "holdTime": 3, "localAddress": EU_TO_READER[version],
            "description": f"gobgpd-v{version}"}


def region_config(version: int, role: str = "primary") -> RegionConfig:
    """eu-west peering over IPv`version` only, with BIRD and gobgpd."""
    return RegionConfig("eu-west", "10.255.1.2", LOCAL_AS, ROUTER[version], ROUTER_AS, [PREFIX[version]], PORT,
                        role=role, local_address=EU_TO_ROUTER[version], extra_peers=[_reader(version)], **ATTRIBUTES)


def dual_stack_config() -> RegionConfig:
    """eu-west in one file: IPv4 and IPv6 sessions to both BIRD and gobgpd, an IPv4 and an IPv6 prefix."""
    router6 = {"address": ROUTER[6], "as": ROUTER_AS, "holdTime": 3, "localAddress": EU_TO_ROUTER[6],
               "description": "router-v6"}
    return RegionConfig("eu-west", "10.255.1.2", LOCAL_AS, ROUTER[4], ROUTER_AS, [PREFIX4, PREFIX6], PORT,
                        local_address=EU_TO_ROUTER[4], extra_peers=[router6, _reader(4), _reader(6)], **ATTRIBUTES)


def _versions(config: RegionConfig) -> tuple[int, ...]:
    return tuple(sorted({6 if ":" in prefix else 4 for prefix in config.prefixes}))


StartRegion = Callable[[RegionConfig], Region]


@pytest.fixture
def start_region(net: Net, request: pytest.FixtureRequest) -> Iterator[StartRegion]:
    """Starts a region (gateway stand-in, then ExaBGP + speaker); stops it after the test and waits until neither
    BIRD nor gobgpd holds its routes, so the next test starts from empty tables."""
    started: list[Region] = []
    failed_before = request.session.testsfailed

    def start(config: RegionConfig) -> Region:
        versions = _versions(config)
        workdir = net.workdir / request.node.name.replace("/", "_").replace("[", "_").replace("]", "")
        server = ReadinessServer(net.eu, workdir, PORT, config.region, host="::")
        region = Region(server, RegionSpeaker(net.eu, workdir, config), versions)
        started.append(region)
        # a previous test's session with gobgpd ended moments ago: let gobgpd's idle hold pass first (on every
        # family this region uses), so this ExaBGP does not start with refused connections and a longer back-off
        for v in versions:
            wait_until(lambda v=v: net.gobgp.accepting(EU_TO_READER[v]), 15, f"gobgpd to accept the region (IPv{v})")
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
        for v in region.versions:
            wait_until(partial(_dropped, net, PREFIX[v]), 10, "BIRD and gobgpd to drop the stopped region's routes")


def _dropped(net: Net, prefix: str) -> bool:
    return net.bird.routes(prefix) == [] and net.gobgp.paths(prefix) == []


# What a peer must receive (AS path, MED), by role: the local AS once plus asPathPrepend 1, and med 100; a backup
# region adds backup.extraPrepend 3 and backup.medIncrease 100.
EXPECTED = {"primary": ([LOCAL_AS] * 2, 100), "backup": ([LOCAL_AS] * 5, 200)}


def _one_path(net: Net, v: int) -> GobgpPath | None:
    paths = net.gobgp.paths(PREFIX[v])
    return paths[0] if len(paths) == 1 else None


def _via(net: Net, v: int) -> str:
    route = kernel_route(net.router, PREFIX[v])
    return route.split(" via ")[1].split()[0] if " via " in route else ""


def _installed(net: Net, region: Region) -> bool:
    """Every prefix of the region in gobgpd and in the router's kernel, next hop the region's end of its session."""
    return all(_one_path(net, v) is not None and _via(net, v) == EU_TO_ROUTER[v] for v in region.versions)


def _gone(net: Net, region: Region) -> bool:
    return all(net.gobgp.paths(PREFIX[v]) == [] and kernel_route(net.router, PREFIX[v]) == ""
               for v in region.versions)


def _report(what: str, seconds: float) -> None:
    print(f"TIMING {what}: {seconds * 1000:.0f} ms")


def _sessions(region: Region) -> dict[str, str]:
    return {address: "established" for v in region.versions for address in (ROUTER[v], READER[v])}


def _check_received(net: Net, region: Region) -> None:
    """Each peer holds exactly the region's prefix of its own family, one path with the region's attributes, next hop
    the region's end of that session; nothing reached a session of the other family."""
    config = region.speaker.config
    as_path, med = EXPECTED[config.role]
    for v in region.versions:
        path = _one_path(net, v)
        assert path is not None, net.gobgp.paths(PREFIX[v])
        print(f"gobgpd received: {path}")
        assert path.prefix == PREFIX[v] and path.best
        assert path.neighbor == EU_TO_READER[v]
        assert path.next_hop == EU_TO_READER[v]  # next-hop self on the gobgpd session of this family
        assert path.as_path == as_path
        assert path.med == med
        assert path.communities == ["65001:100", "65535:65281"]  # no-export is 0xFFFFFF01
        assert path.large_communities == ["65001:1:2"]
        assert path.extended_communities == []  # the settings have none to send
        assert path.origin == 0  # IGP

        [route] = net.bird.routes(PREFIX[v])
        assert route.protocol == BIRD_PROTOCOL[v] and route.best
        assert route.next_hop == EU_TO_ROUTER[v]  # next-hop self on the BIRD session of this family
        assert route.as_path == as_path and route.med == med
        assert route.communities == ["65001:100", "65535:65281"]
        assert route.large_communities == ["65001:1:2"]
        assert _via(net, v) == EU_TO_ROUTER[v]
    # exactly: each session carries its own family's prefix and nothing else
    expected = {v: [PREFIX[v]] if v in region.versions else [] for v in (4, 6)}
    for v in (4, 6):
        assert net.bird.prefixes(BIRD_PROTOCOL[v]) == expected[v], (v, net.bird.prefixes(BIRD_PROTOCOL[v]))
        assert [(p.prefix, p.neighbor) for p in net.gobgp.rib(f"ipv{v}")] == [
            (prefix, EU_TO_READER[v]) for prefix in expected[v]]
    wait_until(lambda: region.speaker.status().get("sessions") == _sessions(region), 5,
               "the speaker's status to show every session established")
    status = region.speaker.status()
    assert status["announced"] is True and status["state"] == "announced", status
    assert status["exabgp"]["errors"] == 0, status  # ExaBGP took every command: none named a family it lacks
    assert status["peerPrefixes"] == {address: [PREFIX[v]] for v in region.versions
                                      for address in (ROUTER[v], READER[v])}, status


def _curl(net: Net, v: int) -> subprocess.CompletedProcess[str]:
    host = f"[{ANYCAST[v]}]" if v == 6 else ANYCAST[v]
    return net.router.run("curl", "-s", "-g", f"-{v}", "--max-time", "2", f"http://{host}:{PORT}/whoami",
                          check=False)


def _check_withdrawn(net: Net, region: Region) -> None:
    """The gateway turns unready: both peers lose every prefix by an UPDATE, every session stays up."""
    region.server.set("503")
    took = wait_until(lambda: _gone(net, region), 5, "gobgpd and the router's kernel to see the withdraw")
    _report(f"{'+'.join(f'IPv{v}' for v in region.versions)} unready -> gone from gobgpd and the kernel (polled)",
            took)
    for v in region.versions:
        assert net.bird.routes(PREFIX[v]) == []
        assert net.gobgp.session_up(EU_TO_READER[v])
        assert net.bird.session_up(BIRD_PROTOCOL[v])
    status = region.speaker.status()
    assert status["announced"] is False and status["state"] == "withdrawn", status


def _check_reannounced(net: Net, region: Region) -> None:
    region.server.set("200")
    took = wait_until(lambda: _installed(net, region), 5, "the routes back in gobgpd and in the router's kernel")
    _report(f"{'+'.join(f'IPv{v}' for v in region.versions)} ready again -> back in gobgpd and the kernel (polled)",
            took)
    _check_received(net, region)


@pytest.mark.parametrize("role", ["primary", "backup"])
def test_gobgpd_receives_the_region_attributes_and_the_withdraw(net: Net, start_region: StartRegion,
                                                                role: str) -> None:
    region = start_region(region_config(4, role))
    took = wait_until(lambda: _installed(net, region), TIMEOUT, "the route in gobgpd and in the router's kernel")
    _report("start of ExaBGP+speaker -> route in gobgpd and the kernel (polled)", took)
    _check_received(net, region)
    _check_withdrawn(net, region)
    _check_reannounced(net, region)


def test_dual_stack_region_announces_each_prefix_over_the_sessions_of_its_family(net: Net,
                                                                                 start_region: StartRegion) -> None:
    """One region file, IPv4 and IPv6 sessions to BIRD and to gobgpd, an IPv4 and an IPv6 prefix: each peer gets
    exactly the prefix of its family, with next-hop self of that session; the router installs both and serves both."""
    region = start_region(dual_stack_config())
    took = wait_until(lambda: _installed(net, region), TIMEOUT, "both routes in gobgpd and in the router's kernel")
    _report("start of ExaBGP+speaker -> IPv4 and IPv6 routes in gobgpd and the kernel (polled)", took)
    route4, route6 = kernel_route(net.router, PREFIX4), kernel_route(net.router, PREFIX6)
    print(f"router's kernel: {route4} | {route6}")
    assert route4.startswith(f"{ANYCAST[4]} via {EU_TO_ROUTER[4]} dev r-eu proto bird"), route4  # ip route
    assert route6.startswith(f"{ANYCAST6} via {EU_TO_ROUTER[6]} dev r-eu proto bird"), route6  # ip -6 route
    _check_received(net, region)
    for v in (4, 6):  # traffic to the anycast address reaches the region over each family
        curl = _curl(net, v)
        assert curl.stdout == "eu-west", (v, curl)

    _check_withdrawn(net, region)
    for v in (4, 6):
        assert _curl(net, v).returncode != 0, v
    _check_reannounced(net, region)
    for v in (4, 6):
        curl = _curl(net, v)
        assert curl.stdout == "eu-west", (v, curl)


@pytest.mark.parametrize(("prefixes", "peers", "message", "unnamed"), [
    ([PREFIX4, PREFIX6], [ROUTER[4]], "prefixes[1]: an IPv6 prefix needs an IPv6 peer, and no peer is IPv6", "peers["),
    ([PREFIX4], [ROUTER[4], ROUTER[6]], "peers[1]: an IPv6 peer would carry nothing: no prefix is IPv6", "prefixes["),
], ids=["prefix-without-a-peer-of-its-family", "peer-without-a-prefix-of-its-family"])
def test_bgp_config_refuses_a_family_without_its_counterpart_in_one_line(tmp_path: Path, prefixes: list[str],
                                                                          peers: list[str], message: str,
                                                                          unnamed: str) -> None:
    """Each prefix goes only to the peers of its family: `meshcast bgp config` refuses a prefix no peer would carry,
    and a peer that would carry nothing, on one line naming the field, and renders nothing."""
    doc = {"region": "eu-west", "routerId": "10.255.1.2", "localAs": LOCAL_AS, "prefixes": prefixes,
           "peers": [{"address": peer, "as": ROUTER_AS} for peer in peers]}
    region_file = tmp_path / "region.yaml"
    region_file.write_text(yaml.safe_dump(doc))
    result = subprocess.run([*MESHCAST, "bgp", "config", "--region-file", str(region_file)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"Error: {region_file}: ") and message in lines[0], lines[0]
    assert unnamed not in lines[0], lines[0]  # the one violation only
