"""Connection limits (MeshCircuitBreaker maxConnections / maxPendingRequests), the pool's per-connection idle timeout,
and the replay buffer of HTTP/2 retries."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from dataplane.h2.connection import DataIn, TrailersIn
from dataplane.h2.proxy import MAX_REPLAY, _Replay
from dataplane.transport.limits import ConnectionLimit, LimitedStream
from dataplane.transport.pool import ConnectionPool, Pooled
from dataplane.transport.upstream import UpstreamError


def nothing() -> None:
    return None


async def test_slots_then_overflow_when_too_many_wait() -> None:
    limit = ConnectionLimit("backend", max_connections=2, max_pending=1)
    assert await limit.acquire(nothing, wait=1) is None
    assert await limit.acquire(nothing, wait=1) is None
    assert limit.open == 2
    got: list[object] = []
    async with trio.open_nursery() as nursery:
        async def waiter() -> None:
            got.append(await limit.acquire(nothing, wait=10))

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert limit.pending == 1
        with pytest.raises(UpstreamError) as refused:  # one waits already: the next is refused at once
            await limit.acquire(nothing, wait=10)
        assert refused.value.reason == "overflow" and refused.value.status == 503
        limit.release()  # a connection closed: the waiter takes its slot
    assert got == [None] and limit.open == 2 and limit.pending == 0


async def test_a_waiter_takes_an_idle_connection_handed_back() -> None:
    limit = ConnectionLimit("backend", max_connections=1)
    assert await limit.acquire(nothing, wait=1) is None
    idle: list[str] = []
    got: list[object] = []
    async with trio.open_nursery() as nursery:
        async def waiter() -> None:
            got.append(await limit.acquire(lambda: idle.pop() if idle else None, wait=10))

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        idle.append("pooled")
        limit.notify()
    assert got == ["pooled"] and limit.open == 1  # reused: no new slot taken


async def test_a_waiter_gives_up_after_the_wait() -> None:
    limit = ConnectionLimit("backend", max_connections=1)
    await limit.acquire(nothing, wait=1)
    with pytest.raises(UpstreamError, match=r"no connection to backend free within 0\.05s"):
        await limit.acquire(nothing, wait=0.05)
    assert limit.pending == 0


async def test_a_limited_stream_releases_its_slot_once() -> None:
    limit = ConnectionLimit("backend", max_connections=1)
    await limit.acquire(nothing, wait=1)
    left, right = trio.testing.memory_stream_pair()
    stream = LimitedStream(left, limit)
    await stream.send_all(b"ping")
    assert await right.receive_some(10) == b"ping"
    await stream.aclose()
    stream.close_now()  # closing twice frees one slot, not two
    assert limit.open == 0


def test_the_pool_reads_each_service_idle_timeout_when_it_looks() -> None:
    pool: ConnectionPool[str] = ConnectionPool(idle_timeout=60)
    timeouts: dict[str, float] = {}
    pool.idle_timeout_for = timeouts.get
    left, _ = trio.testing.memory_stream_pair()
    told: list[object] = []
    pool.on_give_back = told.append
    pool.give_back("a", Pooled(left, "short"), service="api")
    pool.give_back("b", Pooled(left, "long"), service="db")
    assert told == ["a", "b"]
    timeouts["api"] = -1.0  # a MeshTimeout applied after the connection went idle governs it too
    assert pool.take_any({"a"}) is None  # expired on the way
    found = pool.take_any({"a", "b"})
    assert found is not None and found[0] == "b" and found[1].state == "long"
    pool.give_back("c", Pooled(left, "expired"), service="api")
    pool.give_back("c", Pooled(left, "fresh"), service="db")
    assert pool.sweep() == 1 and pool.idle_count("c") == 1


def test_the_replay_keeps_a_body_up_to_its_cap() -> None:
    replay = _Replay(ended=False)
    replay.record(DataIn(b"x" * 10, end=False))
    replay.record(TrailersIn([(b"grpc-timeout", b"1S")]))
    assert replay.ended and not replay.overflow and len(replay.events) == 2
    big = _Replay(ended=False)
    big.record(DataIn(b"x" * MAX_REPLAY, end=False))
    assert not big.overflow
    big.record(DataIn(b"y", end=True))
    assert big.overflow and big.ended and big.events == []
