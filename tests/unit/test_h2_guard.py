"""FrameGuard and ResetCounter: the HTTP/2 limits h2 does not enforce itself, checked without any IO."""

from __future__ import annotations

import contextlib

import pytest
from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame, PingFrame
from hypothesis import given
from hypothesis import strategies as st

from dataplane.h2.guard import PREFACE, FloodDetected, FrameGuard, ResetCounter


def feed_split(guard: FrameGuard, data: bytes, cuts: list[int]) -> None:
    """Feed `data` in pieces cut at `cuts`: the guard must not care how the bytes arrive."""
    last = 0
    for cut in [*sorted(set(c % (len(data) + 1) for c in cuts)), len(data)]:
        guard.feed(data[last:cut])
        last = cut


def block(frames: int, size: int = 100, *, end: bool = True) -> bytes:
    first = HeadersFrame(1, data=b"x" * size, flags=["END_HEADERS"] if frames == 1 and end else []).serialize()
    rest = b"".join(ContinuationFrame(1, data=b"x" * size,
                                      flags=["END_HEADERS"] if i == frames - 2 and end else []).serialize()
                    for i in range(frames - 1))
    return first + rest


@given(cuts=st.lists(st.integers(0, 10_000), max_size=20))
def test_well_formed_traffic_passes_however_it_is_split(cuts: list[int]) -> None:
    data = (PREFACE + block(3) + DataFrame(1, data=b"body" * 100).serialize() + PingFrame(0).serialize()
            + DataFrame(1, data=b"", flags=["END_STREAM"]).serialize())
    guard = FrameGuard(server_side=True)
    feed_split(guard, data, cuts)
    assert not guard.in_header_block


@given(cuts=st.lists(st.integers(0, 100_000), max_size=20))
def test_continuation_flood_is_detected_however_it_is_split(cuts: list[int]) -> None:
    guard = FrameGuard(server_side=True, max_continuations=32)
    with pytest.raises(FloodDetected, match="CONTINUATION"):
        feed_split(guard, PREFACE + block(40, size=10, end=False), cuts)


def test_header_block_size_is_bounded_across_frames() -> None:
    guard = FrameGuard(server_side=False, max_header_block=1000)
    guard.feed(block(9, size=100, end=False))  # 900 bytes: fine, and still open
    assert guard.in_header_block
    with pytest.raises(FloodDetected, match="over 1000 bytes"):
        guard.feed(ContinuationFrame(1, data=b"x" * 200).serialize())


def test_a_completed_block_resets_the_count() -> None:
    guard = FrameGuard(server_side=False, max_continuations=4)
    for _ in range(10):
        guard.feed(block(5))
    assert not guard.in_header_block


def test_empty_data_flood_is_detected_and_a_real_frame_resets_the_run() -> None:
    guard = FrameGuard(server_side=False, max_empty_frames=3)
    empty = DataFrame(1, data=b"").serialize()
    guard.feed(empty * 3 + DataFrame(1, data=b"x").serialize() + empty * 3)
    with pytest.raises(FloodDetected, match="empty DATA"):
        guard.feed(empty)


@given(junk=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 3000), max_size=10))
def test_arbitrary_bytes_only_ever_raise_flood_detected(junk: bytes, cuts: list[int]) -> None:
    guard = FrameGuard(server_side=True)
    with contextlib.suppress(FloodDetected):
        feed_split(guard, junk, cuts)


@given(resets=st.lists(st.booleans(), min_size=1, max_size=500))
def test_reset_counter_trips_at_the_first_early_reset_past_the_limit(resets: list[bool]) -> None:
    counter = ResetCounter(min_streams=100, max_share=0.5)
    tripped = [i for i, reset in enumerate(resets) if (counter.opened() or True) and reset and counter.reset_early()]
    premature = 0
    expected = []
    for i, reset in enumerate(resets):  # the rule, written out: streams so far = i + 1
        premature += reset
        if reset and i + 1 >= 100 and premature > 0.5 * (i + 1):
            expected.append(i)
    assert tripped == expected


def test_a_cancelling_client_is_not_a_rapid_reset() -> None:
    counter = ResetCounter()
    tripped = False
    for i in range(10_000):
        counter.opened()
        if i % 5 == 0:  # one call in five cancelled (deadlines): 20%
            tripped = tripped or counter.reset_early()
    assert not tripped
