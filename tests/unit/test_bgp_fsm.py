"""The damping state machine (bgp/fsm.py): rise/fall, drain, restart and flap damping, over random probe runs."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgp.fsm import _TABLE, Action, Damper, DampingRules, Observation, RouteState, Transition

R, U, D = Observation.READY, Observation.UNREADY, Observation.DRAINED

rules_st = st.builds(
    DampingRules,
    rise=st.integers(1, 5),
    fall=st.integers(1, 5),
    window=st.integers(0, 60),
    max_changes=st.integers(2, 8),
    reuse=st.integers(0, 30),
)
# runs of one observation, so long ready/unready spells are as likely as fast flapping
runs_st = st.lists(st.tuples(st.sampled_from([R, R, U, U, D]), st.integers(1, 12)), max_size=40)


def expand(runs: list[tuple[Observation, int]]) -> list[Observation]:
    return [obs for obs, count in runs for _ in range(count)]


@dataclass
class Step:
    obs: Observation
    transition: Transition
    announced: bool


def drive(rules: DampingRules, observations: list[Observation]) -> list[Step]:
    damper = Damper(rules)
    return [Step(obs, damper.step(obs), damper.announced) for obs in observations]


def test_every_state_and_observation_has_a_transition() -> None:
    assert set(_TABLE) == {(s, o) for s in RouteState for o in Observation}


def test_rules_reject_nonsense() -> None:
    for bad in ({"rise": 0}, {"fall": 0}, {"max_changes": 1}, {"window": -1}, {"reuse": -1}):
        with pytest.raises(ValueError):
            DampingRules(**bad)


def test_seconds_become_probes() -> None:
    rules = DampingRules.from_seconds(rise=2, fall=3, flap_window=60, max_changes=6, reuse=10, interval=0.1)
    assert (rules.window, rules.reuse) == (600, 100)


def test_defaults_withdraw_within_500_ms_at_100_ms_probes() -> None:
    rules = DampingRules()
    # the third failed probe withdraws: at most 100 ms until the first one, 200 ms more, plus its 80 ms timeout
    assert (rules.rise, rules.fall) == (2, 3)
    assert 0.1 + (rules.fall - 1) * 0.1 + 0.08 <= 0.5


def test_restart_announces_as_soon_as_rise_is_met() -> None:
    steps = drive(DampingRules(), [R, R])
    assert [s.transition.action for s in steps] == [Action.NONE, Action.ANNOUNCE]


def test_restart_with_an_unready_gateway_withdraws_what_a_previous_speaker_left() -> None:
    steps = drive(DampingRules(), [U, U, U, U])
    assert [s.transition.action for s in steps] == [Action.NONE, Action.NONE, Action.WITHDRAW, Action.NONE]


def test_a_short_blip_does_not_withdraw() -> None:
    steps = drive(DampingRules(), [R, R, U, U, R, U, U, R])
    assert all(s.announced for s in steps[1:])


@settings(max_examples=400)
@given(rules_st, runs_st)
def test_announce_only_after_rise_consecutive_ready(rules: DampingRules, runs: list[tuple[Observation, int]]) -> None:
    observations = expand(runs)
    for i, step in enumerate(drive(rules, observations)):
        if step.transition.action is Action.ANNOUNCE:
            assert i + 1 >= rules.rise
            assert observations[i + 1 - rules.rise: i + 1] == [R] * rules.rise


@settings(max_examples=400)
@given(rules_st, runs_st)
def test_withdrawn_by_the_fall_th_unready_probe_and_at_once_when_drained(
        rules: DampingRules, runs: list[tuple[Observation, int]]) -> None:
    observations = expand(runs)
    steps = drive(rules, observations)
    for i, step in enumerate(steps):
        if step.obs is D:
            assert step.transition.after is RouteState.DRAINED and not step.announced
        if i + 1 >= rules.fall and observations[i + 1 - rules.fall: i + 1] == [U] * rules.fall:
            assert not step.announced
            if i == rules.fall - 1 or (i >= rules.fall and observations[i - rules.fall] is not U):
                # the fall-th unready probe: anything that may be announced is withdrawn on this very probe
                before = step.transition.before
                if before in (RouteState.ANNOUNCED, RouteState.UNKNOWN):
                    assert step.transition.action is Action.WITHDRAW


@settings(max_examples=400)
@given(rules_st, runs_st)
def test_actions_alternate_and_match_the_state(rules: DampingRules, runs: list[tuple[Observation, int]]) -> None:
    announced: bool | None = None  # what ExaBGP was told; None before the first command
    for step in drive(rules, expand(runs)):
        action = step.transition.action
        if action is Action.ANNOUNCE:
            assert announced is not True
            announced = True
        elif action is Action.WITHDRAW:
            assert announced is not False
            announced = False
        assert step.announced == (announced is True)
        assert step.announced == (step.transition.after is RouteState.ANNOUNCED)


@settings(max_examples=400)
@given(rules_st.filter(lambda r: r.window > 0), runs_st)
def test_never_more_than_max_changes_in_any_window(rules: DampingRules, runs: list[tuple[Observation, int]]) -> None:
    ticks = [i for i, step in enumerate(drive(rules, expand(runs))) if step.transition.action is not Action.NONE]
    for start, tick in enumerate(ticks):
        in_window = [t for t in ticks[start:] if t < tick + rules.window]
        assert len(in_window) <= rules.max_changes, (ticks, rules)


@settings(max_examples=400)
@given(rules_st.filter(lambda r: r.window > 0), runs_st)
def test_suppressed_routes_wait_for_reuse(rules: DampingRules, runs: list[tuple[Observation, int]]) -> None:
    """Once held withdrawn for flapping, only `max(rise, reuse)` ready probes in a row (or a drain) let it out."""
    observations = expand(runs)
    damper = Damper(rules)
    suppressed = False
    for obs in observations:
        before_ready_run = damper.ready_run
        transition = damper.step(obs)
        if obs is D:
            suppressed = False
        if suppressed and transition.action is Action.ANNOUNCE:
            assert before_ready_run + 1 >= max(rules.rise, rules.reuse)
            suppressed = False
        if transition.after is RouteState.SUPPRESSED:
            suppressed = True


@settings(max_examples=300)
@given(st.data())
def test_a_flapping_gateway_does_not_flap_the_route(data: st.DataObject) -> None:
    """Ready spells shorter than `reuse`, unready spells long enough to withdraw, faster than the window allows:
    the route changes at most `max_changes` times in total, however long the gateway flaps."""
    rise = data.draw(st.integers(1, 4))
    fall = data.draw(st.integers(1, 4))
    max_changes = data.draw(st.integers(2, 8))
    ready_spell = data.draw(st.integers(rise, rise + 6))
    reuse = data.draw(st.integers(ready_spell + 1, ready_spell + 40))
    unready_spell = data.draw(st.integers(fall, fall + 6))
    period = ready_spell + unready_spell
    window = data.draw(st.integers(period * max_changes, period * max_changes + 100))
    rules = DampingRules(rise, fall, window, max_changes, reuse)
    pattern = ([R] * ready_spell + [U] * unready_spell) * data.draw(st.integers(max_changes, 60))
    changes = [s for s in drive(rules, pattern) if s.transition.action is not Action.NONE]
    assert len(changes) <= max_changes
    assert not drive(rules, pattern)[-1].announced


@settings(max_examples=300)
@given(rules_st, runs_st)
def test_a_steadily_ready_gateway_is_announced(rules: DampingRules, runs: list[tuple[Observation, int]]) -> None:
    settle = max(rules.rise, rules.reuse) + rules.window
    steps = drive(rules, expand(runs) + [R] * settle)
    assert steps[-1].announced
    assert steps[-1].transition.after is RouteState.ANNOUNCED


def test_suppression_is_explained() -> None:
    rules = DampingRules(rise=1, fall=1, window=8, max_changes=4, reuse=10)
    steps = drive(rules, [R, U, R, U, R, U])
    assert [s.transition.action for s in steps] == [Action.ANNOUNCE, Action.WITHDRAW] * 2 + [Action.NONE] * 2
    assert steps[3].transition.after is RouteState.SUPPRESSED
    assert "flapped" in steps[3].transition.reason and "4 route changes" in steps[3].transition.reason
    more = drive(rules, [R, U, R, U] + [R] * 9)
    assert not more[-1].announced  # the window has room again, but 9 ready probes < reuse 10
    more = drive(rules, [R, U, R, U] + [R] * 10)
    assert more[-1].announced
    wide = DampingRules(rise=1, fall=1, window=100, max_changes=4, reuse=10)
    assert not drive(wide, [R, U, R, U] + [R] * 50)[-1].announced  # reuse met, but the window is still full


def test_window_zero_switches_flap_damping_off() -> None:
    rules = DampingRules(rise=1, fall=1, window=0, max_changes=2, reuse=50)
    steps = drive(rules, [R, U] * 50)
    assert sum(s.transition.action is not Action.NONE for s in steps) == 100
