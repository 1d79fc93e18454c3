"""Copying bytes both ways between two streams (opaque TCP, upgraded HTTP connections)."""

from __future__ import annotations

import math

import trio

_CHUNK = 65536


async def _copy(source: trio.abc.ReceiveStream, sink: trio.abc.SendStream, idle: IdleTimer, counts: list[int],
                index: int) -> None:
    while True:
        data = await source.receive_some(_CHUNK)
        idle.touch()
        if not data:
            break
        await sink.send_all(data)
        counts[index] += len(data)  # as cheap as a local total, and readable while the splice runs
        counts[2] = index
    if isinstance(sink, trio.abc.HalfCloseableStream):
        await sink.send_eof()  # the other direction goes on: half-closed connections keep working


class IdleTimer:
    """Cancels a scope when neither direction has moved for `timeout` seconds."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = math.inf if timeout is None else timeout
        self.scope = trio.CancelScope(deadline=trio.current_time() + self.timeout)

    def touch(self) -> None:
        self.scope.deadline = trio.current_time() + self.timeout


async def splice(a: trio.abc.Stream, b: trio.abc.Stream, *, idle_timeout: float | None = 3600.0,
                 counts: list[int] | None = None) -> tuple[int, int]:
    """Copy a→b and b→a until both directions end, either fails, or nothing moves for `idle_timeout`.

    Returns the bytes copied each way (a→b, b→a), those copied before an error or the idle timeout included.
    `counts`, when given, is a list of three ints: the bytes the splice adds to as it copies (a→b, b→a), and which
    of the two moved last (0 or 1; -1 before any), so that the caller can read them while it runs (the zone ingress
    reports the bytes of long-lived connections as they move, and tells an idle connection from one waiting for an
    answer when it drains).
    Errors of either stream end the splice quietly: the caller closes both.
    """
    idle = IdleTimer(idle_timeout)
    if counts is None:
        counts = [0, 0, -1]
    before = counts[0], counts[1]

    async def one_way(index: int, source: trio.abc.Stream, sink: trio.abc.Stream, done: trio.CancelScope) -> None:
        try:
            await _copy(source, sink, idle, counts, index)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            done.cancel()  # a broken side ends both directions

    with idle.scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one_way, 0, a, b, nursery.cancel_scope)
            nursery.start_soon(one_way, 1, b, a, nursery.cancel_scope)
    return counts[0] - before[0], counts[1] - before[1]
