"""The one clock the PKI reads, so tests can pass a fixed, timezone-aware `now`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

# Leaves start this much in the past so that a peer whose clock lags still accepts them.
CLOCK_SKEW = timedelta(minutes=1)


def aware_now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now
