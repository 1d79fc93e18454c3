"""Passive health: consecutive connect failures eject an endpoint for a growing time, within a share of the set."""

from __future__ import annotations

from typing import Any

import pytest

from dataplane.balance import OutlierDetector

KEYS = [f"10.0.0.{i}:80" for i in range(1, 11)]


def fail(detector: OutlierDetector, key: str, now: float, times: int) -> list[bool]:
    return [detector.failure(key, now) for _ in range(times)]


def test_five_consecutive_failures_eject_for_thirty_seconds() -> None:
    detector = OutlierDetector()
    detector.update(KEYS, now=0)
    assert fail(detector, KEYS[0], 0, 5) == [False] * 4 + [True]
    assert detector.ejected(1) == {KEYS[0]}
    assert detector.is_ejected(KEYS[0], 29.9) and not detector.is_ejected(KEYS[0], 30.0)
    assert detector.ejected_until(KEYS[0]) == 30.0
    # Failures reported while ejected (requests started before) change nothing.
    assert fail(detector, KEYS[0], 10, 10) == [False] * 10
    assert detector.ejected_until(KEYS[0]) == 30.0


def test_a_success_resets_the_count() -> None:
    detector = OutlierDetector()
    detector.update(KEYS, now=0)
    fail(detector, KEYS[0], 0, 4)
    detector.success(KEYS[0], 0)
    assert fail(detector, KEYS[0], 0, 4) == [False] * 4
    assert detector.failures(KEYS[0]) == 4
    assert detector.failure(KEYS[0], 0)


def test_repeated_ejections_grow_to_the_cap_and_decay_in_service() -> None:
    detector = OutlierDetector(consecutive_failures=1, base_ejection_time=30, max_ejection_time=100)
    detector.update(KEYS, now=0)
    now = 0.0
    durations = []
    for _ in range(6):
        assert detector.failure(KEYS[0], now)
        until = detector.ejected_until(KEYS[0])
        assert until is not None
        durations.append(until - now)
        now = until  # fails again as soon as it is back
    assert durations == [30, 60, 90, 100, 100, 100]
    # Back in service for 3 x 30 s: the multiplier (6) decays by 3, so the next ejection is 4 x 30 s, capped.
    assert detector.failure(KEYS[0], now + 90)
    assert detector.ejections(KEYS[0]) == 4
    # After a long healthy stretch it starts over at the base time.
    until = detector.ejected_until(KEYS[0])
    assert until is not None
    assert detector.failure(KEYS[0], until + 10_000)
    assert detector.ejected_until(KEYS[0]) == until + 10_000 + 30


def test_never_more_than_the_max_share_is_ejected() -> None:
    detector = OutlierDetector(consecutive_failures=1)
    detector.update(KEYS[:5], now=0)
    assert [detector.failure(key, 0) for key in KEYS[:5]] == [True, True, False, False, False]
    assert detector.max_ejections() == 2
    # The third stays at the threshold and is ejected on its next failure once there is room.
    assert detector.failures(KEYS[2]) == 1
    assert detector.failure(KEYS[2], 30)
    assert detector.ejected(30) == {KEYS[2]}


def test_updates_keep_remaining_state_and_cut_ejections_when_the_set_shrinks() -> None:
    detector = OutlierDetector(consecutive_failures=2)
    detector.update(KEYS[:4], now=0)
    fail(detector, KEYS[0], 0, 2)
    fail(detector, KEYS[1], 5, 2)
    fail(detector, KEYS[2], 0, 1)
    detector.update(KEYS[:3], now=6)
    # 3 endpoints allow one ejection: the one that would have ended first ends now.
    assert detector.ejected(6) == {KEYS[1]}
    assert detector.ejections(KEYS[0]) == 1  # its back-off still counts
    assert detector.failures(KEYS[2]) == 1
    assert detector.failure(KEYS[2], 6) is False  # max share reached: at the threshold, not ejected
    detector.update(KEYS[:3] + KEYS[5:8], now=7)
    assert detector.failure(KEYS[2], 7)
    # Removed endpoints are forgotten; reports about them are ignored.
    detector.update(KEYS[5:], now=8)
    assert detector.ejected(8) == set()
    assert detector.failure(KEYS[0], 8) is False and detector.failures(KEYS[0]) == 0
    detector.success(KEYS[0], 8)


def test_a_share_of_zero_disables_ejection() -> None:
    detector = OutlierDetector(consecutive_failures=1, max_ejection_share=0)
    detector.update(KEYS, now=0)
    assert not any(detector.failure(key, 0) for key in KEYS)


@pytest.mark.parametrize(
    "options",
    [
        {"consecutive_failures": 0},
        {"base_ejection_time": 0},
        {"base_ejection_time": 400},
        {"max_ejection_share": 1.5},
    ],
)
def test_bad_settings(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        OutlierDetector(**options)
