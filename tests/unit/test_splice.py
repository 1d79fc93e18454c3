"""`dataplane.splice.splice` over memory streams: what it returns, and the counts a caller can read while it runs
(bytes each way, and which way moved last)."""

from __future__ import annotations

import trio
import trio.testing

from dataplane.splice import splice


async def test_the_counts_move_while_the_splice_runs_and_it_returns_them() -> None:
    client, near = trio.testing.memory_stream_pair()
    far, server = trio.testing.memory_stream_pair()
    counts = [0, 0, -1]
    result: list[tuple[int, int]] = []

    async def run() -> None:
        result.append(await splice(near, far, counts=counts))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await client.send_all(b"x" * 1000)
        assert await server.receive_some(65536) == b"x" * 1000
        await trio.testing.wait_all_tasks_blocked()
        assert counts == [1000, 0, 0]  # the last bytes went a -> b
        await server.send_all(b"y" * 300)
        assert await client.receive_some(65536) == b"y" * 300
        await trio.testing.wait_all_tasks_blocked()
        assert counts == [1000, 300, 1]  # and now b -> a (the zone ingress's drain tells an answered connection)
        await client.send_eof()
        await server.send_eof()
    assert result == [(1000, 300)]
    assert counts == [1000, 300, 1]


async def test_bytes_copied_before_a_side_breaks_are_still_counted() -> None:
    client, near = trio.testing.memory_stream_pair()
    far, server = trio.testing.memory_stream_pair()
    counts = [5, 7, -1]  # a caller's running totals: the splice adds to them and returns its own share
    result: list[tuple[int, int]] = []

    async def run() -> None:
        result.append(await splice(near, far, counts=counts))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        await client.send_all(b"a" * 10)
        assert await server.receive_some(65536) == b"a" * 10
        await server.send_all(b"b" * 20)
        assert await client.receive_some(65536) == b"b" * 20
        await server.aclose()  # the far side goes away: writing to it fails, the splice ends
        await client.send_all(b"c")
    assert result == [(10, 20)]
    assert counts == [15, 27, 1]


async def test_without_counts_it_returns_the_bytes_of_an_idle_ended_splice(
        autojump_clock: trio.testing.MockClock) -> None:
    client, near = trio.testing.memory_stream_pair()
    far, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        async def talk() -> None:
            await client.send_all(b"hello")
            assert await server.receive_some(65536) == b"hello"

        nursery.start_soon(talk)
        assert await splice(near, far, idle_timeout=30) == (5, 0)  # copied before the idle timeout cancelled the copy
