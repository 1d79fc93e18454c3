"""Region settings (bgp/settings.py): defaults, every rule, and one-line errors that name the field."""

from __future__ import annotations

import copy
import ipaddress
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgp.settings import PathAttributes, load_region_file, parse_region
from meshcast.errors import ValidationError

BASE: dict[str, Any] = {
    "region": "eu-west",
    "routerId": "10.255.1.2",
    "localAs": 65001,
    "prefixes": ["198.51.100.1/32", "192.0.2.0/24"],
    "peers": [{"address": "10.255.1.1", "as": 65000}, {"address": "10.255.3.1", "as": 65000, "holdTime": 30}],
}


def doc(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(BASE)
    out.update(changes)
    return out


def error(document: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        parse_region(document, source="region.yaml")
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert message.startswith("region.yaml: ")
    return message


def test_defaults() -> None:
    s = parse_region(BASE)
    assert s.role == "primary" and not s.is_backup
    assert [p.hold_time for p in s.peers] == [9, 30]
    assert s.readiness.url == "http://127.0.0.1:9901/ready"
    assert (s.readiness.host, s.readiness.port, s.readiness.target) == ("127.0.0.1", 9901, "/ready")
    assert (s.readiness.interval, s.readiness.timeout) == (0.1, 0.08)
    assert (s.damping.rise, s.damping.fall, s.damping.max_changes) == (2, 3, 6)
    assert s.graceful_restart == 0
    assert s.effective_attributes() == PathAttributes()
    assert s.status_file == Path("/var/lib/meshcast/bgp/eu-west.status.json")
    assert s.drain_file == Path("/var/lib/meshcast/bgp/eu-west.drain")
    assert s.metrics == ("127.0.0.1", 9179)


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ("0.0.0.0:9179", ("0.0.0.0", 9179)), ("[::1]:9100", ("::1", 9100)), ("127.0.0.1:0", ("127.0.0.1", 0)),
])
def test_metrics_address(value: str | None, expected: tuple[str, int] | None) -> None:
    assert parse_region(doc(metrics=value)).metrics == expected


def test_full_example_and_backup_attributes() -> None:
    s = parse_region(doc(role="backup", attributes={"med": 50, "asPathPrepend": 1,
                                                    "communities": ["65001:100", "65001:1:2", "No-Export"]},
                         backup={"extraPrepend": 2, "medIncrease": 25},
                         readiness={"url": "http://localhost:8081/healthz?full=1", "interval": 0.2, "timeout": 0.1},
                         damping={"rise": 1, "fall": 2, "flapWindow": 0, "maxChanges": 2, "reuse": 0},
                         gracefulRestart=30, stateDir="/tmp/x", speaker=["/usr/bin/env", "true"]))
    assert s.attributes == PathAttributes(50, 1, ("65001:100", "no-export"), ("65001:1:2",))
    assert s.effective_attributes() == PathAttributes(75, 3, ("65001:100", "no-export"), ("65001:1:2",))
    assert (s.readiness.host, s.readiness.port, s.readiness.target) == ("127.0.0.1", 8081, "/healthz?full=1")
    assert s.damping.flap_window == 0 and s.damping.reuse == 0
    assert s.speaker_command() == ("/usr/bin/env", "true")


def test_backup_without_med_gets_one() -> None:
    assert parse_region(doc(role="backup")).effective_attributes().med == 100


def test_default_speaker_command_runs_this_python() -> None:
    import sys

    s = parse_region(BASE, source="/etc/meshcast/region.yaml")
    assert s.speaker_command() == (sys.executable, "-m", "meshcast.cli.main", "bgp", "speaker", "--region-file",
                                   "/etc/meshcast/region.yaml")


# --- invalid values, one field at a time (hypothesis) --------------------------------------------------------------

not_an_ip = st.text(max_size=20).filter(lambda t: not _is_ip(t))
junk = st.one_of(st.none().map(lambda _: [1]), st.booleans(), st.floats(allow_nan=False), st.text(max_size=10),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
bad_asn = st.one_of(st.integers(max_value=0), st.integers(min_value=4_294_967_295), st.sampled_from([23456, 65535]),
                    st.booleans(), st.text(max_size=5))
bad_hold = st.one_of(st.sampled_from([0, 1, 2]), st.integers(max_value=-1), st.integers(min_value=65536),
                     st.floats(3, 100).filter(lambda f: f != int(f)), st.text(max_size=4), st.booleans())
bad_prefix = st.one_of(
    not_an_ip,
    st.sampled_from(["198.51.100.1/24", "198.51.100.1", "0.0.0.0/0", "224.0.0.0/4", "127.0.0.0/8", "10.0.0.0/33",
                     "2001:db8::1/64", "fe80::/64", "198.51.100.0/24/1", " 198.51.100.0/24"]),
    st.integers(),
)
bad_community = st.one_of(
    st.sampled_from(["65536:1", "1:65536", "a:b", "1:2:3:4", "1", "no-such", "4294967296:1:1", "", ":", "1:-2",
                     "\u0661:\u0662"]),  # Arabic-Indic digits: str.isdigit() says yes
    st.integers(),
    st.text(max_size=12).filter(lambda t: ":" not in t and t.strip().lower() not in
                                ("no-export", "no-advertise", "no-export-subconfed", "nopeer", "blackhole")),
)
bad_url = st.one_of(
    st.sampled_from(["http://10.0.0.1/ready", "https://127.0.0.1/ready", "127.0.0.1:9901/ready", "http:///ready",
                     "http://example.com/ready", "http://127.0.0.1:99999/ready", "http://127.0.0.1:0/",
                     "ftp://localhost/", "http://[::2]/ready", "http://198.51.100.1:80/ready"]),
    st.integers(),
)
bad_seconds = st.one_of(st.floats(max_value=0.019), st.floats(min_value=10.01), st.text(max_size=4), st.booleans(),
                        st.just(float("nan")))

CASES: list[tuple[str, Any, st.SearchStrategy[Any]]] = [
    ("region", ("region",), st.one_of(st.text(max_size=70).filter(lambda t: not _region_ok(t)), st.integers())),
    ("routerId", ("routerId",), st.one_of(not_an_ip, st.sampled_from(["0.0.0.0", "2001:db8::1", "::"]))),
    ("localAs", ("localAs",), bad_asn),
    ("role", ("role",), st.one_of(st.text(max_size=8).filter(lambda t: t not in ("primary", "backup")), junk)),
    ("prefixes[1]", ("prefixes", 1), bad_prefix),
    ("peers[0].address", ("peers", 0, "address"), st.one_of(not_an_ip, st.just("0.0.0.0"), st.integers())),
    ("peers[1].as", ("peers", 1, "as"), bad_asn),
    ("peers[1].holdTime", ("peers", 1, "holdTime"), bad_hold),
    ("peers[0].localAddress", ("peers", 0, "localAddress"), st.one_of(not_an_ip, st.just("2001:db8::2"))),
    ("attributes.med", ("attributes", "med"), st.one_of(st.integers(max_value=-1),
                                                        st.integers(min_value=4_294_967_296), st.text(max_size=3))),
    ("attributes.asPathPrepend", ("attributes", "asPathPrepend"),
     st.one_of(st.integers(max_value=-1), st.integers(min_value=11), st.floats(0, 5))),
    ("attributes.communities[0]", ("attributes", "communities", 0), bad_community),
    ("backup.extraPrepend", ("backup", "extraPrepend"), st.one_of(st.integers(max_value=-1), st.integers(11))),
    ("readiness.url", ("readiness", "url"), bad_url),
    ("readiness.interval", ("readiness", "interval"), bad_seconds),
    ("damping.rise", ("damping", "rise"), st.one_of(st.integers(max_value=0), st.integers(min_value=101))),
    ("damping.fall", ("damping", "fall"), st.one_of(st.integers(max_value=0), st.integers(min_value=101))),
    ("damping.maxChanges", ("damping", "maxChanges"), st.integers(max_value=1)),
    ("damping.flapWindow", ("damping", "flapWindow"), st.one_of(st.floats(max_value=-0.001), st.text(max_size=3))),
    ("gracefulRestart", ("gracefulRestart",), st.one_of(st.integers(max_value=-1), st.integers(min_value=4096))),
    ("speaker", ("speaker",), st.one_of(st.just("relative/path x"), st.just(["/bin/x", "a b"]), st.just([]),
                                        st.just(["/bin/x;", "y"]), st.integers())),
]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _region_ok(text: str) -> bool:
    import re

    return re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", text) is not None


def _set(document: dict[str, Any], loc: tuple[Any, ...], value: Any) -> None:
    target: Any = document
    for key, following in itertools.pairwise(loc):
        if isinstance(key, str) and key not in target:
            target[key] = [None] if isinstance(following, int) else {}
        target = target[key]
    target[loc[-1]] = value


@settings(max_examples=600)
@given(st.data())
def test_an_invalid_value_gives_one_line_naming_the_field(data: st.DataObject) -> None:
    path, loc, strategy = data.draw(st.sampled_from(CASES))
    value = data.draw(strategy)
    document = doc()
    _set(document, loc, value)
    message = error(document)
    assert f" {path}: " in f" {message.removeprefix('region.yaml: ')}", (path, value, message)


@settings(max_examples=200)
@given(st.dictionaries(st.text(min_size=1, max_size=12).filter(lambda k: k not in BASE and k not in {
    "role", "attributes", "backup", "readiness", "damping", "gracefulRestart", "stateDir", "speaker"}),
    st.integers(), min_size=1, max_size=3))
def test_unknown_fields_are_named(extra: dict[str, int]) -> None:
    message = error(doc(**extra))
    assert "unknown field" in message


def test_several_violations_are_reported_together() -> None:
    message = error(doc(localAs=0, peers=[{"address": "10.0.0.1", "as": 65000, "holdTime": 2}]))
    assert "localAs: 0 is reserved" in message
    assert "peers[0].holdTime: 2 is not allowed" in message


@pytest.mark.parametrize(("changes", "expected"), [
    ({"peers": [{"address": "10.0.0.1", "as": 65000}, {"address": "10.0.0.1", "as": 65002}]},
     "peers[1].address: duplicate peer (same address as peers[0])"),
    ({"prefixes": ["198.51.100.1/32", "198.51.100.1/32"]}, "prefixes[1]: duplicate of prefixes[0]"),
    ({"prefixes": ["198.51.100.1/32", "2001:db8::/48"]},
     "prefixes[1]: an IPv6 prefix needs an IPv6 peer, and no peer is IPv6"),
    ({"prefixes": ["198.51.100.1/32"], "peers": [{"address": "10.0.0.1", "as": 65000},
                                                 {"address": "2001:db8::1", "as": 65000}]},
     "peers[1]: an IPv6 peer would carry nothing: no prefix is IPv6"),
    ({"peers": [{"address": "10.0.0.1", "as": 65001}], "attributes": {"asPathPrepend": 2}},
     "peers[0].as: an iBGP peer (same AS as localAs) cannot be sent AS-path prepends"),
    ({"role": "backup", "backup": {"extraPrepend": 0, "medIncrease": 0}},
     "backup: a backup region must announce a worse path"),
    ({"role": "backup", "attributes": {"asPathPrepend": 8}, "backup": {"extraPrepend": 3}},
     "backup.extraPrepend: attributes.asPathPrepend + backup.extraPrepend is 11"),
    ({"readiness": {"interval": 0.1, "timeout": 0.1}}, "readiness.timeout: must be shorter than readiness.interval"),
    ({"peers": []}, "peers: required"),
    ({"prefixes": "198.51.100.1/32"}, "prefixes: expected a list"),
    ({"peers": [{"as": 65000}]}, "peers[0].address: required"),
    ({"peers": [{"address": "10.0.0.1", "as": 65000, "localAddress": "2001:db8::1"}]},
     "peers[0].localAddress: must be of the same IP family as address"),
    ({"attributes": {"communities": [3900110]}}, "quote communities in YAML"),
    ({"readiness": "fast"}, "readiness: expected a mapping"),
    ({"metrics": "localhost:9179"}, 'metrics: "localhost:9179": the host must be an IP address'),
    ({"metrics": "127.0.0.1"}, 'metrics: "127.0.0.1" is not host:port'),
    ({"metrics": "127.0.0.1:70000"}, "metrics: \"127.0.0.1:70000\": port 70000 is out of range"),
    ({"metrics": 9179}, "metrics: expected a string"),
])
def test_rules(changes: dict[str, Any], expected: str) -> None:
    assert expected in error(doc(**changes))


# --- dual-stack: each prefix goes to the peers of its family ---------------------------------------------------------

DUAL: dict[str, Any] = doc(
    prefixes=["198.51.100.1/32", "2001:db8:ff::1/128", "192.0.2.0/24"],
    peers=[{"address": "10.255.1.1", "as": 65000, "localAddress": "10.255.1.2"},
           {"address": "2001:db8:1::1", "as": 65000, "localAddress": "2001:db8:1::2"},
           {"address": "10.255.3.1", "as": 65100}])


def test_a_dual_stack_region_is_accepted_and_each_peer_carries_its_family() -> None:
    s = parse_region(DUAL)
    carried = {str(p.address): [str(x) for x in s.prefixes_for(p)] for p in s.peers}
    assert carried == {"10.255.1.1": ["198.51.100.1/32", "192.0.2.0/24"], "2001:db8:1::1": ["2001:db8:ff::1/128"],
                       "10.255.3.1": ["198.51.100.1/32", "192.0.2.0/24"]}


def test_the_family_errors_name_the_place_in_the_file_past_an_invalid_element() -> None:
    # prefixes[0] is invalid: the IPv6 prefix is still prefixes[2] (a peer that parses with a bad hold time counts)
    message = error(doc(prefixes=["198.51.100.1", "198.51.100.1/32", "2001:db8::/48"],
                        peers=[{"address": "10.0.0.1", "as": 65000, "holdTime": 1}]))
    assert "prefixes[0]: " in message and "prefixes[2]: an IPv6 prefix needs an IPv6 peer" in message
    # with a prefix unreadable, no peer is blamed for carrying nothing: the bad one may have been its prefix
    message = error(doc(prefixes=["2001:db8::1", "198.51.100.1/32"],
                        peers=[{"address": "10.0.0.1", "as": 65000}, {"address": "2001:db8::9", "as": 65000}]))
    assert message == 'region.yaml: prefixes[0]: "2001:db8::1" has no prefix length (e.g. 2001:db8::1/128)'
    # likewise a peer that does not parse: no prefix is said to lack a peer of its family
    message = error(doc(prefixes=["198.51.100.1/32", "2001:db8::/48"],
                        peers=[{"address": "10.0.0.1", "as": 65000}, {"address": "2001:db8::x", "as": 65000}]))
    assert message == 'region.yaml: peers[1].address: "2001:db8::x" is not an IP address'
    message = error(doc(prefixes=[1, "198.51.100.1/32", "198.51.100.1/32"],
                        peers=[{"as": 65000}, {"address": "10.0.0.1", "as": 65001}], attributes={"asPathPrepend": 1}))
    assert "prefixes[2]: duplicate of prefixes[1]" in message and "peers[1].as: an iBGP peer" in message


families = st.lists(st.sampled_from([4, 6]), min_size=1, max_size=5)


@settings(max_examples=300)
@given(families, families)
def test_family_rules_match_a_model(prefix_families: list[int], peer_families: list[int]) -> None:
    """Refused exactly when a prefix has no peer of its family (at prefixes[i]) or a peer has no prefix of its family
    (at peers[i]); accepted, every peer carries exactly the prefixes of its family and every prefix reaches a peer."""
    prefixes = [f"198.51.100.{i + 1}/32" if v == 4 else f"2001:db8:ff::{i + 1}/128"
                for i, v in enumerate(prefix_families)]
    peers = [{"address": f"10.0.0.{i + 1}" if v == 4 else f"2001:db8::{i + 1}", "as": 65000}
             for i, v in enumerate(peer_families)]
    document = doc(prefixes=prefixes, peers=peers)
    expected = ({f"prefixes[{i}]" for i, v in enumerate(prefix_families) if v not in peer_families}
                | {f"peers[{i}]" for i, v in enumerate(peer_families) if v not in prefix_families})
    if not expected:
        s = parse_region(document)
        for peer in s.peers:
            assert [str(p) for p in s.prefixes_for(peer)] == [
                p for p, v in zip(prefixes, prefix_families, strict=True) if v == peer.address.version]
        assert {p for peer in s.peers for p in s.prefixes_for(peer)} == set(s.prefixes)
        return
    message = error(document).removeprefix("region.yaml: ")
    named = {part.split(": ")[0] for part in message.split("; ")}
    assert named == expected, message


def test_not_a_mapping() -> None:
    with pytest.raises(ValidationError, match="expected a mapping"):
        parse_region(["region"], source="x")


def test_files_yaml_json_and_syntax_errors(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(BASE))
    assert load_region_file(tmp_path / "a.json").region == "eu-west"
    (tmp_path / "b.yaml").write_text("region: eu-west\nrouterId: 10.0.0.1\nlocalAs: 65001\n"
                                     "prefixes: [198.51.100.1/32]\npeers: [{address: 10.0.0.2, as: 65000}]\n"
                                     "attributes: {communities: [65001:50]}\n")  # base 60 in YAML 1.1
    with pytest.raises(ValidationError, match=r"attributes\.communities\[0\]: 3900110 is a number"):
        load_region_file(tmp_path / "b.yaml")
    (tmp_path / "c.yaml").write_text("region: [unclosed\n")
    with pytest.raises(ValidationError, match="invalid YAML at line"):
        load_region_file(tmp_path / "c.yaml")
    (tmp_path / "d.json").write_text("{\"region\": }")
    with pytest.raises(ValidationError, match="invalid JSON at line 1"):
        load_region_file(tmp_path / "d.json")
    with pytest.raises(ValidationError, match="cannot read"):
        load_region_file(tmp_path / "missing.yaml")
