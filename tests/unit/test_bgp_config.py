"""exabgp.conf rendering, the cross-region refusal, and the `meshcast bgp` commands that do not need a daemon."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from bgp.regions import check_coverage, load_region_dir
from bgp.render import render_exabgp_conf
from bgp.settings import parse_region
from bgp.status import format_status, write_status
from meshcast.cli.main import cli
from meshcast.errors import ValidationError

EU: dict[str, Any] = {
    "region": "eu-west", "routerId": "10.255.1.2", "localAs": 65001,
    "prefixes": ["198.51.100.1/32", "198.51.100.2/32"],
    "peers": [{"address": "10.255.1.1", "as": 65000, "localAddress": "10.255.1.2", "description": "tor-1"},
              {"address": "10.255.1.5", "as": 65000, "holdTime": 30}],
    "attributes": {"med": 100, "communities": ["65001:100"]},
}
US: dict[str, Any] = {
    "region": "us-east", "routerId": "10.255.2.2", "localAs": 65002, "role": "backup",
    "prefixes": ["198.51.100.1/32", "198.51.100.2/32"], "peers": [{"address": "10.255.2.1", "as": 65000}],
}
AP: dict[str, Any] = {
    "region": "ap-south", "routerId": "10.255.3.2", "localAs": 65003,
    "prefixes": ["198.51.100.2/32"], "peers": [{"address": "10.255.3.1", "as": 65000}],
}


DUAL: dict[str, Any] = {  # dual-stack: IPv4 and IPv6 sessions to the same two routers, a prefix of each family
    **EU, "prefixes": ["198.51.100.1/32", "2001:db8:ff::1/128"],
    "peers": [{"address": "10.255.1.1", "as": 65000, "localAddress": "10.255.1.2"},
              {"address": "2001:db8:1::1", "as": 65000, "localAddress": "2001:db8:1::2"},
              {"address": "10.255.3.1", "as": 65100}, {"address": "2001:db8:3::1", "as": 65100}],
}


def settings_of(doc: dict[str, Any], **changes: Any) -> Any:
    out = copy.deepcopy(doc)
    out.update(changes)
    return parse_region(out, source=f"{out['region']}.yaml")


# --- rendering -----------------------------------------------------------------------------------------------------


def test_render_has_one_process_and_a_neighbor_per_peer() -> None:
    text = render_exabgp_conf(settings_of(EU))
    assert text.count("process meshcast-speaker {") == 1
    assert f"    run {sys.executable} -m meshcast.cli.main bgp speaker --region-file " in text
    assert "neighbor 10.255.1.1 {" in text and "neighbor 10.255.1.5 {" in text
    assert 'description "tor-1";' in text and "local-address 10.255.1.2;" in text
    assert "hold-time 9;" in text and "hold-time 30;" in text
    assert text.count("processes [ meshcast-speaker ];") == 2 and text.count("neighbor-changes;") == 2
    assert "ipv4 unicast;" in text
    assert "graceful-restart" not in text and "manual-eor" not in text
    assert "announce route" not in text  # the speaker announces, never the config


def neighbor_families(text: str) -> dict[str, list[str]]:
    """neighbor address -> the families its block lists."""
    out: dict[str, list[str]] = {}
    for block in text.split("\nneighbor ")[1:]:
        address = block.split()[0]
        family = block.split("    family {\n")[1].split("    }")[0]
        out[address] = [line.strip().rstrip(";") for line in family.splitlines()]
    return out


def test_render_lists_for_each_neighbor_only_the_families_it_carries() -> None:
    text = render_exabgp_conf(settings_of(DUAL, gracefulRestart=30))
    assert neighbor_families(text) == {"10.255.1.1": ["ipv4 unicast"], "2001:db8:1::1": ["ipv6 unicast"],
                                       "10.255.3.1": ["ipv4 unicast"], "2001:db8:3::1": ["ipv6 unicast"]}
    assert "#   198.51.100.1/32 2001:db8:ff::1/128" in text
    assert neighbor_families(render_exabgp_conf(settings_of(EU))) == {"10.255.1.1": ["ipv4 unicast"],
                                                                     "10.255.1.5": ["ipv4 unicast"]}


def test_render_graceful_restart_sends_eor_manually() -> None:
    text = render_exabgp_conf(settings_of(EU, gracefulRestart=30))
    assert text.count("graceful-restart 30;") == 2 and text.count("manual-eor true;") == 2


def test_render_backup_comment_shows_the_worse_path() -> None:
    text = render_exabgp_conf(settings_of(US))
    assert "role backup" in text and "med 100, AS-path prepend 3" in text


@pytest.mark.parametrize("variant", [EU, US, {**EU, "gracefulRestart": 120}, {
    **EU, "routerId": "10.0.0.1", "prefixes": ["2001:db8:1::/48"],
    "peers": [{"address": "2001:db8::1", "as": 65000, "localAddress": "2001:db8::2"}]}, {**DUAL, "gracefulRestart": 5}])
def test_exabgp_accepts_the_rendered_config(tmp_path: Path, variant: dict[str, Any]) -> None:
    conf = tmp_path / "exabgp.conf"
    conf.write_text(render_exabgp_conf(settings_of(variant)))
    exabgp = Path(sys.executable).parent / "exabgp"
    result = subprocess.run([str(exabgp), "validate", str(conf)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the cross-region check ----------------------------------------------------------------------------------------


def current() -> list[Any]:
    return [settings_of(EU), settings_of(US), settings_of(AP)]


def test_a_change_that_keeps_a_primary_for_every_prefix_is_accepted() -> None:
    assert check_coverage(current(), settings_of(EU, attributes={"med": 10})) == []
    # eu may stop announcing .2: ap-south (primary) still does
    assert check_coverage(current(), settings_of(EU, prefixes=["198.51.100.1/32"])) == []


def test_a_prefix_left_to_backup_regions_only_is_refused() -> None:
    [violation] = check_coverage(current(), settings_of(EU, prefixes=["198.51.100.2/32"]))
    assert violation.path == "198.51.100.1/32"
    assert "only by backup regions (us-east)" in violation.message
    [violation] = check_coverage(current(), settings_of(EU, role="backup"))
    assert violation.path == "198.51.100.1/32"


def test_a_prefix_left_to_no_region_is_refused_unless_retired() -> None:
    regions = [settings_of(EU), settings_of(AP)]
    [violation] = check_coverage(regions, settings_of(EU, prefixes=["198.51.100.2/32"]))
    assert violation.path == "198.51.100.1/32"
    assert "announced by no region (now announced by eu-west)" in violation.message
    import ipaddress

    retire = [ipaddress.ip_network("198.51.100.1/32")]
    assert check_coverage(regions, settings_of(EU, prefixes=["198.51.100.2/32"]), retire) == []


def test_a_new_region_that_only_backs_up_a_new_prefix_is_refused() -> None:
    new = settings_of(US, region="sa-east", prefixes=["192.0.2.0/24"])
    [violation] = check_coverage(current(), new)
    assert violation.path == "192.0.2.0/24" and "only by backup regions (sa-east)" in violation.message


def test_a_dual_stack_region_dropping_one_family_is_refused_for_that_prefix_only() -> None:
    ipv4_only = {**DUAL, "prefixes": ["198.51.100.1/32"], "peers": DUAL["peers"][::2]}
    regions = [settings_of(DUAL), settings_of(AP)]
    [violation] = check_coverage(regions, settings_of(ipv4_only))
    assert violation.path == "2001:db8:ff::1/128" and "announced by no region (now announced by eu-west)" in str(
        violation)
    assert check_coverage([settings_of(DUAL)], settings_of(DUAL, attributes={"med": 5})) == []


POOL = ["198.51.100.1/32", "198.51.100.2/32", "192.0.2.0/24"]
region_st = st.tuples(st.sampled_from(["primary", "backup"]),
                      st.lists(st.sampled_from(POOL), min_size=1, max_size=3, unique=True))


@settings(max_examples=300)
@given(st.lists(region_st, max_size=4), st.integers(0, 4), region_st, st.lists(st.sampled_from(POOL), unique=True))
def test_coverage_matches_a_model(regions: list[tuple[str, list[str]]], which: int,
                                  proposed: tuple[str, list[str]], retire: list[str]) -> None:
    """Refused exactly when some prefix announced before or after the change has no primary region after it."""
    import ipaddress

    def make(index: int, role: str, prefixes: list[str]) -> Any:
        return settings_of(AP, region=f"r{index}", role=role, prefixes=prefixes)

    current = [make(i, role, prefixes) for i, (role, prefixes) in enumerate(regions)]
    change = make(which, *proposed)  # replaces region r<which>, or adds a new one
    after = {i: r for i, r in enumerate(regions)}
    after[which] = proposed
    everywhere = {p for _, prefixes in [*regions, proposed] for p in prefixes} - set(retire)
    uncovered = {p for p in everywhere if not any(role == "primary" and p in ps for role, ps in after.values())}
    violations = check_coverage(current, change, [ipaddress.ip_network(p) for p in retire])
    assert {v.path for v in violations} == uncovered
    assert all("\n" not in str(v) for v in violations)


def write_regions(directory: Path, *docs: dict[str, Any]) -> None:
    directory.mkdir(exist_ok=True)
    for doc in docs:
        (directory / f"{doc['region']}.yaml").write_text(yaml.safe_dump(doc))


def test_region_dir_errors(tmp_path: Path) -> None:
    write_regions(tmp_path / "regions", EU, US)
    assert [r.region for r in load_region_dir(tmp_path / "regions")] == ["eu-west", "us-east"]
    (tmp_path / "regions" / "copy.json").write_text(json.dumps(EU))
    with pytest.raises(ValidationError, match="'eu-west' is also defined by"):
        load_region_dir(tmp_path / "regions")
    (tmp_path / "regions" / "copy.json").write_text(json.dumps({**EU, "localAs": 0}))
    with pytest.raises(ValidationError, match=r"copy\.json: localAs: 0 is reserved"):
        load_region_dir(tmp_path / "regions")


# --- the commands --------------------------------------------------------------------------------------------------


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_config_prints_or_writes(tmp_path: Path) -> None:
    write_regions(tmp_path, EU)
    result = run("bgp", "config", "--region-file", str(tmp_path / "eu-west.yaml"))
    assert result.exit_code == 0 and "neighbor 10.255.1.1 {" in result.stdout
    out = tmp_path / "out" / "exabgp.conf"
    result = run("bgp", "config", "--region-file", str(tmp_path / "eu-west.yaml"), "--output", str(out))
    assert result.exit_code == 0 and out.read_text().startswith("# Rendered by `meshcast bgp config`")


def test_config_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**EU, "peers": [{"address": "10.0.0.1", "as": 65000,
                                                                        "holdTime": 1}]}))
    result = run("bgp", "config", "--region-file", str(tmp_path / "bad.yaml"))
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "peers[0].holdTime: 1 is not allowed" in lines[0]


def test_config_refuses_a_change_that_leaves_a_prefix_uncovered(tmp_path: Path) -> None:
    write_regions(tmp_path / "regions", EU, US, AP)
    proposed = tmp_path / "eu-west.yaml"
    proposed.write_text(yaml.safe_dump({**EU, "role": "backup"}))
    result = run("bgp", "config", "--region-file", str(proposed), "--check-regions", str(tmp_path / "regions"))
    assert result.exit_code == 1 and result.stdout == ""
    assert "refused" in result.stderr and "198.51.100.1/32: would be announced only by backup regions" in result.stderr
    proposed.write_text(yaml.safe_dump({**EU, "prefixes": ["198.51.100.2/32"]}))
    write_regions(tmp_path / "two", EU, AP)
    result = run("bgp", "config", "--region-file", str(proposed), "--check-regions", str(tmp_path / "two"))
    assert result.exit_code == 1 and "pass --retire 198.51.100.1/32" in result.stderr
    result = run("bgp", "config", "--region-file", str(proposed), "--check-regions", str(tmp_path / "two"),
                 "--retire", "198.51.100.1/32")
    assert result.exit_code == 0, result.stderr


def test_drain_and_undrain(tmp_path: Path) -> None:
    flag = tmp_path / "state" / "eu.drain"
    assert run("bgp", "drain", "--drain-file", str(flag)).exit_code == 0 and flag.exists()
    assert run("bgp", "undrain", "--drain-file", str(flag)).exit_code == 0 and not flag.exists()
    write_regions(tmp_path, {**EU, "stateDir": str(tmp_path / "state")})
    assert run("bgp", "drain", "--region-file", str(tmp_path / "eu-west.yaml")).exit_code == 0
    assert (tmp_path / "state" / "eu-west.drain").exists()
    assert run("bgp", "drain").exit_code == 1


STATUS: dict[str, Any] = {
    "region": "eu-west", "role": "primary", "pid": 42, "running": True, "updatedAt": 1000.0, "state": "suppressed",
    "announced": False, "since": 990.0, "reason": "held withdrawn: the gateway flapped",
    "prefixes": ["198.51.100.1/32"], "peers": ["10.255.1.1 (AS65000)"], "sessions": {"10.255.1.1": "established"},
    "attributes": {"med": 100, "prepend": 1, "communities": ["65001:100"]}, "drained": False,
    "drainFile": "/x/eu-west.drain", "lastProbe": {"ok": True, "detail": "HTTP 200", "latencyMs": 1.2, "at": 999.9},
    "recentProbes": "RRURRU", "damping": {"rise": 2, "fall": 3, "readyRun": 1, "unreadyRun": 0, "changesInWindow": 6,
                                          "maxChanges": 6, "windowSeconds": 60, "reuseSeconds": 10},
    "exabgp": {"commandsSent": 6, "pendingAcks": 0, "errors": 0, "lastError": None},
    "history": [{"at": 995.0, "action": "withdraw", "reason": "gateway unready for 3 probes (fall)"}],
}


def test_status_text_says_what_and_why() -> None:
    text = format_status(STATUS, now=1000.5)
    assert "NOT ANNOUNCED (state suppressed" in text and "why: held withdrawn: the gateway flapped" in text
    assert "10.255.1.1 (AS65000) established" in text and "RRURRU" in text and "STALE" not in text
    assert "STALE" in format_status(STATUS, now=1010.0)


def test_status_text_shows_what_each_peer_carries_when_not_everything() -> None:
    doc = {**STATUS, "prefixes": ["198.51.100.1/32", "2001:db8:ff::1/128"],
           "peers": ["10.255.1.1 (AS65000)", "2001:db8:1::1 (AS65000)"],
           "sessions": {"10.255.1.1": "established", "2001:db8:1::1": "not established"},
           "peerPrefixes": {"10.255.1.1": ["198.51.100.1/32"], "2001:db8:1::1": ["2001:db8:ff::1/128"]}}
    text = format_status(doc, now=1000.5)
    assert ("peers: 10.255.1.1 (AS65000) established [198.51.100.1/32], 2001:db8:1::1 (AS65000) not established "
            "[2001:db8:ff::1/128]") in text
    # a single-family region's peers carry everything: nothing added
    same = {**STATUS, "peerPrefixes": {"10.255.1.1": ["198.51.100.1/32"]}}
    assert "peers: 10.255.1.1 (AS65000) established\n" in format_status(same, now=1000.5)


def test_status_command(tmp_path: Path) -> None:
    path = tmp_path / "eu-west.status.json"
    assert run("bgp", "status", "--status-file", str(path)).exit_code == 1
    write_status(path, {**STATUS, "updatedAt": time.time()})
    result = run("bgp", "status", "--status-file", str(path))
    assert result.exit_code == 0 and "NOT ANNOUNCED" in result.stdout
    result = run("bgp", "status", "--status-file", str(path), "-o", "json")
    assert json.loads(result.stdout)["state"] == "suppressed"
    assert [p.name for p in tmp_path.iterdir()] == ["eu-west.status.json"]  # no temporary file left
