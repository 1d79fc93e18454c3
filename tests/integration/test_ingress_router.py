"""The zone ingress routing real TLS clients (curl, openssl s_client, Python's ssl) by SNI to a real TLS backend on
loopback, without terminating TLS, and counting per destination the bytes the TCP ends exchanged; and `route_by_sni`
itself over memory streams (its logic needs no sockets)."""

from __future__ import annotations

import contextlib
import datetime
import re
import socket
import ssl
import subprocess
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dataplane.ingress.router import (
    ALERT_HANDSHAKE_FAILURE,
    ALERT_UNRECOGNIZED_NAME,
    REFUSED_CLOSED,
    REFUSED_NO_SNI,
    REFUSED_NOT_HELLO,
    REFUSED_TIMEOUT,
    REFUSED_UNKNOWN,
    Address,
    IngressServer,
    resolve_service_sni,
    route_by_sni,
    tls_alert,
)
from dataplane.ingress.stats import SPLICED, UNROUTED, ConnectionMeter, DestinationStatistics
from dataplane.transport.upstream import UpstreamError
from meshcast.wire.sni import service_sni

WEB = service_sni("default", "web")
UNKNOWN = service_sni("default", "nope")

# --- certificates (cryptography, as tests/support/tls.py) -------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path
    cert_pem: str


def make_certs(directory: Path, dns_names: list[str]) -> Certs:
    """A throwaway CA and a backend certificate for `dns_names`, written as PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshcast ingress test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    certs = Certs(directory / "ca.pem", directory / "backend.pem", directory / "backend.key",
                  cert.public_bytes(serialization.Encoding.PEM).decode())
    certs.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    certs.cert.write_text(certs.cert_pem)
    certs.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    return certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("ingress-certs"), [WEB])


# --- servers ----------------------------------------------------------------------------------------------------


class CountingStream(trio.abc.HalfCloseableStream):
    """A TCP stream that counts the bytes it received and sent (below TLS, as the ingress sees them)."""

    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner = inner
        self.received = 0
        self.sent = 0

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await self.inner.receive_some(max_bytes)
        self.received += len(data)
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)
        self.sent += len(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Backend:
    """A TLS server holding the service's certificate: answers one HTTP/1.1 request per connection."""

    context: ssl.SSLContext
    port: int = 0
    accepted: int = 0
    handshakes: list[str | None] = field(default_factory=list)  # the SNI each completed handshake carried
    tcp: list[CountingStream] = field(default_factory=list)  # the TCP streams it accepted, with their byte counts

    async def run(self, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)  # closes them when cancelled

    def __post_init__(self) -> None:
        self.context.sni_callback = self._server_name

    def _server_name(self, _obj: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        self._last_name = name

    async def _handle(self, socket_stream: trio.SocketStream) -> None:
        self.accepted += 1
        self._last_name = None
        tcp = CountingStream(socket_stream)
        self.tcp.append(tcp)
        tls = trio.SSLStream(tcp, self.context, server_side=True)
        try:
            await tls.do_handshake()
            self.handshakes.append(self._last_name)  # one connection at a time in these tests
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await tls.receive_some(65536)
                if not chunk:
                    return
                head += chunk
            body = b"hello from the web backend\n"
            await tls.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                               % (len(body), body))
        except trio.BrokenResourceError:
            pass
        finally:
            await tls.aclose()


@pytest.fixture
async def backend(nursery: trio.Nursery, certs: Certs) -> Backend:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.cert, certs.key)
    context.set_alpn_protocols(["http/1.1"])
    server = Backend(context)
    await nursery.start(server.run)  # pytest-trio cancels the fixture's nursery at teardown: the server closes
    return server


StartIngress = Callable[..., Awaitable[IngressServer]]


@pytest.fixture
def start_ingress(nursery: trio.Nursery) -> StartIngress:
    async def start(routes: dict[str, list[Address]], *, hello_timeout: float = 10.0) -> IngressServer:
        def endpoints(mesh: str, service: str) -> list[Address]:
            return routes.get(service_sni(mesh, service), [])

        server = IngressServer("127.0.0.1", 0, resolve_service_sni(endpoints), hello_timeout=hello_timeout)
        await nursery.start(server.run)  # closed with the fixture's nursery, like the backend
        return server

    return start


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nobody else takes it) but not listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


async def wait_outcome(server: IngressServer, outcome: str) -> None:
    """Until the ingress has counted a connection with `outcome` (it does once the outcome is decided)."""
    for _ in range(500):
        if server.statistics().outcomes.get(outcome):
            return
        await trio.sleep(0.01)
    raise AssertionError(f"no {outcome!r} in {server.statistics()}")


async def wait_closed(server: IngressServer, destination: tuple[str, str], count: int = 1) -> DestinationStatistics:
    """The figures of `destination` once `count` of its connections are closed (their duration observed)."""
    for _ in range(500):
        figures = server.statistics().destinations.get(destination)
        if figures is not None and figures.duration.count >= count:
            return figures
        await trio.sleep(0.01)
    raise AssertionError(f"{count} closed connection(s) to {destination} not in {server.statistics()}")


async def curl(certs: Certs, name: str, port: int, *args: str) -> subprocess.CompletedProcess[bytes]:
    command = ["curl", "-sS", "--max-time", "10", "--http1.1", "--cacert", str(certs.ca),
               "--resolve", f"{name}:{port}:127.0.0.1", *args]
    with trio.fail_after(15):
        return await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)


PEM = re.compile(r"-----BEGIN CERTIFICATE-----\n.*?-----END CERTIFICATE-----\n", re.S)

# --- real clients -----------------------------------------------------------------------------------------------


async def test_curl_completes_its_handshake_with_the_backend(
        certs: Certs, backend: Backend, start_ingress: StartIngress) -> None:
    ingress = await start_ingress({WEB: [("127.0.0.1", backend.port)]})
    done = await curl(certs, WEB, ingress.port, "-w", "%{certs}", f"https://{WEB}:{ingress.port}/")
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode()
    assert out.startswith("hello from the web backend\n")
    # The certificate curl verified is the backend's (the ingress has none): TLS went through untouched.
    assert PEM.findall(out.replace("\r\n", "\n")) == [certs.cert_pem]
    assert backend.handshakes == [WEB]
    await wait_outcome(ingress, "spliced")


async def test_openssl_s_client_sees_the_backends_certificate(
        certs: Certs, backend: Backend, start_ingress: StartIngress) -> None:
    ingress = await start_ingress({WEB: [("127.0.0.1", backend.port)]})
    command = ["openssl", "s_client", "-connect", f"127.0.0.1:{ingress.port}", "-servername", WEB,
               "-CAfile", str(certs.ca), "-verify_return_error", "-alpn", "http/1.1"]
    with trio.fail_after(15):
        done = await trio.run_process(command, stdin=b"", capture_stdout=True, capture_stderr=True, check=False)
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr
    assert "Verify return code: 0 (ok)" in out
    assert "ALPN protocol: http/1.1" in out
    assert PEM.findall(out) == [certs.cert_pem]
    assert backend.handshakes == [WEB]


async def test_the_bytes_counted_per_service_are_those_the_tcp_ends_exchanged(
        certs: Certs, backend: Backend, start_ingress: StartIngress) -> None:
    ingress = await start_ingress({WEB: [("127.0.0.1", backend.port)]})
    context = ssl.create_default_context(cafile=str(certs.ca))
    tcp = CountingStream(await trio.open_tcp_stream("127.0.0.1", ingress.port))
    tls = trio.SSLStream(tcp, context, server_hostname=WEB)
    with trio.fail_after(10):
        await tls.do_handshake()
        live = ingress.statistics().destinations[("default", "web")]  # counted while the connection is open
        assert (live.active, live.outcomes, live.connect.count, live.duration.count) == (1, {SPLICED: 1}, 1, 0)
        await tls.send_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n" + b"x" * 10_000)
        answer = b""
        while chunk := await tls.receive_some(65536):  # to the backend's close_notify and FIN
            answer += chunk
    await tcp.aclose()  # no close_notify of ours: every byte we sent was read by the backend
    assert answer.endswith(b"hello from the web backend\n")
    web = await wait_closed(ingress, ("default", "web"))
    [far] = backend.tcp
    assert web.received == tcp.sent == far.received > 10_000
    assert web.sent == tcp.received == far.sent > len(answer)  # TLS records, not the plaintext
    assert (web.active, web.outcomes, web.connect.count) == (0, {SPLICED: 1}, 1)
    assert 0 < web.connect.total < 5 and 0 < web.duration.total < 15
    assert ingress.statistics().destinations[UNROUTED].outcomes == {}


async def test_an_unknown_name_is_refused_before_the_backend(
        certs: Certs, backend: Backend, start_ingress: StartIngress) -> None:
    ingress = await start_ingress({WEB: [("127.0.0.1", backend.port)]})
    done = await curl(certs, UNKNOWN, ingress.port, f"https://{UNKNOWN}:{ingress.port}/")
    assert done.returncode == 35, done.stderr  # CURLE_SSL_CONNECT_ERROR
    assert b"unrecognized name" in done.stderr  # our alert 112
    await wait_outcome(ingress, REFUSED_UNKNOWN)
    assert backend.accepted == 0
    stats = ingress.statistics()
    assert list(stats.destinations) == [UNROUTED]  # a name no service answers to mints no label value
    unrouted = await wait_closed(ingress, UNROUTED)
    assert unrouted.outcomes == {REFUSED_UNKNOWN: 1}
    assert unrouted.received > 0  # curl's ClientHello
    assert unrouted.sent == len(tls_alert(ALERT_UNRECOGNIZED_NAME))


async def test_plaintext_http_is_closed_before_the_backend(
        certs: Certs, backend: Backend, start_ingress: StartIngress) -> None:
    ingress = await start_ingress({WEB: [("127.0.0.1", backend.port)]})
    done = await curl(certs, WEB, ingress.port, f"http://{WEB}:{ingress.port}/")
    assert done.returncode in (52, 56), done.stderr  # empty reply, or reset
    await wait_outcome(ingress, REFUSED_NOT_HELLO)
    assert backend.accepted == 0


async def test_a_client_that_never_finishes_its_hello_is_closed_after_the_timeout(
        backend: Backend, start_ingress: StartIngress) -> None:
    ingress = await start_ingress({WEB: [("127.0.0.1", backend.port)]}, hello_timeout=0.5)
    hello = client_hello(WEB)
    stream = await trio.open_tcp_stream("127.0.0.1", ingress.port)
    async with stream:
        await stream.send_all(hello[:40])
        start = trio.current_time()
        received = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(1024):
                received += chunk
        assert 0.4 <= trio.current_time() - start < 3
    assert received == tls_alert(ALERT_HANDSHAKE_FAILURE)
    await wait_outcome(ingress, REFUSED_TIMEOUT)
    assert backend.accepted == 0


async def test_a_refusing_endpoint_falls_through_to_the_next(
        certs: Certs, backend: Backend, start_ingress: StartIngress, refusing_port: int) -> None:
    ingress = await start_ingress({WEB: [("127.0.0.1", refusing_port), ("127.0.0.1", backend.port)]})
    done = await curl(certs, WEB, ingress.port, f"https://{WEB}:{ingress.port}/")
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"hello from the web backend\n"
    await wait_outcome(ingress, "spliced")


async def test_no_reachable_endpoint_fails_the_handshake(
        certs: Certs, start_ingress: StartIngress, refusing_port: int) -> None:
    ingress = await start_ingress({WEB: [("127.0.0.1", refusing_port)]})
    done = await curl(certs, WEB, ingress.port, f"https://{WEB}:{ingress.port}/")
    assert done.returncode == 35, done.stderr
    assert b"handshake failure" in done.stderr
    await wait_outcome(ingress, "connect_failure")


# --- route_by_sni without sockets -------------------------------------------------------------------------------


def client_hello(server_hostname: str | None) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


class Dialer:
    """Endpoints by port: a memory stream pair each, or a refusal."""

    def __init__(self, refuse: Sequence[int] = ()) -> None:
        self.refuse = set(refuse)
        self.dialled: list[Address] = []
        self.far_ends: dict[int, trio.abc.Stream] = {}

    async def __call__(self, host: str, port: int) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        self.dialled.append((host, port))
        if port in self.refuse:
            raise UpstreamError("connect_failure", f"{host}:{port}: Connection refused")
        near, far = trio.testing.memory_stream_pair()
        self.far_ends[port] = far
        return near


async def receive_all(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


async def test_route_splices_after_writing_the_hello_to_the_first_endpoint_that_accepts() -> None:
    hello = client_hello(WEB)
    client, downstream = trio.testing.memory_stream_pair()
    dial = Dialer(refuse=[1, 2])
    asked: list[str] = []
    meter = ConnectionMeter()

    def resolve(sni: str) -> list[Address]:
        asked.append(sni)
        return [("10.0.0.1", 1), ("10.0.0.2", 2), ("10.0.0.3", 3), ("10.0.0.4", 4)]

    async with trio.open_nursery() as nursery:
        results: list[str | None] = []

        async def route() -> None:
            results.append(await route_by_sni(downstream, resolve, dial, meter=meter))

        nursery.start_soon(route)
        await client.send_all(hello[:100])
        await trio.testing.wait_all_tasks_blocked()
        await client.send_all(hello[100:] + b"early")
        await trio.testing.wait_all_tasks_blocked()
        upstream = dial.far_ends[3]
        assert await upstream.receive_some(65536) == hello + b"early"
        await upstream.send_all(b"server flight")
        assert await client.receive_some(65536) == b"server flight"
        assert (meter.outcome, meter.destination, meter.received, meter.sent) == (
            SPLICED, ("default", "web"), len(hello) + 5, 13)  # counted as the bytes move
        await client.send_all(b"more")
        await client.send_eof()
        assert await upstream.receive_some(65536) == b"more"
        assert await upstream.receive_some(65536) == b""
        await upstream.aclose()
    assert results == [None]
    assert asked == [WEB]
    assert dial.dialled == [("10.0.0.1", 1), ("10.0.0.2", 2), ("10.0.0.3", 3)]
    assert (meter.received, meter.sent, meter.connect_seconds is not None) == (len(hello) + 9, 13, True)


@pytest.mark.parametrize(
    ("routes", "refuse", "sni", "reason", "answer"),
    [
        ({}, [], WEB, REFUSED_UNKNOWN, tls_alert(ALERT_UNRECOGNIZED_NAME)),
        ({WEB: [("10.0.0.1", 1)] * 4}, [1], WEB, "connect_failure", tls_alert(ALERT_HANDSHAKE_FAILURE)),
        ({WEB: [("10.0.0.1", 1)]}, [], None, REFUSED_NO_SNI, tls_alert(ALERT_HANDSHAKE_FAILURE)),
    ],
)
async def test_route_refusals(routes: dict[str, list[Address]], refuse: list[int], sni: str | None, reason: str,
                              answer: bytes) -> None:
    client, downstream = trio.testing.memory_stream_pair()
    dial = Dialer(refuse)
    hello = client_hello(sni)
    meter = ConnectionMeter()
    await client.send_all(hello)
    assert await route_by_sni(downstream, routes.get, dial, meter=meter) == reason
    assert await receive_all(client) == answer
    assert len(dial.dialled) == (3 if refuse else 0)  # at most CONNECT_ATTEMPTS endpoints
    assert (meter.outcome, meter.received, meter.sent, meter.connect_seconds) == (reason, len(hello), len(answer),
                                                                                  None)
    assert meter.destination == (("default", "web") if routes and sni else UNROUTED)  # a failed connect names it


async def test_route_refuses_plaintext_at_once_without_an_alert() -> None:
    client, downstream = trio.testing.memory_stream_pair()
    await client.send_all(b"GET / HTTP/1.1\r\n")
    assert await route_by_sni(downstream, lambda sni: None, Dialer()) == REFUSED_NOT_HELLO
    assert await receive_all(client) == b""


async def test_route_gives_a_slow_hello_only_its_timeout(autojump_clock: trio.testing.MockClock) -> None:
    client, downstream = trio.testing.memory_stream_pair()
    hello = client_hello(WEB)

    async def dribble() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            for byte in hello:  # one byte a second: never idle for long, and never done
                await client.send_all(bytes([byte]))
                await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(dribble)
        start = trio.current_time()
        assert await route_by_sni(downstream, {WEB: [("10.0.0.1", 1)]}.get, Dialer(), hello_timeout=10) == \
            REFUSED_TIMEOUT
        assert trio.current_time() - start == pytest.approx(10)
        nursery.cancel_scope.cancel()


async def test_route_reports_a_peer_that_leaves_before_its_hello() -> None:
    client, downstream = trio.testing.memory_stream_pair()
    await client.send_all(client_hello(WEB)[:30])
    await client.aclose()
    assert await route_by_sni(downstream, {WEB: [("10.0.0.1", 1)]}.get, Dialer()) == REFUSED_CLOSED


# --- drain ------------------------------------------------------------------------------------------------------


class FarEnds:
    """A dial that hands out memory-stream endpoints and keeps their far ends, in dial order."""

    def __init__(self) -> None:
        self.ends: list[trio.abc.Stream] = []
        self.dialled = trio.Event()

    async def __call__(self, host: str, port: int) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        near, far = trio.testing.memory_stream_pair()
        self.ends.append(far)
        self.dialled.set()
        self.dialled = trio.Event()
        return near


async def spliced_connection(server: IngressServer, dial: FarEnds) -> tuple[trio.SocketStream, trio.abc.Stream]:
    """A client connection routed to a new endpoint, the hello already through: (client, endpoint's far end)."""
    client = await trio.open_tcp_stream("127.0.0.1", server.port)
    hello = client_hello(WEB)
    before = len(dial.ends)
    await client.send_all(hello)
    while len(dial.ends) == before:
        await dial.dialled.wait()
    far = dial.ends[-1]
    received = b""
    while len(received) < len(hello):
        received += await far.receive_some(65536)
    return client, far


async def closed(stream: trio.abc.ReceiveStream) -> bool:
    """The ingress closed the connection: EOF (or a reset) on the client's side."""
    try:
        return await stream.receive_some(100) == b""
    except trio.BrokenResourceError:
        return True


async def test_a_drain_closes_idle_connections_and_waits_for_those_expecting_an_answer() -> None:
    dial = FarEnds()
    server = IngressServer("127.0.0.1", 0, lambda sni: [("127.0.0.1", 1)], dial=dial)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        idle_client, idle_far = await spliced_connection(server, dial)
        await idle_far.send_all(b"answer")  # the last bytes went back to the caller: nothing is asked of it now
        assert await idle_client.receive_some(100) == b"answer"
        busy_client, busy_far = await spliced_connection(server, dial)
        await busy_far.send_all(b"answer")
        assert await busy_client.receive_some(100) == b"answer"
        await busy_client.send_all(b"request")  # the last bytes went to the endpoint: an answer may be due
        assert await busy_far.receive_some(100) == b"request"

        drained: list[bool] = []

        async def drain() -> None:
            drained.append(await server.drain(10, quiet=0.2))

        nursery.start_soon(drain)
        with trio.fail_after(5):
            assert await closed(idle_client)
        with pytest.raises(OSError):  # the listener is closed: a caller's sidecar dials another endpoint
            await trio.open_tcp_stream("127.0.0.1", server.port)
        assert server.active == 1 and not drained  # the busy one is left to finish
        await busy_far.send_all(b"late answer")
        assert await busy_client.receive_some(100) == b"late answer"
        with trio.fail_after(5):
            assert await closed(busy_client)
    assert drained == [True]  # and `run` returned by itself once the connections were done


async def test_a_drain_cuts_what_is_still_busy_after_its_grace() -> None:
    dial = FarEnds()
    server = IngressServer("127.0.0.1", 0, lambda sni: [("127.0.0.1", 1)], dial=dial)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        client, far = await spliced_connection(server, dial)
        await client.send_all(b"request")
        assert await far.receive_some(100) == b"request"
        with trio.fail_after(5):
            assert await server.drain(0.3, quiet=0.1) is False
            assert await closed(client)
    assert server.statistics().outcomes.get(SPLICED) == 1
