"""Policies: schemas with field-path errors, and the rule deciding which apply and how they merge (property tests)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.policy import CallerTable, compile_policies
from meshcast.errors import ValidationError
from meshcast.policies import Policy, ProxyFacts, resolve
from meshcast.policies.resolve import describe_caller
from meshcast.resources import parse_resource

WEB = ProxyFacts(inbound_tags=({"service": "web", "version": "v2", "zone": "eu"},))


def policy(kind: str, name: str, spec: dict[str, Any]) -> Policy:
    return Policy.of(parse_resource({"type": kind, "mesh": "default", "name": name, "spec": spec}))


@pytest.mark.parametrize(("doc", "message"), [
    ({"type": "MeshRetry", "name": "r", "spec": {"to": [{"targetRef": {"kind": "MeshService"},
                                                           "default": {"http": {"numRetries": 3}}}]}},
     "spec.to[0].targetRef: kind MeshService needs a name"),
    ({"type": "MeshRetry", "name": "r", "spec": {"to": [{"targetRef": {"kind": "Mesh"},
                                                           "default": {"http": {"perTryTimeout": "soon"}}}]}},
     "spec.to[0].default.http.perTryTimeout: invalid duration 'soon'"),
    ({"type": "MeshTrafficPermission", "name": "p", "spec": {"from": [{
        "targetRef": {"kind": "MeshGateway", "name": "edge"}, "default": {"action": "Allow"}}]}},
     "spec.from[0]: from[].targetRef.kind must be Mesh, MeshSubset, MeshService or MeshServiceSubset, not "
     "MeshGateway"),
    ({"type": "MeshTrafficPermission", "name": "p", "spec": {"from": [{
        "targetRef": {"kind": "MeshSubset", "tags": {"version": "v 1"}}, "default": {"action": "Allow"}}]}},
     "spec.from[0].targetRef.tags: tag 'version' has invalid value 'v 1'"),
    ({"type": "MeshRateLimit", "name": "l", "spec": {"from": [{
        "targetRef": {"kind": "MeshServiceSubset", "name": "web", "tags": {"-bad": "x"}}, "default": {}}]}},
     "spec.from[0].targetRef.tags: tag key '-bad' is invalid"),
    ({"type": "MeshTrafficPermission", "name": "p", "spec": {"from": [{
        "targetRef": {"kind": "MeshServiceSubset", "name": "web"}, "default": {"action": "Allow"}}]}},
     "spec.from[0].targetRef: kind MeshServiceSubset needs tags"),
    ({"type": "MeshTrafficPermission", "name": "p", "spec": {"from": [{
        "targetRef": {"kind": "Mesh"}, "default": {"action": "allow"}}]}},
     "spec.from[0].default.action: must be one of 'Allow', 'Deny' or 'AllowWithShadowDeny'"),
    ({"type": "MeshHTTPRoute", "name": "h", "spec": {"to": [{"targetRef": {"kind": "MeshService", "name": "b"},
                                                              "rules": [{"matches": [{"path": {"value": "x"}}]}]}]}},
     "spec.to[0].rules[0].matches[0].path: 'x' is not a path"),
    ({"type": "MeshHTTPRoute", "name": "h", "spec": {"to": [{"targetRef": {"kind": "MeshService", "name": "b"},
                                                              "rules": [{"matches": [{"path": {"value": "/"}}],
                                                                         "default": {"backendRefs": [
                                                                             {"name": "b", "weight": 0}]}}]}]}},
     "spec.to[0].rules[0].default.backendRefs: needs a backend with a weight above 0"),
    ({"type": "MeshRateLimit", "name": "l", "spec": {"from": [{"targetRef": {"kind": "Mesh"}, "default": {
        "local": {"http": {"requestRate": {"num": 0, "interval": "1s"}}}}}]}},
     "spec.from[0].default.local.http.requestRate.num: must be greater than or equal to 1"),
    ({"type": "MeshFaultInjection", "name": "f", "spec": {"from": [{"targetRef": {"kind": "Mesh"}, "default": {
        "http": [{"abort": {"httpStatus": 500, "percentage": 101}}]}}]}},
     "spec.from[0].default.http[0].abort.percentage: must be less than or equal to 100"),
    ({"type": "MeshTimeout", "name": "t", "spec": {}}, "spec: needs at least one `to` or `from` item"),
])
def test_bad_policies_are_refused_naming_the_field(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_resource(doc)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_most_specific_wins_field_by_field() -> None:
    everyone = policy("MeshTimeout", "z-everyone", {"to": [{"targetRef": {"kind": "Mesh"}, "default": {
        "connectionTimeout": "1s", "http": {"requestTimeout": "10s", "streamIdleTimeout": "5s"}}}]})
    web_to_backend = policy("MeshTimeout", "a-web", {"targetRef": {"kind": "MeshService", "name": "web"}, "to": [
        {"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {"http": {"requestTimeout": "2s"}}}]})
    effective = resolve([web_to_backend, everyone], WEB, ["backend", "db"])
    assert effective.outbound["backend"]["MeshTimeout"] == {
        "connectionTimeout": "1s", "http": {"requestTimeout": "2s", "streamIdleTimeout": "5s"}}
    assert effective.outbound["db"]["MeshTimeout"]["http"]["requestTimeout"] == "10s"
    assert effective.sources["outbound backend MeshTimeout"] == [
        "MeshTimeout/z-everyone (local)", "MeshTimeout/a-web (local)"]


def test_a_policy_for_another_service_does_not_select_this_proxy() -> None:
    other = policy("MeshRetry", "api", {"targetRef": {"kind": "MeshService", "name": "api"}, "to": [
        {"targetRef": {"kind": "Mesh"}, "default": {"http": {"numRetries": 1}}}]})
    subset = policy("MeshRetry", "v2", {"targetRef": {"kind": "MeshSubset", "tags": {"version": "v2"}}, "to": [
        {"targetRef": {"kind": "Mesh"}, "default": {"http": {"numRetries": 4}}}]})
    assert resolve([other], WEB, ["backend"]).outbound == {}
    assert resolve([other, subset], WEB, ["backend"]).outbound["backend"]["MeshRetry"] == {"http": {"numRetries": 4}}


def test_permissions_by_caller_and_inbound() -> None:
    deny_all = policy("MeshTrafficPermission", "deny-all", {"from": [
        {"targetRef": {"kind": "Mesh"}, "default": {"action": "Deny"}}]})
    allow_gw = policy("MeshTrafficPermission", "web-from-gateway", {
        "targetRef": {"kind": "MeshService", "name": "web"},
        "from": [{"targetRef": {"kind": "MeshService", "name": "gateway"}, "default": {"action": "Allow"}}]})
    effective = resolve([allow_gw, deny_all], WEB, [])
    assert effective.inbound["web"]["MeshTrafficPermission"] == {
        "*": {"action": "Deny"}, "gateway": {"action": "Allow"}}


def test_routes_try_exact_then_longest_prefix_then_more_specific_policy() -> None:
    def route(name: str, top: dict[str, Any], *paths: tuple[str, str]) -> Policy:
        return policy("MeshHTTPRoute", name, {"targetRef": top, "to": [{
            "targetRef": {"kind": "MeshService", "name": "backend"},
            "rules": [{"matches": [{"path": {"type": kind, "value": value}}],
                       "default": {"backendRefs": [{"name": f"{name}-{value.strip('/') or 'root'}"}]}}
                      for kind, value in paths]}]})

    mesh_wide = route("mesh", {"kind": "Mesh"}, ("PathPrefix", "/"), ("PathPrefix", "/api"), ("Exact", "/x"))
    for_web = route("web", {"kind": "MeshService", "name": "web"}, ("PathPrefix", "/api"))
    rules = resolve([mesh_wide, for_web], WEB, ["backend"]).outbound["backend"]["MeshHTTPRoute"]
    assert [rule["backendRefs"][0]["name"] for rule in rules] == ["mesh-x", "web-api", "mesh-api", "mesh-root"]


# --- properties of the rule -------------------------------------------------------------------------------------

TOPS = [{"kind": "Mesh"}, {"kind": "MeshSubset", "tags": {"version": "v2"}},
        {"kind": "MeshSubset", "tags": {"version": "v1"}}, {"kind": "MeshService", "name": "web"},
        {"kind": "MeshService", "name": "api"}, {"kind": "MeshServiceSubset", "name": "web", "tags": {"zone": "eu"}}]
TOS = [{"kind": "Mesh"}, {"kind": "MeshService", "name": "backend"}, {"kind": "MeshService", "name": "db"}]
FIELDS = ["connectionTimeout", "idleTimeout"]


@st.composite
def timeout_policies(draw: st.DrawFn) -> list[tuple[str, int, list[tuple[int, dict[str, str]]]]]:
    """Policies as (name, top index, [(to index, {field: value})]) with distinct names."""
    names = draw(st.lists(st.text("abcdef", min_size=1, max_size=3), min_size=1, max_size=6, unique=True))
    out = []
    for name in names:
        top = draw(st.integers(0, len(TOPS) - 1))
        items = draw(st.lists(st.tuples(st.integers(0, len(TOS) - 1),
                                        st.dictionaries(st.sampled_from(FIELDS), st.sampled_from(["1s", "2s", "3s"]),
                                                        min_size=1)), min_size=1, max_size=3))
        out.append((name, top, items))
    return out


def build(drawn: list[tuple[str, int, list[tuple[int, dict[str, str]]]]]) -> list[Policy]:
    return [policy("MeshTimeout", name, {"targetRef": TOPS[top], "to": [
        {"targetRef": TOS[to], "default": conf} for to, conf in items]}) for name, top, items in drawn]


def expected(drawn: list[tuple[str, int, list[tuple[int, dict[str, str]]]]], service: str) -> dict[str, str]:
    """The rule, written out independently: the winner of each field is the applicable item with the highest
    (top specificity, item specificity, name, position)."""
    top_rank = [(0, 0), (1, 1), (1, 1), (2, 0), (2, 0), (3, 1)]
    selects = [True, True, False, True, False, True]  # WEB is web, version v2, zone eu
    best: dict[str, tuple[Any, str]] = {}
    for name, top, items in drawn:
        if not selects[top]:
            continue
        for position, (to, conf) in enumerate(items):
            if TOS[to]["kind"] != "Mesh" and TOS[to]["name"] != service:
                continue
            order = (top_rank[top], (0, 0) if to == 0 else (2, 0), name, position)
            for key, value in conf.items():
                if key not in best or order > best[key][0]:
                    best[key] = (order, value)
    return {key: value for key, (_, value) in best.items()}


@settings(max_examples=200, deadline=None)
@given(timeout_policies(), st.randoms(use_true_random=False))
def test_merge_follows_the_rule_whatever_the_listing_order(drawn: Any, random: Any) -> None:
    policies = build(drawn)
    shuffled = list(policies)
    random.shuffle(shuffled)
    first = resolve(policies, WEB, ["backend", "db", "cache"])
    again = resolve(shuffled, WEB, ["backend", "db", "cache"])
    assert first.outbound == again.outbound and first.sources == again.sources
    for service in ("backend", "db", "cache"):
        assert first.outbound.get(service, {}).get("MeshTimeout", {}) == expected(drawn, service)


def test_a_match_without_path_counts_as_prefix_slash() -> None:
    """A header-only match beats a bare `/` prefix (it is `/` plus a header), as in Gateway API."""
    by_header = {"matches": [{"headers": [{"name": "x-canary", "value": "yes"}]}],
                 "default": {"backendRefs": [{"name": "canary"}]}}
    everything = {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                  "default": {"backendRefs": [{"name": "stable"}]}}
    route = policy("MeshHTTPRoute", "r", {"to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                                                   "rules": [everything, by_header]}]})
    rules = resolve([route], WEB, ["backend"]).outbound["backend"]["MeshHTTPRoute"]
    assert [rule["backendRefs"][0]["name"] for rule in rules] == ["canary", "stable"]


# --- `from` items that select callers by tags --------------------------------------------------------------------


def test_from_without_subsets_keeps_the_mapping_by_caller() -> None:
    """Without subsets the snapshot keeps the form sidecars of earlier releases read; with one, the ordered items."""
    deny_all = policy("MeshTrafficPermission", "deny-all", {"from": [
        {"targetRef": {"kind": "Mesh"}, "default": {"action": "Deny"}}]})
    allow_v2 = policy("MeshTrafficPermission", "web-from-v2", {
        "targetRef": {"kind": "MeshService", "name": "web"},
        "from": [{"targetRef": {"kind": "MeshServiceSubset", "name": "api", "tags": {"version": "v2"}},
                  "default": {"action": "Allow"}}]})
    assert resolve([deny_all], WEB, []).inbound["web"]["MeshTrafficPermission"] == {"*": {"action": "Deny"}}
    effective = resolve([allow_v2, deny_all], WEB, [])
    assert effective.inbound["web"]["MeshTrafficPermission"] == [
        {"from": {"kind": "Mesh"}, "default": {"action": "Deny"}},
        {"from": {"kind": "MeshServiceSubset", "name": "api", "tags": {"version": "v2"}},
         "default": {"action": "Allow"}}]
    assert effective.sources["inbound web MeshTrafficPermission"] == [
        "MeshTrafficPermission/deny-all (local)", "MeshTrafficPermission/web-from-v2 (local)"]
    assert describe_caller({"kind": "MeshServiceSubset", "name": "api", "tags": {"version": "v2", "a": "b"}}) == (
        "api a=b version=v2")
    assert describe_caller({"kind": "Mesh"}) == "*"


FROMS = [{"kind": "Mesh"}, {"kind": "MeshSubset", "tags": {"version": "v1"}},
         {"kind": "MeshSubset", "tags": {"version": "v2"}},
         {"kind": "MeshSubset", "tags": {"zone": "eu", "version": "v1"}},
         {"kind": "MeshSubset", "tags": {"service": "api"}}, {"kind": "MeshService", "name": "api"},
         {"kind": "MeshService", "name": "db"}, {"kind": "MeshServiceSubset", "name": "api", "tags": {"version": "v1"}},
         {"kind": "MeshServiceSubset", "name": "api", "tags": {"version": "v1", "zone": "eu"}}]
CALLERS = [(None, {}), ("api", {}), ("api", {"version": "v1"}), ("api", {"version": "v1", "zone": "eu"}),
           ("api", {"version": "v2", "zone": "us"}), ("db", {"version": "v1", "zone": "eu"}), ("other", {})]
CALLER_RANK = {"Mesh": 0, "MeshSubset": 1, "MeshService": 2, "MeshServiceSubset": 3}


@st.composite
def from_policies(draw: st.DrawFn) -> list[tuple[str, int, list[tuple[int, dict[str, str]]]]]:
    """Policies as (name, top index, [(from index, {field: value})]) with distinct names."""
    names = draw(st.lists(st.text("abcdef", min_size=1, max_size=3), min_size=1, max_size=6, unique=True))
    return [(name, draw(st.integers(0, len(TOPS) - 1)),
             draw(st.lists(st.tuples(st.integers(0, len(FROMS) - 1),
                                     st.dictionaries(st.sampled_from(FIELDS), st.sampled_from(["1s", "2s", "3s"]),
                                                     min_size=1)), min_size=1, max_size=3)))
            for name in names]


def covers(ref: dict[str, Any], service: str | None, tags: dict[str, str]) -> bool:
    """Who a `from` item covers, written out independently: `service` counts as a tag of an identified caller."""
    if ref["kind"] == "Mesh":
        return True
    known = {**tags, "service": service} if service is not None else {}
    return (ref.get("name") in (None, service) and service is not None
            and all(known.get(key) == value for key, value in ref.get("tags", {}).items()))


def expected_from(drawn: list[tuple[str, int, list[tuple[int, dict[str, str]]]]], service: str | None,
                  tags: dict[str, str]) -> dict[str, str]:
    """The winner of each field: the item covering the caller with the highest (top rank, item rank, name,
    position), among the policies selecting WEB."""
    top_rank = [(0, 0), (1, 1), (1, 1), (2, 0), (2, 0), (3, 1)]
    selects = [True, True, False, True, False, True]
    best: dict[str, tuple[Any, str]] = {}
    for name, top, items in drawn:
        if not selects[top]:
            continue
        for position, (index, conf) in enumerate(items):
            ref = FROMS[index]
            if not covers(ref, service, tags):
                continue
            order = (top_rank[top], (CALLER_RANK[ref["kind"]], len(ref.get("tags", {}))), name, position)
            for key, value in conf.items():
                if key not in best or order > best[key][0]:
                    best[key] = (order, value)
    return {key: value for key, (_, value) in best.items()}


@settings(max_examples=200, deadline=None)
@given(from_policies(), st.randoms(use_true_random=False))
def test_the_sidecar_merges_from_items_for_each_caller_by_the_rule(drawn: Any, random: Any) -> None:
    """The zone CP's resolve and the sidecar's per-caller merge together give every caller what the rule says,
    whatever order the policies are listed in, with and without subsets (both forms of the snapshot)."""
    policies = [policy("MeshTimeout", name, {"targetRef": TOPS[top], "from": [
        {"targetRef": FROMS[index], "default": conf} for index, conf in items]}) for name, top, items in drawn]
    shuffled = list(policies)
    random.shuffle(shuffled)
    first, again = resolve(policies, WEB, []), resolve(shuffled, WEB, [])
    assert first.inbound == again.inbound and first.sources == again.sources
    wire = first.inbound.get("web", {}).get("MeshTimeout", {})
    table = CallerTable(wire, dict)
    for service, tags in CALLERS:
        _, merged = table.lookup(service, tags)
        assert (merged or {}) == expected_from(drawn, service, tags), (service, tags)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, len(TOPS) - 1),
                          st.integers(0, len(FROMS) - 1), st.sampled_from(["Allow", "Deny"])),
                min_size=1, max_size=6, unique_by=lambda t: t[0]))
def test_the_most_specific_permission_decides_for_each_caller(drawn: list[tuple[str, int, int, str]]) -> None:
    """End to end through the sidecar's compiled policy: the action of the highest item covering the caller."""
    policies = [policy("MeshTrafficPermission", name, {"targetRef": TOPS[top], "from": [
        {"targetRef": FROMS[index], "default": {"action": action}}]}) for name, top, index, action in drawn]
    compiled = compile_policies(resolve(policies, WEB, []).wire())
    inbound = compiled.inbound.get("web")
    for service, tags in CALLERS:
        want = expected_from([(name, top, [(index, {"action": action})]) for name, top, index, action in drawn],
                             service, tags).get("action")
        allowed = inbound is None or inbound.for_caller(service, tags).allows
        assert allowed == (want != "Deny"), (service, tags, want)
