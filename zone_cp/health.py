"""Liveness of dataplanes from their heartbeats (pure: the caller passes the clock).

A dataplane is alive from its registration or any message on its config stream until it has been silent for
`timeout` seconds; then it is dead and leaves every endpoint list, until it speaks again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DPKey = tuple[str, str]


@dataclass
class HealthTracker:
    timeout: float = 10.0
    last_seen: dict[DPKey, float] = field(default_factory=dict)
    alive: set[DPKey] = field(default_factory=set)

    def seen(self, key: DPKey, now: float) -> bool:
        """Record a sign of life; True when the dataplane just came (back) to life."""
        self.last_seen[key] = now
        if key in self.alive:
            return False
        self.alive.add(key)
        return True

    def forget(self, key: DPKey) -> None:
        self.last_seen.pop(key, None)
        self.alive.discard(key)

    def sweep(self, now: float) -> list[DPKey]:
        """Dataplanes that just went silent for longer than the timeout."""
        expired = [k for k in self.alive if now - self.last_seen.get(k, now) > self.timeout]
        for key in expired:
            self.alive.discard(key)
        return expired

    def next_deadline(self) -> float | None:
        if not self.alive:
            return None
        return min(self.last_seen[k] for k in self.alive) + self.timeout
