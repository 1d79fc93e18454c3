"""Load balancing for the sidecar's outbound: which endpoint of a backend gets the next request (pure, no IO).

Theory of operation: outbound resolves a request in three tiers, logical service -> concrete backend -> endpoint;
this package is the last tier. One `Balancer` per backend is fed the backend's endpoints from every config snapshot
(`update([Endpoint.from_snapshot(e) for e in outbound["endpoints"]])`), and per request the proxy calls:

    endpoint = balancer.pick(hash_key, exclude=tried, now=now)   # None: nothing left to try
    ...connect...  -> balancer.connect_failed(endpoint, now=now)  (then pick again with endpoint.key in `tried`)
                   or balancer.connect_succeeded(endpoint, now=now)
    balancer.started(endpoint) ... balancer.finished(endpoint)    # around the request, for least request

Policies (`make_balancer(name)`): "least_request" (power of two choices over outstanding requests, the default),
"round_robin", "random" and "ring_hash" (consistent hashing on a caller-supplied key, least request without one).
Every policy shares the passive health check in `outlier` (consecutive connect failures eject an endpoint for a
growing time), the candidate rules in `base` (exclusion is absolute; ejections are ignored in panic, when too
few endpoints remain in service) and locality in `priority` (endpoints of the own zone first, other zones when too
few of those are usable, back as soon as they are). Nothing here reads a clock, opens a socket or imports trio:
time is an argument, randomness an injected `random.Random`.
"""

from __future__ import annotations

import random

from dataplane.balance.base import Balancer, BalancerBase, BalancerStatistics
from dataplane.balance.endpoint import Endpoint, EndpointKey
from dataplane.balance.outlier import OutlierDetector
from dataplane.balance.policies import LeastRequest, Random, RoundRobin
from dataplane.balance.priority import PriorityGroups
from dataplane.balance.ringhash import RingHash

DEFAULT_POLICY = "least_request"
POLICIES: dict[str, type[BalancerBase]] = {cls.name: cls for cls in (LeastRequest, RoundRobin, Random, RingHash)}


def make_balancer(
    name: str = DEFAULT_POLICY,
    *,
    rng: random.Random | None = None,
    outlier: OutlierDetector | None = None,
    panic_threshold: float = 0.5,
    choices: int = 2,
    vnodes: int = 100,
    failover_threshold: float = 0.0,
) -> BalancerBase:
    """A new, empty balancer of the named policy. `choices` applies to least_request and to ring_hash without a key,
    `vnodes` to ring_hash; policies ignore options they do not use. Raises ValueError for an unknown name."""
    if name == "round_robin":
        return RoundRobin(rng=rng, outlier=outlier, panic_threshold=panic_threshold,
                          failover_threshold=failover_threshold)
    if name == "least_request":
        return LeastRequest(rng=rng, outlier=outlier, panic_threshold=panic_threshold, choices=choices,
                            failover_threshold=failover_threshold)
    if name == "random":
        return Random(rng=rng, outlier=outlier, panic_threshold=panic_threshold,
                      failover_threshold=failover_threshold)
    if name == "ring_hash":
        return RingHash(rng=rng, outlier=outlier, panic_threshold=panic_threshold, choices=choices, vnodes=vnodes,
                        failover_threshold=failover_threshold)
    raise ValueError(f"unknown load balancer {name!r}; expected one of {', '.join(sorted(POLICIES))}")


__all__ = [
    "DEFAULT_POLICY",
    "POLICIES",
    "Balancer",
    "BalancerBase",
    "BalancerStatistics",
    "Endpoint",
    "EndpointKey",
    "LeastRequest",
    "OutlierDetector",
    "PriorityGroups",
    "Random",
    "RingHash",
    "RoundRobin",
    "make_balancer",
]
