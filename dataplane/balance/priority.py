"""Locality-aware candidates: endpoints grouped by priority, local first, other zones as failover (pure, no IO).

Theory of operation: every endpoint carries a `priority`, 0 for the sidecar's own zone and 1, 2, ... for other
zones in the order to fail over to them (usually one entry per zone: that zone's ingress). When a balancer's
endpoints carry more than one priority it builds a `PriorityGroups`: one group per priority, lowest first, each in
snapshot order. For every pick the candidates come from the groups in order:

1. An endpoint is *usable* when it is neither in `exclude` nor ejected by passive health (`outlier`).
2. The first group with a usable endpoint opens the pool with its usable endpoints. While the usable share of the
   group just added (usable / its size) is below the balancer's `failover_threshold`, the next group's usable
   endpoints are added too, and so on. With the default threshold of 0 that never happens: traffic stays on the
   lowest group that has anything usable (strict failover); with 1 the next group joins as soon as one endpoint of
   the current one is unusable. A group with nothing usable is skipped, so losing the local zone's endpoints
   moves traffic to the next zone; there is no hysteresis: the first pick after an ejection ends (or after the
   control plane sends the local endpoints again) goes back to them (failback).
3. Panic stays a property of the whole endpoint set, as without priorities (share of endpoints not ejected below
   `panic_threshold`, judged by the balancer). In panic, ejections are ignored *within the groups step 2 reached*:
   their endpoints not excluded are all candidates. Panic never pulls traffic back into a group step 2 skipped,
   since there step 2 found a healthy alternative, which a flat set in panic does not have. (Judging panic per
   group instead would keep traffic on a mostly-ejected local zone rather than fail over.)
4. When no endpoint left after `exclude` is usable at all, the lowest group with endpoints left after `exclude`
   gives all of them (ejected ones: a doubtful attempt beats failing outright); nothing left gives no candidate.

The result is a sequence of candidates that the balancer's policy chooses from, exactly as from a flat set: least
request samples it, random draws from it, round robin and ring hash walk their own order restricted to its keys
(which makes ring hash hash over the chosen group only: the first point of an allowed endpoint after a position is
the one a ring of just those endpoints would give, so keys stay put within a group while other groups change).

Costs: the common case (nothing ejected, nothing excluded) returns the first group itself; the pool for a given
ejected set is cached, as is its key set; only a pick with `exclude` (a connect retry) builds a new list.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from dataplane.balance.endpoint import Endpoint, EndpointKey

Group = tuple[Endpoint, ...]


class PriorityGroups:
    """The endpoints of one balancer by priority, and the candidates a pick may use (rules in the module doc).

    Immutable apart from its cache; built by `of()`, which returns None when there is a single priority (the
    balancer then keeps its flat rules and fast paths). Raises ValueError for a threshold outside [0, 1]."""

    __slots__ = ("_cached", "first", "first_keys", "groups", "threshold")

    def __init__(self, groups: Sequence[Group], threshold: float) -> None:
        if not groups or not all(groups):
            raise ValueError("priority groups must be non-empty")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"failover_threshold must be within [0, 1], got {threshold}")
        self.groups: tuple[Group, ...] = tuple(groups)
        self.threshold = threshold
        self.first = self.groups[0]
        self.first_keys = frozenset(e.key for e in self.first)
        # (ejected, panic) -> candidates and their keys, for picks without `exclude`.
        self._cached: tuple[frozenset[EndpointKey], bool, Sequence[Endpoint], frozenset[EndpointKey]] | None = None

    @classmethod
    def of(cls, endpoints: Sequence[Endpoint], threshold: float) -> PriorityGroups | None:
        """Groups of `endpoints` (snapshot order kept within each), or None if they all share one priority."""
        if not endpoints:
            return None
        lowest = endpoints[0].priority
        if all(e.priority == lowest for e in endpoints):
            return None
        by_priority: dict[int, list[Endpoint]] = {}
        for endpoint in endpoints:
            by_priority.setdefault(endpoint.priority, []).append(endpoint)
        return cls([tuple(by_priority[p]) for p in sorted(by_priority)], threshold)

    def candidates(self, ejected: frozenset[EndpointKey], exclude: Collection[EndpointKey], panic: bool,
                   ) -> Sequence[Endpoint]:
        """The endpoints a pick may return; `exclude` must be a set-like collection (or empty)."""
        if not ejected and not exclude:
            return self.first  # all usable: the first group's share is 1, never below a threshold
        if exclude:
            return self._select(ejected, exclude, panic)
        cached = self._cached
        if cached is None or cached[1] != panic or cached[0] != ejected:
            pool = self._select(ejected, (), panic)
            cached = self._cached = (ejected, panic, pool, frozenset(e.key for e in pool))
        return cached[2]

    def keys_of(self, candidates: Sequence[Endpoint]) -> frozenset[EndpointKey] | None:
        """The keys of `candidates` if this object returned them and knows them already, else None."""
        if candidates is self.first:
            return self.first_keys
        cached = self._cached
        if cached is not None and candidates is cached[2]:
            return cached[3]
        return None

    def _select(self, ejected: frozenset[EndpointKey], exclude: Collection[EndpointKey], panic: bool,
                ) -> Sequence[Endpoint]:
        pool: list[Endpoint] = []
        reached: list[Group] = []
        for group in self.groups:
            usable = [e for e in group if e.key not in ejected and e.key not in exclude]
            if not usable:
                continue  # nothing usable here: on to the next group (skipped, even in panic)
            pool += usable
            reached.append(group)
            if len(usable) / len(group) >= self.threshold:
                break
        if not pool:
            for group in self.groups:
                left = [e for e in group if e.key not in exclude]
                if left:
                    return left
            return pool
        if panic:
            return [e for group in reached for e in group if e.key not in exclude]
        return pool
