"""Rise/fall and flap damping: whether a region's prefixes should be announced, from its gateway's probes.

Theory of operation
-------------------
The speaker probes the local gateway every `interval` (100 ms) and feeds each outcome to `Damper.step` as an
`Observation`: READY (HTTP 200), UNREADY (anything else: 503, a refused connection, a timeout) or DRAINED (the
operator's drain flag is set, or the gateway answered that it is draining). The damper answers with a `Transition`:
the `Action` to send to ExaBGP (announce, withdraw or nothing) and its new `RouteState`. Time is counted in probes
("ticks"), so the machine is pure and hypothesis can drive it; the speaker converts seconds to probes.

Rules (all counts in consecutive probes):
- rise: announce after `rise` READY in a row (default 2: 100-200 ms after a (re)start of the speaker).
- fall: withdraw after `fall` UNREADY in a row (default 3: the third failed probe, <= 300 ms + probe timeout after
  the gateway turns unready). A withdraw is never delayed by damping: safety first.
- drain: DRAINED withdraws on the probe that sees it; after the drain is lifted the route needs `rise` again.
- start: the speaker begins in UNKNOWN, having asserted nothing, because ExaBGP keeps the routes of a speaker that
  died and respawns it. The first decision either way is sent: `rise` READY announce (no gap when the gateway stayed
  healthy), `fall` UNREADY withdraw (a stale announcement from before the restart is taken back).
- flap damping: every announce or withdraw is a route change, remembered for `window` probes. An announce is
  allowed only while the window holds at most `max_changes - 2` changes, which leaves room for the withdraw that
  may follow: no window of `window` probes ever sees more than `max_changes` changes. A gateway that used the
  budget is SUPPRESSED: held *withdrawn* (like RFC 2439 route flap damping) until it has been READY for `reuse`
  probes in a row *and* the window has room again. Held withdrawn rather than announced because a flapping gateway
  is failing some of the time, every route change resets connections in flight, and the other regions still
  announce the prefix; a flapping gateway never flaps the route beyond `max_changes` changes in total as long as
  its ready spells stay shorter than `reuse`.
The transition table below lists every (state, observation) pair; a missing pair is a bug and raises.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


class RouteState(enum.Enum):
    UNKNOWN = "unknown"  # just started: nothing asserted to ExaBGP yet
    ANNOUNCED = "announced"
    WITHDRAWN = "withdrawn"
    SUPPRESSED = "suppressed"  # withdrawn and held there: the gateway flapped
    DRAINED = "drained"  # withdrawn by the operator


class Observation(enum.Enum):
    READY = "ready"
    UNREADY = "unready"
    DRAINED = "drained"


class Action(enum.Enum):
    NONE = "none"
    ANNOUNCE = "announce"
    WITHDRAW = "withdraw"


@dataclass(frozen=True)
class DampingRules:
    """Counts are probes. `window == 0` switches flap damping off."""

    rise: int = 2
    fall: int = 3
    window: int = 600
    max_changes: int = 6
    reuse: int = 100

    def __post_init__(self) -> None:
        if self.rise < 1 or self.fall < 1:
            raise ValueError("rise and fall must be at least 1")
        if self.window < 0 or self.reuse < 0:
            raise ValueError("window and reuse cannot be negative")
        if self.max_changes < 2:
            raise ValueError("max_changes must be at least 2 (one announce and its withdraw)")

    @classmethod
    def from_seconds(cls, *, rise: int, fall: int, flap_window: float, max_changes: int, reuse: float,
                     interval: float) -> DampingRules:
        return cls(rise, fall, round(flap_window / interval), max_changes, round(reuse / interval))


@dataclass(frozen=True)
class Transition:
    """What one probe changed: the action to send (NONE for most probes) and why, in words for the status file."""

    action: Action
    before: RouteState
    after: RouteState
    reason: str


class DampingError(Exception):
    """A (state, observation) pair is missing from the table: a bug, never a gateway's fault."""


_Handler = Callable[["Damper", Observation], tuple[Action, RouteState, str]]


class Damper:
    """Owns the damping state of one region's prefixes (they move together). Pure: no clock, no IO."""

    def __init__(self, rules: DampingRules | None = None) -> None:
        self.rules = rules or DampingRules()
        self.state = RouteState.UNKNOWN
        self.tick = 0
        self.ready_run = 0  # consecutive READY observations
        self.unready_run = 0  # consecutive UNREADY observations
        self._changes: deque[int] = deque()  # ticks of the route changes still inside the window

    @property
    def announced(self) -> bool:
        return self.state is RouteState.ANNOUNCED

    @property
    def changes_in_window(self) -> int:
        return len(self._changes)

    def step(self, observation: Observation) -> Transition:
        self.tick += 1
        window = self.rules.window
        while self._changes and self._changes[0] <= self.tick - window:
            self._changes.popleft()
        if observation is Observation.READY:
            self.ready_run, self.unready_run = self.ready_run + 1, 0
        elif observation is Observation.UNREADY:
            self.ready_run, self.unready_run = 0, self.unready_run + 1
        else:
            self.ready_run = self.unready_run = 0
        try:
            handler = _TABLE[(self.state, observation)]
        except KeyError:
            raise DampingError(f"no transition for {self.state.value} on {observation.value}") from None
        before = self.state
        action, after, reason = handler(self, observation)
        if action is not Action.NONE and window:
            self._changes.append(self.tick)
        self.state = after
        return Transition(action, before, after, reason)

    # --- guards and handlers (the table's cells) ---

    def _room_to_announce(self) -> bool:
        return not self.rules.window or len(self._changes) + 2 <= self.rules.max_changes

    def _flapping(self, counting: int = 0) -> str:
        return (f"held withdrawn: the gateway flapped ({len(self._changes) + counting} route changes in the last "
                f"{self.rules.window} probes, {self.rules.max_changes} allowed); needs {self.rules.reuse} ready "
                "probes in a row")

    def _hold(self, obs: Observation) -> tuple[Action, RouteState, str]:
        return Action.NONE, self.state, ""

    def _rise(self, obs: Observation) -> tuple[Action, RouteState, str]:
        """UNKNOWN/WITHDRAWN/DRAINED on READY: announce once `rise` is met and the flap budget allows."""
        if self.ready_run < self.rules.rise:
            state = RouteState.UNKNOWN if self.state is RouteState.UNKNOWN else RouteState.WITHDRAWN
            return Action.NONE, state, ""
        if self._room_to_announce():
            return Action.ANNOUNCE, RouteState.ANNOUNCED, f"gateway ready for {self.ready_run} probes (rise)"
        return Action.NONE, RouteState.SUPPRESSED, self._flapping()

    def _fall(self, obs: Observation) -> tuple[Action, RouteState, str]:
        """ANNOUNCED/UNKNOWN on UNREADY: withdraw once `fall` is met, whatever the flap budget."""
        if self.unready_run < self.rules.fall:
            return Action.NONE, self.state, ""
        # this withdraw will be counted: if it leaves no room for another announce, say so now
        reason = f"gateway unready for {self.unready_run} probes (fall)"
        if self.rules.window and len(self._changes) + 3 > self.rules.max_changes:
            return Action.WITHDRAW, RouteState.SUPPRESSED, f"{reason}, then {self._flapping(counting=1)}"
        return Action.WITHDRAW, RouteState.WITHDRAWN, reason

    def _reuse(self, obs: Observation) -> tuple[Action, RouteState, str]:
        """SUPPRESSED on READY: announce after `reuse` (and `rise`) ready probes in a row, once the window has room."""
        if self.ready_run >= max(self.rules.rise, self.rules.reuse) and self._room_to_announce():
            return Action.ANNOUNCE, RouteState.ANNOUNCED, f"gateway ready for {self.ready_run} probes after flapping"
        return Action.NONE, RouteState.SUPPRESSED, ""

    def _drain(self, obs: Observation) -> tuple[Action, RouteState, str]:
        """Any state on DRAINED: withdraw now if anything may be announced. Lifting the drain needs `rise` again
        (and clears a suppression's `reuse` wait, not the window's budget)."""
        if self.state in (RouteState.ANNOUNCED, RouteState.UNKNOWN):
            return Action.WITHDRAW, RouteState.DRAINED, "drained by the operator"
        return Action.NONE, RouteState.DRAINED, ""

    def _undrain_unready(self, obs: Observation) -> tuple[Action, RouteState, str]:
        return Action.NONE, RouteState.WITHDRAWN, ""


_S, _O = RouteState, Observation
_TABLE: dict[tuple[RouteState, Observation], _Handler] = {
    (_S.UNKNOWN, _O.READY): Damper._rise,
    (_S.UNKNOWN, _O.UNREADY): Damper._fall,
    (_S.UNKNOWN, _O.DRAINED): Damper._drain,
    (_S.ANNOUNCED, _O.READY): Damper._hold,
    (_S.ANNOUNCED, _O.UNREADY): Damper._fall,
    (_S.ANNOUNCED, _O.DRAINED): Damper._drain,
    (_S.WITHDRAWN, _O.READY): Damper._rise,
    (_S.WITHDRAWN, _O.UNREADY): Damper._hold,
    (_S.WITHDRAWN, _O.DRAINED): Damper._drain,
    (_S.SUPPRESSED, _O.READY): Damper._reuse,
    (_S.SUPPRESSED, _O.UNREADY): Damper._hold,
    (_S.SUPPRESSED, _O.DRAINED): Damper._drain,
    (_S.DRAINED, _O.READY): Damper._rise,
    (_S.DRAINED, _O.UNREADY): Damper._undrain_unready,
    (_S.DRAINED, _O.DRAINED): Damper._drain,
}
del _S, _O
