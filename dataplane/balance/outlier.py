"""Passive health checking (outlier ejection), shared by every balancer. Pure: the caller passes `now` in.

Theory of operation: the proxy reports the outcome of every connect attempt. `consecutive_failures` failures in a row
(default 5) eject the endpoint: balancers avoid it until `now + duration`, where duration is
`base_ejection_time * n` capped at `max_ejection_time` (30 s, 60 s, 90 s, ... 300 s) and `n` counts the endpoint's
recent ejections. `n` decays by one for every `base_ejection_time` the endpoint spends back in service, so an
endpoint that recovered for good returns to short ejections; one that keeps failing is benched ever longer. A
success resets the consecutive-failure count; an ejection resets it too, so a returning endpoint gets
`consecutive_failures` fresh chances. Ejections end lazily: an endpoint is ejected at `now` iff `now < until`.

At most `floor(max_ejection_share * N)` of the N current endpoints are ejected at once (default 50%): a failure that
would exceed it leaves the endpoint in service with its count at the threshold, so it is ejected on its next failure
once there is room. When an update shrinks N below what the current ejections allow, the ejections ending soonest
are cut short. (Unlike Envoy, no "at least one" rule: with a single endpoint there is nowhere else to send traffic,
so ejecting it would only be overridden by the balancer's panic rule.) `max_ejection_share=0` disables ejection.

Outcomes reported for an endpoint that is no longer present (a request that was in flight across an update) are
ignored; state of endpoints that remain across an update is kept, that of removed ones is dropped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from dataplane.balance.endpoint import EndpointKey


@dataclass(slots=True)
class _Health:
    failures: int = 0  # consecutive connect failures since the last success or ejection
    ejections: int = 0  # recent ejections, the back-off multiplier (decays while in service)
    until: float = -math.inf  # ejected while now < until; the last ejection's end otherwise


class OutlierDetector:
    """Owns the failure counts and ejections of the current endpoints (by key).

    Guarantees: never more than `max_ejections()` endpoints ejected at any `now`; durations within
    [base_ejection_time, max_ejection_time]. Raises ValueError on construction for out-of-range settings.
    """

    def __init__(
        self,
        *,
        consecutive_failures: int = 5,
        base_ejection_time: float = 30.0,
        max_ejection_time: float = 300.0,
        max_ejection_share: float = 0.5,
    ) -> None:
        if consecutive_failures < 1:
            raise ValueError(f"consecutive_failures must be >= 1, got {consecutive_failures}")
        if not 0 < base_ejection_time <= max_ejection_time:
            raise ValueError(
                f"need 0 < base_ejection_time <= max_ejection_time, got {base_ejection_time}, {max_ejection_time}"
            )
        if not 0.0 <= max_ejection_share <= 1.0:
            raise ValueError(f"max_ejection_share must be within [0, 1], got {max_ejection_share}")
        self.consecutive_failures = consecutive_failures
        self.base_ejection_time = base_ejection_time
        self.max_ejection_time = max_ejection_time
        self.max_ejection_share = max_ejection_share
        self._health: dict[EndpointKey, _Health] = {}
        self._latest_until = -math.inf  # no endpoint is ejected at or after this time: the common case is O(1)

    # --- feeding ----------------------------------------------------------------------------------------------

    def update(self, keys: Iterable[EndpointKey], now: float) -> None:
        """Track exactly these endpoints: keep the state of those that remain, forget removed ones."""
        old = self._health
        self._health = {key: old.get(key) or _Health() for key in keys}
        ejected = sorted((h.until, key) for key, h in self._health.items() if now < h.until)
        # Fewer endpoints may allow fewer ejections: return the ones that would come back first.
        for _, key in ejected[: max(0, len(ejected) - self.max_ejections())]:
            self._health[key].until = now
        self._latest_until = max((h.until for h in self._health.values()), default=-math.inf)

    def failure(self, key: EndpointKey, now: float) -> bool:
        """Record a failed connect; True when it ejected the endpoint."""
        health = self._health.get(key)
        if health is None or now < health.until:
            return False  # gone, or already ejected (a late report from a request started before the ejection)
        health.failures = min(health.failures + 1, self.consecutive_failures)
        if health.failures < self.consecutive_failures or self.ejected_count(now) >= self.max_ejections():
            return False
        if health.ejections:
            in_service = now - health.until
            health.ejections = max(0, health.ejections - int(in_service // self.base_ejection_time))
        health.ejections += 1
        health.failures = 0
        health.until = now + min(self.base_ejection_time * health.ejections, self.max_ejection_time)
        self._latest_until = max(self._latest_until, health.until)
        return True

    def success(self, key: EndpointKey, now: float) -> None:
        """Record a successful connect: the consecutive-failure count starts over. An ejection runs its course."""
        health = self._health.get(key)
        if health is not None:
            health.failures = 0

    # --- reading ----------------------------------------------------------------------------------------------

    def max_ejections(self) -> int:
        # The epsilon keeps e.g. 0.29 * 100 from flooring to 28.
        return math.floor(self.max_ejection_share * len(self._health) + 1e-9)

    def is_ejected(self, key: EndpointKey, now: float) -> bool:
        health = self._health.get(key)
        return health is not None and now < health.until

    def ejected(self, now: float) -> frozenset[EndpointKey]:
        if now >= self._latest_until:
            return frozenset()
        return frozenset(key for key, h in self._health.items() if now < h.until)

    def ejected_count(self, now: float) -> int:
        if now >= self._latest_until:
            return 0
        return sum(1 for h in self._health.values() if now < h.until)

    def ejected_until(self, key: EndpointKey) -> float | None:
        """When the endpoint's last ejection ends (or ended); None if it was never ejected or is unknown."""
        health = self._health.get(key)
        return None if health is None or health.until == -math.inf else health.until

    def failures(self, key: EndpointKey) -> int:
        health = self._health.get(key)
        return 0 if health is None else health.failures

    def ejections(self, key: EndpointKey) -> int:
        """The back-off multiplier of the endpoint's next ejection, before decay."""
        health = self._health.get(key)
        return 0 if health is None else health.ejections
