"""Real BGP for tests: BIRD 2 as the router, ExaBGP with our speaker as a region, a readiness server to flip.

- `Bird`: a BIRD 2 in the router namespace (config written here), its `kernel` protocol exporting BGP routes into
  the namespace's table; `birdc` through a per-test control socket.
- `RegionSpeaker`: `meshcast bgp run --region-file ...` in a region namespace, i.e. ExaBGP (the same PID, it execs)
  running `meshcast bgp speaker` as its process.
- `ReadinessServer`: a stdlib HTTP server in a region namespace standing in for the gateway: `GET /ready` answers
  what its state file says (200, 503, or `hang`: accept and never answer); any other path answers the region name.
- `RouteWatcher`: `ip -n ROUTER monitor route`, timestamped per line on arrival, to time route changes.
- `Gobgp`: gobgpd in a namespace of its own, a second reader of what a region announces: it installs nothing, its
  RIB is read as JSON (`gobgp global rib -j`) through its API on the namespace's loopback.
Every process is started through `Netns.popen`, so the fabric kills it by PID when the test ends.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from tests.support.netns import Netns
from tests.support.process import stop_process

REPO = Path(__file__).resolve().parents[2]
MESHCAST = [sys.executable, "-m", "meshcast.cli.main"]

# --- the router ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BirdPeer:
    name: str
    local: str
    address: str
    asn: int

    @property
    def ipv6(self) -> bool:
        """An IPv6 session (the address says so): it carries the ipv6 channel instead of ipv4."""
        return ":" in self.address


class Bird:
    """BIRD 2 in `ns`, AS `asn`, one BGP protocol per peer, short timers so sessions come back in about a second.

    An IPv6 peer gets an ipv6 channel, and the router an IPv6 `kernel` protocol beside the IPv4 one.
    """

    def __init__(self, ns: Netns, workdir: Path, router_id: str, asn: int, peers: Sequence[BirdPeer]) -> None:
        self.ns, self.workdir, self.router_id, self.asn, self.peers = ns, workdir, router_id, asn, list(peers)
        self.conf = workdir / "bird.conf"
        self.socket = workdir / "bird.ctl"
        self.log = workdir / "bird.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None

    def config(self) -> str:
        lines = [
            f"router id {self.router_id};",
            "protocol device { scan time 1; }",
            "protocol kernel { ipv4 { export where source = RTS_BGP; import none; }; }",
        ]
        if any(peer.ipv6 for peer in self.peers):
            lines.append("protocol kernel { ipv6 { export where source = RTS_BGP; import none; }; }")
        for peer in self.peers:
            channel = "ipv6" if peer.ipv6 else "ipv4"
            lines.append(f"""protocol bgp {peer.name} {{
  local {peer.local} as {self.asn};
  neighbor {peer.address} as {peer.asn};
  hold time 3; keepalive time 1;
  connect delay time 1; connect retry time 1; error wait time 1, 2;
  graceful restart on;
  {channel} {{ import all; export none; }};
}}""")
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        self.conf.write_text(self.config())
        self._log_handle = self.log.open("ab")
        self.proc = self.ns.popen(["bird", "-f", "-c", str(self.conf), "-s", str(self.socket)],
                                  stdout=self._log_handle, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bird exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            if self.socket.exists() and self.birdc("show", "status", check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError("bird did not answer on its control socket within 10 s")

    def stop(self, *, kill: bool = False) -> None:
        stop_process(self.proc, kill=kill, grace=5)
        self.proc = None
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def birdc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["birdc", "-s", str(self.socket), *args], capture_output=True, text=True, timeout=5)
        if check and result.returncode != 0:
            raise RuntimeError(f"birdc {' '.join(args)}: {result.stdout}{result.stderr}")
        return result

    def routes(self, prefix: str) -> list[BirdRoute]:
        """Every path BIRD holds for `prefix` (`show route all`), best first as BIRD prints it."""
        result = self.birdc("show", "route", "for", prefix, "all", check=False)
        if "Network not found" in result.stdout:
            return []
        if result.returncode != 0:
            raise RuntimeError(f"birdc show route: {result.stdout}{result.stderr}")
        return parse_show_route_all(result.stdout)

    def prefixes(self, protocol: str) -> list[str]:
        """Every prefix BIRD holds from `protocol` (`show route protocol NAME`), whatever its table."""
        result = self.birdc("show", "route", "protocol", protocol, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"birdc show route protocol {protocol}: {result.stdout}{result.stderr}")
        return [line.split()[0] for line in result.stdout.splitlines()
                if line[:1].strip() and " unicast [" in line]  # a route's first line starts with its prefix

    def session_up(self, name: str) -> bool:
        return "Established" in self.birdc("show", "protocols", name, check=False).stdout


@dataclass(kw_only=True)
class Received:
    """The attributes of a path as a peer received them (BIRD's `show route all`, gobgpd's RIB)."""

    as_path: list[int] = field(default_factory=list)
    med: int | None = None
    next_hop: str = ""
    communities: list[str] = field(default_factory=list)
    large_communities: list[str] = field(default_factory=list)


@dataclass
class BirdRoute(Received):
    protocol: str
    best: bool


_ROUTE_HEAD = re.compile(r"^(?:\S+)?\s+unicast \[(?P<proto>\S+) [^\]]*\] (?P<best>\*)?")


def parse_show_route_all(text: str) -> list[BirdRoute]:
    routes: list[BirdRoute] = []
    for line in text.splitlines():
        head = _ROUTE_HEAD.match(line)
        if head:
            routes.append(BirdRoute(head["proto"], head["best"] is not None))
            continue
        if not routes:
            continue
        key, _, value = line.strip().partition(": ")
        route = routes[-1]
        if key == "BGP.as_path":
            route.as_path = [int(x) for x in value.split()]
        elif key == "BGP.med":
            route.med = int(value)
        elif key == "BGP.next_hop":
            route.next_hop = value.split()[0]
        elif key == "BGP.community":
            route.communities = [f"{a}:{b}" for a, b in re.findall(r"\((\d+),\s*(\d+)\)", value)]
        elif key == "BGP.large_community":
            route.large_communities = [f"{a}:{b}:{c}" for a, b, c in
                                       re.findall(r"\((\d+),\s*(\d+),\s*(\d+)\)", value)]
    return routes


# --- the region ----------------------------------------------------------------------------------------------------

_READINESS_SERVER = r"""
import http.server, os, socket, socketserver, sys, time
port, state, name, host = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path.startswith("/ready"):
            try:
                mode = open(state).read().strip()
            except OSError:
                mode = "503"
            if mode == "hang":
                time.sleep(3600)
                return
            code, body = (200, b'{"ready": true}') if mode == "200" else (503, b'{"ready": false}')
        else:
            code, body = 200, name.encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

if ":" in host:  # "::" also takes IPv4 (bindv6only is off in a fresh namespace)
    Server.address_family = socket.AF_INET6
server = Server((host, port), Handler)
open(state + ".up", "w").write(str(os.getpid()))
server.serve_forever()
"""


class ReadinessServer:
    """The gateway's stand-in, bound on `host`:`port` inside `ns` only (its loopback and its anycast address);
    `host="::"` answers on IPv6 and IPv4 alike."""

    def __init__(self, ns: Netns, workdir: Path, port: int, name: str, mode: str = "200",
                 host: str = "0.0.0.0") -> None:
        self.ns, self.port, self.name, self.host = ns, port, name, host
        workdir.mkdir(parents=True, exist_ok=True)
        self.state = workdir / f"ready-{name}-{port}.state"
        self.proc: subprocess.Popen[bytes] | None = None
        self.set(mode)

    def set(self, mode: str) -> None:
        """Flip what `/ready` answers: "200", "503" or "hang" (atomic: the server reads the file per request)."""
        tmp = self.state.with_suffix(".tmp")
        tmp.write_text(mode)
        os.replace(tmp, self.state)

    def start(self) -> None:
        up = Path(str(self.state) + ".up")
        up.unlink(missing_ok=True)
        self.proc = self.ns.popen([sys.executable, "-c", _READINESS_SERVER, str(self.port), str(self.state),
                                   self.name, self.host], stderr=subprocess.DEVNULL)
        wait_until(lambda: up.exists(), 10, "the readiness server to listen")

    def kill(self) -> None:
        stop_process(self.proc, kill=True)
        self.proc = None


@dataclass
class RegionConfig:
    region: str
    router_id: str
    local_as: int
    peer_address: str
    peer_as: int
    prefixes: list[str]
    readiness_port: int
    role: str = "primary"
    med: int | None = 100
    prepend: int = 0
    communities: list[str] = field(default_factory=list)
    backup: dict[str, int] | None = None
    damping: dict[str, float] | None = None
    graceful_restart: int = 0
    local_address: str | None = None  # the region's end of the router session; default: router_id
    extra_peers: list[dict[str, Any]] = field(default_factory=list)  # region-file `peers` entries, after the router

    def document(self, state_dir: Path) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "region": self.region, "routerId": self.router_id, "localAs": self.local_as, "role": self.role,
            "prefixes": self.prefixes,
            "peers": [{"address": self.peer_address, "as": self.peer_as, "holdTime": 3,
                       "localAddress": self.local_address or self.router_id, "description": "router"},
                      *self.extra_peers],
            "attributes": {"med": self.med, "asPathPrepend": self.prepend, "communities": self.communities},
            "readiness": {"url": f"http://127.0.0.1:{self.readiness_port}/ready"},
            "gracefulRestart": self.graceful_restart,
            "stateDir": str(state_dir),
        }
        if self.backup is not None:
            doc["backup"] = self.backup
        # tests flip the gateway many times a minute: a wide flap budget unless a test is about damping
        doc["damping"] = self.damping or {"maxChanges": 100}
        return doc


class RegionSpeaker:
    """ExaBGP + speaker for one region in `ns`, started with `meshcast bgp run` (exec: the PID is ExaBGP's)."""

    def __init__(self, ns: Netns, workdir: Path, config: RegionConfig) -> None:
        self.ns, self.config = ns, config
        self.dir = workdir / config.region
        self.dir.mkdir(parents=True, exist_ok=True)
        self.region_file = self.dir / "region.yaml"
        self.log = self.dir / "exabgp.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None
        self.write_settings()

    def write_settings(self) -> None:
        self.region_file.write_text(yaml.safe_dump(self.config.document(self.dir), sort_keys=False))

    @property
    def status_file(self) -> Path:
        return self.dir / f"{self.config.region}.status.json"

    def status(self) -> dict[str, Any]:
        try:
            doc: dict[str, Any] = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {}
        return doc

    def start(self) -> None:
        self.status_file.unlink(missing_ok=True)
        self._log_handle = self.log.open("ab")
        self.proc = self.ns.popen([*MESHCAST, "bgp", "run", "--region-file", str(self.region_file)],
                                  stdout=self._log_handle, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})

    def speaker_pid(self) -> int | None:
        pid = self.status().get("pid")
        return pid if isinstance(pid, int) else None

    def stop(self, *, kill: bool = False) -> None:
        """Stop ExaBGP (SIGTERM, or SIGKILL), then make sure its speaker followed it (it exits on stdin EOF)."""
        speaker = self.speaker_pid()
        stop_process(self.proc, kill=kill, grace=5)
        self.proc = None
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if speaker is not None and _wait_gone(speaker, 5) is False:
            os.kill(speaker, signal.SIGKILL)  # ours: ExaBGP started it for this test
            raise AssertionError(f"the speaker (pid {speaker}) outlived its ExaBGP")

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie is gone for our purposes (ExaBGP, its parent, is dead and init reaps it)
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.02)
    return False


# --- watching the router's kernel table ----------------------------------------------------------------------------


class RouteWatcher:
    """`ip -n NS monitor route`, each line stamped with `time.monotonic()` when it arrives."""

    def __init__(self, ns: Netns) -> None:
        self.ns = ns
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self.proc = ns.popen(["ip", "monitor", "route"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            stamp = time.monotonic()
            with self._cond:
                self.lines.append((stamp, raw.decode(errors="replace").strip()))
                self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def quiet_for(self, seconds: float) -> bool:
        """Whether no route change arrives within `seconds` (blocks that long)."""
        before = self.mark()
        time.sleep(seconds)
        return self.mark() == before

    def wait_line(self, predicate: Callable[[str], bool], since: int, timeout: float) -> float:
        """The arrival time of the first line after `since` matching `predicate`; fails after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            index = since
            while True:
                while index < len(self.lines):
                    stamp, line = self.lines[index]
                    index += 1
                    if predicate(line):
                        return stamp
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [line for _, line in self.lines[since:]]
                    raise AssertionError(f"no matching route change within {timeout} s; saw {seen}")
                self._cond.wait(remaining)

    def close(self) -> None:
        stop_process(self.proc, kill=True)


def kernel_route(ns: Netns, prefix: str) -> str:
    """The router's kernel route for an anycast /32 or /128 (`ip [-6] route show exact`), '' if none."""
    family = ["-6"] if ":" in prefix else []
    return ns.ip(*family, "route", "show", "exact", prefix).strip()


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.02) -> float:
    """Poll `predicate` until truthy; returns the seconds it took, fails naming `what` after `timeout`."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# --- a second reader: gobgpd ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GobgpNeighbor:
    address: str  # the region's end of the link
    asn: int
    local: str  # gobgpd's own end

    @property
    def family(self) -> str:
        return "ipv6-unicast" if ":" in self.address else "ipv4-unicast"


@dataclass
class GobgpPath(Received):
    """One path of gobgpd's RIB, the attributes as it decoded them off the wire."""

    prefix: str
    neighbor: str
    best: bool
    extended_communities: list[str] = field(default_factory=list)
    origin: int | None = None


def parse_gobgp_rib(doc: Any) -> list[GobgpPath]:
    """`gobgp global rib -j` (a mapping prefix -> paths) as `GobgpPath`s. Attribute type codes are BGP's own:
    1 ORIGIN, 2 AS_PATH, 3 NEXT_HOP, 4 MED, 8 COMMUNITIES, 14 MP_REACH_NLRI (IPv6 next hop), 16 extended, 32 large."""
    paths = []
    for prefix, entries in (doc or {}).items():
        for entry in entries:
            path = GobgpPath(prefix, str(entry.get("neighbor-ip", "")), bool(entry.get("best")))
            for attr in entry.get("attrs", []):
                kind = attr.get("type")
                if kind == 1:
                    path.origin = attr.get("value")
                elif kind == 2:
                    path.as_path = [asn for segment in attr.get("as_paths", []) for asn in segment.get("asns", [])]
                elif kind in (3, 14):
                    path.next_hop = str(attr.get("nexthop", ""))
                elif kind == 4:
                    path.med = attr.get("metric")
                elif kind == 8:
                    path.communities = [f"{c >> 16}:{c & 0xFFFF}" for c in attr.get("communities", [])]
                elif kind == 16:
                    path.extended_communities = [json.dumps(c, sort_keys=True) for c in attr.get("value", [])]
                elif kind == 32:
                    path.large_communities = [f"{c['ASN']}:{c['LocalData1']}:{c['LocalData2']}"
                                              for c in attr.get("value", [])]
            paths.append(path)
    return paths


_GOBGP_STATES = {0: "unknown", 1: "idle", 2: "connect", 3: "active", 4: "opensent", 5: "openconfirm",
                 6: "established"}  # apipb.PeerState.SessionState, as `gobgp neighbor ADDR -j` writes it


class Gobgp:
    """gobgpd in `ns` (a namespace of its own), AS `asn`, one neighbor per region link; installs no route (no zebra).

    Its gRPC API listens on the namespace's loopback only (`api_port` cannot clash with anything outside it), and
    the `gobgp` CLI is run inside the namespace with the same host and port. pprof is off.
    """

    def __init__(self, ns: Netns, workdir: Path, router_id: str, asn: int, neighbors: Sequence[GobgpNeighbor],
                 api_port: int = 50051) -> None:
        self.ns, self.router_id, self.asn, self.neighbors = ns, router_id, asn, list(neighbors)
        self.api_port = api_port
        self.conf = workdir / "gobgpd.toml"
        self.log = workdir / "gobgpd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None

    def config(self) -> str:
        lines = ["[global.config]", f"  as = {self.asn}", f'  router-id = "{self.router_id}"', ""]
        for n in self.neighbors:
            lines += [
                "[[neighbors]]",
                "  [neighbors.config]", f'    neighbor-address = "{n.address}"', f"    peer-as = {n.asn}",
                "  [neighbors.transport.config]", f'    local-address = "{n.local}"',
                "  [neighbors.timers.config]", "    connect-retry = 1", "    hold-time = 3",
                "    keepalive-interval = 1",
                "  [[neighbors.afi-safis]]", "    [neighbors.afi-safis.config]", f'      afi-safi-name = "{n.family}"',
                "",
            ]
        return "\n".join(lines)

    def start(self) -> None:
        self.conf.write_text(self.config())
        self._log_handle = self.log.open("ab")
        self.proc = self.ns.popen(["gobgpd", "-f", str(self.conf), "-t", "toml", "--log-plain", "-l", "info",
                                   f"--api-hosts=127.0.0.1:{self.api_port}", "--pprof-disable"],
                                  stdout=self._log_handle, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gobgpd exited ({self.proc.returncode}): {self.logs()}")
            if self.cli("global", check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"gobgpd did not answer on its API within 10 s: {self.logs()}")

    def stop(self) -> None:
        stop_process(self.proc, grace=5)
        self.proc = None
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.ns.run("gobgp", "-u", "127.0.0.1", "-p", str(self.api_port), *args, check=check)

    def rib(self, family: str = "ipv4") -> list[GobgpPath]:
        """Every path gobgpd holds for `family` ("ipv4" or "ipv6")."""
        out = self.cli("global", "rib", "-a", family, "-j").stdout
        return parse_gobgp_rib(json.loads(out) if out.strip() else {})

    def paths(self, prefix: str) -> list[GobgpPath]:
        return [p for p in self.rib("ipv6" if ":" in prefix else "ipv4") if p.prefix == prefix]

    def session_state(self, address: str) -> str:
        """The neighbor's FSM state ("idle", "active", ..., "established"); "" if gobgpd does not say."""
        out = self.cli("neighbor", address, "-j", check=False).stdout
        try:
            state = json.loads(out)["state"].get("session_state", 0)
        except (ValueError, KeyError, TypeError, AttributeError):
            return ""
        if isinstance(state, int):
            return _GOBGP_STATES.get(state, str(state))
        return str(state).lower()

    def session_up(self, address: str) -> bool:
        return self.session_state(address) == "established"

    def accepting(self, address: str) -> bool:
        """Whether gobgpd would take a connection from `address` now. After a session ends it stays idle for a
        fixed 5 s (its `holdtimeIdle`, not configurable: `idle-hold-time-after-reset` does not change it) and closes
        every connection the peer opens meanwhile, which only makes ExaBGP back off for longer."""
        return self.session_state(address) not in ("", "unknown", "idle")

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
