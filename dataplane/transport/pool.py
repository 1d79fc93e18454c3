"""Idle connections kept for reuse, per destination: a request between sidecars never pays a TLS handshake.

The pool holds connections that finished a request cleanly and may carry another; it does not limit how many are
open (the circuit-breaking policy of a later issue does). A connection idle for longer than `idle_timeout` is
closed on the next use of its key, and the pool keeps at most `max_idle` per key (the newest, most likely to be
alive). A pooled connection the peer closed meanwhile is detected by the caller's first read or write; callers
retry such a request once on a fresh connection when nothing of the response has been read.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Hashable
from typing import Generic, TypeVar

import trio

C = TypeVar("C")


class Pooled(Generic[C]):
    """A connection and what rides with it (its protocol state, e.g. an h11-like client codec)."""

    __slots__ = ("idle_since", "state", "stream")

    def __init__(self, stream: trio.abc.HalfCloseableStream, state: C) -> None:
        self.stream = stream
        self.state = state
        self.idle_since = 0.0


class ConnectionPool(Generic[C]):
    def __init__(self, *, max_idle: int = 64, idle_timeout: float = 60.0) -> None:
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: dict[Hashable, collections.deque[Pooled[C]]] = {}
        self.reused = 0
        self.created = 0

    def take(self, key: Hashable) -> Pooled[C] | None:
        """The most recently used idle connection for `key`, or None; expired ones are dropped on the way."""
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since <= self.idle_timeout:
                self.reused += 1
                return conn
            _close_soon(conn.stream)
        return None

    def give_back(self, key: Hashable, conn: Pooled[C]) -> None:
        idle = self._idle.setdefault(key, collections.deque())
        conn.idle_since = time.monotonic()
        idle.append(conn)
        while len(idle) > self.max_idle:
            _close_soon(idle.popleft().stream)

    def idle_count(self, key: Hashable | None = None) -> int:
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(q) for q in self._idle.values())

    def clear(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                _close_soon(conn.stream)
        self._idle.clear()


def _close_soon(stream: trio.abc.HalfCloseableStream) -> None:
    """Close without awaiting: our lean streams close their socket synchronously inside aclose."""
    close = getattr(stream, "close_now", None)
    if close is not None:
        close()
