"""Routing a TLS connection by the SNI of its ClientHello, without terminating TLS (the zone ingress's core).

Theory of operation: `route_by_sni` owns one downstream connection from accept to close. It reads until the bytes
hold a whole ClientHello (`sni.parse_client_hello`), within `hello_timeout` in total (a slowloris gets no more time
than a legitimate client) and within the parser's 16 KiB cap. It asks `resolve(sni)` for the local endpoints of the
named service and dials them in order, moving to the next one when a connect fails (as the sidecar retries a failed
connect on another endpoint), at most `connect_attempts` of them. It then writes everything read so far to the
endpoint and splices both ways (`dataplane.splice`) until both directions end, one breaks, or the connection idles
for `idle_timeout`. The TLS session, mutual authentication included, stays end to end between the two sidecars:
the ingress holds no key and sees only the ClientHello in clear.

A connection that cannot be routed is closed, after a fatal TLS alert when it looked like TLS at all (an
unrecognized_name alert for a name no service answers to, handshake_failure otherwise), and `route_by_sni`
returns a short reason for metrics and logs (the `REFUSED_*` constants, or the reason of the last failed connect,
as `UpstreamError.reason`). It returns None after a splice. It fills in the `ConnectionMeter` it is given as it
goes (`dataplane.ingress.stats`): the destination once the ClientHello is read, the outcome once decided, the time
the upstream connect took, and the bytes each way, which the splice adds to while it runs.

`IngressServer` listens on an address and runs `route_by_sni` per connection; what it routes to is the `resolve`
callable it is given, so the zone control plane's endpoints plug in without touching the IO. Its `statistics()`
are plain data, per destination service; the CLI turns them into Prometheus metrics.

Drain (`IngressServer.drain`): the ingress cannot tell a caller to go (TLS is end to end), so the caller's zone must
stop sending it calls first; the CLI asks its zone CP to unpublish it, which takes a second or two to reach other
zones' sidecars. The listener closes at once (a caller's new connection is refused, and its sidecar dials another
endpoint), connections the kernel had queued are served, and a spliced connection is closed once it has been idle
for `quiet` seconds after bytes went back to the caller: an answer came and nothing was asked since. One whose last
bytes went to the endpoint may be waiting for an answer and is left to finish, up to the drain's grace. A caller
that picks a pooled connection the ingress has just closed sees it closed before anything of an answer and sends
its request again on a new connection, to another ingress.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence

import trio

from dataplane.ingress.sni import MAX_HELLO, Hello, NotClientHello, parse_client_hello
from dataplane.ingress.stats import SPLICED, ConnectionMeter, IngressAccounts, IngressStatistics
from dataplane.splice import splice
from dataplane.transport.upstream import UpstreamError
from meshcast.wire.leanio import LeanSocketStream, close_listener, listen_tcp, open_lean_tcp_stream, serve_lean
from meshcast.wire.sni import parse_service_sni

log = logging.getLogger("meshcast.dataplane.ingress")

Address = tuple[str, int]
Resolve = Callable[[str], Sequence[Address] | None]
"""Endpoints for an SNI, in the order to try them; empty or None when no service answers to the name."""
Dial = Callable[[str, int], Awaitable[trio.abc.Stream]]
"""Connect to one endpoint; raise UpstreamError or OSError when it cannot be reached."""

REFUSED_CLOSED = "closed_before_hello"  # the peer closed (or reset) before its ClientHello was complete
REFUSED_TIMEOUT = "hello_timeout"  # no complete ClientHello within hello_timeout
REFUSED_NOT_HELLO = "not_client_hello"  # not TLS, or a malformed ClientHello
REFUSED_NO_SNI = "no_sni"  # a ClientHello without a server name: nothing to route on
REFUSED_UNKNOWN = "unknown_sni"  # resolve() knows no endpoint for the name
REFUSED_UPSTREAM_BROKEN = "upstream_broken"  # the endpoint accepted, then failed before taking the ClientHello
INTERNAL_ERROR = "internal_error"  # resolve or dial raised something unexpected

ALERT_HANDSHAKE_FAILURE = 40
ALERT_UNRECOGNIZED_NAME = 112

CONNECT_ATTEMPTS = 3  # as the sidecar (dataplane.sidecar.CONNECT_ATTEMPTS)
DRAIN_QUIET = 1.0  # seconds a drained connection stays idle after an answer before it is closed
_DRAIN_POLL = 0.1
_ALERT_TIMEOUT = 1.0  # a peer that does not even read its alert gets no more time than this
_RECEIVE_SIZE = MAX_HELLO


def tls_alert(description: int) -> bytes:
    """A fatal TLS alert record in clear (as sent before the handshake has keys): level 2, `description`."""
    return bytes((21, 3, 3, 0, 2, 2, description))


async def dial_tcp(host: str, port: int, *, connect_timeout: float = 5.0) -> LeanSocketStream:
    """A plain TCP connection (the bytes are TLS already); raise UpstreamError("connect_timeout" or
    "connect_failure") when it cannot be made within `connect_timeout` seconds."""
    try:
        with trio.fail_after(connect_timeout):
            return await open_lean_tcp_stream(host, port)
    except trio.TooSlowError:
        raise UpstreamError("connect_timeout", f"{host}:{port} after {connect_timeout}s") from None
    except OSError as exc:
        raise UpstreamError("connect_failure", f"{host}:{port}: {exc.strerror or exc}") from None


def resolve_service_sni(endpoints: Callable[[str, str], Sequence[Address] | None]) -> Resolve:
    """A `Resolve` for the cross-zone naming scheme: `endpoints(mesh, service)` for a name of the form
    `meshcast.wire.sni.service_sni`, nothing for any other name."""

    def resolve(sni: str) -> Sequence[Address] | None:
        parsed = parse_service_sni(sni)
        return endpoints(*parsed) if parsed is not None else None

    return resolve


async def route_by_sni(
    downstream: trio.abc.Stream,
    resolve: Resolve,
    dial: Dial,
    *,
    hello_timeout: float = 10.0,
    idle_timeout: float | None = 3600.0,
    connect_attempts: int = CONNECT_ATTEMPTS,
    meter: ConnectionMeter | None = None,
) -> str | None:
    """Route `downstream` to an endpoint of the service its SNI names and splice the two until they are done.

    Takes ownership of `downstream` and closes it before returning, as it does any upstream it opened. Returns
    None after a splice, or why the connection was refused; `meter`, when given, is filled in as it goes. Raises
    only what `resolve` or `dial` raise beyond UpstreamError and OSError (and trio.Cancelled).
    """
    if meter is None:
        meter = ConnectionMeter()
    upstream: trio.abc.Stream | None = None
    endpoints: Sequence[Address] = ()
    try:
        buffered, outcome = await _read_hello(downstream, hello_timeout)
        if isinstance(outcome, Hello) and outcome.sni is not None:
            meter.sni = outcome.sni
            endpoints = resolve(outcome.sni) or ()
            meter.routed = bool(endpoints)  # the destination is decided: from now on the meter counts
        meter.read = len(buffered)
        if not isinstance(outcome, Hello):
            return await _refused(downstream, buffered, meter, outcome, ALERT_HANDSHAKE_FAILURE)
        if outcome.sni is None:
            return await _refused(downstream, buffered, meter, REFUSED_NO_SNI, ALERT_HANDSHAKE_FAILURE)
        if not endpoints:
            log.info("ingress: no service answers to %r", outcome.sni)
            return await _refused(downstream, buffered, meter, REFUSED_UNKNOWN, ALERT_UNRECOGNIZED_NAME)
        start = trio.current_time()
        upstream, failure = await _dial_first(outcome.sni, endpoints[:connect_attempts], dial)
        if upstream is None:
            return await _refused(downstream, buffered, meter, failure, ALERT_HANDSHAKE_FAILURE)
        meter.connect_seconds = trio.current_time() - start
        try:
            await upstream.send_all(buffered)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.info("ingress %s: endpoint failed before taking the hello: %s", outcome.sni, exc)
            return await _refused(downstream, buffered, meter, REFUSED_UPSTREAM_BROKEN, ALERT_HANDSHAKE_FAILURE)
        meter.outcome = SPLICED
        await splice(downstream, upstream, idle_timeout=idle_timeout, counts=meter.spliced)
        return None
    finally:
        if upstream is not None:
            await upstream.aclose()
        await downstream.aclose()


async def _read_hello(downstream: trio.abc.ReceiveStream, hello_timeout: float) -> tuple[bytes, Hello | str]:
    """Everything read, and the ClientHello or why there is none. The parser bounds the bytes read."""
    buffered = bytearray()
    with trio.move_on_after(hello_timeout):
        while True:
            try:
                chunk = await downstream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return bytes(buffered), REFUSED_CLOSED
            if not chunk:
                return bytes(buffered), REFUSED_CLOSED
            buffered += chunk
            try:
                parsed = parse_client_hello(bytes(buffered))
            except NotClientHello as exc:
                log.info("ingress: not a ClientHello: %s", exc.reason)
                return bytes(buffered), REFUSED_NOT_HELLO
            if isinstance(parsed, Hello):
                return bytes(buffered), parsed
    return bytes(buffered), REFUSED_TIMEOUT


async def _dial_first(sni: str, endpoints: Sequence[Address], dial: Dial) -> tuple[trio.abc.Stream | None, str]:
    """The first endpoint that accepts a connection, or None and the reason of the last failure."""
    reason = "connect_failure"
    for host, port in endpoints:
        try:
            return await dial(host, port), ""
        except UpstreamError as exc:
            reason = exc.reason
            log.info("ingress %s: %s", sni, exc)
        except OSError as exc:
            reason = "connect_failure"
            log.info("ingress %s: %s:%d: %s", sni, host, port, exc.strerror or exc)
    return None, reason


async def _refused(downstream: trio.abc.Stream, buffered: bytes, meter: ConnectionMeter, reason: str,
                   alert: int) -> str:
    """Count the refusal, then send a fatal alert if the peer spoke TLS records at all (a plaintext client would not
    understand it) and end our direction so the alert is followed by a FIN; return `reason`. The caller closes."""
    meter.outcome = reason
    if reason == REFUSED_CLOSED or not buffered.startswith(b"\x16"):
        return reason
    with trio.move_on_after(_ALERT_TIMEOUT), contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        record = tls_alert(alert)
        await downstream.send_all(record)
        meter.written += len(record)
        if isinstance(downstream, trio.abc.HalfCloseableStream):
            await downstream.send_eof()
    return reason


class IngressServer:
    """Listens on `address:port` and routes every connection with `route_by_sni`.

    Owns its listening socket (opened by `run`, closed when `run` ends or `drain` starts) and the connections it
    accepted: cancelling `run` closes them all; after `drain`, `run` returns once they are done. `resolve` is called
    once per connection, from the connection's task; an exception from it (or from a custom `dial`) is logged and
    closes that connection only (outcome "internal_error"). `statistics()` counts per destination service
    (`dataplane.ingress.stats`).
    """

    def __init__(
        self,
        address: str,
        port: int,
        resolve: Resolve,
        *,
        dial: Dial | None = None,
        connect_timeout: float = 5.0,
        hello_timeout: float = 10.0,
        idle_timeout: float | None = 3600.0,
        reuse_port: bool = False,
    ) -> None:
        self.address = address
        self.port = port  # the bound port once `run` has started (useful with port 0)
        self.resolve = resolve
        self.dial: Dial = dial if dial is not None else functools.partial(dial_tcp, connect_timeout=connect_timeout)
        self.hello_timeout = hello_timeout
        self.idle_timeout = idle_timeout
        self.reuse_port = reuse_port
        self.draining = False
        self._accounts = IngressAccounts()
        self._listener: socket.socket | None = None
        self._accepting = trio.CancelScope()
        self._connections: trio.Nursery | None = None
        self._active: dict[trio.CancelScope, ConnectionMeter] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled, or until drained; raise OSError if the address cannot be bound."""
        sock = listen_tcp(self.address, self.port, reuse_port=self.reuse_port)
        self._listener = sock
        try:
            self.port = sock.getsockname()[1]
            async with trio.open_nursery() as connections:  # outlives the accept loop while draining
                self._connections = connections
                with self._accepting:
                    await serve_lean(sock, self._spawn, task_status=task_status)
        finally:
            sock.close()

    @property
    def active(self) -> int:
        """Connections open now (being read, routed or spliced)."""
        return len(self._active)

    async def drain(self, grace: float, *, quiet: float = DRAIN_QUIET) -> bool:
        """Stop accepting, then close each spliced connection once it is idle after an answer (see the module's
        docstring), for at most `grace` seconds; the ones left are closed then. True if none had to be cut."""
        self.draining = True
        self._accepting.cancel()
        if self._listener is not None:
            close_listener(self._listener, self._spawn_now)  # what the kernel had queued is served
        deadline = trio.current_time() + grace
        moved: dict[trio.CancelScope, tuple[tuple[int, int], float]] = {}  # bytes each way, and since when
        while self._active and trio.current_time() < deadline:
            now = trio.current_time()
            for scope, meter in list(self._active.items()):
                counts = (meter.spliced[0], meter.spliced[1])
                before = moved.get(scope)
                if before is None or before[0] != counts:
                    moved[scope] = (counts, now)
                elif meter.outcome == SPLICED and meter.spliced[2] == 1 and now - before[1] >= quiet:
                    scope.cancel()
            await trio.sleep(_DRAIN_POLL)
        cut = len(self._active)
        for scope in list(self._active):
            scope.cancel()
        if cut:
            log.warning("ingress drained: %d connection(s) still busy after %.1fs closed", cut, grace)
        return cut == 0

    def statistics(self) -> IngressStatistics:
        return self._accounts.snapshot()

    async def _spawn(self, stream: LeanSocketStream) -> None:
        self._spawn_now(stream)

    def _spawn_now(self, stream: LeanSocketStream) -> None:
        assert self._connections is not None
        self._connections.start_soon(self._handle, stream)

    async def _handle(self, stream: LeanSocketStream) -> None:
        meter = self._accounts.opened(trio.current_time())
        with trio.CancelScope() as scope:
            self._active[scope] = meter
            try:
                await route_by_sni(stream, self.resolve, self.dial, hello_timeout=self.hello_timeout,
                                   idle_timeout=self.idle_timeout, meter=meter)
            except Exception:  # a bug in resolve or dial must not end the listener (serve_lean's nursery)
                log.exception("ingress: routing a connection failed")
                if meter.outcome is None:
                    meter.outcome = INTERNAL_ERROR
            finally:
                del self._active[scope]
                self._accounts.closed(meter, trio.current_time())
