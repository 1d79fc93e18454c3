"""Locality: endpoints by priority (own zone first), failover and failback, the threshold, ring hash within a group,
unchanged behaviour when every endpoint has priority 0, ingress endpoints (SNI) in keys, config and the sidecar."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.balance import (
    POLICIES,
    Endpoint,
    OutlierDetector,
    PriorityGroups,
    RingHash,
    RoundRobin,
    make_balancer,
)
from dataplane.balance.base import BalancerBase
from dataplane.config import EndpointConfig, InvalidConfig, ProxyConfig, parse_snapshot
from dataplane.h2.proxy import H2Pool
from dataplane.sidecar import Sidecar
from dataplane.transport.upstream import UpstreamConnector, UpstreamError
from meshcast.resources import parse_resource
from meshcast.store import EventKind, ResourceChanged
from zone_cp.inventory import Inventory, RemoteService

INGRESS = "10.9.0.5"
BACKEND_SNI = "backend.default.mesh.meshcast"
KEYS = [f"user-{i}".encode() for i in range(500)]


def local(n: int) -> list[Endpoint]:
    return [Endpoint(f"10.0.0.{i + 1}", 8080, (("zone", "a"),), f"backend-{i}") for i in range(n)]


def zone(priority: int, name: str = "", sni: str = BACKEND_SNI) -> Endpoint:
    """The entry of another zone: its ingress, with the SNI of the service."""
    return Endpoint(f"10.9.0.{priority}", 10001, (("zone", name or f"z{priority}"),), "", "tcp", priority, sni)


def ejecting() -> OutlierDetector:
    """One failure ejects (for 30 s), and nothing caps how many are ejected: the tests choose."""
    return OutlierDetector(consecutive_failures=1, max_ejection_share=1.0)


def eject(balancer: BalancerBase, *endpoints: Endpoint, now: float = 0.0) -> None:
    for endpoint in endpoints:
        assert balancer.connect_failed(endpoint, now=now)


def picks(balancer: BalancerBase, n: int, *, exclude: Sequence[str] = (), now: float = 1.0,
          keys: Sequence[bytes | None] = (None,)) -> list[Endpoint]:
    out = []
    for i in range(n):
        endpoint = balancer.pick(keys[i % len(keys)], exclude, now=now)
        assert endpoint is not None
        out.append(endpoint)
    return out


# --- Endpoint and its key ---------------------------------------------------------------------------------------


def test_an_ingress_endpoint_is_keyed_by_its_sni_too() -> None:
    backend = Endpoint(INGRESS, 10001, priority=1, sni=BACKEND_SNI)
    web = Endpoint(INGRESS, 10001, priority=1, sni="web.default.mesh.meshcast")
    assert backend.key == f"{INGRESS}:10001#{BACKEND_SNI}"
    assert len({backend.key, web.key, Endpoint(INGRESS, 10001).key}) == 3
    assert Endpoint("fd00::5", 10001, sni=BACKEND_SNI).key == f"[fd00::5]:10001#{BACKEND_SNI}"
    # Tags, the dataplane name and the priority are not part of the identity: state survives their changes.
    moved = Endpoint(INGRESS, 10001, (("zone", "b"),), "renamed", priority=2, sni=BACKEND_SNI)
    assert moved.key == backend.key and moved != backend
    # One balancer keeps two services' entries at one ingress apart (no de-duplication by address).
    balancer = make_balancer("least_request", rng=random.Random(1))
    balancer.update([backend, web])
    assert len(balancer.endpoints) == 2


def test_endpoint_from_a_snapshot_reads_priority_and_sni() -> None:
    entry = {"address": INGRESS, "port": 10001, "protocol": "http", "tags": {"zone": "eu-2"}, "priority": 2,
             "sni": BACKEND_SNI}
    endpoint = Endpoint.from_snapshot(entry)
    assert (endpoint.priority, endpoint.sni, endpoint.key) == (2, BACKEND_SNI, f"{INGRESS}:10001#{BACKEND_SNI}")
    assert Endpoint.from_snapshot(EndpointConfig.model_validate(entry).model_dump()) == endpoint
    plain = Endpoint.from_snapshot({"address": "10.0.0.1", "port": 80})
    assert (plain.priority, plain.sni, plain.key) == (0, "", "10.0.0.1:80")
    for bad in ({"priority": -1}, {"priority": True}, {"priority": "1"}, {"sni": 5}, {"sni": "a#b"}):
        with pytest.raises(ValueError, match=r"priority|sni"):
            Endpoint.from_snapshot({"address": "10.0.0.1", "port": 80, **bad})


# --- config -----------------------------------------------------------------------------------------------------


def snapshot(**outbound: Any) -> dict[str, Any]:
    return {"mesh": "default", "dataplane": "web-1", "address": "127.0.0.1",
            "outbound": [{"service": "backend", "port": 10000, **outbound}]}


def test_config_accepts_the_locality_fields_with_defaults_of_today() -> None:
    config = parse_snapshot(snapshot(failoverThreshold=0.5, endpoints=[
        {"address": "10.0.0.1", "port": 8080, "tags": {"zone": "a"}},
        {"address": INGRESS, "port": 10001, "tags": {"zone": "b"}, "priority": 1, "sni": BACKEND_SNI},
    ]), mesh="default", name="web-1")
    outbound = config.outbound[0]
    assert outbound.failover_threshold == 0.5
    assert [(e.priority, e.sni) for e in outbound.endpoints] == [(0, ""), (1, BACKEND_SNI)]
    upstream = config.upstream("backend")
    assert upstream is not None and upstream.failover_threshold == 0.5
    assert config.model_dump(by_alias=True)["outbound"][0]["failoverThreshold"] == 0.5
    plain = ProxyConfig.model_validate({**snapshot(), "services": {"db": {"failoverThreshold": 1}}})
    assert plain.outbound[0].failover_threshold == 0.0
    assert plain.services["db"].failover_threshold == 1.0


@pytest.mark.parametrize(("change", "message"), [
    ({"endpoints": [{"address": "a", "port": 1}, {"address": "b", "port": 1, "priority": -1}]},
     "outbound[0].endpoints[1].priority: Input should be greater than or equal to 0"),
    ({"endpoints": [{"address": "a", "port": 1}, {"address": "b", "port": 1, "priority": 1.5}]},
     "outbound[0].endpoints[1].priority: Input should be a valid integer"),
    ({"endpoints": [{"address": "a", "port": 1, "sni": "not a name"}]}, "outbound[0].endpoints[0].sni: String should"),
    ({"endpoints": [{"address": "a", "port": 1, "sni": "10.0.0.1"}]}, "outbound[0].endpoints[0].sni: String should"),
    ({"endpoints": [{"address": "a", "port": 1, "sni": "x" * 64 + ".mesh"}]}, "outbound[0].endpoints[0].sni:"),
    ({"failoverThreshold": 1.5}, "outbound[0].failoverThreshold: Input should be less than or equal to 1"),
    ({"failoverThreshold": -0.1}, "outbound[0].failoverThreshold: Input should be greater than or equal to 0"),
    ({"failoverThreshold": "half"}, "outbound[0].failoverThreshold: Input should be a valid number"),
])
def test_config_errors_name_the_broken_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidConfig) as caught:
        parse_snapshot(snapshot(**change), mesh="default", name="web-1")
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_config_errors_in_proxy_mode_services() -> None:
    with pytest.raises(InvalidConfig, match=r"^services\.db\.failoverThreshold: Input should be less than"):
        ProxyConfig.model_validate({**snapshot(), "services": {"db": {"failoverThreshold": 2}}})


# --- priority groups --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_only_the_own_zone_while_it_is_usable(policy: str) -> None:
    mine = local(3)
    balancer = make_balancer(policy, rng=random.Random(7))
    balancer.update([zone(1), mine[0], zone(2), mine[1], mine[2]])  # snapshot order does not matter
    assert set(picks(balancer, 60, keys=[*KEYS[:30], None])) == set(mine)


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_exclusion_fails_over_in_priority_order(policy: str) -> None:
    mine = local(2)
    balancer = make_balancer(policy, rng=random.Random(7))
    balancer.update([*mine, zone(2), zone(1)])
    # A connect retry excluding both local endpoints goes to zone 1, then zone 2, then nowhere.
    tried = [mine[0].key, mine[1].key]
    assert picks(balancer, 5, exclude=tried, keys=[None, b"k"]) == [zone(1)] * 5
    assert balancer.pick(exclude=[*tried, zone(1).key]) == zone(2)
    assert balancer.pick(exclude=[*tried, zone(1).key, zone(2).key]) is None
    # One local endpoint left: it takes the traffic (threshold 0: no spill-over).
    assert set(picks(balancer, 20, exclude=[mine[0].key], keys=[None, b"k"])) == {mine[1]}


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_ejection_fails_over_and_back(policy: str) -> None:
    mine = local(2)
    balancer = make_balancer(policy, rng=random.Random(7), outlier=ejecting())
    balancer.update([*mine, zone(1)], now=0)
    eject(balancer, *mine, now=0)  # ejected until 30
    assert set(picks(balancer, 20, now=1, keys=[None, *KEYS[:5]])) == {zone(1)}
    assert balancer.statistics(now=1).panic  # 1 of 3 in service; yet no way back into the own zone (see below)
    # Failback: the first pick after the ejections end goes home, with no hysteresis.
    assert set(picks(balancer, 20, now=30, keys=[None, *KEYS[:5]])) == set(mine)


def test_failback_when_the_control_plane_sends_the_local_endpoints_again() -> None:
    mine = local(3)
    balancer = make_balancer("least_request", rng=random.Random(3))
    balancer.update([zone(1), zone(2)], now=0)  # the own zone has no instance: zone 1 only
    assert set(picks(balancer, 20)) == {zone(1)}
    balancer.update([*mine, zone(1), zone(2)], now=1)
    assert set(picks(balancer, 30)) == set(mine)
    balancer.update([zone(2)], now=2)  # a single priority (2): the flat rules
    assert set(picks(balancer, 5)) == {zone(2)}


def test_the_threshold_adds_the_next_group_when_too_little_is_usable() -> None:
    mine = local(4)
    balancer = RoundRobin(rng=random.Random(1), outlier=ejecting(), failover_threshold=0.5)
    balancer.update([*mine, zone(1), zone(2)], now=0)
    assert balancer.failover_threshold == 0.5
    eject(balancer, mine[0], mine[1])
    # 2 of 4 usable: a share of 0.5 is not below the threshold, the own zone serves alone.
    assert set(picks(balancer, 2, now=1)) == {mine[2], mine[3]}
    eject(balancer, mine[2])
    # 1 of 4 usable: zone 1 joins (and round robin gives each candidate its turn); zone 2 does not.
    assert set(picks(balancer, 2, now=1)) == {mine[3], zone(1)}
    # The threshold comes with the endpoints from the snapshot too.
    balancer.update([*mine, zone(1), zone(2)], now=1, failover_threshold=0.0)
    assert set(picks(balancer, 4, now=1)) == {mine[3]}
    balancer.update([*mine, zone(1), zone(2)], now=1, failover_threshold=1.0)
    # 1.0: a group joins as soon as anything of the one before is unusable; zone 1 is whole, so zone 2 stays out.
    assert set(picks(balancer, 2, now=1)) == {mine[3], zone(1)}
    assert set(picks(balancer, 2, now=1, exclude=[zone(1).key])) == {mine[3], zone(2)}


def test_thresholds_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="failover_threshold"):
        make_balancer("random", failover_threshold=1.5)
    balancer = make_balancer("random", failover_threshold=0.3)
    assert balancer.failover_threshold == 0.3
    with pytest.raises(ValueError, match="failover_threshold"):
        balancer.update(local(2), failover_threshold=-0.1)
    assert balancer.failover_threshold == 0.3 and balancer.endpoints == ()  # nothing changed
    balancer.update(local(2))  # None keeps the threshold
    assert balancer.failover_threshold == 0.3


def test_panic_ignores_ejections_only_within_the_groups_reached() -> None:
    mine = local(4)
    balancer = RoundRobin(rng=random.Random(1), outlier=ejecting())
    balancer.update([*mine, zone(1)], now=0)
    eject(balancer, *mine[:3])
    # 2 of 5 in service: panic (whole set, as without priorities). The own zone still has a usable endpoint, so it
    # is the group reached, and in panic all of it is a candidate again, ejected or not.
    assert balancer.statistics(now=1).panic
    assert set(picks(balancer, 4, now=1)) == set(mine)
    eject(balancer, mine[3])
    # Nothing of the own zone usable: failover, and panic does not pull traffic back into the skipped group.
    assert set(picks(balancer, 4, now=1)) == {zone(1)}
    assert balancer.pick(exclude=[zone(1).key], now=1) in mine  # nothing else left: an ejected one, not nothing


def test_ring_hash_hashes_over_the_chosen_group_only() -> None:
    mine = local(5)
    others = [zone(1, "b"), zone(2, "c")]
    balancer = RingHash(rng=random.Random(1), outlier=ejecting())
    balancer.update([*mine, *others], now=0)
    alone = RingHash(mine)  # a ring of the own zone alone
    before = {key: balancer.pick(key, now=1) for key in KEYS}
    assert before == {key: alone.owner(key) for key in KEYS}
    # Other zones coming, going or failing move no key within the own zone.
    balancer.update([*mine, zone(3, "d", "other.default.mesh.meshcast")], now=1)
    assert {key: balancer.pick(key, now=1) for key in KEYS} == before
    balancer.update([*mine, *others], now=1)
    eject(balancer, others[0], now=1)
    assert {key: balancer.pick(key, now=2) for key in KEYS} == before
    # Losing one local endpoint moves only its keys, as on a flat ring.
    eject(balancer, mine[0], now=2)
    after = {key: balancer.pick(key, now=3) for key in KEYS}
    assert {k for k in KEYS if after[k] != before[k]} == {k for k in KEYS if before[k] == mine[0]}
    # The own zone gone: keys hash over zone 2 alone (zone 1 is ejected), stably.
    eject(balancer, *mine[1:], now=3)
    assert {balancer.pick(key, now=4) for key in KEYS} == {others[1]}


def test_least_request_counts_per_ingress_service() -> None:
    balancer = make_balancer("least_request", rng=random.Random(1))
    backend, web = zone(1), zone(1, sni="web.default.mesh.meshcast")
    balancer.update([*local(1), backend, web])
    balancer.started(backend)
    assert balancer.outstanding(backend) == 1 and balancer.outstanding(web) == 0


# --- a model of the rules, checked on arbitrary sets ------------------------------------------------------------


def model(endpoints: list[Endpoint], ejected: set[str], exclude: set[str], threshold: float,
          panic_threshold: float) -> set[Endpoint]:
    """The candidate rules of `dataplane.balance.priority`, written out plainly."""
    levels = sorted({e.priority for e in endpoints})
    groups = [[e for e in endpoints if e.priority == p] for p in levels]
    panic = bool(ejected) and len(endpoints) - len(ejected) < panic_threshold * len(endpoints)
    pool: set[Endpoint] = set()
    reached: list[list[Endpoint]] = []
    for group in groups:
        usable = [e for e in group if e.key not in ejected | exclude]
        if not usable:
            continue
        pool |= set(usable)
        reached.append(group)
        if len(usable) / len(group) >= threshold:
            break
    if not pool:
        left = [[e for e in g if e.key not in exclude] for g in groups]
        return set(next((g for g in left if g), []))
    if panic:
        return {e for g in reached for e in g if e.key not in exclude}
    return pool


@st.composite
def grouped(draw: st.DrawFn) -> tuple[list[Endpoint], set[str], set[str], float, float]:
    priorities = draw(st.lists(st.integers(0, 6), min_size=2, max_size=4, unique=True))
    endpoints = [Endpoint(f"10.{p}.0.{i + 1}", 8080, priority=p, sni="s.m.mesh.meshcast" if p else "")
                 for p in priorities for i in range(draw(st.integers(1, 4)))]
    keys = [e.key for e in endpoints]
    ejected = set(draw(st.lists(st.sampled_from(keys), unique=True)))
    exclude = set(draw(st.lists(st.sampled_from(keys), unique=True)))
    threshold = draw(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]) | st.floats(0, 1))
    panic_threshold = draw(st.sampled_from([0.0, 0.5, 1.0]))
    return endpoints, ejected, exclude, threshold, panic_threshold


@settings(max_examples=300, deadline=None)
@given(grouped(), st.integers(0, 2**32))
def test_candidates_follow_the_rules(case: tuple[list[Endpoint], set[str], set[str], float, float],
                                     seed: int) -> None:
    endpoints, ejected, exclude, threshold, panic_threshold = case
    random.Random(seed).shuffle(endpoints)
    balancer = RoundRobin(rng=random.Random(seed), outlier=ejecting(), panic_threshold=panic_threshold,
                          failover_threshold=threshold)
    balancer.update(endpoints, now=0)
    eject(balancer, *(e for e in endpoints if e.key in ejected))
    expected = model(endpoints, ejected, exclude, threshold, panic_threshold)
    # Round robin gives each candidate exactly one of any len(candidates) picks: the picks *are* the candidates.
    got = [balancer.pick(exclude=exclude, now=1) for _ in range(max(1, len(expected)))]
    assert set(got) == (expected or {None})
    # Without exclusion the candidates are cached per ejected set: the same answer twice.
    again = model(endpoints, ejected, set(), threshold, panic_threshold)
    assert {balancer.pick(now=1) for _ in range(2 * len(again))} == again


# --- every endpoint at priority 0: exactly as before -----------------------------------------------------------

# Recorded with the balancers as they were before priorities existed (git HEAD of dataplane/balance), by `scenario`.
BEFORE = {
    "round_robin": "60123450124501234012340123412346123461346134561346346013460160124601246124612461246123461234623"
                   "623463462345623456235623561235235602356036023460234603460346034603460360346034602346024601246012"
                   "401240124",
    "least_request": "4056010233265150122213521231301022033114446446306003105510000013201026220202220263662223222026"
                     "602160116143444661444515154455122555115010212261601661666363621226211222633262666163611632663"
                     "6226162626661",
    "random": "40005066002100036565202006306060660404543114540003043100421211316336164124242516464660461646440044"
              "060443230232340040030102340304106141316161503611531105115021000110332142424214022442042124022141420034",
    "ring_hash": "4602506301030125661255066512661166415445433141213535320532010306012336333033110311666600153655035623"
                 "6666244044254545050644051505031601336633651331133165161315161513061113002225231103115550003515056316",
}


def scenario(policy: str, priority: int = 0) -> str:
    """Seeded picks with exclusions, ejections and outstanding requests, as indices into the endpoint list."""
    eps = [Endpoint(f"10.0.0.{i}", 8080, priority=priority) for i in range(1, 8)]
    balancer = make_balancer(policy, rng=random.Random(1234),
                             outlier=OutlierDetector(consecutive_failures=1, max_ejection_share=0.5))
    balancer.update(eps, now=0)
    out = []
    for step in range(200):
        now = float(step)
        key = f"k{step % 17}".encode() if step % 2 else None
        exclude = {eps[step % 7].key} if step % 5 == 0 else ()
        endpoint = balancer.pick(key, exclude, now=now)
        assert endpoint is not None
        out.append(eps.index(endpoint))
        if step % 11 == 0:
            balancer.connect_failed(endpoint, now=now)
        balancer.started(endpoint)
        if step % 3:
            balancer.finished(endpoint)
    return "".join(map(str, out))


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_a_single_priority_picks_exactly_as_before(policy: str) -> None:
    assert scenario(policy) == BEFORE[policy]
    assert scenario(policy, priority=3) == BEFORE[policy]  # one priority, whichever: one group, the flat rules


def test_a_single_priority_keeps_the_fast_path() -> None:
    balancer = make_balancer("least_request", rng=random.Random(1))
    balancer.update(local(5))
    assert balancer._candidates((), 0.0) is balancer.endpoints  # no list built per pick
    balancer.update([*local(5), zone(1)])
    groups = PriorityGroups.of(balancer.endpoints, 0.0)
    assert groups is not None and balancer._candidates((), 0.0) == groups.first == tuple(local(5))
    assert balancer._candidates((), 0.0) is balancer._candidates((), 0.0)  # the first group itself, every time
    assert PriorityGroups.of(local(3), 0.0) is None and PriorityGroups.of([], 0.0) is None


# --- the sidecar: thresholds from the snapshot, SNI on every dial, pools keyed per endpoint --------------------


def make_sidecar(tmp_path: Path) -> Sidecar:
    return Sidecar(cp_url="http://127.0.0.1:1", token="t", state_dir=tmp_path,
                   dataplane={"mesh": "default", "name": "web-1", "spec": {"inbound": [{"service": "web", "port": 1}]}})


def locality_snapshot() -> ProxyConfig:
    return parse_snapshot({
        "mesh": "default", "dataplane": "web-1", "address": "127.0.0.1", "mtls": {"enabled": True},
        "outbound": [{"service": "backend", "port": 10000, "protocol": "http", "failoverThreshold": 0.7,
                      "endpoints": [{"address": "10.0.0.1", "port": 8080},
                                    {"address": INGRESS, "port": 10001, "priority": 1, "sni": BACKEND_SNI}]}],
        "services": {"db": {"protocol": "tcp", "failoverThreshold": 0.2,
                            "endpoints": [{"address": INGRESS, "port": 10001, "priority": 1,
                                           "sni": "db.default.mesh.meshcast"}]}},
    }, mesh="default", name="web-1")


def test_the_sidecar_feeds_priorities_and_thresholds_to_its_balancers(tmp_path: Path) -> None:
    sidecar = make_sidecar(tmp_path)
    sidecar._on_config(locality_snapshot())
    backend, db = sidecar.balancers["backend"], sidecar.balancers["db"]
    assert (backend.failover_threshold, db.failover_threshold) == (0.7, 0.2)
    assert [(e.priority, e.sni) for e in backend.endpoints] == [(0, ""), (1, BACKEND_SNI)]
    assert sidecar.pick("backend", set()) == backend.endpoints[0]
    assert sidecar.pick("backend", {backend.endpoints[0].key}) == backend.endpoints[1]
    # The two services behind one ingress are two destinations, for the pools as for the balancers.
    assert backend.endpoints[1].key != db.endpoints[0].key


class RecordingConnector(UpstreamConnector):
    """Records each dial and fails the own zone's endpoint, so the retry fails over to the ingress."""

    def __init__(self) -> None:
        super().__init__("default")
        self.dials: list[tuple[str, int, str, str, str]] = []

    async def connect(self, address: str, port: int, *, service: str, alpn: str, sni: str = "",
                      connect_timeout: float | None = None) -> trio.abc.HalfCloseableStream:
        self.dials.append((address, port, service, alpn, sni))
        if not sni:
            raise UpstreamError("connect_failure", f"{address}:{port}: refused")
        left, _right = trio.testing.memory_stream_pair()
        return left


async def test_every_dial_path_sends_the_sni_and_pools_per_endpoint(tmp_path: Path) -> None:
    sidecar = make_sidecar(tmp_path)
    sidecar.connector = connector = RecordingConnector()
    sidecar._on_config(locality_snapshot())
    ingress = sidecar.balancers["backend"].endpoints[1]
    # TCP splice (one connection per connection) and the dial behind HTTP/1.1 and HTTP/2 pools.
    await sidecar.connect_upstream("backend", "meshcast-tcp")
    route = sidecar._http_route("backend")
    assert not isinstance(route, UpstreamError)
    assert route.key == sidecar.balancers["backend"].endpoints[0].key  # the pick: the own zone
    reached, _ = await route.dial()
    assert reached == ingress.key  # what the HTTP/1.1 pool files the connection under
    async with trio.open_nursery() as nursery:
        sidecar.mesh_h2 = H2Pool(nursery)
        target = sidecar._h2_route("backend")
        assert not isinstance(target, UpstreamError)
        reached, _ = await target.dial()
        assert reached == ingress.key  # and the HTTP/2 pool
    route.done()
    target.done()
    via_ingress = [d for d in connector.dials if d[4]]
    assert [d[3] for d in via_ingress] == ["meshcast-tcp", "http/1.1", "h2"]
    assert {d[:3] + d[4:] for d in via_ingress} == {(INGRESS, 10001, "backend", BACKEND_SNI)}
    # The local endpoint was tried first each time, then the retry failed over to the ingress.
    assert [d[4] for d in connector.dials] == ["", BACKEND_SNI] * 3


async def test_an_ingress_endpoint_needs_mtls() -> None:
    connector = UpstreamConnector("default")
    connector.mtls = False
    with pytest.raises(UpstreamError) as caught:
        await connector.connect(INGRESS, 10001, service="backend", alpn="h2", sni=BACKEND_SNI)
    assert caught.value.reason == "tls_required"


# --- the contract with the zone control plane -------------------------------------------------------------------


def applied(inventory: Inventory, doc: dict[str, Any]) -> None:
    resource = parse_resource(doc)
    inventory.apply(ResourceChanged(kind=EventKind.CREATED, type=resource.type, mesh=resource.mesh,
                                    name=resource.name, resource=resource, revision=1))


def test_what_the_zone_cp_sends_is_what_the_sidecar_balances(tmp_path: Path) -> None:
    """The zone CP's snapshot for a sidecar, with two other zones offering the backend and a failover policy,
    validates, and the sidecar's balancer gets the groups in the policy's order and the threshold."""
    inventory = Inventory(zone="eu")
    applied(inventory, {"type": "Mesh", "name": "default", "spec": {"mtls": {}}})
    applied(inventory, {"type": "MeshLoadBalancingStrategy", "mesh": "default", "name": "lb", "spec": {
        "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {
            "localityAwareness": {"crossZone": {"failover": ["ap", "us"], "failoverThreshold": 50}}}}]}})
    for name, service, address, outbound in (("backend-1", "backend", "10.0.0.1", []),
                                             ("web-1", "web", "10.0.0.2", [{"port": 10000, "service": "backend"}])):
        applied(inventory, {"type": "Dataplane", "mesh": "default", "name": name, "spec": {
            "address": address, "inbound": [{"port": 8080, "service": service, "protocol": "http"}],
            "outbound": outbound}})
        inventory.set_healthy(("default", name), True)
    inventory.set_remote({("default", "backend"): [RemoteService("us", "192.0.2.1", 10001, 2, "http"),
                                                   RemoteService("ap", "192.0.2.2", 10001, 3, "http")]})
    snapshot = inventory.snapshot_for("default", "web-1")
    assert snapshot is not None
    sidecar = make_sidecar(tmp_path)
    sidecar._on_config(parse_snapshot(snapshot, mesh="default", name="web-1"))
    balancer = sidecar.balancers["backend"]
    assert balancer.failover_threshold == 0.5
    assert [(e.address, e.priority, e.sni) for e in balancer.endpoints] == [
        ("10.0.0.1", 0, ""), ("192.0.2.1", 2, BACKEND_SNI), ("192.0.2.2", 1, BACKEND_SNI)]
    assert sidecar.pick("backend", set()) == balancer.endpoints[0]
    assert sidecar.pick("backend", {balancer.endpoints[0].key}) == balancer.endpoints[2]  # ap first, as the policy
