"""A full-duplex HTTP/2 request over trio and h2: the client transport of the config stream and the sidecar's calls.

httpx cannot send a request body while it reads the response, which a config stream needs, so this opens one HTTP/2
connection (prior knowledge over TCP, or ALPN `h2` over TLS), starts one request and lets the caller `send` body
chunks and `receive` response chunks concurrently. One background task reads the socket and feeds h2; writes go
through a lock; flow control is honoured both ways. `request` makes a plain request and reads the whole answer, so
the sidecar's few unary calls (register, certificate) need no other HTTP client (httpx would cost it ~5 MB).

Failing to keep talking to the server raises `StreamClosed` (a failed TLS handshake included); failing to connect,
`OSError` or, after `connect_timeout`, `trio.TooSlowError`.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import trio

from meshcast.wire.leanio import OrderedWriter, open_lean_tcp_stream


class StreamClosed(Exception):
    """The server ended or reset the stream, or the connection broke (a failed TLS handshake included)."""


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class DuplexStream:
    def __init__(self, sock: trio.abc.Stream, conn: h2.connection.H2Connection, stream_id: int) -> None:
        self._sock = sock
        self._conn = conn
        self._id = stream_id
        self._writer = OrderedWriter(sock)
        self._send_data, self._recv_data = trio.open_memory_channel[bytes](256)
        self._window_open = trio.Event()
        self._response = trio.Event()
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self._error: str | None = None

    async def _flush(self) -> None:
        try:
            await self._writer.flush(self._conn.data_to_send)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._fail(f"connection lost: {exc}")
            raise StreamClosed(self._error) from None

    async def send(self, data: bytes, *, end: bool = False) -> None:
        view = memoryview(data)
        while True:
            if self._error is not None:
                raise StreamClosed(self._error)
            window = min(self._conn.local_flow_control_window(self._id), self._conn.max_outbound_frame_size)
            if window <= 0 and view:
                self._window_open = trio.Event()
                await self._window_open.wait()
                continue
            chunk, view = view[:window], view[window:]
            try:
                self._conn.send_data(self._id, bytes(chunk), end_stream=end and not view)
            except h2.exceptions.ProtocolError as exc:
                raise StreamClosed(str(exc)) from None
            await self._flush()
            if not view:
                return

    async def wait_response(self) -> int:
        await self._response.wait()
        if self.status is None:
            raise StreamClosed(self._error or "no response")
        return self.status

    async def receive(self) -> bytes:
        """The next chunk of the response body; b"" once the server ended the stream."""
        try:
            return await self._recv_data.receive()
        except trio.EndOfChannel:
            if self._error is not None:
                raise StreamClosed(self._error) from None
            return b""

    async def _pump(self) -> None:
        try:
            while True:
                data = await self._sock.receive_some(65536)
                if not data:
                    self._fail("connection closed by the server")
                    return
                try:
                    events = self._conn.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    self._fail(f"HTTP/2 protocol error: {exc}")
                    return
                for event in events:
                    if isinstance(event, h2.events.ResponseReceived):
                        self.headers = {k.decode(): v.decode() for k, v in event.headers}
                        self.status = int(self.headers.get(":status", "0"))
                        self._response.set()
                    elif isinstance(event, h2.events.DataReceived):
                        self._conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                        if event.data:
                            await self._send_data.send(event.data)
                    elif isinstance(event, h2.events.StreamEnded):
                        self._send_data.close()
                    elif isinstance(event, h2.events.StreamReset):
                        self._fail(f"stream reset by the server (code {event.error_code})")
                    elif isinstance(event, h2.events.ConnectionTerminated):
                        self._fail(f"connection terminated by the server (code {event.error_code})")
                    elif isinstance(event, h2.events.WindowUpdated):
                        self._window_open.set()
                await self._flush()
        except StreamClosed:
            pass  # a write failed: _flush recorded why
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._fail(f"connection lost: {exc}")

    def _fail(self, why: str) -> None:
        if self._error is None:
            self._error = why
        self._response.set()
        self._window_open.set()
        self._send_data.close()


@asynccontextmanager
async def open_duplex_stream(
    url: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    *,
    method: str = "POST",
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout: float = 5.0,
) -> AsyncIterator[DuplexStream]:
    """Connect to `url` (http:// or https://), start `method path`, and yield the stream; closes everything on exit."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    with trio.fail_after(connect_timeout):
        sock: trio.abc.Stream = await open_lean_tcp_stream(host, port)
        if tls:
            context = ssl_context or ssl.create_default_context()
            context.set_alpn_protocols(["h2"])
            tls_stream = trio.SSLStream(sock, context, server_hostname=host)
            try:
                await tls_stream.do_handshake()
            except trio.BrokenResourceError as exc:
                await tls_stream.aclose()
                raise StreamClosed(f"TLS handshake with {parts.netloc} failed: {exc.__cause__ or exc}") from None
            sock = tls_stream
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    # Large windows: a snapshot of a big mesh arrives without waiting for window updates.
    conn.local_settings = h2.settings.Settings(
        client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 16 * 1024 * 1024}
    )
    conn.initiate_connection()
    conn.increment_flow_control_window(16 * 1024 * 1024)
    stream_id = conn.get_next_available_stream_id()
    request_headers = [
        (":method", method), (":scheme", "https" if tls else "http"), (":authority", parts.netloc), (":path", path),
    ]
    request_headers += [(k.lower(), v) for k, v in (headers or {}).items()]
    conn.send_headers(stream_id, request_headers)
    stream = DuplexStream(sock, conn, stream_id)
    try:
        async with trio.open_nursery() as nursery:
            await stream._flush()
            nursery.start_soon(stream._pump)
            try:
                yield stream
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The pump never raises, so a group holds only the caller's own exception: hand it back unwrapped.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    finally:
        with (
            trio.CancelScope(shield=True),
            trio.move_on_after(1),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
        ):
            await sock.aclose()


async def request(
    url: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    *,
    method: str = "GET",
    ssl_context: ssl.SSLContext | None = None,
) -> Response:
    """One request on its own connection, and the whole response (the caller bounds the time it may take).

    Raises StreamClosed, OSError, or trio.TooSlowError when connecting takes longer than 5 seconds."""
    async with open_duplex_stream(url, path, headers, method=method, ssl_context=ssl_context) as stream:
        await stream.send(body, end=True)
        status = await stream.wait_response()
        chunks = []
        while chunk := await stream.receive():
            chunks.append(chunk)
        return Response(status, stream.headers, b"".join(chunks))
