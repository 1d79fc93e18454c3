"""One HTTP/2 request stream carried to an HTTP/1.1 upstream (an `http` app reached over an `h2` hop).

The request's pseudo-headers become the request line and Host; a body of unknown length goes chunked (with the
request trailers, if any, as chunked trailers); the response's hop-by-hop fields are dropped and its names
lowercased, as HTTP/2 requires. The HTTP/1.1 connection comes from, and returns to, the same pool the HTTP/1.1
proxy uses, so the app sees the same pooled keep-alive connections whatever its callers speak.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import h2.errors
import trio

from dataplane.codec.events import (
    DataReceived,
    MessageCompleted,
    ProtocolViolation,
    ResponseReceived,
)
from dataplane.codec.http1 import ClientConnection
from dataplane.h2.connection import DataIn, Fields, H2Stream, HeadersIn, StreamGone, TrailersIn
from dataplane.http1proxy import HOP_BY_HOP, EventReader, PeerGone, Upstream
from dataplane.transport.pool import Pooled
from dataplane.transport.upstream import UpstreamError


def request_line(fields: Fields) -> tuple[bytes, bytes, list[tuple[bytes, bytes]], int | None]:
    """Method, target, HTTP/1.1 header fields (Host from :authority) and body length (None: unknown)."""
    pseudo = {k: v for k, v in fields if k.startswith(b":")}
    headers = [(k, v) for k, v in fields if not k.startswith(b":") and k not in HOP_BY_HOP]
    if b":authority" in pseudo and not any(k == b"host" for k, _ in headers):
        headers.insert(0, (b"host", pseudo[b":authority"]))
    length = next((v for k, v in headers if k == b"content-length"), None)
    return pseudo.get(b":method", b"GET"), pseudo.get(b":path", b"/"), headers, \
        int(length) if length is not None and length.isdigit() else None


def response_fields(response: ResponseReceived) -> Fields:
    named = {token.strip().lower() for key, value in response.headers if key.lower() == b"connection"
             for token in value.split(b",")}
    return [(b":status", b"%d" % response.status)] + [
        (k.lower(), v) for k, v in response.headers if k.lower() not in HOP_BY_HOP and k.lower() not in named]


async def exchange_over_http1(down: H2Stream, head: HeadersIn, fields: Fields, target: Upstream,
                              answer_error: Callable[[int, str], Awaitable[None]],
                              started: list[int] | None = None) -> None:
    """Relay one stream's exchange over a pooled HTTP/1.1 connection; `answer_error` answers failures before
    the response head. `started[0]` becomes the status of the response head once it has been relayed. Nothing
    from the app for `target.stream_idle` seconds (MeshTimeout streamIdleTimeout) ends the exchange."""
    method, path, headers, length = request_line(fields)
    if head.end:
        length = 0
    conn = target.pool.take(target.key)
    key = target.key
    if conn is None:
        try:
            key, stream = await target.dial()
        except UpstreamError as exc:
            await answer_error(503, exc.reason)
            return
        conn = Pooled(stream, ClientConnection())
        target.pool.created += 1
    client, upstream = conn.state, conn.stream
    reusable = False
    started = started if started is not None else [0]
    try:
        try:
            await upstream.send_all(client.send_request(method, path, headers, body_length=length))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            await _failed(down, exc, started, answer_error)
            return
        async with trio.open_nursery() as nursery:
            if not head.end:
                nursery.start_soon(_pump_request, down, client, upstream, nursery.cancel_scope)
            # Failures are handled here, in the nursery's body: raised through the nursery they would arrive
            # wrapped in an ExceptionGroup, past these handlers, and end the whole connection (the process).
            try:
                reusable = await _pump_response(down, EventReader(client, upstream), started, target.stream_idle)
            except (trio.BrokenResourceError, trio.ClosedResourceError, PeerGone, ProtocolViolation) as exc:
                await _failed(down, exc, started, answer_error)
            except trio.TooSlowError:
                if started[0]:
                    down.reset(h2.errors.ErrorCodes.CANCEL)
                else:
                    with contextlib.suppress(StreamGone):
                        await answer_error(504, "stream_idle_timeout")
            except StreamGone:
                pass  # the downstream stream went away (a cancel, a timeout): the connection is not reused
            nursery.cancel_scope.cancel()
    finally:
        if reusable and not client.must_close:
            target.pool.give_back(key, conn, target.service)
        else:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await upstream.aclose()


async def _failed(down: H2Stream, exc: Exception, started: list[int],
                  answer_error: Callable[[int, str], Awaitable[None]]) -> None:
    if started[0]:
        down.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)  # the head is out: a reset is the only signal left
    else:
        with contextlib.suppress(StreamGone):
            await answer_error(502, "bad_upstream_response" if isinstance(exc, ProtocolViolation)
                               else "upstream_reset")


async def _pump_request(down: H2Stream, client: ClientConnection, upstream: trio.abc.SendStream,
                        cancel: trio.CancelScope) -> None:
    try:
        while True:
            event = await down.receive()
            if isinstance(event, DataIn):
                if event.data:
                    await upstream.send_all(client.send_data(event.data))
                if event.end:
                    await upstream.send_all(client.send_end())
                    return
            elif isinstance(event, TrailersIn):
                await upstream.send_all(client.send_end(event.fields))
                return
            else:
                cancel.cancel()  # the client reset the stream
                return
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return  # the response side sees the broken connection


async def _pump_response(down: H2Stream, up: EventReader, started: list[int], idle: float | None) -> bool:
    """Relay the response; True when the HTTP/1.1 exchange completed cleanly (the connection may be reused).
    Raises trio.TooSlowError after `idle` seconds without an event from the app."""
    async def following() -> object:
        if idle is None:
            return await up.next()
        with trio.fail_after(idle):
            return await up.next()

    event = await following()
    while isinstance(event, ResponseReceived) and event.informational:
        if event.status != 101:  # no protocol switch over HTTP/2
            await down.send_headers(response_fields(event))
        event = await following()
    if not isinstance(event, ResponseReceived):
        raise PeerGone("no response head")
    response = event
    bodyless = response.body_length == 0
    started[0] = response.status
    await down.send_headers(response_fields(response), end=bodyless)
    if bodyless:
        await up.skip_end_of_bodyless()
        return response.keep_alive
    while True:
        event = await following()
        if isinstance(event, DataReceived):
            await down.send_data(event.data)
        elif isinstance(event, MessageCompleted):
            if event.trailers:
                await down.send_headers([(k.lower(), v) for k, v in event.trailers], end=True)
            else:
                await down.send_data(b"", end=True)
            return response.keep_alive
        else:
            raise PeerGone("upstream closed mid-response")
