"""The dataplane server: config streams over a lean HTTP/2 server of our own (trio + h2), on its own port.

Why not the API server: profiling the push benchmark showed hypercorn's per-stream machinery (a send task per
connection, ASGI message hops) costing most of the control plane's CPU per pushed snapshot. Like Kuma, which serves
its sidecars on a port of their own (5678) apart from the operators' API (5681), Meshcast serves config streams here
and keeps the API on hypercorn. This server speaks only HTTP/2 (prior knowledge over TCP, or ALPN `h2` over TLS)
and only one route, `POST /v1/dataplanes/<mesh>/<name>/stream`, authenticated by the dataplane token.

Theory of operation: one task per connection reads the socket and feeds h2; each stream gets a task that
authenticates, answers 200 and runs `StreamHandler.push_forever`. Data from the sidecar is handed to the stream's
handler synchronously from the reader (acks and heartbeats are tiny). Writes take a lock and drain h2's buffer
inside it, so frames from concurrent tasks never interleave out of order. Flow control is honoured both ways.
A connection that sends no request within `first_request_timeout` is closed (slowloris), streams per connection
and header sizes are bounded by h2 settings.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import ssl
from collections.abc import Iterable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from meshcast.errors import MeshcastError, NotFound
from meshcast.wire.configstream import CONTENT_TYPE, ProtocolError
from meshcast.wire.leanio import LeanSocketStream, OrderedWriter, serve_lean
from zone_cp.control_plane import ZoneControlPlane
from zone_cp.streams import StreamHandler

log = logging.getLogger("meshcast.zone_cp.dpserver")

STREAM_PATH = re.compile(r"/v1/dataplanes/([a-z0-9-]{1,63})/([a-z0-9-]{1,63})/stream")
MAX_PENDING_BYTES = 64 * 1024


class DataplaneServer:
    def __init__(
        self, cp: ZoneControlPlane, sock: socket.socket, *, ssl_context: ssl.SSLContext | None = None,
        first_request_timeout: float = 10.0,
    ) -> None:
        self.cp = cp
        self.sock = sock
        self.ssl_context = ssl_context
        self.first_request_timeout = first_request_timeout
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(["h2"])

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_lean(self.sock, self._serve, task_status=task_status)

    async def _serve(self, stream: LeanSocketStream) -> None:
        conn_stream: trio.abc.Stream = stream
        try:
            if self.ssl_context is not None:
                tls = trio.SSLStream(stream, self.ssl_context, server_side=True)
                with trio.fail_after(self.first_request_timeout):
                    await tls.do_handshake()
                conn_stream = tls
            await _Connection(self.cp, conn_stream, self.first_request_timeout).run()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError) as exc:
            log.debug("dataplane connection ended: %r", exc)
        except Exception:  # one broken connection must never take the server down with it
            log.exception("dataplane connection failed")
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await conn_stream.aclose()


class _Connection:
    def __init__(self, cp: ZoneControlPlane, stream: trio.abc.Stream, first_request_timeout: float) -> None:
        self.cp = cp
        self.stream = stream
        self.first_request_timeout = first_request_timeout
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config)
        self.conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 16,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 16 * 1024,
            },
        )
        self.writer = OrderedWriter(stream)
        self.handlers: dict[int, StreamHandler] = {}
        self.pending: dict[int, bytearray] = {}
        self.scopes: dict[int, trio.CancelScope] = {}
        self.window_open: dict[int, trio.Event] = {}

    async def flush(self) -> None:
        await self.writer.flush(self.conn.data_to_send)

    async def run(self) -> None:
        self.conn.initiate_connection()
        await self.flush()
        async with trio.open_nursery() as nursery:
            try:
                with trio.move_on_after(self.first_request_timeout) as first:
                    while not self.scopes:  # until a first request arrives
                        if not await self._read_once(nursery):
                            return
                if first.cancelled_caught:
                    log.info("closing a dataplane connection that sent no request in %ss", self.first_request_timeout)
                    return
                while await self._read_once(nursery):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                log.debug("dataplane connection lost: %r", exc)
            finally:
                nursery.cancel_scope.cancel()

    async def _read_once(self, nursery: trio.Nursery) -> bool:
        data = await self.stream.receive_some(65536)
        if not data:
            return False
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.info("dataplane connection broke HTTP/2: %s", exc)
            await self.flush()  # h2 queued a GOAWAY
            return False
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self._request(event.stream_id, [(str(k), str(v)) for k, v in event.headers], nursery)
            elif isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                self._data(event.stream_id, event.data)
            elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                self._close_stream(event.stream_id)
            elif isinstance(event, h2.events.WindowUpdated):
                self._window_updated(event.stream_id)
            elif isinstance(event, h2.events.ConnectionTerminated):
                return False
        await self.flush()
        return True

    def _request(self, stream_id: int, headers: Iterable[tuple[str, str]], nursery: trio.Nursery) -> None:
        fields = dict(headers)
        scope = trio.CancelScope()
        self.scopes[stream_id] = scope
        self.pending[stream_id] = bytearray()
        nursery.start_soon(self._serve_stream, stream_id, fields, scope)

    def _data(self, stream_id: int, data: bytes) -> None:
        handler = self.handlers.get(stream_id)
        if handler is None:
            buffer = self.pending.get(stream_id)
            if buffer is not None and len(buffer) + len(data) <= MAX_PENDING_BYTES:
                buffer += data
            else:
                self._reset(stream_id)
            return
        try:
            handler.on_bytes(data)
        except ProtocolError as exc:
            log.warning("dataplane %s/%s broke the config-stream protocol: %s", handler.mesh, handler.name, exc)
            self._reset(stream_id)

    def _reset(self, stream_id: int) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError):
            self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
        self._close_stream(stream_id)

    def _close_stream(self, stream_id: int) -> None:
        scope = self.scopes.get(stream_id)
        if scope is not None:
            scope.cancel()
        self._window_updated(stream_id)

    def _window_updated(self, stream_id: int) -> None:
        targets = list(self.window_open) if stream_id == 0 else [stream_id]
        for sid in targets:
            event = self.window_open.pop(sid, None)
            if event is not None:
                event.set()

    async def _send(self, stream_id: int, data: bytes, *, end: bool = False) -> None:
        view = memoryview(data)
        while True:
            window = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
            if window <= 0 and view:
                event = self.window_open.setdefault(stream_id, trio.Event())
                await event.wait()
                continue
            chunk, view = view[:window], view[window:]
            self.conn.send_data(stream_id, bytes(chunk), end_stream=end and not view)
            await self.flush()
            if not view:
                return

    async def _respond_error(self, stream_id: int, status: int, message: str) -> None:
        body = json.dumps({"error": message, "status": status}).encode()
        self.conn.send_headers(stream_id, [(":status", str(status)), ("content-type", "application/json"),
                                           ("content-length", str(len(body)))])
        await self._send(stream_id, body, end=True)

    async def _serve_stream(self, stream_id: int, fields: dict[str, str], scope: trio.CancelScope) -> None:
        try:
            with scope:
                match = STREAM_PATH.fullmatch(fields.get(":path", ""))
                if match is None or fields.get(":method") != "POST":
                    raise NotFound(f"no route for {fields.get(':method')} {fields.get(':path')}")
                mesh, name = match.groups()
                claims = self.cp.verify_token(fields.get("authorization"))
                await self.cp.dataplane(claims, mesh, name)
                self.conn.send_headers(stream_id, [(":status", "200"), ("content-type", CONTENT_TYPE),
                                                   ("cache-control", "no-store")])
                await self.flush()
                with StreamHandler(self.cp, mesh, name) as handler:
                    self.handlers[stream_id] = handler
                    early = self.pending.pop(stream_id, b"")
                    if early:
                        self._data(stream_id, bytes(early))
                    await handler.push_forever(lambda data: self._send(stream_id, data))
                    self.conn.end_stream(stream_id)
                    await self.flush()
        except MeshcastError as exc:
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError,
                                     trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await self._respond_error(stream_id, exc.http_status, str(exc))
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, trio.BrokenResourceError,
                trio.ClosedResourceError, OSError):
            pass  # the sidecar went away mid-stream
        finally:
            self.handlers.pop(stream_id, None)
            self.pending.pop(stream_id, None)
            self.scopes.pop(stream_id, None)
            self.window_open.pop(stream_id, None)
