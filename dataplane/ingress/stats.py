"""What the zone ingress counts per destination service, as plain data (the CLI turns it into Prometheus families).

Theory of operation: `route_by_sni` fills in a `ConnectionMeter` per connection as it goes: the SNI and whether the
routing table knew it, the outcome as soon as it is decided (spliced, or why it was refused), the time the upstream
connect took, and the bytes, which the splice adds to while it runs. `IngressAccounts` keeps the meters of open
connections and the totals of closed ones, per destination; `snapshot()` adds the two, so the figures of a
long-lived connection (sidecars pool theirs) move while it is spliced, not only when it ends.

Counters never go back: a meter counts nothing (bytes, outcome, connect time) before its destination is decided,
which happens once, when the ClientHello has been read; at close its figures move to the totals in one step, with
no checkpoint between two snapshots. The destination is `(mesh, service)` named by the SNI when the routing table
knew the name, and `UNROUTED` otherwise (before the ClientHello, not TLS, no SNI, a name no service answers to), so
the label values are bounded by the services routed in the process's life: a peer cannot mint new ones.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

from meshcast.wire.sni import parse_service_sni

Destination = tuple[str, str]
"""(mesh, service) a connection was routed to."""
UNROUTED: Destination = ("", "")  # not a valid mesh or service name: cannot collide with a real destination

SPLICED = "spliced"  # the outcome of a connection handed to an endpoint

# Connections live from milliseconds (a refusal) to the idle timeout (an hour); connects take from a fraction of a
# millisecond (loopback) to the connect timeout, times the attempts when endpoints fail over.
CONNECTION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
CONNECT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(slots=True)
class Distribution:
    """Observations counted in buckets: `counts[i]` holds those <= `bounds[i]` (and above the bound before it); the
    last count, those above every bound."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0  # the sum of the observations

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= it) for every bound, then (inf, all), as Prometheus buckets are."""
        running, result = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            result.append((bound, running))
        return result

    def copy(self) -> Distribution:
        return Distribution(self.bounds, list(self.counts), self.total)


@dataclass(eq=False, slots=True)
class ConnectionMeter:
    """What is known of one connection so far; `route_by_sni` fills it in, the splice adds to `spliced`."""

    started: float = 0.0  # trio.current_time() at accept
    sni: str | None = None  # the server name of its ClientHello
    routed: bool = False  # the routing table had endpoints for the name
    outcome: str | None = None  # SPLICED or a refusal reason, once decided
    connect_seconds: float | None = None  # from the first dial to an endpoint accepting, failed attempts included
    read: int = 0  # bytes read from the caller before the splice (the ClientHello and anything sent with it)
    written: int = 0  # bytes written to the caller outside the splice (a TLS alert)
    # copied by the splice: to the endpoint, back, and which of the two moved last (-1: nothing yet)
    spliced: list[int] = field(default_factory=lambda: [0, 0, -1])

    @property
    def received(self) -> int:
        """Bytes received from the caller (downstream rx)."""
        return self.read + self.spliced[0]

    @property
    def sent(self) -> int:
        """Bytes sent to the caller (downstream tx)."""
        return self.written + self.spliced[1]

    @property
    def destination(self) -> Destination:
        if not self.routed or self.sni is None:
            return UNROUTED
        return parse_service_sni(self.sni) or ("", self.sni.lower())  # a custom Resolve may route other names


@dataclass(slots=True)
class DestinationStatistics:
    """The figures of one destination: open connections, and counters over the process's life."""

    active: int = 0  # connections open now
    outcomes: dict[str, int] = field(default_factory=dict)  # connections by outcome, counted once decided
    received: int = 0  # bytes received from callers
    sent: int = 0  # bytes sent to callers
    duration: Distribution = field(default_factory=lambda: Distribution(CONNECTION_BUCKETS))  # closed connections
    connect: Distribution = field(default_factory=lambda: Distribution(CONNECT_BUCKETS))  # upstream connects

    def add(self, meter: ConnectionMeter) -> None:
        """Add the counters of `meter` (not `active`, not `duration`: the caller knows whether it is closed)."""
        if meter.outcome is not None:
            self.outcomes[meter.outcome] = self.outcomes.get(meter.outcome, 0) + 1
        self.received += meter.received
        self.sent += meter.sent
        if meter.connect_seconds is not None:
            self.connect.observe(meter.connect_seconds)

    def copy(self) -> DestinationStatistics:
        return DestinationStatistics(self.active, dict(self.outcomes), self.received, self.sent,
                                     self.duration.copy(), self.connect.copy())


@dataclass(frozen=True, slots=True)
class IngressStatistics:
    active: int  # connections being read or spliced now
    outcomes: dict[str, int] = field(default_factory=dict)  # connections by outcome, every destination
    destinations: dict[Destination, DestinationStatistics] = field(default_factory=dict)  # UNROUTED always there


class IngressAccounts:
    """The meters of open connections and the totals of closed ones, per destination (see the module's doc)."""

    def __init__(self) -> None:
        self._open: set[ConnectionMeter] = set()
        self._totals: dict[Destination, DestinationStatistics] = {UNROUTED: DestinationStatistics()}

    def opened(self, now: float) -> ConnectionMeter:
        meter = ConnectionMeter(started=now)
        self._open.add(meter)
        return meter

    def closed(self, meter: ConnectionMeter, now: float) -> None:
        self._open.discard(meter)
        totals = self._totals.get(meter.destination)
        if totals is None:
            totals = self._totals[meter.destination] = DestinationStatistics()
        totals.add(meter)
        totals.duration.observe(now - meter.started)

    def snapshot(self) -> IngressStatistics:
        destinations = {key: totals.copy() for key, totals in self._totals.items()}
        for meter in self._open:
            current = destinations.get(meter.destination)
            if current is None:
                current = destinations[meter.destination] = DestinationStatistics()
            current.active += 1
            current.add(meter)
        outcomes: Counter[str] = Counter()
        for current in destinations.values():
            outcomes.update(current.outcomes)
        return IngressStatistics(active=len(self._open), outcomes=dict(outcomes), destinations=destinations)
