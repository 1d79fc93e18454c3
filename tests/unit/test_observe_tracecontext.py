"""W3C Trace Context: the spec's examples and edge cases, then hypothesis on round trips and garbage."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dataplane.observe.tracecontext import (
    MAX_TRACESTATE_MEMBERS,
    SpanContext,
    child,
    extract,
    format_traceparent,
    new_root,
    parse_traceparent,
    should_sample,
    valid_tracestate,
)

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"


def test_the_spec_example_parses() -> None:
    ctx = parse_traceparent(f"00-{TRACE}-{SPAN}-01")
    assert ctx == SpanContext(int(TRACE, 16), int(SPAN, 16), True, "")
    assert ctx is not None and ctx.trace_id_hex == TRACE
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-00".encode()) == SpanContext(int(TRACE, 16), int(SPAN, 16), False)


def test_only_the_sampled_bit_of_the_flags_is_read() -> None:
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-03") == SpanContext(int(TRACE, 16), int(SPAN, 16), True)
    assert parse_traceparent(f"00-{TRACE}-{SPAN}-02") == SpanContext(int(TRACE, 16), int(SPAN, 16), False)


def test_header_whitespace_is_ignored() -> None:
    assert parse_traceparent(f" \t00-{TRACE}-{SPAN}-01 ") is not None


@pytest.mark.parametrize("value", [
    f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
    f"00-{TRACE.upper()}-{SPAN}-01",  # uppercase hex
    f"00-{TRACE}-{SPAN.upper()}-01",
    f"00-{TRACE}-{SPAN}-0A",
    f"00-{TRACE[:-1]}-{SPAN}-01",  # wrong lengths
    f"00-{TRACE}0-{SPAN}-01",
    f"00-{TRACE}-{SPAN}0-01",
    f"00-{TRACE}-{SPAN}-1",
    f"00-{TRACE}-{SPAN}-01-",  # version 00 has exactly four fields
    f"00-{TRACE}-{SPAN}-01-extra",
    f"00-{TRACE}-{SPAN}-01\n",
    f"ff-{TRACE}-{SPAN}-01",  # the forbidden version
    f"0-{TRACE}-{SPAN}-01",
    f"00_{TRACE}-{SPAN}-01",
    f"01-{TRACE}-{SPAN}-011",  # a future version: the flags must end the value or be followed by "-"
    f"01-{TRACE}-{SPAN}",
    f"00-{TRACE}-{SPAN}-0g",
    "",
    "00",
    b"\xff\xfe",
])
def test_invalid_traceparents_are_rejected(value: str | bytes) -> None:
    assert parse_traceparent(value) is None


def test_future_versions_are_read_by_their_first_four_fields() -> None:
    expected = SpanContext(int(TRACE, 16), int(SPAN, 16), True)
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-01") == expected
    assert parse_traceparent(f"cc-{TRACE}-{SPAN}-01-what-the-future-will-add") == expected
    assert format_traceparent(expected) == f"00-{TRACE}-{SPAN}-01"  # propagated as the version we know


def test_tracestate_passes_through_unchanged() -> None:
    state = "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7,,tenant1@vendor=x y"
    assert valid_tracestate(state) == state
    assert valid_tracestate(state.encode()) == state
    assert valid_tracestate("  ,  ") == ""


@pytest.mark.parametrize("state", [
    "Congo=t61",  # uppercase key
    "1abc=x",  # a simple key starts with a letter
    "congo",  # no value
    "congo=",  # empty value
    "congo=a,b",  # "b" has no value
    "congo=x=y",  # "=" inside the value
    "congo=x\x7f",
    "congo=ends-in-space ,rojo=\x01",
    "a=1,a=2",  # duplicate key
    "t@toolongsystemid=x",  # system id over 14 characters
    "k=" + "v" * 257,  # value over 256 characters
    "k" * 257 + "=v",  # key over 256 characters
    ",".join(f"k{i}=v" for i in range(MAX_TRACESTATE_MEMBERS + 1)),
])
def test_invalid_tracestates_are_dropped(state: str) -> None:
    assert valid_tracestate(state) == ""


def test_extract_joins_both_headers_and_drops_only_a_bad_tracestate() -> None:
    parent = f"00-{TRACE}-{SPAN}-01"
    members = ",".join(f"k{i}=v" for i in range(MAX_TRACESTATE_MEMBERS))
    assert extract(parent, members) == SpanContext(int(TRACE, 16), int(SPAN, 16), True, members)
    assert extract(parent, "Bad=") == SpanContext(int(TRACE, 16), int(SPAN, 16), True, "")
    assert extract(None, "rojo=1") is None
    assert extract("garbage", "rojo=1") is None


def test_new_root_and_child() -> None:
    root = new_root(100)
    assert root.sampled and root.trace_id and root.span_id and root.tracestate == ""
    assert not new_root(0).sampled
    kid = child(SpanContext(root.trace_id, root.span_id, True, "rojo=1"))
    assert (kid.trace_id, kid.sampled, kid.tracestate) == (root.trace_id, True, "rojo=1")
    assert kid.span_id != root.span_id
    assert len({new_root().trace_id for _ in range(100)}) == 100


def test_sampling_follows_the_low_64_bits_of_the_trace_id() -> None:
    half = 1 << 63
    assert should_sample(half - 1, 50) and not should_sample(half, 50)
    assert should_sample((7 << 64) | (half - 1), 50)  # the high bits play no part
    assert not should_sample(1, 0) and should_sample((1 << 128) - 1, 100)
    roots = [new_root(25) for _ in range(4000)]
    assert 800 < sum(r.sampled for r in roots) < 1200


CONTEXTS = st.builds(SpanContext, st.integers(1, (1 << 128) - 1), st.integers(1, (1 << 64) - 1), st.booleans())


@given(CONTEXTS)
def test_format_parse_round_trip(ctx: SpanContext) -> None:
    text = format_traceparent(ctx)
    assert len(text) == 55
    assert parse_traceparent(text) == ctx
    assert parse_traceparent(text.encode()) == ctx


@given(st.one_of(st.text(), st.binary(), st.text("0123456789abcdefABCDEF-f", max_size=70)))
def test_garbage_never_raises(value: str | bytes) -> None:
    ctx = parse_traceparent(value)
    assert ctx is None or (ctx.trace_id > 0 and ctx.span_id > 0)
    state = valid_tracestate(value)
    assert state == "" or state == (value if isinstance(value, str) else value.decode("ascii"))
    assert extract(value, value) is None or ctx is not None


@given(st.lists(st.tuples(st.from_regex(r"[a-z][a-z0-9_\-*/]{0,20}", fullmatch=True),
                          st.from_regex(r"[!-+\--<>-~]{1,20}", fullmatch=True)),
                min_size=1, max_size=MAX_TRACESTATE_MEMBERS, unique_by=lambda kv: kv[0]))
def test_well_formed_tracestates_are_kept(members: list[tuple[str, str]]) -> None:
    state = ",".join(f"{k}={v}" for k, v in members)
    assert valid_tracestate(state) == state
