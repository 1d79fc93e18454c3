"""Durations written as operators write them in Kuma and Go: ``24h``, ``1h30m``, ``500ms``, ``90s`` (standard
library only: the sidecar reads its policies' durations with it)."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001, "µs": 0.000001}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|h|m|s)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|us|µs|h|m|s))+")


def parse_duration(text: str) -> timedelta:
    """Parse ``24h``/``1h30m``/``250ms``; raise ValueError with a one-line reason otherwise."""
    if not isinstance(text, str):
        raise ValueError("must be a duration string such as 30s, 5m or 24h")
    if not _WHOLE.fullmatch(text):
        raise ValueError(f"invalid duration {text!r}: use a number and a unit (ms, s, m, h), e.g. 30s or 1h30m")
    seconds = sum(float(n) * _UNITS_S[u] for n, u in _PART.findall(text))
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest canonical text for `value` (whole milliseconds), e.g. ``1h30m`` or ``500ms``."""
    ms = round(value.total_seconds() * 1000)
    if ms == 0:
        return "0s"
    out = []
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        n, ms = divmod(ms, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)
