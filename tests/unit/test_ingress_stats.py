"""What the zone ingress counts per destination (`dataplane.ingress.stats`) and how its collector exposes it: buckets,
destinations from the SNI, live figures of open connections, counters that never go back (under hypothesis)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dataplane.ingress.stats import (
    CONNECT_BUCKETS,
    SPLICED,
    UNROUTED,
    ConnectionMeter,
    Distribution,
    IngressAccounts,
)
from meshcast.cli.run_ingress import ingress_registry
from meshcast.wire.sni import service_sni

PAYMENTS = service_sni("default", "payments")


def routed(accounts: IngressAccounts, sni: str = PAYMENTS, *, now: float = 0.0) -> ConnectionMeter:
    """A meter as route_by_sni leaves it once the routing table knew `sni` and an endpoint accepted."""
    meter = accounts.opened(now)
    meter.sni, meter.routed, meter.read, meter.connect_seconds, meter.outcome = sni, True, 517, 0.002, SPLICED
    return meter


def test_a_distribution_counts_a_value_equal_to_a_bound_in_that_bound() -> None:
    distribution = Distribution((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        distribution.observe(value)
    assert distribution.counts == [2, 2, 1]
    assert distribution.cumulative() == [(0.1, 2), (1.0, 4), (math.inf, 5)]
    assert (distribution.count, distribution.total) == (5, 8.65)
    copy = distribution.copy()
    copy.observe(0.0)
    assert distribution.count == 5  # a copy is independent


def test_the_destination_is_the_mesh_and_service_of_a_known_name_and_one_value_otherwise() -> None:
    assert ConnectionMeter().destination == UNROUTED  # still reading its ClientHello
    assert ConnectionMeter(sni=PAYMENTS).destination == UNROUTED  # no service answers to it
    assert ConnectionMeter(sni=PAYMENTS.upper(), routed=True).destination == ("default", "payments")
    assert ConnectionMeter(sni="Other.Example", routed=True).destination == ("", "other.example")  # custom Resolve


def test_an_open_connection_is_counted_live_and_keeps_its_figures_when_it_closes() -> None:
    accounts = IngressAccounts()
    empty = accounts.snapshot()
    assert (empty.active, empty.outcomes, list(empty.destinations)) == (0, {}, [UNROUTED])
    meter = accounts.opened(10.0)
    reading = accounts.snapshot()
    assert reading.active == 1 and reading.destinations[UNROUTED].active == 1
    meter.sni, meter.routed, meter.read = PAYMENTS, True, 517
    meter.connect_seconds, meter.outcome = 0.003, SPLICED
    meter.spliced[0] += 100  # as the splice does while it runs
    meter.spliced[1] += 2000
    live = accounts.snapshot()
    payments = live.destinations[("default", "payments")]
    assert (payments.active, payments.outcomes, payments.received, payments.sent) == (1, {SPLICED: 1}, 617, 2000)
    assert payments.connect.count == 1 and payments.duration.count == 0
    assert live.destinations[UNROUTED].active == 0
    assert (live.active, live.outcomes) == (1, {SPLICED: 1})

    accounts.closed(meter, 12.5)
    done = accounts.snapshot().destinations[("default", "payments")]
    assert (done.active, done.outcomes, done.received, done.sent) == (0, {SPLICED: 1}, 617, 2000)
    assert done.connect.count == 1
    assert (done.duration.count, done.duration.total) == (1, 2.5)


def test_refusals_and_unknown_names_collapse_into_the_unrouted_destination() -> None:
    accounts = IngressAccounts()
    for sni, outcome in ((service_sni("default", f"nope{i}"), "unknown_sni") for i in range(50)):
        meter = accounts.opened(0.0)
        meter.sni, meter.read, meter.written, meter.outcome = sni, 300, 7, outcome
        accounts.closed(meter, 0.1)
    plain = accounts.opened(0.0)
    plain.read, plain.outcome = 16, "not_client_hello"
    accounts.closed(plain, 0.0)
    stats = accounts.snapshot()
    assert list(stats.destinations) == [UNROUTED]
    unrouted = stats.destinations[UNROUTED]
    assert unrouted.outcomes == {"unknown_sni": 50, "not_client_hello": 1}
    assert (unrouted.received, unrouted.sent, unrouted.duration.count, unrouted.connect.count) == (15016, 350, 51, 0)


def test_a_snapshot_is_a_copy() -> None:
    accounts = IngressAccounts()
    accounts.closed(routed(accounts), 1.0)
    stats = accounts.snapshot()
    stats.destinations[("default", "payments")].outcomes[SPLICED] = 99
    stats.destinations[("default", "payments")].duration.observe(1.0)
    again = accounts.snapshot().destinations[("default", "payments")]
    assert again.outcomes == {SPLICED: 1} and again.duration.count == 1


@dataclass
class Step:
    kind: str  # "open", "route", "bytes", "close"
    which: int
    amount: int


steps = st.lists(st.builds(Step, st.sampled_from(["open", "route", "bytes", "close"]), st.integers(0, 4),
                           st.integers(0, 10_000)), max_size=60)


@given(steps)
def test_counters_never_go_back_whatever_the_order_of_events(script: list[Step]) -> None:
    accounts = IngressAccounts()
    meters: list[ConnectionMeter] = []
    open_ones: set[int] = set()
    before = accounts.snapshot()
    now = 0.0
    for step in script:
        now += 0.5
        if step.kind == "open" or not meters:
            meters.append(accounts.opened(now))
            open_ones.add(len(meters) - 1)
        else:
            index = step.which % len(meters)
            meter = meters[index]
            if index not in open_ones:
                continue
            if step.kind == "route" and meter.sni is None:  # as route_by_sni: decided once, then counted
                meter.sni, meter.routed = service_sni("default", f"svc{step.which}"), step.amount % 3 != 0
                meter.read, meter.outcome = 517, SPLICED if meter.routed else "unknown_sni"
                meter.connect_seconds = 0.001 if meter.routed else None
            elif step.kind == "bytes" and meter.outcome == SPLICED:
                meter.spliced[step.amount % 2] += step.amount
            elif step.kind == "close":
                accounts.closed(meter, now)
                open_ones.discard(index)
        after = accounts.snapshot()
        assert after.active == len(open_ones)
        assert sum(d.active for d in after.destinations.values()) == len(open_ones)
        for key, old in before.destinations.items():
            new = after.destinations[key]
            assert new.received >= old.received and new.sent >= old.sent
            assert all(new.outcomes.get(outcome, 0) >= count for outcome, count in old.outcomes.items())
            assert new.connect.count >= old.connect.count and new.duration.count >= old.duration.count
            assert all(n >= o for n, o in zip(new.duration.cumulative(), old.duration.cumulative(), strict=True))
        before = after


# --- the collector of `meshcast ingress run` ------------------------------------------------------------------


def scrape(accounts: IngressAccounts) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """sample name -> sorted labels -> value, as Prometheus would read /metrics."""
    text = generate_latest(ingress_registry(accounts.snapshot)).decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        assert family.documentation, family.name  # every metric has HELP text
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_the_collector_exposes_each_destination_with_help_and_bounded_labels() -> None:
    accounts = IngressAccounts()
    first = routed(accounts)
    first.spliced[0], first.spliced[1] = 100, 2000
    accounts.closed(first, 3.0)
    routed(accounts)  # still open
    refused = accounts.opened(0.0)
    refused.sni, refused.read, refused.written, refused.outcome = "whatever.example", 300, 7, "unknown_sni"
    accounts.closed(refused, 0.002)
    samples = scrape(accounts)
    payments = (("destination_service", "payments"), ("mesh", "default"))
    unrouted = (("destination_service", ""), ("mesh", ""))
    assert samples["meshcast_ingress_active_connections"] == {payments: 1, unrouted: 0}
    assert samples["meshcast_ingress_connections_total"] == {
        (*payments, ("outcome", "spliced")): 2, (*unrouted, ("outcome", "unknown_sni")): 1}
    assert samples["meshcast_ingress_downstream_received_bytes_total"] == {payments: 517 * 2 + 100, unrouted: 300}
    assert samples["meshcast_ingress_downstream_sent_bytes_total"] == {payments: 2000, unrouted: 7}
    assert samples["meshcast_ingress_connection_duration_seconds_count"] == {payments: 1, unrouted: 1}
    assert samples["meshcast_ingress_connection_duration_seconds_sum"][payments] == 3.0
    assert samples["meshcast_ingress_connection_duration_seconds_bucket"][(("destination_service", "payments"),
                                                                           ("le", "1.0"), ("mesh", "default"))] == 0
    connect = samples["meshcast_ingress_upstream_connect_duration_seconds_bucket"]
    assert connect[(("destination_service", "payments"), ("le", "0.0025"), ("mesh", "default"))] == 2
    assert connect[(("destination_service", "payments"), ("le", "+Inf"), ("mesh", "default"))] == 2
    assert len([labels for labels in connect if ("mesh", "default") in labels]) == len(CONNECT_BUCKETS) + 1
    assert samples["meshcast_ingress_upstream_connect_duration_seconds_count"] == {payments: 2, unrouted: 0}


def test_the_collector_of_an_idle_ingress_still_says_zero_active() -> None:
    samples = scrape(IngressAccounts())
    assert samples["meshcast_ingress_active_connections"] == {(("destination_service", ""), ("mesh", "")): 0}
