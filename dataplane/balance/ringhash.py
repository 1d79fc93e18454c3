"""Consistent hashing on a caller-supplied key (a header value, say): the same key goes to the same endpoint.

Theory of operation: every endpoint owns `vnodes` points (default 100) on a 64-bit ring, at
`blake2b(f"{endpoint.key}#{i}")` for i in 0..vnodes-1; a request key hashes (blake2b, 64 bits) to a position and goes
to the owner of the first point at or after it, wrapping around. Properties that follow:

* Positions depend only on endpoint keys (`address:port`, `#sni` added for a zone ingress) and an unsalted hash,
  never on Python's `hash()` or on list order, so every sidecar with the same endpoints sends the same key to the
  same endpoint, across restarts too.
* Minimal disruption: removing an endpoint moves only the keys it owned (to the owners of the next points), adding
  one takes only keys that now land on its points; every other key stays put. About 1/N of the keys move.
* The points per endpoint are fixed (not scaled to the ring size, as Envoy does) so that adding or removing an
  endpoint never moves the others' points. With 100 points each endpoint's share is within about ±10% (one
  standard deviation) of fair; raise `vnodes` for smoother shares at the cost of memory and update time.
* Excluded and ejected endpoints are skipped by walking on along the ring, so a retry of a key goes to the same
  "next" endpoint from every sidecar, and keys of healthy endpoints do not move while another one is ejected.
* With priorities (`priority`) the walk skips endpoints outside the chosen groups too, which is the same as hashing
  on a ring of the chosen groups alone: keys stay put within a group whatever happens to the other groups.
* Without a key the pick falls back to least request (power of two choices) over the same candidates.

Point hashes are cached per endpoint key, so an update hashes only new endpoints and then re-sorts the ring.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Iterable, Sequence

from dataplane.balance.base import BalancerBase
from dataplane.balance.endpoint import Endpoint, EndpointKey
from dataplane.balance.outlier import OutlierDetector


def ring_position(data: bytes) -> int:
    """A stable 64-bit position on the ring (the same in every process, unlike `hash()`)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class RingHash(BalancerBase):
    name = "ring_hash"

    def __init__(
        self,
        endpoints: Iterable[Endpoint] = (),
        *,
        vnodes: int = 100,
        rng: random.Random | None = None,
        outlier: OutlierDetector | None = None,
        panic_threshold: float = 0.5,
        choices: int = 2,
        failover_threshold: float = 0.0,
    ) -> None:
        if vnodes < 1:
            raise ValueError(f"vnodes must be >= 1, got {vnodes}")
        self.vnodes = vnodes
        self._points: dict[EndpointKey, list[int]] = {}
        self._ring: list[int] = []  # sorted positions
        self._owners: list[EndpointKey] = []  # owner of each position
        super().__init__(endpoints, rng=rng, outlier=outlier, panic_threshold=panic_threshold, choices=choices,
                         failover_threshold=failover_threshold)

    def _updated(self) -> None:
        old = self._points
        self._points = {
            key: old.get(key) or [ring_position(f"{key}#{i}".encode()) for i in range(self.vnodes)]
            for key in self._by_key
        }
        # Sorting (position, key) settles the (astronomically rare) collisions the same way everywhere.
        ring = sorted((position, key) for key, positions in self._points.items() for position in positions)
        self._ring = [position for position, _ in ring]
        self._owners = [key for _, key in ring]

    def _choose(self, candidates: Sequence[Endpoint], hash_key: bytes | None) -> Endpoint:
        if hash_key is None:
            return self._least_loaded_of_sample(candidates)
        allowed = self._allowed(candidates)
        size = len(self._ring)
        start = bisect.bisect_left(self._ring, ring_position(hash_key))
        for step in range(size):
            key = self._owners[(start + step) % size]
            if allowed is None or key in allowed:
                return self._by_key[key]
        raise AssertionError("a candidate that has no point on the ring")

    def owner(self, hash_key: bytes) -> Endpoint | None:
        """Where `hash_key` goes with every endpoint in service (no exclusion, no ejection): for tests and debugging."""
        if not self._ring:
            return None
        index = bisect.bisect_left(self._ring, ring_position(hash_key)) % len(self._ring)
        return self._by_key[self._owners[index]]
