"""The one clock the PKI reads, so tests can pass a fixed, timezone-aware `now`."""

from __future__ import annotations

from datetime import UTC, datetime


def aware_now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now
