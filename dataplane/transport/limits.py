"""Connection limits to one service (MeshCircuitBreaker `connectionLimits.maxConnections` / `maxPendingRequests`).

Theory of operation. A sidecar keeps one `ConnectionLimit` per outbound service whose circuit breaker sets
`maxConnections`. Every upstream connection to the service (HTTP/1.1 pooled or not, HTTP/2 multiplexed, opaque TCP)
takes a slot before it is dialled and gives it back when it closes: the connection is wrapped in a `LimitedStream`,
whose close, however it happens (the proxy's `aclose`, the pool's `close_now`), releases the slot exactly once.

A call that needs a new connection while every slot is taken first looks for an idle pooled connection of the
service, on any endpoint (`reuse`): reusing it costs nothing and opens nothing. Failing that, it waits as a pending
request for a slot or a connection handed back to the pool, at most `max_pending` calls at a time (1024 by default,
as Envoy's); one more is refused at once with `overflow` (503), as is a call still waiting after `wait` seconds
(the connection timeout). The limit counts this sidecar's connections only: N callers open at most N x the limit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import trio

from dataplane.transport.upstream import UpstreamError

DEFAULT_MAX_PENDING = 1024

T = TypeVar("T")


class ConnectionLimit:
    def __init__(self, service: str, max_connections: int, max_pending: int | None = None) -> None:
        self.service = service
        self.max_connections = max_connections
        self.max_pending = DEFAULT_MAX_PENDING if max_pending is None else max_pending
        self.open = 0
        self.pending = 0
        self.keys: set[Any] = set()  # pool keys (endpoints) this service's connections were opened to
        self._changed = trio.Event()

    def try_acquire(self) -> bool:
        if self.open < self.max_connections:
            self.open += 1
            return True
        return False

    def release(self) -> None:
        self.open -= 1
        self.notify()

    def notify(self) -> None:
        """A slot was freed or a connection of the service went back to the pool: waiters look again."""
        self._changed.set()
        self._changed = trio.Event()

    async def acquire(self, reuse: Callable[[], T | None], wait: float) -> T | None:
        """Take a slot (None: dial a new connection) or, with every slot taken, an idle connection `reuse` finds.
        Raises UpstreamError("overflow") when too many calls wait already, or after `wait` seconds."""
        if self.try_acquire():
            return None
        found = reuse()
        if found is not None:
            return found
        if self.pending >= self.max_pending:
            raise UpstreamError("overflow", f"{self.max_connections} connections to {self.service} open and "
                                            f"{self.pending} calls waiting for one already", status=503)
        self.pending += 1
        try:
            with trio.move_on_after(wait):
                while True:
                    await self._changed.wait()
                    if self.try_acquire():
                        return None
                    found = reuse()
                    if found is not None:
                        return found
        finally:
            self.pending -= 1
        raise UpstreamError("overflow", f"no connection to {self.service} free within {wait:g}s "
                                        f"({self.max_connections} open at most)", status=503)


class LimitedStream(trio.abc.HalfCloseableStream):
    """An upstream connection holding a slot of a `ConnectionLimit` until it closes."""

    __slots__ = ("_limit", "_released", "stream")

    def __init__(self, stream: trio.abc.HalfCloseableStream, limit: ConnectionLimit) -> None:
        self.stream = stream
        self._limit = limit
        self._released = False

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._limit.release()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    def close_now(self) -> None:
        close = getattr(self.stream, "close_now", None)
        if close is not None:
            close()
        self._release()

    async def aclose(self) -> None:
        try:
            await self.stream.aclose()
        finally:
            self._release()
