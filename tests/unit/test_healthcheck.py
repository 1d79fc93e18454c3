"""Active health checks: the consecutive-result state machine (pure) and the settings it reads."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dataplane.healthcheck import HealthCheckSpec, HealthState


def test_thresholds_take_out_and_bring_back() -> None:
    state = HealthState(HealthCheckSpec(unhealthy_threshold=3, healthy_threshold=2))
    assert [state.record("a", False) for _ in range(3)] == [False, False, True]
    assert state.failing == {"a"}
    assert state.record("a", True) is False and state.record("a", False) is False  # streak broken: still failing
    assert [state.record("a", True) for _ in range(2)] == [False, True]
    assert state.failing == set()


def test_every_endpoint_failing_keeps_them_all() -> None:
    state = HealthState(HealthCheckSpec(unhealthy_threshold=1))
    state.record("a", False)
    assert state.usable(["a", "b"]) == {"b"}
    state.record("b", False)
    assert state.usable(["a", "b"]) == {"a", "b"}
    state.keep(["b"])
    assert state.failing == {"b"}


def test_settings_from_the_policy() -> None:
    spec = HealthCheckSpec.of({"interval": "200ms", "timeout": "1s", "unhealthyThreshold": 2,
                               "http": {"path": "/healthz", "expectedStatuses": [200, 204]}})
    assert (spec.interval, spec.timeout, spec.unhealthy_threshold, spec.healthy_threshold) == (0.2, 1.0, 2, 1)
    assert spec.path == "/healthz" and spec.passes(204) and not spec.passes(201)
    tcp = HealthCheckSpec.of({})
    assert tcp.path is None and tcp.interval == 10.0 and tcp.passes(299) and not tcp.passes(300)


@given(st.integers(1, 5), st.integers(1, 5), st.lists(st.booleans(), max_size=60))
def test_state_follows_the_last_streak(unhealthy: int, healthy: int, results: list[bool]) -> None:
    """Failing exactly when the last `unhealthy` results failed, or it was failing and has not since passed
    `healthy` times in a row."""
    state = HealthState(HealthCheckSpec(unhealthy_threshold=unhealthy, healthy_threshold=healthy))
    failing = False
    fails = passes = 0
    for ok in results:
        state.record("e", ok)
        fails, passes = (0, passes + 1) if ok else (fails + 1, 0)
        if not failing and fails >= unhealthy:
            failing = True
        elif failing and passes >= healthy:
            failing = False
        assert ("e" in state.failing) is failing
