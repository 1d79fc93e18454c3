"""Proxying HTTP/1.1 exchanges: from the app to an upstream sidecar, and from a peer sidecar to the app.

Theory of operation. One task serves one downstream connection: it reads a request head (`EventReader` turns the
codec's events into a stream), obtains an upstream connection (pooled when possible: between sidecars a request
never pays a TLS handshake), sends the head with the hop-by-hop fields removed and the caller's fields edited, then
runs two pumps side by side: the request body downstream → upstream, and the response upstream → downstream.
Bodies stream in both directions with bounded buffers (one read at a time); 100-continue and trailers pass
through; a 101 (WebSocket) switches both connections to an opaque byte splice. Failures before the response head
become an error response naming the reason in `x-meshcast-error` (503 no_healthy_upstream / connect_failure /
connect_timeout / tls_failure, 502 upstream_reset / bad_upstream_response, 504 timeout); after the head has left,
the downstream connection is closed instead (the only honest signal left). The upstream connection returns to
the pool only when both messages completed and neither side asked to close.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass

import trio

from dataplane.codec.events import (
    ConnectionClosed,
    DataReceived,
    Event,
    MessageCompleted,
    ProtocolSwitched,
    ProtocolViolation,
    RequestReceived,
    ResponseReceived,
)
from dataplane.codec.http1 import ClientConnection, ServerConnection, serialize_response_head
from dataplane.observe.exchange import TRACE_HEADERS, Exchange
from dataplane.policy import RetryBudget, RetryPolicy, Rule
from dataplane.splice import splice
from dataplane.transport.pool import ConnectionPool, Pooled
from dataplane.transport.upstream import UpstreamError

log = logging.getLogger("meshcast.dataplane.http")

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization"})
READ_SIZE = 65536


_NO_NURSERY = contextlib.nullcontext(None)
_RNG = random.Random()  # retry back-off jitter


class PeerGone(Exception):
    """The peer closed or broke its connection."""


class EventReader:
    """The codec's events one at a time, reading the stream when none are buffered."""

    def __init__(self, conn: ServerConnection | ClientConnection, stream: trio.abc.ReceiveStream,
                 initial: bytes = b"") -> None:
        """`initial`: bytes already read from `stream` (by protocol detection), parsed first."""
        self.conn = conn
        self.stream = stream
        self._events: collections.deque[Event] = collections.deque()
        self._error: ProtocolViolation | None = None
        self.received_any = False
        if initial:
            self._feed(initial)

    def buffered(self) -> bool:
        return bool(self._events)

    async def skip_end_of_bodyless(self) -> None:
        """A request without body is followed by its MessageCompleted (parsed with the head): consume it."""
        if not self._events:
            event = await self.next()
            if not isinstance(event, MessageCompleted):
                self._events.appendleft(event)
        elif isinstance(self._events[0], MessageCompleted):
            self._events.popleft()

    async def next(self) -> Event:
        while not self._events:
            if self._error is not None:
                raise self._error
            try:
                data = bytes(await self.stream.receive_some(READ_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise PeerGone(str(exc)) from exc
            if not self._feed(data) and not data and self._error is None:
                raise PeerGone("closed")
        return self._events.popleft()

    def _feed(self, data: bytes) -> bool:
        """Parse `data` (b"" at end of stream); True if it produced events."""
        try:
            events = self.conn.receive_data(data) if data else self.conn.receive_eof()
        except ProtocolViolation as exc:
            events, self._error = exc.events or [], exc
        if data:
            self.received_any = True
        self._events.extend(events)
        return bool(events)


def forwarded_headers(headers: Iterable[tuple[bytes, bytes]], *, drop: frozenset[bytes] = frozenset(),
                      add: Iterable[tuple[bytes, bytes]] = (), keep_upgrade: bool = False) -> list[tuple[bytes, bytes]]:
    """Headers to forward: hop-by-hop fields (and those the Connection field names) removed, `drop` removed,
    `add` appended. An upgrade keeps its Upgrade and Connection: upgrade fields."""
    headers = list(headers)
    if not keep_upgrade and not any(k.lower() in HOP_BY_HOP or k.lower() in drop for k, _ in headers):
        headers.extend(add)  # the common case: nothing to remove, one pass and no sets built
        return headers
    named = {token.strip().lower() for key, value in headers if key.lower() == b"connection"
             for token in value.split(b",")}
    removed = (HOP_BY_HOP | named | drop) - ({b"upgrade"} if keep_upgrade else set())
    out = [(k, v) for k, v in headers if k.lower() not in removed]
    if keep_upgrade:
        out = [(k, v) for k, v in out if k.lower() != b"connection"] + [(b"connection", b"upgrade")]
    out.extend(add)
    return out


@dataclass
class Upstream:
    """Where one request goes: a pool and the key of its preferred destination, and a way to dial a fresh
    connection, which answers the key it actually reached (a failed connect may be retried elsewhere).

    The policies of the call ride along: the route rule's request and response edits, the retry policy and its
    budget with `reroute` (the upstream of the next attempt, avoiding the keys tried), the request timeout (all
    attempts), an injected delay, and `observe`, told each attempt's status or failure (passive health)."""

    pool: ConnectionPool[ClientConnection]
    key: Hashable
    dial: Callable[[], Awaitable[tuple[Hashable, trio.abc.HalfCloseableStream]]]
    done: Callable[[], None] = lambda: None  # called once the exchange is over, however it ended
    rule: Rule | None = None
    retry: RetryPolicy | None = None
    budget: RetryBudget | None = None
    reroute: Callable[[set[Hashable]], Upstream | UpstreamError] | None = None
    timeout: float | None = None
    delay: float = 0.0
    observe: Callable[[int | None, str | None], None] | None = None
    service: str | None = None  # the service the call goes to (metrics, logs, spans)
    stream_idle: float | None = None  # MeshTimeout http.streamIdleTimeout: the longest wait for the upstream


Check = Callable[[int | None, str | None], bool]  # an attempt's status or failure -> try again?


def _never(status: int | None, failure: str | None) -> bool:
    return False


def violation_bytes(status: int, reason: str) -> bytes:
    """The answer to a request the codec refused: the connection is closed after it."""
    body = f"{reason}\n".encode()
    headers = [(b"content-type", b"text/plain"), (b"x-meshcast-error", reason.encode())]
    return serialize_response_head(status, headers, body_length=len(body), close=True) + body


def error_bytes(server: ServerConnection, status: int, reason: str,
                extra: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
    body = f"{reason}\n".encode()
    head = server.send_response(status, [(b"content-type", b"text/plain"), (b"x-meshcast-error", reason.encode()),
                                         *extra], body_length=len(body))
    return head + server.send_data(body) + server.send_end()


class Http1Proxy:
    """Serves one downstream HTTP/1.1 connection, forwarding each request to the upstream `route` names."""

    def __init__(
        self,
        downstream: trio.abc.HalfCloseableStream,
        route: Callable[[RequestReceived], Upstream | UpstreamError],
        *,
        drop: frozenset[bytes] = frozenset(),
        add: Callable[[RequestReceived], Iterable[tuple[bytes, bytes]]] = lambda request: (),
        initial: bytes = b"",
        idle_timeout: float = 60.0,
        header_timeout: float = 10.0,
        response_timeout: float = 15.0,
        observe: Callable[[RequestReceived], Exchange | None] | None = None,
    ) -> None:
        """`observe` starts the observation (metrics, access log, span) of each request."""
        self.downstream = downstream
        self.observe = observe
        self._exchange_seen: Exchange | None = None  # of the request in progress
        self._status: int | None = None  # sent downstream for the request in progress
        self._flags: str | None = None  # why the proxy answered or cut it short
        self._bytes_in = self._bytes_out = 0
        self.server = ServerConnection()
        self.reader = EventReader(self.server, downstream, initial)
        self.route = route
        self.drop = drop
        self.add = add
        self.idle_timeout = idle_timeout
        self.header_timeout = header_timeout
        self.response_timeout = response_timeout
        self.requests = 0
        self.retries = 0  # retries made on this connection's requests (MeshRetry)
        self._head_sent = False  # of the exchange in progress, for the request timeout
        self._waiting: trio.CancelScope | None = None  # set while idle between requests

    def go_away(self) -> None:
        """Drain: the response in progress (or the next) says Connection: close and the connection then closes; a
        connection idle between requests closes now."""
        self.server.close_after_response()
        if self._waiting is not None and self.requests:
            self._waiting.cancel()
    async def serve(self) -> None:
        try:
            while True:
                # Slowloris: a head must arrive whole within the header timeout once its first byte came;
                # a keep-alive connection may idle between requests for the idle timeout.
                # A bare CancelScope: trio.move_on_after is a generator-based context manager, measurably slower
                # on a path taken once per request.
                timeout = self.idle_timeout if self.requests else self.header_timeout
                if self.server.going_away and self.requests:  # drained between two requests
                    return
                with trio.CancelScope(deadline=trio.current_time() + timeout) as idle:
                    self._waiting = idle
                    event = await self.reader.next()
                self._waiting = None
                if idle.cancelled_caught or isinstance(event, ConnectionClosed):
                    return
                if not isinstance(event, RequestReceived):
                    return
                self.requests += 1
                if not await self._exchange(event):
                    return
                if self.server.must_close:
                    return
        except ProtocolViolation as exc:
            log.info("bad request from downstream: %s", exc)
            reason = {431: "headers_too_large", 413: "body_too_large", 414: "uri_too_long",
                      505: "http_version_not_supported"}.get(exc.status, "bad_request")
            await self._send_quietly(violation_bytes(exc.status, reason))
            await self._linger()
        except PeerGone:
            return

    async def _linger(self, seconds: float = 1.0, limit: int = 1 << 20) -> None:
        """Half-close, then read and drop what the client is still sending (briefly), so that our answer is not
        lost to a reset caused by unread data when the socket closes."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError), trio.move_on_after(seconds):
            await self.downstream.send_eof()
            drained = 0
            while drained < limit and (data := await self.downstream.receive_some(READ_SIZE)):
                drained += len(data)

    async def _send_quietly(self, data: bytes) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.downstream.send_all(data)

    async def _exchange(self, request: RequestReceived) -> bool:
        """Forward one request and its response; False when the downstream connection must close."""
        if request.body_length == 0 and request.upgrade is None:
            await self.reader.skip_end_of_bodyless()
        seen = self._exchange_seen = self.observe(request) if self.observe is not None else None
        self._status = self._flags = None
        self._bytes_in = self._bytes_out = 0
        retries = self.retries
        try:
            return await self._route_and_forward(request, seen)
        finally:
            if seen is not None:
                seen.finish(status=self._status, bytes_received=self._bytes_in, bytes_sent=self._bytes_out,
                            retries=self.retries - retries, flags=self._flags)

    async def _answer(self, status: int, reason: str, extra: Iterable[tuple[bytes, bytes]] = ()) -> None:
        """Answer the request in progress ourselves (an error or a policy's refusal)."""
        self._status, self._flags = status, reason
        await self._send_quietly(error_bytes(self.server, status, reason, extra))

    async def _route_and_forward(self, request: RequestReceived, seen: Exchange | None) -> bool:
        target = self.route(request)
        if isinstance(target, UpstreamError):
            await self._drain_request_body(request)
            await self._answer(target.status, target.reason, target.headers)
            return not self.server.must_close
        if seen is not None and target.service is not None:
            seen.destination = target.service
        try:
            if target.delay:
                await trio.sleep(target.delay)
            if target.timeout is None:
                return await self._attempts(request, target)
            self._head_sent = False
            with trio.CancelScope(deadline=trio.current_time() + target.timeout) as scope:
                keep = await self._attempts(request, target)
            if scope.cancelled_caught:
                if not self._head_sent:
                    await self._answer(504, "request_timeout")
                return False
            return keep
        finally:
            target.done()

    async def _attempts(self, request: RequestReceived, target: Upstream) -> bool:
        """The first attempt and, under a retry policy, retries on other endpoints while the policy, the number of
        retries and the budget allow. Only requests without a body are retried (nothing to replay)."""
        policy, budget = target.retry, target.budget
        retryable = policy is not None and request.body_length == 0 and request.upgrade is None
        if not retryable and target.observe is None:  # the common case: one attempt, nothing to tell
            return await self._exchange_with(request, target, _never, None) == "keep"
        if budget is not None:
            budget.request(trio.current_time())
        retries = 0
        current = target

        def check(status: int | None, failure: str | None) -> bool:
            nonlocal retries
            if current.observe is not None:
                current.observe(status, failure)
            if not retryable or policy is None or retries >= policy.num_retries:
                return False
            if not policy.should_retry(status=status, failure=failure):
                return False
            if budget is not None and not budget.try_retry(trio.current_time()):
                return False
            retries += 1
            return True

        tried: set[Hashable] = set()
        while True:
            try:
                result = await self._exchange_with(request, current, check,
                                                   policy.per_try_timeout if policy is not None else None)
            finally:
                if current is not target:
                    current.done()
            if result != "again":
                self.retries += retries
                return result == "keep"
            assert policy is not None
            tried.add(current.key)
            await trio.sleep(policy.backoff(retries, _RNG))
            following = target.reroute(tried) if target.reroute is not None else target
            if isinstance(following, UpstreamError):
                self.retries += retries
                await self._answer(following.status, following.reason)
                return not self.server.must_close
            current = following

    async def _exchange_with(self, request: RequestReceived, target: Upstream, check: Check,
                             attempt_timeout: float | None) -> str:
        """One attempt: keep | close | again (the attempt failed and `check` wants another)."""
        seen = self._exchange_seen
        trace = seen.headers if seen is not None else []
        if seen is not None:
            seen.upstream = str(target.key)
        added = self.add(request)
        if trace:  # the span's context replaces whatever the request carried
            headers = forwarded_headers(request.headers, drop=self.drop | TRACE_HEADERS, add=[*added, *trace],
                                        keep_upgrade=request.upgrade is not None)
        else:
            headers = forwarded_headers(request.headers, drop=self.drop, add=added,
                                        keep_upgrade=request.upgrade is not None)
        path = request.target
        if target.rule is not None and target.rule.edits_request:
            path, headers = target.rule.edit_request(path, headers)
        for attempt in (1, 2):
            key = target.key
            conn = target.pool.take(key)
            fresh = conn is None
            if conn is None:
                try:
                    key, stream = await target.dial()
                except UpstreamError as exc:
                    if check(None, "connect_failure"):
                        return "again"
                    await self._drain_request_body(request)
                    await self._answer(503, exc.reason)
                    return "keep" if not self.server.must_close else "close"
                conn = Pooled(stream, ClientConnection())
                target.pool.created += 1
            outcome = await self._forward(request, path, headers, conn, target, check, attempt_timeout)
            if outcome == "reuse":
                target.pool.give_back(key, conn, target.service)
                return "keep"
            await conn.stream.aclose()
            if outcome == "retry":
                if not fresh and attempt == 1:
                    continue  # a pooled connection the upstream had closed: once more on a fresh one
                if check(None, "reset"):
                    return "again"
                await self._answer(502, "upstream_reset")
                return "keep" if not self.server.must_close else "close"
            if outcome == "again":
                return "again"
            return "keep" if outcome == "done" else "close"
        return "close"

    async def _drain_request_body(self, request: RequestReceived) -> None:
        """Read and drop the body of a request we answer ourselves, so the connection can carry the next one."""
        if request.body_length == 0:
            return  # its end was consumed with the head
        while True:
            event = await self.reader.next()
            if isinstance(event, MessageCompleted | ConnectionClosed):
                return

    async def _forward(self, request: RequestReceived, path: bytes, headers: list[tuple[bytes, bytes]],
                       conn: Pooled[ClientConnection], target: Upstream, check: Check,
                       attempt_timeout: float | None) -> str:
        """One attempt. Returns reuse | done | close | retry (a pooled connection found dead before any reply) |
        again (a failure `check` wants retried, nothing sent downstream)."""
        client, upstream = conn.state, conn.stream
        up_reader = EventReader(client, upstream)
        try:
            await upstream.send_all(client.send_request(request.method, path, headers,
                                                        body_length=request.body_length))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return "retry"  # nothing of the request body has been read yet: safe to try again
        state = {"request_done": request.body_length == 0, "head_sent": False}
        result = "close"
        # A bodyless request (most of them) needs no second task: no nursery, no task spawn on the hot path.
        async with trio.open_nursery() if request.body_length != 0 else _NO_NURSERY as nursery:
            if nursery is not None:
                nursery.start_soon(self._pump_request, client, upstream, state, nursery.cancel_scope)
            try:
                result = await self._pump_response(request, up_reader, state, target, check,
                                                   attempt_timeout or self.response_timeout)
            except (PeerGone, ProtocolViolation) as exc:
                log.info("upstream exchange failed (%s): %s", type(exc).__name__, exc)
                if state["head_sent"]:
                    result = "close"
                elif not up_reader.received_any and request.body_length == 0:
                    result = "retry"  # closed before answering: a pooled connection the upstream had dropped
                elif check(None, "reset"):
                    result = "again"
                else:
                    status, reason = (502, "bad_upstream_response") if isinstance(exc, ProtocolViolation) \
                        else (502, "upstream_reset")
                    await self._answer(status, reason)
                    result = "done" if state["request_done"] and not self.server.must_close else "close"
            except trio.TooSlowError:
                if not state["head_sent"]:
                    if check(504, None):  # a per-try timeout counts as a gateway error
                        result = "again"
                    else:
                        await self._answer(504, "timeout")
                        result = "close"
                else:
                    result = "close"
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                result = "close"  # the downstream went away
            if nursery is not None:
                nursery.cancel_scope.cancel()
        if result == "switched":
            await self._tunnel(upstream, client)
            return "close"
        if result == "reuse" and not (state["request_done"] and not client.must_close):
            return "close"
        return result

    async def _pump_request(self, client: ClientConnection, upstream: trio.abc.SendStream, state: dict[str, bool],
                            cancel: trio.CancelScope) -> None:
        try:
            while True:
                event = await self.reader.next()
                if isinstance(event, DataReceived):
                    self._bytes_in += len(event.data)
                    await upstream.send_all(client.send_data(event.data))
                elif isinstance(event, MessageCompleted):
                    await upstream.send_all(client.send_end(event.trailers))
                    state["request_done"] = True
                    return
                else:
                    cancel.cancel()
                    return
        except (PeerGone, ProtocolViolation, trio.BrokenResourceError, trio.ClosedResourceError):
            cancel.cancel()

    async def _pump_response(self, request: RequestReceived, up: EventReader, state: dict[str, bool],
                             target: Upstream, check: Check, head_within: float) -> str:
        idle = target.stream_idle
        if idle is not None:
            head_within = min(head_within, idle)
        with trio.CancelScope(deadline=trio.current_time() + head_within) as waiting:
            event = await up.next()
            while isinstance(event, ResponseReceived) and event.informational and event.status != 101:
                await self.downstream.send_all(self.server.send_response(event.status, event.headers,
                                                                         reason=event.reason))
                event = await up.next()
        if waiting.cancelled_caught:
            raise trio.TooSlowError
        if not isinstance(event, ResponseReceived):
            raise PeerGone("no response head")
        response = event
        if check(response.status, None):
            return "again"  # this answer is dropped (its connection closed) and the request tried again
        headers = forwarded_headers(response.headers, keep_upgrade=response.status == 101)
        if target.rule is not None and target.rule.edits_response:
            headers = target.rule.edit_response(headers)
        pending = bytearray(self.server.send_response(response.status, headers, reason=response.reason,
                                                      body_length=response.body_length))
        state["head_sent"] = self._head_sent = True
        self._status = response.status
        if response.status == 101:
            await self.downstream.send_all(pending)
            return "switched"
        # Coalesce: what the upstream already sent (head, body pieces, end) leaves in one write, so a small
        # response costs one system call and one TLS record, not three.
        while True:
            if pending and not up.buffered():
                await self.downstream.send_all(pending)
                pending.clear()
            if idle is None:
                event = await up.next()
            else:  # nothing from the upstream for that long: the response is cut off (the connection closes)
                with trio.fail_after(idle):
                    event = await up.next()
            if isinstance(event, DataReceived):
                self._bytes_out += len(event.data)
                pending += self.server.send_data(event.data)
            elif isinstance(event, MessageCompleted):
                pending += self.server.send_end(event.trailers)
                if pending:
                    await self.downstream.send_all(pending)
                return "reuse" if response.keep_alive else "done"
            elif isinstance(event, ProtocolSwitched):
                if pending:
                    await self.downstream.send_all(pending)
                return "switched"
            else:
                raise PeerGone("upstream closed mid-response")

    async def _tunnel(self, upstream: trio.abc.HalfCloseableStream, client: ClientConnection) -> None:
        """After a 101: relay what each side sent past its HTTP head, then splice bytes both ways."""
        down_trailing = self.server.trailing_data if self.server.switched else b""
        up_trailing = client.trailing_data if client.switched else b""
        try:
            if up_trailing:
                await self.downstream.send_all(up_trailing)
            if down_trailing:
                await upstream.send_all(down_trailing)
            await splice(self.downstream, upstream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
