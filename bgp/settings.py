"""A region's BGP settings: read from YAML or JSON, checked field by field, frozen.

Every rule that fails is collected with its field path (`peers[1].holdTime`) and reported together on one line
(`ValidationError`), so an operator fixes a file in one pass. Nothing here does IO beyond reading the file named.

Example (every field but `region`, `routerId`, `localAs`, `prefixes`, `peers` has the default shown):

```yaml
region: eu-west
routerId: 10.255.1.2
localAs: 65001
role: primary                  # or backup: announce a worse path (see `backup`)
prefixes: [198.51.100.1/32]    # the anycast prefixes this region announces while its gateway is ready, each one
                               # to the peers of its own IP family (dual-stack: list both, and peers of both)
peers:
  - address: 10.255.1.1
    as: 65000
    holdTime: 9                # 3..65535 s; a hung speaker is noticed only when it expires
    localAddress: 10.255.1.2   # optional; also what `next-hop self` resolves to
    description: tor-1
attributes: {med: null, asPathPrepend: 0, communities: []}   # e.g. communities: ["65001:100", "65001:1:2"]
backup: {extraPrepend: 3, medIncrease: 100}                  # applied when role is backup
readiness: {url: "http://127.0.0.1:9901/ready", interval: 0.1, timeout: 0.08}
damping: {rise: 2, fall: 3, flapWindow: 60, maxChanges: 6, reuse: 10}
gracefulRestart: 0             # seconds; 0 = off (see docs/anycast.md: off is the safe default for anycast)
stateDir: /var/lib/meshcast/bgp
speaker: null                  # the command ExaBGP runs; default: this Python's `meshcast bgp speaker`
metrics: 127.0.0.1:9179        # where the speaker serves Prometheus /metrics (host:port, [v6]:port); null: off
```
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

from meshcast.errors import ValidationError, Violation, format_loc

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")

MAX_PREPEND = 10  # longer paths are filtered by many networks and buy nothing more
MAX_ASN = 4_294_967_295
RESERVED_ASNS = {0: "reserved (RFC 7607)", 23456: "AS_TRANS, reserved (RFC 6793)", 65535: "reserved (RFC 7300)",
                 MAX_ASN: "reserved (RFC 7300)"}
WELL_KNOWN_COMMUNITIES = ("no-export", "no-advertise", "no-export-subconfed", "nopeer", "blackhole")
_REGION = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_UNWRITABLE = re.compile(r"[\s;{}\"'#\[\]]")  # what exabgp.conf's tokeniser would split or swallow
DEFAULT_STATE_DIR = Path("/var/lib/meshcast/bgp")
TOP_FIELDS = {"region", "routerId", "localAs", "role", "prefixes", "peers", "attributes", "backup", "readiness",
              "damping", "gracefulRestart", "stateDir", "speaker", "metrics"}
DEFAULT_METRICS = ("127.0.0.1", 9179)  # 9000 + BGP's 179: clear of the 99xx admin ports


@dataclass(frozen=True)
class Peer:
    address: IPAddress
    asn: int
    hold_time: int = 9
    local_address: IPAddress | None = None
    description: str = ""


@dataclass(frozen=True)
class PathAttributes:
    """What a region's announcements carry. `prepend` counts extra copies of the local AS (eBGP peers only)."""

    med: int | None = None
    prepend: int = 0
    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()


@dataclass(frozen=True)
class Backup:
    extra_prepend: int = 3
    med_increase: int = 100


@dataclass(frozen=True)
class Readiness:
    url: str = "http://127.0.0.1:9901/ready"
    interval: float = 0.1
    timeout: float = 0.08

    @property
    def host(self) -> str:
        host = urlsplit(self.url).hostname or "127.0.0.1"
        return "127.0.0.1" if host == "localhost" else host

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 80

    @property
    def target(self) -> str:
        parts = urlsplit(self.url)
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


@dataclass(frozen=True)
class Damping:
    """Rise/fall in probes; the flap window and reuse time in seconds (see bgp/fsm.py for the rules)."""

    rise: int = 2
    fall: int = 3
    flap_window: float = 60.0
    max_changes: int = 6
    reuse: float = 10.0


@dataclass(frozen=True)
class RegionSettings:
    region: str
    router_id: ipaddress.IPv4Address
    local_as: int
    prefixes: tuple[IPNetwork, ...]
    peers: tuple[Peer, ...]
    role: str = "primary"
    attributes: PathAttributes = field(default_factory=PathAttributes)
    backup: Backup = field(default_factory=Backup)
    readiness: Readiness = field(default_factory=Readiness)
    damping: Damping = field(default_factory=Damping)
    graceful_restart: int = 0
    state_dir: Path = DEFAULT_STATE_DIR
    speaker: tuple[str, ...] | None = None
    source: str = ""
    metrics: tuple[str, int] | None = DEFAULT_METRICS  # host, port of /metrics; None: not served

    @property
    def is_backup(self) -> bool:
        return self.role == "backup"

    def prefixes_for(self, peer: Peer) -> tuple[IPNetwork, ...]:
        """The prefixes `peer` carries: those of its session's IP family. `next-hop self` is the session's own
        address, so an IPv4 session has no IPv6 next hop to give (ExaBGP 5 would silently put the router ID
        there) and the other way round. A valid region gives every peer at least one."""
        return tuple(p for p in self.prefixes if p.version == peer.address.version)

    def effective_attributes(self) -> PathAttributes:
        """The attributes announced: a backup region's path is made worse by `backup`."""
        attrs = self.attributes
        if not self.is_backup:
            return attrs
        med = attrs.med
        if self.backup.med_increase:
            med = (med or 0) + self.backup.med_increase
        return PathAttributes(med, attrs.prepend + self.backup.extra_prepend, attrs.communities,
                              attrs.large_communities)

    @property
    def status_file(self) -> Path:
        return self.state_dir / f"{self.region}.status.json"

    @property
    def drain_file(self) -> Path:
        return self.state_dir / f"{self.region}.drain"

    def speaker_command(self) -> tuple[str, ...]:
        if self.speaker is not None:
            return self.speaker
        region_file = str(Path(self.source).resolve()) if self.source else "region.yaml"
        return (sys.executable, "-m", "meshcast.cli.main", "bgp", "speaker", "--region-file", region_file)


# --- reading ------------------------------------------------------------------------------------------------------


def load_region_file(path: Path | str) -> RegionSettings:
    """Read and check one region's settings; raises `ValidationError` naming the file and every bad field."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValidationError(source, [Violation("", f"cannot read: {exc.strerror or exc}")]) from None
    return parse_region(decode(text, source=source), source=source)


def decode(text: str, *, source: str) -> Any:
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(source, [Violation("", f"invalid JSON at line {exc.lineno}: {exc.msg}")]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ValidationError(source, [Violation("", f"invalid YAML{where}: {problem}")]) from None


def parse_region(doc: Any, *, source: str = "") -> RegionSettings:
    """Check a decoded document; every violation is collected before raising."""
    c = _Checker()
    if not isinstance(doc, Mapping):
        raise ValidationError(source, [Violation("", "expected a mapping of region settings")])
    c.unknown(doc, TOP_FIELDS, ())
    region = c.get(doc, ("region",), _region, required=True) or "invalid"
    router_id = c.get(doc, ("routerId",), _router_id, required=True) or ipaddress.IPv4Address("0.0.0.1")
    local_as = c.get(doc, ("localAs",), _asn, required=True) or 1
    role = c.get(doc, ("role",), _choice("primary", "backup")) or "primary"
    # (index in the file, value) for each element that parsed: a bad element is left out, and later messages
    # must still name the others by their place in the file
    prefix_elements = c.elements(doc, ("prefixes",), required=True)
    prefix_items = c.parse_each(prefix_elements, _prefix)
    for index, dup in _duplicates(prefix_items):
        c.add(("prefixes", index), f"duplicate of prefixes[{dup}]")
    peer_elements = c.elements(doc, ("peers",), required=True)
    peer_items = [(int(loc[-1]), p) for loc, item in peer_elements if (p := _peer(c, loc, item))]
    for index, dup in _duplicates([(i, p.address) for i, p in peer_items]):
        c.add(("peers", index, "address"), f"duplicate peer (same address as peers[{dup}])")
    prefixes = tuple(p for _, p in prefix_items)
    peers = tuple(p for _, p in peer_items)

    attrs_doc = c.section(doc, "attributes", {"med", "asPathPrepend", "communities"})
    communities = c.items(attrs_doc, ("attributes", "communities"), _community)
    attributes = PathAttributes(
        med=c.get(attrs_doc, ("attributes", "med"), _int_range(0, MAX_ASN)),
        prepend=c.get(attrs_doc, ("attributes", "asPathPrepend"), _int_range(0, MAX_PREPEND)) or 0,
        communities=tuple(x for x in communities if x.count(":") < 2),
        large_communities=tuple(x for x in communities if x.count(":") == 2),
    )
    backup_doc = c.section(doc, "backup", {"extraPrepend", "medIncrease"})
    backup = Backup(
        extra_prepend=_default(c.get(backup_doc, ("backup", "extraPrepend"), _int_range(0, MAX_PREPEND)), 3),
        med_increase=_default(c.get(backup_doc, ("backup", "medIncrease"), _int_range(0, MAX_ASN)), 100),
    )
    ready_doc = c.section(doc, "readiness", {"url", "interval", "timeout"})
    defaults = Readiness()
    readiness = Readiness(
        url=c.get(ready_doc, ("readiness", "url"), _loopback_url) or defaults.url,
        interval=c.get(ready_doc, ("readiness", "interval"), _seconds(0.02, 10.0)) or defaults.interval,
        timeout=c.get(ready_doc, ("readiness", "timeout"), _seconds(0.005, 10.0)) or defaults.timeout,
    )
    if readiness.timeout >= readiness.interval:
        c.add(("readiness", "timeout"), f"must be shorter than readiness.interval ({readiness.interval} s), "
                                        "so probes keep their cadence")
    damp_doc = c.section(doc, "damping", {"rise", "fall", "flapWindow", "maxChanges", "reuse"})
    dd = Damping()
    damping = Damping(
        rise=c.get(damp_doc, ("damping", "rise"), _int_range(1, 100)) or dd.rise,
        fall=c.get(damp_doc, ("damping", "fall"), _int_range(1, 100)) or dd.fall,
        flap_window=_default(c.get(damp_doc, ("damping", "flapWindow"), _seconds(0, 86400)), dd.flap_window),
        max_changes=c.get(damp_doc, ("damping", "maxChanges"), _int_range(2, 1000)) or dd.max_changes,
        reuse=_default(c.get(damp_doc, ("damping", "reuse"), _seconds(0, 86400)), dd.reuse),
    )
    graceful = c.get(doc, ("gracefulRestart",), _int_range(0, 4095)) or 0
    state_dir = c.get(doc, ("stateDir",), _path) or DEFAULT_STATE_DIR
    speaker = c.get(doc, ("speaker",), _command)
    metrics = c.get(doc, ("metrics",), _listen_address) if "metrics" in doc else DEFAULT_METRICS  # null: off

    settings = RegionSettings(region, router_id, local_as, prefixes, peers, role, attributes, backup, readiness,
                              damping, graceful, state_dir, speaker, source, metrics)
    _cross_checks(c, settings, _Places(
        prefixes=tuple(i for i, _ in prefix_items), peers=tuple(i for i, _ in peer_items),
        all_prefixes=len(prefix_items) == len(prefix_elements),
        all_peers=len(peer_items) == len(peer_elements)))
    if c.violations:
        raise ValidationError(source, c.violations)
    return settings


@dataclass(frozen=True)
class _Places:
    """Where the parsed prefixes and peers are in the file (`prefixes[i]` is at `prefixes[self.prefixes[i]]`), and
    whether every element parsed."""

    prefixes: tuple[int, ...]
    peers: tuple[int, ...]
    all_prefixes: bool
    all_peers: bool


def _cross_checks(c: _Checker, s: RegionSettings, places: _Places) -> None:
    effective = s.effective_attributes()
    if s.is_backup and not (s.backup.extra_prepend or s.backup.med_increase):
        c.add(("backup",), "a backup region must announce a worse path: set extraPrepend or medIncrease above 0")
    if effective.prepend > MAX_PREPEND:
        c.add(("backup", "extraPrepend"), f"attributes.asPathPrepend + backup.extraPrepend is {effective.prepend}, "
                                          f"more than {MAX_PREPEND}")
    if effective.med is not None and effective.med > MAX_ASN:
        c.add(("backup", "medIncrease"), f"attributes.med + backup.medIncrease exceeds {MAX_ASN}")
    for index, peer in zip(places.peers, s.peers, strict=True):
        if peer.asn == s.local_as and effective.prepend:
            c.add(("peers", index, "as"), "an iBGP peer (same AS as localAs) cannot be sent AS-path prepends "
                                          "(asPathPrepend, or backup.extraPrepend with role backup)")
    # Each prefix goes only to the peers of its family (`prefixes_for`). The two checks below are skipped while an
    # element of the other list is invalid: that element may be the very peer, or prefix, that looks missing.
    peer_versions = {p.address.version for p in s.peers}
    prefix_versions = {p.version for p in s.prefixes}
    if places.all_peers and s.peers:
        for index, prefix in zip(places.prefixes, s.prefixes, strict=True):
            if prefix.version not in peer_versions:
                c.add(("prefixes", index), f"an IPv{prefix.version} prefix needs an IPv{prefix.version} peer, and "
                                           f"no peer is IPv{prefix.version}: each prefix is announced only to the "
                                           "peers of its family (next-hop self is the session's own address)")
    if places.all_prefixes and s.prefixes:
        for index, peer in zip(places.peers, s.peers, strict=True):
            version = peer.address.version
            if version not in prefix_versions:
                c.add(("peers", index), f"an IPv{version} peer would carry nothing: no prefix is IPv{version}, and "
                                        "each prefix is announced only to the peers of its family (add an "
                                        f"IPv{version} prefix or remove the peer)")


def _default(value: T | None, default: T) -> T:
    return default if value is None else value


def _duplicates(items: Sequence[tuple[int, object]]) -> list[tuple[int, int]]:
    """(index, index of the first equal value) for each repeated value of (index, value) pairs."""
    seen: dict[object, int] = {}
    out = []
    for index, value in items:
        if value in seen:
            out.append((index, seen[value]))
        else:
            seen[value] = index
    return out


# --- the checker ---------------------------------------------------------------------------------------------------


class _Invalid(Exception):
    """Raised by a field parser: the message names what is wrong, the checker adds the field path."""


Loc = tuple[str | int, ...]


class _Checker:
    def __init__(self) -> None:
        self.violations: list[Violation] = []

    def add(self, loc: Loc, message: str) -> None:
        self.violations.append(Violation(format_loc(loc), message))

    def unknown(self, doc: Mapping[Any, Any], known: set[str], loc: Loc) -> None:
        for key in doc:
            if key not in known:
                self.add((*loc, str(key)), f"unknown field (expected one of: {', '.join(sorted(known))})")

    def section(self, doc: Mapping[Any, Any], key: str, known: set[str]) -> Mapping[Any, Any]:
        value = doc.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.add((key,), f"expected a mapping, got {_show(value)}")
            return {}
        self.unknown(value, known, (key,))
        return value

    def get(self, doc: Mapping[Any, Any], loc: Loc, parse: Callable[[Any], T], *, required: bool = False) -> T | None:
        key = loc[-1]
        value = doc.get(key)
        if value is None:
            if required:
                self.add(loc, "required")
            return None
        try:
            return parse(value)
        except _Invalid as exc:
            self.add(loc, str(exc))
            return None

    def elements(self, doc: Mapping[Any, Any], loc: Loc, *, required: bool = False) -> list[tuple[Loc, Any]]:
        value = doc.get(loc[-1])
        if value is None or value == []:
            if required:
                self.add(loc, "required (a non-empty list)")
            return []
        if not isinstance(value, list):
            self.add(loc, f"expected a list, got {_show(value)}")
            return []
        return [((*loc, index), item) for index, item in enumerate(value)]

    def items(self, doc: Mapping[Any, Any], loc: Loc, parse: Callable[[Any], T], *,
              required: bool = False) -> list[T]:
        return [value for _, value in self.parse_each(self.elements(doc, loc, required=required), parse)]

    def parse_each(self, elements: list[tuple[Loc, Any]], parse: Callable[[Any], T]) -> list[tuple[int, T]]:
        """(index in the list, value) for each element that parses; the others are violations."""
        out = []
        for item_loc, item in elements:
            try:
                out.append((int(item_loc[-1]), parse(item)))
            except _Invalid as exc:
                self.add(item_loc, str(exc))
        return out


def _show(value: Any) -> str:
    """A value as it may appear in a one-line message: JSON-ish, newlines escaped, cut short."""
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- field parsers -------------------------------------------------------------------------------------------------


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {_show(value)}")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"expected an integer, got {_show(value)}")
    return value


def _int_range(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        number = _int(value)
        if not low <= number <= high:
            raise _Invalid(f"{number} is out of range ({low}..{high})")
        return number
    return parse


def _seconds(low: float, high: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise _Invalid(f"expected a number of seconds, got {_show(value)}")
        if not low <= value <= high:
            raise _Invalid(f"{value} is out of range ({low}..{high} s)")
        return float(value)
    return parse


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise _Invalid(f"expected one of {', '.join(choices)}, got {_show(value)}")
        return str(value)
    return parse


def _region(value: Any) -> str:
    name = _string(value)
    if not _REGION.fullmatch(name):
        raise _Invalid(f"{_show(name)} is not a region name (lowercase letters, digits and '-', at most 63)")
    return name


def _ip(value: Any) -> IPAddress:
    text = _string(value)
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise _Invalid(f"{_show(text)} is not an IP address") from None


def _listen_address(value: Any) -> tuple[str, int]:
    """host:port (an IP address, or [IPv6]:port) to listen on; port 0 takes any free port."""
    text = _string(value)
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise _Invalid(f"{_show(text)} is not host:port")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise _Invalid(f"{_show(text)}: the host must be an IP address") from None
    port = int(port_text)
    if port > 65535:
        raise _Invalid(f"{_show(text)}: port {port} is out of range (0..65535)")
    return host, port


def _router_id(value: Any) -> ipaddress.IPv4Address:
    address = _ip(value)
    if not isinstance(address, ipaddress.IPv4Address) or address.is_unspecified:
        raise _Invalid(f"{_show(value)} is not a router ID (a non-zero IPv4 address)")
    return address


def _asn(value: Any) -> int:
    number = _int(value)
    if not 0 <= number <= MAX_ASN:
        raise _Invalid(f"{number} is out of range (1..{MAX_ASN - 1})")
    if number in RESERVED_ASNS:
        raise _Invalid(f"{number} is {RESERVED_ASNS[number]}")
    return number


def _prefix(value: Any) -> IPNetwork:
    text = _string(value)
    if "/" not in text:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise _Invalid(f"{_show(text)} is not an IP prefix") from None
        raise _Invalid(f"{_show(text)} has no prefix length (e.g. {address}/{address.max_prefixlen})")
    try:
        network = ipaddress.ip_network(text)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise _Invalid(f"{_show(text)} is not an IP prefix") from None
        raise _Invalid(f"{_show(text)} has host bits set (did you mean {loose}?)") from None
    if network.prefixlen == 0:
        raise _Invalid(f"{_show(text)} is a default route, not an anycast prefix")
    if network.is_multicast or network.is_loopback or network.is_unspecified or network.is_link_local:
        raise _Invalid(f"{_show(text)} is not a unicast prefix")
    return network


def _hold_time(value: Any) -> int:
    number = _int(value)
    if number in (1, 2) or number == 0:
        raise _Invalid(f"{number} is not allowed (3..65535): BGP forbids 1 and 2, and 0 (no keepalives) would "
                       "never notice a dead speaker")
    if not 3 <= number <= 65535:
        raise _Invalid(f"{number} is out of range (3..65535)")
    return number


PEER_FIELDS = {"address", "as", "holdTime", "localAddress", "description"}


def _peer(c: _Checker, loc: Loc, value: Any) -> Peer | None:
    if not isinstance(value, Mapping):
        c.add(loc, f"expected a mapping with address and as, got {_show(value)}")
        return None
    c.unknown(value, PEER_FIELDS, loc)
    address = c.get(value, (*loc, "address"), _ip, required=True)
    asn = c.get(value, (*loc, "as"), _asn, required=True)
    hold = c.get(value, (*loc, "holdTime"), _hold_time)
    local = c.get(value, (*loc, "localAddress"), _ip)
    description = c.get(value, (*loc, "description"), _description) or ""
    if address is not None and local is not None and address.version != local.version:
        c.add((*loc, "localAddress"), "must be of the same IP family as address")
    if address is not None and address.is_unspecified:
        c.add((*loc, "address"), f"{address} is not a peer address")
    if address is None or asn is None:
        return None
    return Peer(address, asn, hold or 9, local, description)


def _description(value: Any) -> str:
    text = _string(value)
    if not text.isprintable() or '"' in text or len(text) > 100:
        raise _Invalid("must be printable, without double quotes, at most 100 characters")
    return text


def _community(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        raise _Invalid(f"{value} is a number: quote communities in YAML (\"65001:50\" unquoted reads as base 60)")
    text = _string(value).strip().lower()
    if text in WELL_KNOWN_COMMUNITIES:
        return text
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(p.isdigit() and p.isascii() for p in parts):
        raise _Invalid(f"{_show(value)} is not a community (ASN:VALUE, a large community A:B:C, or one of "
                       f"{', '.join(WELL_KNOWN_COMMUNITIES)})")
    limit = 65535 if len(parts) == 2 else MAX_ASN
    if any(int(p) > limit for p in parts):
        raise _Invalid(f"{_show(value)} has a part above {limit}")
    return ":".join(str(int(p)) for p in parts)


def _loopback_url(value: Any) -> str:
    text = _string(value)
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        raise _Invalid(f"{_show(text)} has an invalid port") from None
    if parts.scheme != "http" or not parts.hostname:
        raise _Invalid(f"{_show(text)} is not an http:// URL")
    host = parts.hostname
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise _Invalid(f"{_show(text)} is not on loopback: the speaker withdraws only on local evidence, so it "
                       "reads only its own gateway")
    if port == 0:
        raise _Invalid(f"{_show(text)} has port 0")
    return text


def _path(value: Any) -> Path:
    text = _string(value)
    if not text or "\0" in text:
        raise _Invalid("expected a directory path")
    return Path(text)


def _command(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise _Invalid(f"cannot split the command: {exc}") from None
    elif isinstance(value, list) and all(isinstance(w, str) for w in value):
        words = list(value)
    else:
        raise _Invalid(f"expected a command (a string or a list of strings), got {_show(value)}")
    if not words:
        raise _Invalid("the command is empty")
    if not words[0].startswith("/"):
        raise _Invalid(f"{_show(words[0])} must be an absolute path (ExaBGP looks programs up in its own places)")
    for word in words:
        if not word or _UNWRITABLE.search(word):
            raise _Invalid(f"{_show(word)} cannot be written in exabgp.conf (spaces, quotes, ; {{ }} [ ] #)")
    return tuple(words)
