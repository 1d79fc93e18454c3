"""H2Connection in both roles, in one process over an in-memory stream pair (the h2 library on both ends)."""

from __future__ import annotations

import trio
import trio.testing

from dataplane.h2.connection import (
    ASSUMED_PEER_STREAMS,
    DataIn,
    H2Connection,
    H2Limits,
    H2Stream,
    HeadersIn,
    ResetIn,
)


async def answer(stream: H2Stream) -> None:
    while True:
        event = await stream.receive()
        if isinstance(event, HeadersIn | DataIn) and event.end:
            break
    await stream.send_headers([(b":status", b"200")])
    await stream.send_data(b"ok", end=True)


async def request(client: H2Connection, results: list[bytes]) -> None:
    stream = await client.open_stream([(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"x"),
                                       (b":path", b"/")], end=True)
    body = b""
    while True:
        event = await stream.receive()
        if isinstance(event, DataIn):
            body += event.data
            if event.end:
                break
        elif isinstance(event, HeadersIn) and event.end:
            break
        elif isinstance(event, ResetIn):
            raise AssertionError(f"stream {stream.stream_id} reset: {event.why}")
    client.forget(stream)
    results.append(body)


async def test_a_burst_on_a_fresh_connection_stays_within_the_servers_stream_limit() -> None:
    # More requests than the server allows start before its SETTINGS can arrive: the client holds back to the
    # assumed limit instead of opening them all (which cost the whole connection: "Max inbound streams is 128").
    client_end, server_end = trio.testing.memory_stream_pair()
    server = H2Connection(server_end, client_side=False, handler=answer, limits=H2Limits(max_concurrent_streams=128))
    client = H2Connection(client_end, client_side=True)
    results: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.run)
        await nursery.start(client.run)
        assert client.available and not client.settings_received
        with trio.fail_after(10):
            async with trio.open_nursery() as requests:
                for _ in range(400):
                    requests.start_soon(request, client, results)
                await trio.testing.wait_all_tasks_blocked()
                assert len(client.streams) <= 128
        assert client.settings_received and not client.closed and not server.closed
        client.goaway()
        nursery.cancel_scope.cancel()
    assert results == [b"ok"] * 400


async def test_before_the_peers_settings_a_client_assumes_the_rfc_minimum() -> None:
    client_end, _ = trio.testing.memory_stream_pair()  # a server that never answers
    client = H2Connection(client_end, client_side=True)
    for stream_id in range(1, 2 * ASSUMED_PEER_STREAMS, 2):
        client.streams[stream_id] = H2Stream(client, stream_id)
        assert client.available == (len(client.streams) < ASSUMED_PEER_STREAMS)
