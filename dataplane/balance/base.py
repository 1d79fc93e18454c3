"""The `Balancer` interface and the state every policy shares: endpoints, outstanding requests, ejections, panic.

Theory of operation: a balancer holds the current endpoints of one backend, in snapshot order. `update()` replaces
them whole (the snapshot always carries the full list); state is filed by `Endpoint.key`, so endpoints that remain
keep their outstanding counts and health, and the next `pick()` already sees the new list. A request in flight is
not affected: its `finished()` decrements a count that outlives the endpoint's removal until it drains (so a removed
and re-added endpoint comes back with its true load), and `finished()` of an endpoint with no count is a no-op.

`pick()` chooses among candidates, then lets the policy (`_choose`) decide:

1. `exclude` is a hard rule: an excluded endpoint is never returned (the proxy retries a failed connect elsewhere).
2. Ejected endpoints (see `outlier`) are avoided, unless the balancer is in *panic*: when the share of endpoints not
   ejected falls below `panic_threshold` (default 50%, as Envoy), ejections are ignored and traffic is spread over
   all endpoints, since a health signal that condemns most of a backend is more likely wrong than the backend, and
   piling everything onto the few survivors would overload them. With the default `max_ejection_share` of 50%,
   ejection alone never reaches the panic threshold; it matters when the share is raised.
3. When every endpoint left after `exclude` is ejected, pick among those ejected ones anyway: a connect attempt on a
   doubtful endpoint is better than failing the request outright.
4. Only when nothing is left after `exclude` (or there are no endpoints) does `pick()` return None.

Endpoints of more than one priority (locality: the own zone first, then other zones) go through `priority` instead,
which applies the same rules group by group, lowest priority first, and spills over to the next group when the
usable share of a group falls below `failover_threshold` (default 0: only when nothing of it is usable). When every
endpoint has the same priority (priority 0 alone, today's snapshots) none of that runs: the rules above, with
their fast paths, are all there is.

All of it is pure and single-threaded: no clock is read (`now` is passed in; `None` means the latest `now` this
balancer has been given, which never goes backwards), randomness comes from the injected `random.Random`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

from dataplane.balance.endpoint import Endpoint, EndpointKey
from dataplane.balance.outlier import OutlierDetector
from dataplane.balance.priority import PriorityGroups


@dataclass(frozen=True, slots=True)
class BalancerStatistics:
    endpoints: int  # current endpoints
    ejected: int  # of which ejected now
    outstanding: int  # requests started and not finished, including those on endpoints since removed
    panic: bool  # ejections are being ignored (too few endpoints left in service)


@runtime_checkable
class Balancer(Protocol):
    """Chooses an endpoint per request. Implementations are pure and not thread-safe (one trio task at a time)."""

    name: ClassVar[str]

    @property
    def endpoints(self) -> tuple[Endpoint, ...]: ...

    def update(self, endpoints: Iterable[Endpoint], *, now: float | None = None,
               failover_threshold: float | None = None) -> None: ...

    def pick(
        self, hash_key: bytes | None = None, exclude: Collection[EndpointKey] = (), *, now: float | None = None
    ) -> Endpoint | None: ...

    def started(self, endpoint: Endpoint) -> None: ...

    def finished(self, endpoint: Endpoint) -> None: ...

    def connect_failed(self, endpoint: Endpoint, *, now: float) -> bool: ...

    def connect_succeeded(self, endpoint: Endpoint, *, now: float) -> None: ...

    def outstanding(self, endpoint: Endpoint) -> int: ...

    def statistics(self, *, now: float | None = None) -> BalancerStatistics: ...


class BalancerBase:
    """Shared state and candidate selection; subclasses implement `_choose` (and may hook `_updated`).

    Owns its `OutlierDetector` (do not share one between balancers: it tracks exactly this balancer's endpoints).
    Raises ValueError for a `panic_threshold` or `failover_threshold` outside [0, 1]; never raises from `pick`,
    `started`, `finished` or the connect reports.
    """

    name: ClassVar[str] = ""

    def __init__(
        self,
        endpoints: Iterable[Endpoint] = (),
        *,
        rng: random.Random | None = None,
        outlier: OutlierDetector | None = None,
        panic_threshold: float = 0.5,
        choices: int = 2,
        failover_threshold: float = 0.0,
    ) -> None:
        if not 0.0 <= panic_threshold <= 1.0:
            raise ValueError(f"panic_threshold must be within [0, 1], got {panic_threshold}")
        if choices < 2:
            raise ValueError(f"choices must be >= 2, got {choices}")
        _check_failover_threshold(failover_threshold)
        self.rng = rng if rng is not None else random.Random()
        self.outlier = outlier if outlier is not None else OutlierDetector()
        self.panic_threshold = panic_threshold
        self.choices = choices
        self._failover_threshold = failover_threshold
        self._groups: PriorityGroups | None = None  # None while every endpoint has the same priority
        self._endpoints: tuple[Endpoint, ...] = ()
        self._by_key: dict[EndpointKey, Endpoint] = {}
        self._outstanding: dict[EndpointKey, int] = {}  # only counts > 0; outlives removal until drained
        self._now = -math.inf
        # The in-service endpoints for the last ejected set seen: ejections change rarely, picks often.
        self._healthy: tuple[frozenset[EndpointKey], list[Endpoint], frozenset[EndpointKey]] | None = None
        self.update(endpoints)

    # --- feeding ----------------------------------------------------------------------------------------------

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self._endpoints

    @property
    def failover_threshold(self) -> float:
        """The usable share of a priority group below which the next group's endpoints are added."""
        return self._failover_threshold

    def update(self, endpoints: Iterable[Endpoint], *, now: float | None = None,
               failover_threshold: float | None = None) -> None:
        """Replace the endpoint set (and the failover threshold, unless None). Duplicate keys keep the first
        occurrence; raises ValueError for a threshold outside [0, 1], before changing anything."""
        if failover_threshold is not None:
            _check_failover_threshold(failover_threshold)
            self._failover_threshold = failover_threshold
        now = self._clock(now)
        by_key: dict[EndpointKey, Endpoint] = {}
        for endpoint in endpoints:
            by_key.setdefault(endpoint.key, endpoint)
        self._by_key = by_key
        self._endpoints = tuple(by_key.values())
        self._groups = PriorityGroups.of(self._endpoints, self._failover_threshold)
        self.outlier.update(by_key, now)
        self._healthy = None
        self._updated()

    def started(self, endpoint: Endpoint) -> None:
        self._outstanding[endpoint.key] = self._outstanding.get(endpoint.key, 0) + 1

    def finished(self, endpoint: Endpoint) -> None:
        count = self._outstanding.get(endpoint.key, 0)
        if count > 1:
            self._outstanding[endpoint.key] = count - 1
        else:
            self._outstanding.pop(endpoint.key, None)

    def connect_failed(self, endpoint: Endpoint, *, now: float) -> bool:
        """Report a failed connect; True when this failure ejected the endpoint."""
        return self.outlier.failure(endpoint.key, self._clock(now))

    def connect_succeeded(self, endpoint: Endpoint, *, now: float) -> None:
        self.outlier.success(endpoint.key, self._clock(now))

    # --- choosing ---------------------------------------------------------------------------------------------

    def pick(
        self, hash_key: bytes | None = None, exclude: Collection[EndpointKey] = (), *, now: float | None = None
    ) -> Endpoint | None:
        """The endpoint for the next request (or connect retry), or None when every endpoint is excluded."""
        candidates = self._candidates(exclude, self._clock(now))
        if not candidates:
            return None
        return self._choose(candidates, hash_key)

    def _candidates(self, exclude: Collection[EndpointKey], now: float) -> Sequence[Endpoint]:
        """The endpoints `pick` may return, in snapshot order; `self._endpoints` itself when all of them."""
        ejected = self.outlier.ejected(now)
        if self._groups is not None:
            panic = bool(ejected) and self._panic(len(ejected))
            return self._groups.candidates(ejected, _as_set(exclude) if exclude else (), panic)
        if not ejected and not exclude:
            return self._endpoints
        if isinstance(exclude, str):  # a single key is a Collection[str] too: not a set of its characters
            exclude = frozenset((exclude,))
        elif not isinstance(exclude, set | frozenset | dict):
            exclude = frozenset(exclude)
        if ejected and not exclude and not self._panic(len(ejected)):
            return self._in_service(ejected)
        if ejected and not self._panic(len(ejected)):
            healthy = [e for e in self._endpoints if e.key not in ejected and e.key not in exclude]
            if healthy:
                return healthy
        if not exclude:
            return self._endpoints
        return [e for e in self._endpoints if e.key not in exclude]

    def _in_service(self, ejected: frozenset[EndpointKey]) -> Sequence[Endpoint]:
        if self._healthy is None or self._healthy[0] != ejected:
            healthy = [e for e in self._endpoints if e.key not in ejected]
            self._healthy = (ejected, healthy, frozenset(e.key for e in healthy))
        return self._healthy[1] or self._endpoints  # all ejected (only with a panic threshold of 0): all

    def _allowed(self, candidates: Sequence[Endpoint]) -> frozenset[EndpointKey] | None:
        """The keys of `candidates` for policies that walk their own order; None when it is every endpoint."""
        if candidates is self._endpoints:
            return None
        if self._healthy is not None and candidates is self._healthy[1]:
            return self._healthy[2]
        if self._groups is not None:
            known = self._groups.keys_of(candidates)
            if known is not None:
                return known
        return frozenset(e.key for e in candidates)

    def _panic(self, ejected: int) -> bool:
        total = len(self._endpoints)
        return total > 0 and (total - ejected) < self.panic_threshold * total

    def _least_loaded_of_sample(self, candidates: Sequence[Endpoint]) -> Endpoint:
        """Power of `choices` random choices: the least outstanding of a few distinct random candidates."""
        count = len(candidates)
        if count == 1:
            return candidates[0]
        if self.choices == 2:  # the common case, without the cost of rng.sample
            first = self.rng.randrange(count)
            second = self.rng.randrange(count - 1)
            sample: Sequence[int] = (first, second + 1 if second >= first else second)
        else:
            sample = self.rng.sample(range(count), min(self.choices, count))
        # min() keeps the first of equals, and the sample order is random: ties are broken at random.
        return min((candidates[i] for i in sample), key=lambda e: self._outstanding.get(e.key, 0))

    def _choose(self, candidates: Sequence[Endpoint], hash_key: bytes | None) -> Endpoint:
        raise NotImplementedError

    def _updated(self) -> None:
        """Called after every `update`, once the new endpoints are in place."""

    # --- reading ----------------------------------------------------------------------------------------------

    def outstanding(self, endpoint: Endpoint) -> int:
        return self._outstanding.get(endpoint.key, 0)

    def statistics(self, *, now: float | None = None) -> BalancerStatistics:
        ejected = self.outlier.ejected_count(self._clock(now))
        return BalancerStatistics(
            endpoints=len(self._endpoints),
            ejected=ejected,
            outstanding=sum(self._outstanding.values()),
            panic=ejected > 0 and self._panic(ejected),
        )

    def _clock(self, now: float | None) -> float:
        if now is not None and now > self._now:
            self._now = now
        return self._now


def _as_set(exclude: Collection[EndpointKey]) -> Collection[EndpointKey]:
    """`exclude` as something with fast membership tests (as `_candidates` does inline on the flat path)."""
    if isinstance(exclude, str):
        return frozenset((exclude,))
    if not isinstance(exclude, set | frozenset | dict):
        return frozenset(exclude)
    return exclude


def _check_failover_threshold(threshold: float) -> None:
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"failover_threshold must be within [0, 1], got {threshold}")
