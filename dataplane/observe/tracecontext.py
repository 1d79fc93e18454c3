"""W3C Trace Context (https://www.w3.org/TR/trace-context/): `traceparent` and `tracestate`. Pure, no dependencies.

Interface, for the proxy's hot path (header values may be `bytes` as the codecs hand them over, or `str`):

    extract(traceparent, tracestate) -> SpanContext | None   the incoming context, None if absent or invalid
    parse_traceparent(value) -> SpanContext | None            tracestate left empty
    valid_tracestate(value) -> str                            the value unchanged if valid, else "" (dropped)
    format_traceparent(ctx) -> str                            always version 00
    new_root(sampling) -> SpanContext                         fresh ids; sampled for `sampling` percent of traces
    child(parent) -> SpanContext                              same trace, new span id, flag and tracestate kept
    should_sample(trace_id, sampling) -> bool                 the ratio decision OTel's TraceIdRatioBased makes

Parsing follows the spec's rules: version 00 is exactly `00-<32 hex>-<16 hex>-<2 hex>` in lowercase; all-zero ids
and version `ff` are invalid; a higher version is read by its first four fields (at least 55 characters, the flags
followed by the end or a `-`), and we propagate it onward as version 00. Garbage never raises: it yields None.

`tracestate` is passed through unchanged: we add no member of our own. It is checked lightly (at most 32 list
members, keys and values per the spec's grammar, no duplicate keys); an invalid one is dropped, never fatal, and
a tracestate without a valid traceparent is ignored, as the spec asks.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.DOTALL)
_KEY = re.compile(r"[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}")
_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
_OWS = " \t"
MAX_TRACESTATE_MEMBERS = 32
_SAMPLED = 0x01
_ID64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class SpanContext:
    """What travels in `traceparent`/`tracestate`: ids as integers (non-zero), the sampled flag, the raw tracestate."""

    trace_id: int  # 128 bits
    span_id: int  # 64 bits: the parent-id field of the traceparent we send or received
    sampled: bool
    tracestate: str = ""

    @property
    def trace_id_hex(self) -> str:
        return f"{self.trace_id:032x}"


def _text(value: str | bytes) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return value


def parse_traceparent(value: str | bytes) -> SpanContext | None:
    """The context in a `traceparent` header value (tracestate empty), or None if it is not a valid one."""
    text = _text(value)
    if text is None:
        return None
    m = _TRACEPARENT.fullmatch(text.strip(_OWS))
    if m is None:
        return None
    version, trace, span, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    trace_id, span_id = int(trace, 16), int(span, 16)
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, bool(int(flags, 16) & _SAMPLED))


def valid_tracestate(value: str | bytes) -> str:
    """`value` unchanged if it is a valid `tracestate` list, else "" (an invalid tracestate is dropped).

    Several `tracestate` header lines are one list: join them with "," before calling.
    """
    text = _text(value)
    if text is None:
        return ""
    keys: set[str] = set()
    for member in text.split(","):
        member = member.strip(_OWS)
        if not member:
            continue  # empty list members are allowed and do not count
        key, sep, val = member.partition("=")
        if not sep or key in keys or not _KEY.fullmatch(key) or not _VALUE.fullmatch(val):
            return ""
        keys.add(key)
        if len(keys) > MAX_TRACESTATE_MEMBERS:
            return ""
    return text if keys else ""


def extract(traceparent: str | bytes | None, tracestate: str | bytes | None = None) -> SpanContext | None:
    """The incoming context from both headers; None without a valid traceparent (its tracestate then ignored)."""
    if traceparent is None:
        return None
    ctx = parse_traceparent(traceparent)
    if ctx is None or not tracestate:
        return ctx
    state = valid_tracestate(tracestate)
    return SpanContext(ctx.trace_id, ctx.span_id, ctx.sampled, state) if state else ctx


def format_traceparent(ctx: SpanContext) -> str:
    """The version-00 `traceparent` value for `ctx` (flags carry only the sampled bit)."""
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{'01' if ctx.sampled else '00'}"


def should_sample(trace_id: int, sampling: float) -> bool:
    """Whether a root trace is sampled at `sampling` percent: the rule of OTel's TraceIdRatioBased (the low 64 bits
    of the trace id under a bound), so a context made here and a `Tracer` with the same percentage agree."""
    return trace_id & _ID64 < round(sampling / 100 * (1 << 64))


def _new_id(bits: int) -> int:
    # The module's generator, as OTel's RandomIdGenerator: seeded from the OS and reseeded in a forked child.
    while True:
        value = random.getrandbits(bits)
        if value:
            return value


def new_root(sampling: float = 100.0) -> SpanContext:
    """A new trace: random trace and span ids, sampled for `sampling` percent (0..100) of traces."""
    trace_id = _new_id(128)
    return SpanContext(trace_id, _new_id(64), should_sample(trace_id, sampling))


def child(parent: SpanContext) -> SpanContext:
    """The context for a hop below `parent`: same trace, sampled flag and tracestate; a new span id."""
    return SpanContext(parent.trace_id, _new_id(64), parent.sampled, parent.tracestate)
