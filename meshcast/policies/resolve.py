"""Which policies apply, and how several combine (pure, no IO).

**The rule.** For one proxy and one kind of traffic (calls it sends to service S, calls it receives from caller C,
or the proxy as a whole):

1. Take every item that applies: a policy whose top-level `targetRef` selects the proxy, and in it each `to` item
   whose `targetRef` covers S (each `from` item covering C, by its service and the tags its certificate names; the
   policy's `default` for proxy-wide kinds).
2. Order them from the least to the most specific: by the top-level `targetRef`'s kind (`Mesh` < `MeshSubset` <
   `MeshService` = `MeshGateway` < `MeshServiceSubset`, then the number of tags), then by the item's `targetRef`
   (the same ranks: `Mesh` < `MeshSubset` < `MeshService` < `MeshServiceSubset`, then the number of tags), then by
   policy name, then by the item's position in its policy.
3. Merge their `default` settings in that order: a later (more specific) item's field replaces the earlier one's;
   objects merge field by field, lists and values are replaced whole. A field no item sets keeps the data plane's
   default.

So the most specific policy wins field by field, ties go to the name later in alphabetical order, and the result
never depends on the order the policies were created or listed in (the property tests check this).

Routes do not merge: every rule of every applying MeshHTTPRoute is kept, and a request takes the first rule that
matches in this order: the more specific match (an `Exact` path, then a `RegularExpression`, then the longest
`PathPrefix`; then a method; then more header matches; then more query matches), then the more specific policy as
in 2. A MeshTCPRoute is taken whole from the most specific policy. MeshTrafficPermission merges like the others: the
action of the most specific item covering the caller decides (no item: allowed, as with Kuma's default allow-all
policy; write a `Mesh`-wide `Deny` to close the mesh).

Callers are many and known only when they connect, so for the `from` kinds the rule's last step runs in the
receiving sidecar (`dataplane.policy`). What it gets, per inbound service and kind, is either a mapping from caller
(a service name, `*` for any other caller) to the merged settings, when no item of that kind targets a subset
(`MeshSubset`, `MeshServiceSubset`; the form sidecars of earlier releases read), or else the list of every `from`
item already ordered by step 2, each as its targetRef (`from`: kind, name, tags) and its `default`: the sidecar
merges those that cover a caller once per caller, when it first connects.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from meshcast.policies.kinds import PolicySpec
from meshcast.policies.targetref import ProxyFacts, TargetRef
from meshcast.resources.model import Resource

TO_KINDS = ("MeshTimeout", "MeshRetry", "MeshCircuitBreaker", "MeshHealthCheck", "MeshLoadBalancingStrategy",
            "MeshAccessLog")
FROM_KINDS = ("MeshTrafficPermission", "MeshTimeout", "MeshRateLimit", "MeshFaultInjection", "MeshAccessLog")
PROXY_KINDS = ("MeshTrace",)
ROUTE_KINDS = ("MeshHTTPRoute", "MeshTCPRoute")
POLICY_KINDS = frozenset((*TO_KINDS, *FROM_KINDS, *PROXY_KINDS, *ROUTE_KINDS))
ANY_CALLER = "*"


@dataclass(frozen=True)
class Applied:
    """One item that applies, with its place in the order of the rule."""

    order: tuple[Any, ...]
    conf: Mapping[str, Any]
    source: str  # "MeshRetry/retry-backend", shown by `meshcast inspect dataplane`


def deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over`'s fields onto `base` (in place): objects merge recursively, anything else is replaced."""
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def merge(items: Iterable[Applied]) -> tuple[dict[str, Any], list[str]]:
    """The merged settings and the sources that contributed, least specific first."""
    ordered = sorted(items, key=lambda item: item.order)
    result: dict[str, Any] = {}
    for item in ordered:
        deep_merge(result, item.conf)
    return result, [item.source for item in ordered]


@dataclass(frozen=True)
class Policy:
    """A policy resource as the resolver reads it: its kind, name, origin and spec."""

    kind: str
    name: str
    spec: PolicySpec
    origin: str = "local"  # "global" (from the global CP) or "local" (applied at this standalone zone)

    @classmethod
    def of(cls, resource: Resource, origin: str = "local") -> Policy:
        assert isinstance(resource.spec, PolicySpec)
        return cls(resource.type, resource.name, resource.spec, origin)

    @property
    def source(self) -> str:
        return f"{self.kind}/{self.name} ({self.origin})"

    @cached_property
    def dumped(self) -> dict[str, Any]:
        """The spec as JSON data, once per policy (the resolver reads it for every proxy and service)."""
        return self.spec.model_dump(mode="json", by_alias=True, exclude_none=True)


def _items(policy: Policy, section: str, covers: str | None) -> list[tuple[int, TargetRef, dict[str, Any]]]:
    """(position, targetRef, item) of the `to`/`from` items of `policy` that cover service or caller `covers`
    (None: every item)."""
    spec_items = getattr(policy.spec, "from_" if section == "from" else "to", None) or []
    dumped = policy.dumped.get(section, [])
    return [(index, item.target_ref, dumped[index]) for index, item in enumerate(spec_items)
            if covers is None or item.target_ref.names_service(covers)]


def _order(policy: Policy, item_ref: TargetRef | None, index: int) -> tuple[Any, ...]:
    item_rank = item_ref.rank if item_ref is not None else (0, 0)
    return (policy.spec.target_ref.rank, item_rank, policy.name, index)


@dataclass
class Effective:
    """What applies to one proxy: settings by kind for each outbound service, each inbound service (by caller, or
    the ordered `from` items when some select callers by tags), and the proxy as a whole; `sources` names the
    policies behind each (for `from` items, one per item), for `meshcast inspect dataplane`."""

    outbound: dict[str, dict[str, Any]] = field(default_factory=dict)
    inbound: dict[str, dict[str, Any]] = field(default_factory=dict)
    proxy: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, list[str]] = field(default_factory=dict)

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.outbound:
            out["outbound"] = self.outbound
        if self.inbound:
            out["inbound"] = self.inbound
        if self.proxy:
            out["proxy"] = self.proxy
        return out


def resolve(policies: Iterable[Policy], proxy: ProxyFacts, outbound: Iterable[str],
            inbound_tags: Mapping[str, Mapping[str, str]] | None = None) -> Effective:
    """Apply the rule for `proxy`, which calls the `outbound` services and serves its inbounds (their tags by
    service; the proxy's facts' tags when not given)."""
    every = [p for p in policies if p.kind in POLICY_KINDS]
    selecting = [p for p in every if p.spec.target_ref.selects(proxy)]
    effective = Effective()
    for service in sorted(set(outbound)):
        confs: dict[str, Any] = {}
        for kind in TO_KINDS:
            applied = [Applied(_order(p, ref, i), item.get("default", {}), p.source)
                       for p in selecting if p.kind == kind for i, ref, item in _items(p, "to", service)]
            if applied:
                confs[kind], effective.sources[f"outbound {service} {kind}"] = merge(applied)
        rules, sources = _http_rules(selecting, service)
        if rules:
            confs["MeshHTTPRoute"], effective.sources[f"outbound {service} MeshHTTPRoute"] = rules, sources
        tcp = _tcp_route(selecting, service)
        if tcp is not None:
            confs["MeshTCPRoute"], effective.sources[f"outbound {service} MeshTCPRoute"] = tcp
        if confs:
            effective.outbound[service] = confs
    tags_by_service = inbound_tags if inbound_tags is not None else {
        tags["service"]: tags for tags in proxy.inbound_tags if "service" in tags}
    for service, tags in sorted(tags_by_service.items()):
        facts = ProxyFacts(inbound_tags=(tags,), gateway=proxy.gateway)
        here = [p for p in every if p.spec.target_ref.selects(facts)]
        confs = {}
        for kind in FROM_KINDS:
            of_kind = [p for p in here if p.kind == kind]
            if any(ref.tags for p in of_kind for ref in _from_refs(p)):
                items = _from_items(of_kind)
                confs[kind] = [item for _, item in items]
                effective.sources[f"inbound {service} {kind}"] = [source for source, _ in items]
                continue
            callers = sorted({ref.name for p in of_kind for ref in _from_refs(p) if ref.name is not None})
            by_caller = {}
            for caller in [ANY_CALLER, *callers]:
                applied = [Applied(_order(p, ref, i), item.get("default", {}), p.source)
                           for p in of_kind for i, ref, item in _items(p, "from", caller)]
                if applied:
                    by_caller[caller], effective.sources[f"inbound {service} {kind} from {caller}"] = merge(applied)
            if by_caller:
                confs[kind] = by_caller
        if confs:
            effective.inbound[service] = confs
    for kind in PROXY_KINDS:
        applied = [Applied(_order(p, None, 0), p.dumped.get("default", {}), p.source)
                   for p in selecting if p.kind == kind]
        if applied:
            effective.proxy[kind], effective.sources[f"proxy {kind}"] = merge(applied)
    return effective


def _from_refs(policy: Policy) -> list[TargetRef]:
    return [item.target_ref for item in getattr(policy.spec, "from_", None) or []]


def _from_items(policies: list[Policy]) -> list[tuple[str, dict[str, Any]]]:
    """Every `from` item of `policies` as the sidecar matches it, least specific first, with its source."""
    ordered = sorted(((_order(p, ref, i), p.source, {"from": ref.wire, "default": item.get("default", {})})
                      for p in policies for i, ref, item in _items(p, "from", None)), key=lambda entry: entry[0])
    return [(source, item) for _, source, item in ordered]


def describe_caller(ref: Mapping[str, Any]) -> str:
    """A `from` targetRef as `meshcast inspect dataplane` shows the callers it covers: `*` (any), a service name,
    then the tags (`* version=v1`, `web version=v1`)."""
    tags = " ".join(f"{k}={v}" for k, v in sorted((ref.get("tags") or {}).items()))
    return " ".join(filter(None, [ref.get("name") or "*", tags]))


def match_rank(match: Mapping[str, Any]) -> tuple[int, int, int, int, int]:
    """How specific an HTTP match is (higher first): path kind, path length, method, headers, query params."""
    path = match.get("path") or {"type": "PathPrefix", "value": "/"}  # no path: any path, as Gateway API reads it
    kind = {"Exact": 3, "RegularExpression": 2, "PathPrefix": 1}[path.get("type", "PathPrefix")]
    return (kind, len(path["value"]), 1 if match.get("method") else 0, len(match.get("headers", [])),
            len(match.get("queryParams", [])))


def _http_rules(policies: list[Policy], service: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Every applying rule, one entry per match, in the order a request tries them."""
    entries = []
    for policy in policies:
        if policy.kind != "MeshHTTPRoute":
            continue
        for index, ref, item in _items(policy, "to", service):
            for r, rule in enumerate(item["rules"]):
                for match in rule["matches"]:
                    order = _order(policy, ref, index)
                    entries.append(((match_rank(match), order, r), {"match": match, **rule.get("default", {})},
                                    policy.source))
    # Most specific match first; among equal matches the more specific policy (later in the merge order) first.
    entries.sort(key=lambda entry: (entry[0][0], entry[0][1], -entry[0][2]), reverse=True)
    sources = sorted({source for _, _, source in entries})
    return [conf for _, conf, _ in entries], sources


def _tcp_route(policies: list[Policy], service: str) -> tuple[dict[str, Any], list[str]] | None:
    best: tuple[tuple[Any, ...], dict[str, Any], str] | None = None
    for policy in policies:
        if policy.kind != "MeshTCPRoute":
            continue
        for index, ref, item in _items(policy, "to", service):
            order = _order(policy, ref, index)
            if best is None or order > best[0]:
                best = (order, item["rules"][0]["default"], policy.source)
    return None if best is None else (best[1], [best[2]])


def backend_services(effective: Effective) -> set[str]:
    """Services the proxy's routes may send calls to besides its outbounds (their endpoints go in its snapshot)."""
    found: set[str] = set()
    for confs in effective.outbound.values():
        for rule in confs.get("MeshHTTPRoute", []):
            found.update(ref["name"] for ref in rule.get("backendRefs") or [])
        tcp = confs.get("MeshTCPRoute")
        if tcp is not None:
            found.update(ref["name"] for ref in tcp["backendRefs"])
    return found
