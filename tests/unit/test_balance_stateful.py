"""Every balancer against a model, over random runs of update / pick / started / finished / connect outcomes / time."""

from __future__ import annotations

import math
import random
from collections import Counter

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dataplane.balance import POLICIES, BalancerBase, Endpoint, OutlierDetector, make_balancer

POOL = [Endpoint(f"10.0.0.{i}", 80, (("service", "web"),), f"web-{i}") for i in range(6)]
# Same key as POOL[0] with other details: state must follow the key, and a duplicate key in one update is dropped.
POOL.append(Endpoint("10.0.0.0", 80, (("service", "web"), ("version", "v2")), "web-0-renamed"))
POOL.append(Endpoint("fd00::1", 80))
ALL_KEYS = sorted({e.key for e in POOL})


class BalancerMachine(RuleBasedStateMachine):
    balancer: BalancerBase
    detector: OutlierDetector

    @initialize(
        name=st.sampled_from(sorted(POLICIES)),
        seed=st.integers(0, 2**32),
        threshold=st.integers(1, 3),
        share=st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]),
        panic=st.sampled_from([0.0, 0.5, 0.8, 1.0]),
    )
    def setup(self, name: str, seed: int, threshold: int, share: float, panic: float) -> None:
        self.detector = OutlierDetector(
            consecutive_failures=threshold, base_ejection_time=10, max_ejection_time=35, max_ejection_share=share
        )
        self.balancer = make_balancer(name, rng=random.Random(seed), outlier=self.detector, panic_threshold=panic)
        self.share = share
        self.now = 0.0
        self.in_flight: list[Endpoint] = []

    @rule(chosen=st.lists(st.sampled_from(POOL), max_size=len(POOL)))
    def update(self, chosen: list[Endpoint]) -> None:
        self.balancer.update(chosen, now=self.now)
        expected = list({e.key: e for e in reversed(chosen)}.values())  # first occurrence of each key wins
        assert set(self.balancer.endpoints) == set(expected)

    @precondition(lambda self: self.balancer.endpoints)
    @rule(index=st.integers(0, 100))
    def remove_one(self, index: int) -> None:
        """Endpoints usually come and go one at a time; this also shrinks the set under existing ejections."""
        kept = list(self.balancer.endpoints)
        del kept[index % len(kept)]
        self.balancer.update(kept, now=self.now)
        assert self.balancer.endpoints == tuple(kept)

    @rule(
        hash_key=st.none() | st.binary(max_size=3),
        exclude=st.frozensets(st.sampled_from(ALL_KEYS)),
        start=st.booleans(),
    )
    def pick(self, hash_key: bytes | None, exclude: frozenset[str], start: bool) -> None:
        present = {e.key for e in self.balancer.endpoints}
        ejected = self.detector.ejected(self.now)
        assert ejected <= present
        picked = self.balancer.pick(hash_key, exclude, now=self.now)
        allowed = present - exclude
        if not allowed:
            assert picked is None
            return
        assert picked is not None and picked in self.balancer.endpoints and picked.key in allowed
        in_service = len(present) - len(ejected)
        panic = in_service < self.balancer.panic_threshold * len(present)
        if not panic and allowed - ejected:
            assert picked.key not in ejected
        if hash_key is not None and self.balancer.name == "ring_hash":
            assert self.balancer.pick(hash_key, exclude, now=self.now) == picked
        if start:
            self.balancer.started(picked)
            self.in_flight.append(picked)

    @precondition(lambda self: self.in_flight)
    @rule(index=st.integers(0, 100))
    def finish(self, index: int) -> None:
        self.balancer.finished(self.in_flight.pop(index % len(self.in_flight)))

    @rule(endpoint=st.sampled_from(POOL))
    def finish_unknown(self, endpoint: Endpoint) -> None:
        """A stray `finished` (never started, or one too many) must not drive a count negative or steal one."""
        if not any(e.key == endpoint.key for e in self.in_flight):
            self.balancer.finished(endpoint)

    @rule(endpoint=st.sampled_from(POOL))
    def connect_failed(self, endpoint: Endpoint) -> None:
        was_ejected = self.detector.is_ejected(endpoint.key, self.now)
        if self.balancer.connect_failed(endpoint, now=self.now):
            assert not was_ejected and endpoint.key in {e.key for e in self.balancer.endpoints}

    @precondition(lambda self: self.balancer.endpoints)
    @rule(index=st.integers(0, 100))
    def endpoint_dies(self, index: int) -> None:
        """A present endpoint fails every connect: ejected at once unless the max share is reached."""
        endpoint = self.balancer.endpoints[index % len(self.balancer.endpoints)]
        for _ in range(self.detector.consecutive_failures):
            self.connect_failed(endpoint)
        room = self.detector.ejected_count(self.now) < self.detector.max_ejections()
        assert self.detector.is_ejected(endpoint.key, self.now) or not room

    @rule(endpoint=st.sampled_from(POOL))
    def connect_succeeded(self, endpoint: Endpoint) -> None:
        self.balancer.connect_succeeded(endpoint, now=self.now)
        assert self.detector.failures(endpoint.key) == 0

    @rule(seconds=st.sampled_from([0.5, 5.0, 10.0, 30.0, 100.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @invariant()
    def outstanding_counts_match_requests_in_flight(self) -> None:
        if not hasattr(self, "balancer"):
            return
        expected = Counter(e.key for e in self.in_flight)
        for endpoint in POOL:
            assert self.balancer.outstanding(endpoint) == expected[endpoint.key] >= 0
        assert self.balancer.statistics(now=self.now).outstanding == len(self.in_flight)

    @invariant()
    def ejected_share_within_the_max(self) -> None:
        if not hasattr(self, "balancer"):
            return
        stats = self.balancer.statistics(now=self.now)
        assert stats.ejected <= math.floor(self.share * stats.endpoints + 1e-9)
        for key in self.detector.ejected(self.now):
            until = self.detector.ejected_until(key)
            assert until is not None and self.now < until <= self.now + 35


BalancerMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)
test_balancers_against_the_model = BalancerMachine.TestCase
