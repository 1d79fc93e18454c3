"""The stateless-ish policies: round robin, least request (power of two choices, the default) and random.

Round robin keeps a cursor into the snapshot-ordered endpoint list, starting at a random position so that sidecars
restarted together do not all send their first requests to the same endpoint. Each pick takes the first candidate
at or after the cursor and moves the cursor past it; an ejected or excluded endpoint is skipped without shifting the
turn of the others, so over any run of N picks with a stable set each of the N endpoints gets exactly one. With
priorities (`priority`), the candidates are those of the chosen groups, and the same holds for them.

Least request samples `choices` (default 2) distinct candidates at random and takes the one with the fewest
outstanding requests: the "power of two choices", which avoids both herding onto a single least-loaded endpoint
(every sidecar sees a different sample) and the O(N) scan, and still never picks the most loaded of two.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from dataplane.balance.base import BalancerBase
from dataplane.balance.endpoint import Endpoint
from dataplane.balance.outlier import OutlierDetector


class RoundRobin(BalancerBase):
    name = "round_robin"

    def __init__(
        self,
        endpoints: Iterable[Endpoint] = (),
        *,
        rng: random.Random | None = None,
        outlier: OutlierDetector | None = None,
        panic_threshold: float = 0.5,
        failover_threshold: float = 0.0,
    ) -> None:
        self._cursor: int | None = None  # index into self._endpoints of the next endpoint's turn
        super().__init__(endpoints, rng=rng, outlier=outlier, panic_threshold=panic_threshold,
                         failover_threshold=failover_threshold)

    def _updated(self) -> None:
        if not self._endpoints:
            return
        if self._cursor is None:
            self._cursor = self.rng.randrange(len(self._endpoints))
        else:
            self._cursor %= len(self._endpoints)

    def _choose(self, candidates: Sequence[Endpoint], hash_key: bytes | None) -> Endpoint:
        assert self._cursor is not None  # candidates are never empty, so there were endpoints at the last update
        total = len(self._endpoints)
        allowed = self._allowed(candidates)
        for step in range(total):
            index = (self._cursor + step) % total
            endpoint = self._endpoints[index]
            if allowed is None or endpoint.key in allowed:
                self._cursor = (index + 1) % total
                return endpoint
        raise AssertionError("a candidate that is not among the endpoints")


class LeastRequest(BalancerBase):
    name = "least_request"

    def _choose(self, candidates: Sequence[Endpoint], hash_key: bytes | None) -> Endpoint:
        return self._least_loaded_of_sample(candidates)


class Random(BalancerBase):
    name = "random"

    def _choose(self, candidates: Sequence[Endpoint], hash_key: bytes | None) -> Endpoint:
        return self.rng.choice(candidates)
