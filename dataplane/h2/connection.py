"""An HTTP/2 connection over a trio stream, in either role, with one object per stream.

Theory of operation. The h2 library is the protocol (sans-IO); this module is its IO. One reader task per
connection (`run`) reads the socket, feeds h2 and hands each event to its `H2Stream`'s queue; a server connection
starts a handler task per request. Streams send through the connection: every call queues frames in h2 and then
flushes them through an `OrderedWriter`, so frames from concurrent tasks leave in order.

Flow control is end-to-end backpressure: received DATA is acknowledged to the peer only when the consumer takes it
from the stream's queue, so a stream buffers at most its receive window and a connection at most the connection
window; a sender waits for WINDOW_UPDATE instead of buffering.

Hardening (server role; Envoy's edge settings as the model): concurrent streams, windows, frame and header-list
sizes bounded by SETTINGS; `FrameGuard` bounds CONTINUATION chains and empty DATA floods before h2 sees the bytes;
`ResetCounter` closes connections that reset most of their streams early (Rapid Reset); a header block must
complete within `header_timeout`; a connection with no stream for `idle_timeout` is closed with GOAWAY.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from dataplane.h2.guard import FloodDetected, FrameGuard, ResetCounter
from meshcast.wire.leanio import OrderedWriter

log = logging.getLogger("meshcast.dataplane.h2")

READ_SIZE = 65536
Fields = list[tuple[bytes, bytes]]


# Streams a client opens before the server's SETTINGS say how many it allows: the minimum RFC 9113 recommends
# servers allow, and what nghttp2 assumes. Opening more could exceed the real limit and cost the connection.
ASSUMED_PEER_STREAMS = 100


@dataclass(frozen=True)
class H2Limits:
    max_concurrent_streams: int = 128
    stream_window: int = 1 << 20
    connection_window: int = 4 << 20
    max_frame_size: int = 1 << 14
    max_header_list_size: int = 64 * 1024
    header_timeout: float = 10.0  # a header block must complete within this, and the first request arrive
    idle_timeout: float = 3600.0  # no open stream for this long: GOAWAY and close


# --- what a stream receives ---------------------------------------------------------------------------------------

@dataclass(slots=True)
class HeadersIn:
    fields: Fields
    end: bool
    informational: bool = False


@dataclass(slots=True)
class DataIn:
    data: bytes
    end: bool


@dataclass(slots=True)
class TrailersIn:
    fields: Fields


@dataclass(slots=True)
class ResetIn:
    """The peer reset the stream, or the connection ended before the stream did."""

    code: int
    why: str


StreamEvent = HeadersIn | DataIn | TrailersIn | ResetIn


class StreamGone(Exception):
    """The stream was reset or its connection closed; `code` is the HTTP/2 error code."""

    def __init__(self, code: int, why: str) -> None:
        self.code = code
        super().__init__(why)


class H2Stream:
    __slots__ = ("_events", "_flow", "_waiter", "_window", "conn", "linked", "local_closed", "opened_at",
                 "remote_closed", "reset_code", "stream_id")

    def __init__(self, conn: H2Connection, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self._events: collections.deque[StreamEvent] = collections.deque()
        self._flow: collections.deque[int] = collections.deque()  # flow-controlled length of queued DATA
        self._waiter: trio.Event | None = None
        self._window: trio.Event | None = None
        self.opened_at = time.monotonic()
        self.remote_closed = False  # the peer ended its side
        self.reset_code: int | None = None
        self.local_closed = False  # our side ended
        self.linked: H2Stream | None = None  # reset (CANCEL) when the peer resets this one

    # -- receiving

    def _push(self, event: StreamEvent, flow: int = 0) -> None:
        self._events.append(event)
        self._flow.append(flow)
        if self._waiter is not None:
            self._waiter.set()
            self._waiter = None

    @property
    def pending(self) -> bool:
        """Whether an event is already queued (the next `receive` returns at once)."""
        return bool(self._events)

    async def receive(self) -> StreamEvent:
        """The next event; a DATA event's bytes are acknowledged to the peer now, opening its window again."""
        while not self._events:
            self._waiter = trio.Event()
            await self._waiter.wait()
        event = self._events.popleft()
        flow = self._flow.popleft()
        if flow:
            self.conn.acknowledge(self.stream_id, flow)
            if self.conn.h2._data_to_send:  # h2 batched a WINDOW_UPDATE: send it now
                await self.conn.flush_quietly()
        return event

    # -- sending

    def _check(self) -> None:
        if self.reset_code is not None:
            raise StreamGone(self.reset_code, f"stream {self.stream_id} was reset (code {self.reset_code})")
        if self.conn.closed:
            raise StreamGone(h2.errors.ErrorCodes.CANCEL, "connection closed")

    async def send_headers(self, fields: Iterable[tuple[bytes, bytes]], *, end: bool = False,
                           flush: bool = True) -> None:
        """Queue a HEADERS frame; `flush=False` leaves it for the next send on the connection (one write for a
        head and the body already at hand)."""
        self._check()
        try:
            self.conn.h2.send_headers(self.stream_id, list(fields), end_stream=end)
        except h2.exceptions.ProtocolError as exc:
            raise StreamGone(h2.errors.ErrorCodes.PROTOCOL_ERROR, f"cannot send headers: {exc}") from None
        if end:
            self.local_closed = True
        if flush:
            await self.conn.flush()

    async def send_data(self, data: bytes, *, end: bool = False, flush: bool = True) -> None:
        """Send `data` (END_STREAM with its last frame if `end`), waiting for flow-control window as needed."""
        view = memoryview(data)
        h2conn = self.conn.h2
        while True:
            self._check()
            window = min(h2conn.local_flow_control_window(self.stream_id), h2conn.max_outbound_frame_size)
            if window <= 0 and view:
                self._window = window_opened = trio.Event()  # before the flush: a WINDOW_UPDATE may come during it
                await self.conn.flush()  # what is queued leaves before we wait for the peer
                await window_opened.wait()
                continue
            chunk, view = view[:window], view[window:]
            try:
                h2conn.send_data(self.stream_id, bytes(chunk), end_stream=end and not view)
            except h2.exceptions.ProtocolError as exc:
                raise StreamGone(h2.errors.ErrorCodes.PROTOCOL_ERROR, f"cannot send data: {exc}") from None
            if end and not view:
                self.local_closed = True
            if view or flush:
                await self.conn.flush()
            if not view:
                return

    def reset(self, code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        """Reset the stream (no-op if it is over); the RST_STREAM leaves with the connection's next flush.
        A task waiting in `receive` gets a ResetIn."""
        if self.reset_code is None:
            self.reset_code = code
            with contextlib.suppress(h2.exceptions.ProtocolError, KeyError):
                self.conn.h2.reset_stream(self.stream_id, code)
            self.conn.flush_soon()
            self._push(ResetIn(code, "reset locally"))
        self._wake()

    def _wake(self) -> None:
        if self._window is not None:
            self._window.set()
            self._window = None


class H2Connection:
    """One HTTP/2 connection. Server role: `handler` is started for each request stream (its first event is the
    request's HeadersIn). Client role: `open_stream` starts requests."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        client_side: bool,
        handler: Callable[[H2Stream], Awaitable[None]] | None = None,
        limits: H2Limits | None = None,
        initial: bytes = b"",
    ) -> None:
        """`initial`: bytes already read from `stream` (the preface, by protocol detection), processed first."""
        self._initial = initial
        self.stream = stream
        self.client_side = client_side
        self.handler = handler
        self.limits = limits = limits or H2Limits()
        config = h2.config.H2Configuration(client_side=client_side, header_encoding=None,
                                           validate_inbound_headers=True, normalize_inbound_headers=True)
        self.h2 = h2.connection.H2Connection(config)
        self.h2.local_settings = h2.settings.Settings(client=client_side, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: limits.stream_window,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: limits.max_frame_size,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        })
        self.guard = FrameGuard(server_side=not client_side, max_header_block=limits.max_header_list_size)
        self.resets = ResetCounter()
        self.writer = OrderedWriter(stream)
        self.streams: dict[int, H2Stream] = {}
        self.closed = False
        self.goaway_received = False
        self.settings_received = False
        self.requests = 0
        self._capacity: trio.Event | None = None
        self._flush_pending = False
        self._going_away = False
        self._nursery: trio.Nursery | None = None
        self._last_active = time.monotonic()

    # -- writing

    async def flush(self) -> None:
        try:
            await self.writer.flush(self.h2.data_to_send)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._lost(f"write failed: {exc}")
            raise StreamGone(h2.errors.ErrorCodes.CANCEL, "connection lost") from None

    def flush_soon(self) -> None:
        """Queue a flush from synchronous code (a reset); the reader flushes after its current batch, or a task."""
        if not self._flush_pending and self._nursery is not None and not self.closed:
            self._flush_pending = True
            self._nursery.start_soon(self._flush_later)

    async def _flush_later(self) -> None:
        self._flush_pending = False
        with contextlib.suppress(StreamGone):
            await self.flush()

    def acknowledge(self, stream_id: int, length: int) -> None:
        """Give `length` bytes of window back (h2 sends WINDOW_UPDATE once half a window is consumed)."""
        with contextlib.suppress(h2.exceptions.ProtocolError, KeyError):
            self.h2.acknowledge_received_data(length, stream_id)

    # -- client role

    @property
    def available(self) -> bool:
        """Whether a new request may start here now (open, not going away, below the peer's stream limit)."""
        limit = self.h2.remote_settings.max_concurrent_streams
        if not self.settings_received:  # the peer's limit is unknown until its SETTINGS arrive (RFC 9113 6.5.2)
            limit = min(limit, ASSUMED_PEER_STREAMS)
        return not self.closed and not self.goaway_received and len(self.streams) < limit

    async def open_stream(self, fields: Fields, *, end: bool) -> H2Stream:
        """Start a request: HEADERS now, the body with the stream's send_data. Raises StreamGone."""
        while not self.available:
            if self.closed or self.goaway_received:
                raise StreamGone(h2.errors.ErrorCodes.REFUSED_STREAM, "connection going away")
            if self._capacity is None:  # one event for every waiter: all of them re-check when it fires
                self._capacity = trio.Event()
            await self._capacity.wait()
        stream_id = self.h2.get_next_available_stream_id()
        stream = self.streams[stream_id] = H2Stream(self, stream_id)
        self.requests += 1
        await stream.send_headers(fields, end=end)
        return stream

    # -- lifetime

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read and dispatch until the connection ends; handler tasks (server role) run inside."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                self.h2.initiate_connection()
                self.h2.increment_flow_control_window(self.limits.connection_window - 65535)
                await self.flush()
                task_status.started()
                await self._read_loop()
            except StreamGone:
                pass
            finally:
                self._lost("connection closed")
                nursery.cancel_scope.cancel()
                with trio.CancelScope(shield=True), trio.move_on_after(1), \
                        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    await self.stream.aclose()

    def goaway(self, code: int = h2.errors.ErrorCodes.NO_ERROR) -> None:
        """Tell the peer to open no more streams; those open finish. The connection closes when they have."""
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.close_connection(code, last_stream_id=self.h2.highest_inbound_stream_id)
        self.flush_soon()
        self._going_away = True

    async def _read_loop(self) -> None:
        limits = self.limits
        while True:
            if self._going_away and not self.streams:
                return
            # A header block must complete, and a first request arrive, within the header timeout; a
            # connection without streams may idle for the idle timeout; open streams time out per request.
            if self.guard.in_header_block or not self.requests:
                deadline = trio.current_time() + limits.header_timeout
            elif not self.streams:
                deadline = trio.current_time() + limits.idle_timeout
            else:
                deadline = float("inf")
            with trio.CancelScope(deadline=deadline) as waiting:
                try:
                    data, self._initial = self._initial or await self.stream.receive_some(READ_SIZE), b""
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._lost(f"read failed: {exc}")
                    return
            if waiting.cancelled_caught:
                log.info("closing an HTTP/2 connection: %s", "header timeout" if self.guard.in_header_block
                         or not self.requests else "idle")
                self.goaway()
                await self.flush_quietly()
                return
            if not data:
                self._lost("peer closed the connection")
                return
            try:
                self.guard.feed(data)
                events = self.h2.receive_data(data)
            except FloodDetected as exc:
                log.warning("closing an HTTP/2 connection: %s", exc)
                self.goaway(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
                await self.flush_quietly()
                return
            except h2.exceptions.ProtocolError as exc:
                log.info("closing an HTTP/2 connection that broke the protocol: %s", exc)
                await self.flush_quietly()  # h2 queued a GOAWAY
                return
            if not self._dispatch(events):
                await self.flush_quietly()
                return
            if self.h2._data_to_send:  # acknowledgements, pings, resets
                await self.flush()

    async def flush_quietly(self) -> None:
        with contextlib.suppress(StreamGone):
            await self.flush()

    def _dispatch(self, events: list[h2.events.Event]) -> bool:
        """Hand events to their streams; False when the connection must end."""
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                stream = self.streams.get(event.stream_id)
                if stream is None:
                    self.acknowledge(event.stream_id, event.flow_controlled_length)
                    continue
                stream._push(DataIn(event.data, event.stream_ended is not None), event.flow_controlled_length)
                if event.stream_ended is not None:
                    stream.remote_closed = True
            elif isinstance(event, h2.events.RequestReceived):
                if self._going_away or self.handler is None or self._nursery is None:
                    with contextlib.suppress(h2.exceptions.ProtocolError):
                        self.h2.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                    continue
                stream = self.streams[event.stream_id] = H2Stream(self, event.stream_id)
                ended = event.stream_ended is not None
                stream._push(HeadersIn(list(event.headers), ended))
                stream.remote_closed = ended
                self.requests += 1
                self.resets.opened()
                self._nursery.start_soon(self._serve, stream)
            elif isinstance(event, h2.events.ResponseReceived | h2.events.InformationalResponseReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    ended = getattr(event, "stream_ended", None) is not None
                    stream._push(HeadersIn(list(event.headers), ended,
                                           informational=isinstance(event, h2.events.InformationalResponseReceived)))
                    stream.remote_closed = stream.remote_closed or ended
            elif isinstance(event, h2.events.TrailersReceived):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream._push(TrailersIn(list(event.headers)))
                    stream.remote_closed = True
            elif isinstance(event, h2.events.StreamEnded):
                pass  # carried by the DataIn/HeadersIn/TrailersIn that ended it
            elif isinstance(event, h2.events.StreamReset):
                stream = self.streams.pop(event.stream_id, None)
                if stream is not None:
                    if not self.client_side and not stream.local_closed and self.resets.reset_early():
                        log.warning("closing an HTTP/2 connection: %d of its %d streams reset early (Rapid Reset)",
                                    self.resets.premature, self.resets.streams)
                        self.goaway(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
                        self._fail_all("connection closed: too many resets")
                        return False
                    stream.reset_code = event.error_code
                    stream._push(ResetIn(event.error_code, f"reset by the peer (code {event.error_code})"))
                    stream._wake()
                    if stream.linked is not None:
                        stream.linked.reset(h2.errors.ErrorCodes.CANCEL)
                    self._stream_closed()
            elif isinstance(event, h2.events.WindowUpdated):
                targets = self.streams.values() if event.stream_id == 0 else \
                    [s for s in (self.streams.get(event.stream_id),) if s is not None]
                for stream in targets:
                    stream._wake()
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self.settings_received = True
                self._wake_capacity()
                for stream in self.streams.values():
                    stream._wake()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway_received = True
                self._going_away = True
                last = event.last_stream_id if event.last_stream_id is not None else 0
                for stream_id, stream in list(self.streams.items()):
                    if self.client_side and stream_id > last:
                        stream.reset_code = h2.errors.ErrorCodes.REFUSED_STREAM
                        stream._push(ResetIn(h2.errors.ErrorCodes.REFUSED_STREAM, "refused: connection going away"))
                        stream._wake()
                        del self.streams[stream_id]
                self._wake_capacity()
                if not self.streams:
                    return False
        return True

    async def _serve(self, stream: H2Stream) -> None:
        assert self.handler is not None
        try:
            await self.handler(stream)
        except StreamGone:
            pass  # the peer reset or the connection broke: nothing left to answer
        except Exception:  # a bug in one stream's handling: that stream is reset, the others go on
            log.exception("HTTP/2 stream %d failed", stream.stream_id)
        finally:
            if not stream.local_closed and stream.reset_code is None:
                stream.reset(h2.errors.ErrorCodes.INTERNAL_ERROR)
            self.forget(stream)

    def close_if_idle(self, idle_for: float, now: float) -> bool:
        """Go away and close if no stream has been open for `idle_for` seconds; True if so."""
        if self.streams or self._going_away or now - self._last_active < idle_for:
            return False
        log.info("closing an HTTP/2 connection: idle for %.1fs", now - self._last_active)
        self.goaway()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        return True

    def forget(self, stream: H2Stream) -> None:
        """The stream is over on our side: drop it from the table (its slot frees for new streams)."""
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
            self._stream_closed()

    def _stream_closed(self) -> None:
        self._last_active = time.monotonic()
        self._wake_capacity()
        if self._going_away and not self.streams and self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _wake_capacity(self) -> None:
        if self._capacity is not None:
            self._capacity.set()
            self._capacity = None

    def _fail_all(self, why: str) -> None:
        for stream in self.streams.values():
            if stream.reset_code is None:
                stream.reset_code = h2.errors.ErrorCodes.CANCEL
                stream._push(ResetIn(h2.errors.ErrorCodes.CANCEL, why))
            stream._wake()
        self.streams.clear()
        self._wake_capacity()

    def _lost(self, why: str) -> None:
        if not self.closed:
            self.closed = True
            self._fail_all(why)
