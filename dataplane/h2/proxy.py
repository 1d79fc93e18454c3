"""Proxying HTTP/2 (and gRPC) per request: from the app to an upstream sidecar, and from a peer sidecar to the app.

Theory of operation. A downstream connection is served by an `H2Connection` in the server role; each request
stream gets a task that asks `route` where it goes (a per-request load-balancing decision), opens a stream on a
pooled, multiplexed upstream connection (`H2Pool`: one connection carries up to the peer's concurrent-stream
limit, so between sidecars a request never pays a handshake), and relays the two halves: the request body
downstream → upstream (only when there is one: bodyless requests need no second task), and the response, with
informational heads, data and trailers, upstream → downstream. Flow control is end to end: a slow reader on either
side stalls its sender through the windows, and no side buffers more than a window.

Resets cross the proxy: a client that cancels (RST_STREAM) cancels the upstream stream at once; an upstream reset
before the response head becomes an error response (`x-meshcast-error: upstream_reset`), after it a reset of the
downstream stream with the same code. Failures before the head answer as HTTP/1.1 does (503 no_healthy_upstream,
connect_failure, ...); a gRPC caller gets them as a trailers-only response with `grpc-status: 14` (UNAVAILABLE)
and the reason in `grpc-message`, which is what gRPC clients understand.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass

import h2.errors
import trio

from dataplane.h2.bridge import exchange_over_http1
from dataplane.h2.connection import (
    DataIn,
    Fields,
    H2Connection,
    H2Limits,
    H2Stream,
    HeadersIn,
    ResetIn,
    StreamGone,
    TrailersIn,
)
from dataplane.h2.guard import PREFACE
from dataplane.http1proxy import Upstream
from dataplane.observe.exchange import TRACE_HEADERS, Exchange
from dataplane.policy import RetryBudget, RetryPolicy, Rule
from dataplane.transport.upstream import UpstreamError

log = logging.getLogger("meshcast.dataplane.h2")
_RNG = random.Random()  # retry back-off jitter


async def sniff_h2(stream: trio.abc.ReceiveStream) -> tuple[bool, bytes]:
    """Whether the peer opens with the HTTP/2 connection preface (prior knowledge), and the bytes read to tell.

    Reads until the bytes differ from the preface or complete it (usually one read); b"" if the peer closed or
    said nothing within SNIFF_TIMEOUT (a slowloris gets no more time than a request head)."""
    data = b""
    with trio.move_on_after(SNIFF_TIMEOUT):
        while len(data) < len(PREFACE) and PREFACE.startswith(data):
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    return data.startswith(PREFACE), data

SNIFF_TIMEOUT = 10.0

Dial = Callable[[], Awaitable[tuple[Hashable, trio.abc.HalfCloseableStream]]]


class H2Pool:
    """Multiplexed client connections per destination. Connection tasks run in `nursery` (they outlive requests)."""

    def __init__(self, nursery: trio.Nursery, *, limits: H2Limits | None = None) -> None:
        self.nursery = nursery
        self.limits = limits
        self._conns: dict[Hashable, list[H2Connection]] = {}
        self._dialing: dict[Hashable, trio.Event] = {}
        self._services: dict[H2Connection, str] = {}  # the service each connection reaches
        self.created = 0

    def _usable(self, key: Hashable) -> H2Connection | None:
        for conn in self._conns.get(key, ()):
            if conn.available:
                return conn
        return None

    async def open_stream(self, key: Hashable, dial: Dial, fields: Fields, *, end: bool,
                          service: str | None = None) -> H2Stream:
        """A request stream to `key` (or wherever `dial` reaches), a destination of `service`. Raises
        UpstreamError, StreamGone."""
        for _ in range(3):  # a connection that went away between the check and the open: another one
            conn = self._usable(key)
            while conn is None and key in self._dialing:  # one dial per destination at a time
                await self._dialing[key].wait()
                conn = self._usable(key)
            if conn is None:
                conn = await self._connect(key, dial, service)
            try:
                return await conn.open_stream(fields, end=end)
            except StreamGone as exc:
                if exc.code != h2.errors.ErrorCodes.REFUSED_STREAM:
                    raise
        raise UpstreamError("upstream_reset", "connections kept going away")

    async def _connect(self, key: Hashable, dial: Dial, service: str | None) -> H2Connection:
        dialing = self._dialing[key] = trio.Event()
        try:
            reached, stream = await dial()
            conn = H2Connection(stream, client_side=True, limits=self.limits)
            if service is not None:
                self._services[conn] = service
            await self.nursery.start(self._run, reached, conn)
            self.created += 1
            return conn
        finally:
            del self._dialing[key]
            dialing.set()

    async def _run(self, key: Hashable, conn: H2Connection, *, task_status: trio.TaskStatus[None]) -> None:
        self._conns.setdefault(key, []).append(conn)
        try:
            await conn.run(task_status=task_status)
        finally:
            conns = self._conns.get(key, [])
            if conn in conns:
                conns.remove(conn)
            if not conns:
                self._conns.pop(key, None)
            self._services.pop(conn, None)

    def sweep(self, idle_timeout_for: Callable[[str], float | None]) -> int:
        """Close the connections without streams for longer than their service's idle timeout (MeshTimeout
        idleTimeout, read when sweeping: a policy applied later also governs connections already open)."""
        now, closed = time.monotonic(), 0
        for conn, service in list(self._services.items()):
            timeout = idle_timeout_for(service)
            if timeout is not None and conn.close_if_idle(timeout, now):
                closed += 1
        return closed

    def close_all(self) -> None:
        """Ask every connection to finish: open streams complete, new ones go to new connections."""
        for conns in self._conns.values():
            for conn in conns:
                conn.goaway()
                conn.goaway_received = True  # no new streams here


@dataclass
class H2Target:
    """Where one request goes: a pool, the key of its chosen destination, a way to dial it, and a callback for
    when the exchange is over (least-request accounting)."""

    pool: H2Pool
    key: Hashable
    dial: Dial
    done: Callable[[], None] = lambda: None
    service: str | None = None  # the service the call goes to (metrics, logs, spans)
    rule: Rule | None = None  # the MeshHTTPRoute rule it matched: its request and response edits
    timeout: float | None = None  # MeshTimeout's request timeout: the whole exchange
    retry: RetryPolicy | None = None  # MeshRetry (its `grpc` section for a gRPC call)
    budget: RetryBudget | None = None
    reroute: Callable[[set[Hashable]], H2Target | UpstreamError] | None = None  # the next attempt's target
    observe: Callable[[int | None, str | None], None] | None = None  # passive health: each attempt's outcome
    delay: float = 0.0  # MeshFaultInjection's delay
    stream_idle: float | None = None  # MeshTimeout http.streamIdleTimeout: the longest wait for the upstream


class _Seen:
    """What the proxy learns of one stream's exchange for its observation: the status sent back, body bytes."""

    __slots__ = ("bytes_in", "bytes_out", "flags", "retries", "status")

    def __init__(self) -> None:
        self.status: int | None = None
        self.flags: str | None = None
        self.bytes_in = self.bytes_out = self.retries = 0


# What one relay of an exchange ended with.
DONE, REFUSED, AGAIN = 0, 1, 2  # relayed (or answered); refused unprocessed (safe to re-open); failed, retry wanted

MAX_REPLAY = 64 * 1024  # request body kept for a retry; a longer body is not retried
CONNECT_FAILURES = frozenset({"connect_failure", "connect_timeout", "tls_failure"})
Decide = Callable[[int | None, int | None, str | None], bool]  # (status, grpc-status, failure) -> try again?


class _Replay:
    """The request body as received so far, kept to send again on a retry (up to MAX_REPLAY bytes)."""

    __slots__ = ("ended", "events", "overflow", "size")

    def __init__(self, ended: bool) -> None:
        self.events: list[DataIn | TrailersIn] = []
        self.size = 0
        self.ended = ended  # the whole request is here
        self.overflow = False

    def record(self, event: DataIn | TrailersIn) -> None:
        self.ended = isinstance(event, TrailersIn) or event.end
        if self.overflow:
            return
        self.size += len(event.data) if isinstance(event, DataIn) else 0
        if self.size > MAX_REPLAY:
            self.overflow, self.events = True, []
        else:
            self.events.append(event)


def grpc_status_of(fields: Fields) -> int | None:
    value = header(fields, b"grpc-status")
    return int(value) if value is not None and value.isdigit() else None


# gRPC's mapping of an HTTP status without grpc-status to a gRPC status, and the HTTP status a gRPC failure stands
# for in passive health (UNAVAILABLE 503, DEADLINE_EXCEEDED 504, INTERNAL and UNKNOWN 500).
_HTTP_TO_GRPC = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
_GRPC_TO_HTTP = {14: 503, 4: 504, 13: 500, 2: 500}


def error_fields(status: int, reason: str, *, grpc: bool, grpc_status: bytes = b"14") -> tuple[Fields, bytes]:
    """The head and body of an answer the proxy gives itself (gRPC: a trailers-only answer, UNAVAILABLE unless
    told otherwise, e.g. DEADLINE_EXCEEDED for a timeout)."""
    if grpc:
        return [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", grpc_status),
                (b"grpc-message", reason.encode()), (b"x-meshcast-error", reason.encode())], b""
    return [(b":status", str(status).encode()), (b"content-type", b"text/plain"),
            (b"x-meshcast-error", reason.encode())], f"{reason}\n".encode()


def edit_fields(rule: Rule, fields: Fields) -> Fields:
    """A route rule's request edits on an HTTP/2 head: `:path` rewritten, headers set/added/removed, `:authority`
    replaced by a hostname rewrite."""
    pseudo = [(k, v) for k, v in fields if k.startswith(b":")]
    path, regular = rule.edit_request(header(pseudo, b":path") or b"/", [(k, v) for k, v in fields
                                                                          if not k.startswith(b":")])
    host = next((v for k, v in regular if k == b"host"), None) if rule.rewrite_host is not None else None
    regular = [(k, v) for k, v in regular if k != b"host"] if host is not None else regular
    pseudo = [(k, path if k == b":path" else host if (k == b":authority" and host is not None) else v)
              for k, v in pseudo]
    return pseudo + regular


def header(fields: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in fields:
        if key == name:
            return value
    return None


class H2Proxy:
    """Serves one downstream HTTP/2 connection, forwarding each request stream to where `route` says."""

    def __init__(
        self,
        downstream: trio.abc.Stream,
        route: Callable[[Fields], H2Target | Upstream | UpstreamError],
        *,
        drop: frozenset[bytes] = frozenset(),
        add: Fields | None = None,
        limits: H2Limits | None = None,
        live: set[H2Connection] | None = None,
        initial: bytes = b"",
        observe: Callable[[Fields], Exchange | None] | None = None,
    ) -> None:
        """`observe` starts the observation (metrics, access log, span) of each request stream."""
        self.observe = observe
        self.route = route
        self.drop = drop
        self.add = add or []
        self.live = live  # the sidecar's set of serving connections, for GOAWAY on drain
        self.conn = H2Connection(downstream, client_side=False, handler=self._handle, limits=limits,
                                 initial=initial)

    async def serve(self) -> None:
        if self.live is not None:
            self.live.add(self.conn)
        try:
            await self.conn.run()
        finally:
            if self.live is not None:
                self.live.discard(self.conn)

    async def _handle(self, down: H2Stream) -> None:
        head = await down.receive()
        if not isinstance(head, HeadersIn):
            return
        fields = [(k, v) for k, v in head.fields if k not in self.drop] if self.drop else head.fields
        fields += self.add
        exchange = self.observe(fields) if self.observe is not None else None
        if exchange is None:
            await self._forward(down, head, fields, None)
            return
        seen = _Seen()
        try:
            trace = exchange.headers
            if trace:
                fields = [(k, v) for k, v in fields if k not in TRACE_HEADERS] + trace
            await self._forward(down, head, fields, seen, exchange)
        finally:
            exchange.finish(status=seen.status, bytes_received=seen.bytes_in, bytes_sent=seen.bytes_out,
                            retries=seen.retries, flags=seen.flags)

    async def _forward(self, down: H2Stream, head: HeadersIn, fields: Fields, seen: _Seen | None,
                       exchange: Exchange | None = None) -> None:
        grpc = (header(fields, b"content-type") or b"").startswith(b"application/grpc")
        target = self.route(fields)
        if isinstance(target, UpstreamError):
            await self._answer(down, target.status, target.reason, grpc=grpc, seen=seen)
            return
        if exchange is not None:
            exchange.upstream = str(target.key)
            if target.service is not None:
                exchange.destination = target.service
        if isinstance(target, Upstream):  # an HTTP/1.1 upstream: one exchange per stream
            started = [0]
            try:
                if target.delay:
                    await trio.sleep(target.delay)
                with trio.CancelScope(deadline=trio.current_time() + target.timeout if target.timeout is not None
                                      else math.inf) as scope:
                    await exchange_over_http1(down, head, fields, target,
                                              lambda status, reason: self._answer(down, status, reason, grpc=grpc,
                                                                                  seen=seen), started)
                if scope.cancelled_caught:
                    if started[0]:
                        down.reset(h2.errors.ErrorCodes.CANCEL)
                    else:
                        await self._answer(down, 504, "request_timeout", grpc=grpc, seen=seen, grpc_status=b"4")
            finally:
                target.done()
                if seen is not None and seen.status is None and started[0]:
                    seen.status = started[0]
            return
        if target.rule is not None and target.rule.edits_request:
            fields = edit_fields(target.rule, fields)
        try:
            if target.delay:
                await trio.sleep(target.delay)
            attempts = self._attempts if target.retry is None and target.observe is None else self._retrying
            if target.timeout is None:
                await attempts(down, head, fields, target, grpc, seen)
                return
            seen = seen if seen is not None else _Seen()  # tells whether an answer has started
            with trio.CancelScope(deadline=trio.current_time() + target.timeout) as scope:
                await attempts(down, head, fields, target, grpc, seen)
            if scope.cancelled_caught:
                if seen.status is None:
                    await self._answer(down, 504, "request_timeout", grpc=grpc, seen=seen, grpc_status=b"4")
                else:
                    down.reset(h2.errors.ErrorCodes.CANCEL)
        finally:
            target.done()

    async def _attempts(self, down: H2Stream, head: HeadersIn, fields: Fields, target: H2Target, grpc: bool,
                        seen: _Seen | None) -> None:
        """A call without retry policy or passive health: one attempt (a bodyless request refused unprocessed by a
        connection going away is sent again)."""
        for attempt in range(3):
            try:
                up = await target.pool.open_stream(target.key, target.dial, fields, end=head.end,
                                                   service=target.service)
            except UpstreamError as exc:
                await self._answer(down, exc.status, exc.reason, grpc=grpc, seen=seen)
                return
            except StreamGone:
                await self._answer(down, 502, "upstream_reset", grpc=grpc, seen=seen)
                return
            down.linked = up  # a downstream reset cancels the upstream stream at once
            try:
                # A bodyless request refused by a connection going away (GOAWAY, REFUSED_STREAM: never
                # processed) is safe to send again; one with a body streaming cannot be replayed.
                if head.end:
                    outcome = await self._pump_response(down, up, grpc, retryable=attempt < 2, seen=seen,
                                                        rule=target.rule, idle=target.stream_idle)
                else:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump_request, down, up, seen)
                        outcome = await self._pump_response(down, up, grpc, retryable=False, seen=seen,
                                                            rule=target.rule, idle=target.stream_idle)
                        nursery.cancel_scope.cancel()  # the response is over: a request still streaming is cut off
                if outcome != REFUSED:
                    return
            finally:
                self._end_upstream(up)

    @staticmethod
    def _end_upstream(up: H2Stream) -> None:
        if not (up.local_closed and up.remote_closed):
            up.reset(h2.errors.ErrorCodes.CANCEL)
        up.conn.forget(up)

    async def _retrying(self, down: H2Stream, head: HeadersIn, fields: Fields, target: H2Target, grpc: bool,
                        seen: _Seen | None) -> None:
        """A call under a retry policy or passive health (MeshCircuitBreaker detectors). Each attempt's answer head
        is held until `decide` has seen it: a failure the policy retries is dropped (nothing reaches the caller)
        and the call goes to another endpoint after a back-off, while retries, the budget and the replayable
        request body (MAX_REPLAY) allow. A gRPC call is judged by the grpc-status of a trailers-only answer."""
        policy, budget = target.retry, target.budget
        seen = seen if seen is not None else _Seen()
        replay = _Replay(ended=head.end)
        if budget is not None and policy is not None:
            budget.request(trio.current_time())
        retries = 0
        current = target

        def decide(status: int | None, grpc_status: int | None, failure: str | None) -> bool:
            nonlocal retries
            if grpc and grpc_status is None:  # how a gRPC client would see it
                grpc_status = 14 if failure is not None else _HTTP_TO_GRPC.get(status or 0, 2) \
                    if status != 200 else None
            if current.observe is not None:
                seen_as = _GRPC_TO_HTTP.get(grpc_status, 200) if grpc and grpc_status is not None else status
                current.observe(seen_as, failure if failure != "refused_stream" else "reset")
            if policy is None or retries >= policy.num_retries or replay.overflow:
                return False
            if grpc:
                if grpc_status is None or not policy.should_retry(grpc_status=grpc_status):
                    return False
            elif not policy.should_retry(status=status, failure=failure):
                return False
            if budget is not None and not budget.try_retry(trio.current_time()):
                return False
            retries += 1
            return True

        tried: set[Hashable] = set()
        try:
            while True:
                try:
                    again = await self._attempt(down, head, fields, current, grpc, seen, replay, decide,
                                                policy.per_try_timeout if policy is not None else None)
                finally:
                    if current is not target:
                        current.done()
                if not again:
                    return
                assert policy is not None
                tried.add(current.key)
                await trio.sleep(policy.backoff(retries, _RNG))
                following = target.reroute(tried) if target.reroute is not None else target
                if isinstance(following, UpstreamError):
                    await self._answer(down, following.status, following.reason, grpc=grpc, seen=seen)
                    return
                current = following
        finally:
            seen.retries = retries

    async def _attempt(self, down: H2Stream, head: HeadersIn, fields: Fields, target: H2Target, grpc: bool,
                       seen: _Seen, replay: _Replay, decide: Decide, per_try: float | None) -> bool:
        """One attempt; True when it failed before anything reached the caller and `decide` wants another."""
        for _ in range(3):  # a stream refused unprocessed (a connection going away) is opened again, not retried
            try:
                up = await target.pool.open_stream(target.key, target.dial, fields, end=head.end,
                                                   service=target.service)
            except UpstreamError as exc:
                if exc.reason in CONNECT_FAILURES and decide(None, None, "connect_failure"):
                    return True
                await self._answer(down, exc.status, exc.reason, grpc=grpc, seen=seen)
                return False
            except StreamGone:
                if decide(None, None, "reset"):
                    return True
                await self._answer(down, 502, "upstream_reset", grpc=grpc, seen=seen)
                return False
            down.linked = up
            try:
                with trio.CancelScope(deadline=trio.current_time() + per_try if per_try else math.inf) as attempt:
                    if replay.ended and not replay.events:
                        outcome = await self._pump_response(down, up, grpc, retryable=not replay.overflow,
                                                            seen=seen, rule=target.rule, decide=decide,
                                                            idle=target.stream_idle)
                    else:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._pump_replay, down, up, seen, replay)
                            outcome = await self._pump_response(down, up, grpc, retryable=not replay.overflow,
                                                                seen=seen, rule=target.rule, decide=decide,
                                                                idle=target.stream_idle)
                            nursery.cancel_scope.cancel()
                if attempt.cancelled_caught:  # the per-try timeout
                    if seen.status is not None:
                        down.reset(h2.errors.ErrorCodes.CANCEL)
                        return False
                    if decide(504, None, None):
                        return True
                    await self._answer(down, 504, "timeout", grpc=grpc, seen=seen, grpc_status=b"4")
                    return False
                if outcome != REFUSED:
                    return outcome == AGAIN
            finally:
                self._end_upstream(up)
        await self._answer(down, 502, "upstream_reset", grpc=grpc, seen=seen)
        return False

    async def _pump_request(self, down: H2Stream, up: H2Stream, seen: _Seen | None) -> None:
        try:
            while True:
                event = await down.receive()
                if isinstance(event, DataIn):
                    if seen is not None:
                        seen.bytes_in += len(event.data)
                    await up.send_data(event.data, end=event.end)
                    if event.end:
                        return
                elif isinstance(event, TrailersIn):
                    await up.send_headers(event.fields, end=True)
                    return
                else:  # ResetIn: the client cancelled
                    up.reset(h2.errors.ErrorCodes.CANCEL)
                    return
        except StreamGone:
            up.reset(h2.errors.ErrorCodes.CANCEL)  # the response pump sees the reset and ends the exchange

    async def _pump_replay(self, down: H2Stream, up: H2Stream, seen: _Seen, replay: _Replay) -> None:
        """The request body of an attempt that may be retried: what earlier attempts received first, then the
        rest from the caller, kept for the next attempt."""
        try:
            for event in list(replay.events):
                if isinstance(event, DataIn):
                    await up.send_data(event.data, end=event.end)
                else:
                    await up.send_headers(event.fields, end=True)
            while not replay.ended:
                received = await down.receive()
                if isinstance(received, DataIn):
                    seen.bytes_in += len(received.data)
                    replay.record(received)
                    await up.send_data(received.data, end=received.end)
                elif isinstance(received, TrailersIn):
                    replay.record(received)
                    await up.send_headers(received.fields, end=True)
                else:  # ResetIn: the client cancelled
                    up.reset(h2.errors.ErrorCodes.CANCEL)
                    return
        except StreamGone:
            up.reset(h2.errors.ErrorCodes.CANCEL)

    async def _pump_response(self, down: H2Stream, up: H2Stream, grpc: bool, *, retryable: bool,
                             seen: _Seen | None = None, rule: Rule | None = None, decide: Decide | None = None,
                             idle: float | None = None) -> int:
        """Relay the answer: DONE, REFUSED (refused unprocessed, nothing sent: may be opened again when
        `retryable`), or AGAIN (a failure `decide` wants retried, nothing sent)."""
        started = False
        try:
            while True:
                if idle is None:
                    event = await up.receive()
                else:
                    with trio.move_on_after(idle) as waiting:
                        event = await up.receive()
                    if waiting.cancelled_caught:  # MeshTimeout streamIdleTimeout: nothing from the upstream
                        if started:
                            down.reset(h2.errors.ErrorCodes.CANCEL)
                        else:
                            await self._answer(down, 504, "stream_idle_timeout", grpc=grpc, seen=seen,
                                               grpc_status=b"4")
                        return DONE
                more = up.pending  # more already here: send this one with it, in one write
                if isinstance(event, HeadersIn):
                    response = event.fields
                    if not event.informational:
                        if not started:
                            status = header(response, b":status")
                            code = int(status) if status is not None and status.isdigit() else None
                            if decide is not None and decide(code, grpc_status_of(response) if grpc and event.end
                                                             else None, None):
                                return AGAIN
                            if seen is not None:
                                seen.status = code
                        if rule is not None and rule.edits_response:
                            response = rule.edit_response(response)
                    await down.send_headers(response, end=event.end, flush=event.end or not more)
                    started = started or not event.informational
                    if event.end:
                        return DONE
                elif isinstance(event, DataIn):
                    if seen is not None:
                        seen.bytes_out += len(event.data)
                    await down.send_data(event.data, end=event.end, flush=event.end or not more)
                    if event.end:
                        return DONE
                elif isinstance(event, TrailersIn):
                    await down.send_headers(event.fields, end=True)
                    return DONE
                elif isinstance(event, ResetIn):
                    if down.reset_code is not None:
                        return DONE  # the client cancelled: nothing to tell it
                    if started:
                        down.reset(event.code)
                        return DONE
                    refused = event.code == h2.errors.ErrorCodes.REFUSED_STREAM
                    if retryable and refused:
                        return REFUSED
                    if decide is not None and decide(None, None, "refused_stream" if refused else "reset"):
                        return AGAIN
                    await self._answer(down, 502, "upstream_reset", grpc=grpc, seen=seen)
                    return DONE
        except StreamGone:
            up.reset(h2.errors.ErrorCodes.CANCEL)  # the downstream went away
        return DONE

    async def _answer(self, down: H2Stream, status: int, reason: str, *, grpc: bool, seen: _Seen | None = None,
                      grpc_status: bytes = b"14") -> None:
        if seen is not None:
            seen.status, seen.flags = status, reason  # for gRPC, the HTTP status the failure stands for
        fields, body = error_fields(status, reason, grpc=grpc, grpc_status=grpc_status)
        with contextlib.suppress(StreamGone):
            await down.send_headers(fields, end=not body)
            if body:
                await down.send_data(body, end=True)
