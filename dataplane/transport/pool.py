"""Idle connections kept for reuse, per destination: a request between sidecars never pays a TLS handshake.

The pool holds connections that finished a request cleanly and may carry another; it does not limit how many are
open (`dataplane.transport.limits` does, under a MeshCircuitBreaker). A connection idle for longer than its idle
timeout (`idle_timeout_for(service)`, MeshTimeout's `idleTimeout` as in force now, or the pool's) is closed on
the next use of its key or by `sweep`, and the pool keeps at most `max_idle` per key (the newest, most likely to
be alive). A pooled connection the peer closed meanwhile is detected by the caller's first read or write; callers
retry such a request once on a fresh connection when nothing of the response has been read. `on_give_back(key)`
is told of every connection handed back (calls waiting for a connection under a connection limit look again).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Container, Hashable
from typing import Generic, TypeVar

import trio

C = TypeVar("C")


class Pooled(Generic[C]):
    """A connection and what rides with it (its protocol state, e.g. an h11-like client codec)."""

    __slots__ = ("idle_since", "service", "state", "stream")

    def __init__(self, stream: trio.abc.HalfCloseableStream, state: C) -> None:
        self.stream = stream
        self.state = state
        self.idle_since = 0.0
        self.service: str | None = None


class ConnectionPool(Generic[C]):
    def __init__(self, *, max_idle: int = 64, idle_timeout: float = 60.0) -> None:
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: dict[Hashable, collections.deque[Pooled[C]]] = {}
        self.reused = 0
        self.created = 0
        self.on_give_back: Callable[[Hashable], None] | None = None
        self.idle_timeout_for: Callable[[str], float | None] | None = None

    def _expired(self, conn: Pooled[C], now: float) -> bool:
        timeout = None
        if self.idle_timeout_for is not None and conn.service is not None:
            timeout = self.idle_timeout_for(conn.service)
        return now - conn.idle_since > (self.idle_timeout if timeout is None else timeout)

    def take(self, key: Hashable) -> Pooled[C] | None:
        """The most recently used idle connection for `key`, or None; expired ones are dropped on the way."""
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not self._expired(conn, now):
                self.reused += 1
                return conn
            _close_soon(conn.stream)
        return None

    def take_any(self, keys: Container[Hashable]) -> tuple[Hashable, Pooled[C]] | None:
        """An idle connection to any of `keys`, with its key, or None."""
        for key in [k for k, idle in self._idle.items() if idle and k in keys]:
            conn = self.take(key)
            if conn is not None:
                return key, conn
        return None

    def give_back(self, key: Hashable, conn: Pooled[C], service: str | None = None) -> None:
        idle = self._idle.setdefault(key, collections.deque())
        conn.idle_since, conn.service = time.monotonic(), service
        idle.append(conn)
        while len(idle) > self.max_idle:
            _close_soon(idle.popleft().stream)
        if self.on_give_back is not None:
            self.on_give_back(key)

    def sweep(self) -> int:
        """Close the connections idle past their timeout; returns how many."""
        now, closed = time.monotonic(), 0
        for key in list(self._idle):
            idle = self._idle[key]
            expired = [c for c in idle if self._expired(c, now)]
            kept = collections.deque(c for c in idle if c not in expired)
            closed += len(expired)
            for conn in expired:
                _close_soon(conn.stream)
            if kept:
                self._idle[key] = kept
            else:
                del self._idle[key]
        return closed

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
