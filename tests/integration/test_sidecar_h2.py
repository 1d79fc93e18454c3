"""HTTP/2 with prior knowledge through two real sidecars, proxied per request over pooled mTLS `h2` connections.

One mesh for the module: a zone CP, two instances of an h2c app (hypercorn) each behind its own sidecar
(`backend`, protocol http2), and a client sidecar with an outbound port for `backend` and an HTTP proxy listener.
Clients are real: curl --http2-prior-knowledge, h2load, httpx (HTTP/2), and raw frames from hyperframe for what
no well-behaved client sends.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
from hyperframe.frame import (
    ContinuationFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.test_sidecar_tcp import wait_for
from tests.support.h2app import H2App, serve_h2_app
from tests.support.ports import free_port
from tests.support.sidecar import SidecarProcess
from tests.support.zone import ZoneCPProcess

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ENHANCE_YOUR_CALM = 11


def dataplane(name: str, service: str, inbound: list[dict[str, Any]], outbound: dict[str, int],
              proxy_port: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"address": "127.0.0.1", "inbound": inbound,
                            "outbound": [{"port": p, "service": s} for s, p in outbound.items()]}
    if proxy_port is not None:
        spec["httpProxy"] = {"port": proxy_port}
    return {"type": "Dataplane", "mesh": "default", "name": name, "spec": spec}


@pytest.fixture(scope="module")
def h2mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("h2mesh")
    ports = {name: free_port() for name in ("app_a", "app_b", "out", "proxy", "legacy_app", "legacy_out")}
    cp = ZoneCPProcess(tmp / "cp")
    started: list[SidecarProcess] = []
    legacy = ThreadingHTTPServer(("127.0.0.1", ports["legacy_app"]), Http1Only)
    threading.Thread(target=legacy.serve_forever, daemon=True).start()
    with serve_h2_app(H2App("a"), ports["app_a"]) as app_a, serve_h2_app(H2App("b"), ports["app_b"]) as app_b:
        try:
            cp.start()
            inbound = [{"port": free_port(), "appPort": ports["legacy_app"], "service": "legacy", "protocol": "http"}]
            sidecar = SidecarProcess(tmp / "legacy", cp.url, cp.token("legacy"),
                                     dataplane("legacy-1", "legacy", inbound, {}))
            started.append(sidecar)
            sidecar.start()
            for name, app_port in (("backend-a", ports["app_a"]), ("backend-b", ports["app_b"])):
                inbound = [{"port": free_port(), "appPort": app_port, "service": "backend", "protocol": "http2"}]
                sidecar = SidecarProcess(tmp / name, cp.url, cp.token("backend"), dataplane(name, "backend",
                                                                                              inbound, {}))
                started.append(sidecar)
                sidecar.start()
            client = SidecarProcess(tmp / "client", cp.url, cp.token("client"), dataplane(
                "client-1", "client", [{"port": free_port(), "appPort": free_port(), "service": "client"}],
                {"backend": ports["out"], "legacy": ports["legacy_out"]}, proxy_port=ports["proxy"]))
            started.append(client)
            client.start()

            def both_endpoints() -> bool:
                config = httpx.get(client.admin + "/config").json()["config"]
                known = {o["service"]: o for o in config["outbound"]}
                return (len(known["backend"]["endpoints"]) == 2 and known["backend"]["protocol"] == "http2"
                        and known["legacy"]["protocol"] == "http")

            wait_for(both_endpoints)
            yield {"client": client, "ports": ports, "apps": (app_a, app_b), "backends": started[1:3]}
        finally:
            for sidecar in started:
                sidecar.stop()
            cp.stop()
            legacy.shutdown()
            legacy.server_close()


class Http1Only(BaseHTTPRequestHandler):
    """An HTTP/1.1-only app (the standard library's server): answers what it saw, echoes POST bodies."""

    protocol_version = "HTTP/1.1"

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.send_header("x-app", "legacy")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(json.dumps({"version": self.request_version, "path": self.path, "host": self.headers["host"],
                                 "source": self.headers.get("x-meshcast-source", "")}).encode())

    def do_POST(self) -> None:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
        else:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
        self._answer(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def curl_h2(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--max-time", "10", *args, url],
                          capture_output=True, text=True, timeout=20)


def metric(admin: str, name: str) -> float:
    text = httpx.get(admin + "/metrics").text
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)} ([\d.e+]+)$", text, re.M))


def test_curl_h2_reaches_the_app_with_the_callers_identity(h2mesh: dict[str, Any]) -> None:
    port = h2mesh["ports"]["out"]
    result = curl_h2(f"http://127.0.0.1:{port}/hello", "-H", "x-meshcast-source: spiffe://default/forged",
                     "-w", "\n%{http_version}")
    body, version = result.stdout.rsplit("\n", 1)
    seen = json.loads(body)
    assert version == "2"
    assert seen["http_version"] == "2" and seen["path"] == "/hello"
    assert seen["source"] == "spiffe://default/client"  # set by backend's sidecar from the mTLS peer, not forged


def test_h2_callers_reach_an_http1_app(h2mesh: dict[str, Any], tmp_path: Path) -> None:
    """An `http` service's app speaks only HTTP/1.1: its sidecar turns each HTTP/2 stream into an exchange."""
    url = f"http://127.0.0.1:{h2mesh['ports']['legacy_out']}/old/path?q=1"
    result = curl_h2(url, "-D", str(tmp_path / "head"), "-H", "x-meshcast-source: forged")
    seen = json.loads(result.stdout)
    host = f"127.0.0.1:{h2mesh['ports']['legacy_out']}"
    assert seen == {"version": "HTTP/1.1", "path": "/old/path?q=1", "host": host, "source": "spiffe://default/client"}
    head = (tmp_path / "head").read_text().lower()
    assert head.startswith("http/2 200") and "x-app: legacy" in head
    payload = tmp_path / "payload"
    payload.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    posted = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--data-binary", f"@{payload}",
                             "-o", str(tmp_path / "back"), "-w", "%{http_code}", url],
                            capture_output=True, text=True, timeout=30)
    assert posted.stdout == "200", posted.stderr
    assert (tmp_path / "back").read_bytes() == payload.read_bytes()
    with httpx.Client(http1=False, http2=True, timeout=10) as http:  # several streams share the connection
        for i in range(10):
            assert http.get(url.replace("/old/path", f"/n{i}")).json()["path"] == f"/n{i}?q=1"


def test_requests_on_one_connection_are_balanced_per_request_over_pooled_connections(
        h2mesh: dict[str, Any]) -> None:
    client = h2mesh["client"]
    connects_before = metric(client.admin, 'meshcast_dp_upstream_connects_total{service="backend"}')
    seen: dict[str, int] = {}
    with httpx.Client(http1=False, http2=True, timeout=10) as http:  # one connection, prior knowledge
        for i in range(40):
            response = http.get(f"http://127.0.0.1:{h2mesh['ports']['out']}/r/{i}")
            assert response.status_code == 200 and response.http_version == "HTTP/2"
            instance = response.json()["instance"]
            seen[instance] = seen.get(instance, 0) + 1
    assert set(seen) == {"a", "b"}, seen  # per request, not per connection
    # 40 requests needed at most one new mTLS connection per endpoint: streams multiplex on pooled connections.
    assert metric(client.admin, 'meshcast_dp_upstream_connects_total{service="backend"}') - connects_before <= 2


def test_h2load_many_concurrent_streams(h2mesh: dict[str, Any]) -> None:
    out = subprocess.run(["h2load", "-n", "2000", "-c", "4", "-m", "16", f"http://127.0.0.1:{h2mesh['ports']['out']}/"],
                         capture_output=True, text=True, timeout=120).stdout
    assert re.search(r"requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored", out), \
        out + h2mesh["client"].log() + h2mesh["backends"][0].log()
    assert re.search(r"status codes: 2000 2xx", out), out


def test_large_bodies_stream_both_ways_under_flow_control(h2mesh: dict[str, Any], tmp_path: Path) -> None:
    payload = tmp_path / "payload"
    payload.write_bytes(bytes(range(256)) * (20 * 4096))  # 20 MiB, far beyond every window
    result = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--max-time", "60", "--data-binary",
                             f"@{payload}", "-o", str(tmp_path / "back"), "-w", "%{http_code}",
                             f"http://127.0.0.1:{h2mesh['ports']['out']}/echo"],
                            capture_output=True, text=True, timeout=90)
    assert result.stdout == "200", result.stderr
    assert (tmp_path / "back").read_bytes() == payload.read_bytes()


def test_proxy_mode_routes_h2_by_authority_and_answers_unknown_services(h2mesh: dict[str, Any]) -> None:
    port = h2mesh["ports"]["proxy"]
    ok = curl_h2(f"http://127.0.0.1:{port}/via-proxy", "-H", "host: backend.mesh")
    assert json.loads(ok.stdout)["path"] == "/via-proxy"
    missing = curl_h2(f"http://127.0.0.1:{port}/", "-H", "host: ghost.mesh", "-D", "-", "-o", "/dev/null")
    assert re.search(r"^HTTP/2 503", missing.stdout, re.M), missing.stdout
    assert "x-meshcast-error: unknown_service" in missing.stdout


def test_client_cancel_reaches_the_app(h2mesh: dict[str, Any]) -> None:
    """A stream the client resets is reset upstream too: the app sees the disconnect, nothing lingers."""
    apps = h2mesh["apps"]
    before = sum(app.disconnects for app in apps)
    sock, conn = open_raw(h2mesh["ports"]["out"])
    with sock:
        conn.send_headers(1, [(":method", "GET"), (":path", "/slow"), (":scheme", "http"),
                              (":authority", "backend")], end_stream=True)
        sock.sendall(conn.data_to_send())
        time.sleep(0.5)
        conn.reset_stream(1)
        sock.sendall(conn.data_to_send())
        wait_for(lambda: sum(app.disconnects for app in apps) > before, within=10)


# --- hardening: what a hostile or broken client sends ---------------------------------------------------------------

def open_raw(port: int) -> tuple[socket.socket, h2.connection.H2Connection]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def read_frames(sock: socket.socket, within: float = 5.0) -> list[Frame]:
    """Frames the server sends until it closes the connection or `within` seconds pass."""
    frames: list[Frame] = []
    buffer = b""
    deadline = time.monotonic() + within
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        buffer += chunk
        while len(buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(buffer[:9]))
            if len(buffer) < 9 + length:
                break
            frame.parse_body(memoryview(buffer[9:9 + length]))
            frames.append(frame)
            buffer = buffer[9 + length:]
    return frames


def goaway_code(frames: list[Frame]) -> int | None:
    codes = [f.error_code for f in frames if isinstance(f, GoAwayFrame)]
    return codes[-1] if codes else None


def request_block(path: str = "/") -> bytes:
    encoder = h2.connection.H2Connection().encoder
    return encoder.encode([(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "backend")])


def test_settings_bound_streams_windows_and_headers(h2mesh: dict[str, Any]) -> None:
    sock = socket.create_connection(("127.0.0.1", h2mesh["ports"]["out"]), timeout=5)
    with sock:
        sock.sendall(PREFACE + SettingsFrame(0).serialize())
        frames = read_frames(sock, within=1.0)
    settings_frame = next(f for f in frames if isinstance(f, SettingsFrame) and "ACK" not in f.flags)
    values = settings_frame.settings
    assert values[SettingsFrame.MAX_CONCURRENT_STREAMS] == 128
    assert values[SettingsFrame.MAX_HEADER_LIST_SIZE] == 65536
    assert values[SettingsFrame.INITIAL_WINDOW_SIZE] == 1 << 20


def test_rapid_reset_is_cut_off(h2mesh: dict[str, Any]) -> None:
    """CVE-2023-44487: open and reset streams as fast as possible; the sidecar answers GOAWAY ENHANCE_YOUR_CALM."""
    sock = socket.create_connection(("127.0.0.1", h2mesh["ports"]["out"]), timeout=5)
    with sock:
        burst = bytearray(PREFACE + SettingsFrame(0).serialize())
        block = request_block("/slow")
        for stream_id in range(1, 2 * 1000, 2):
            burst += HeadersFrame(stream_id, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize()
            burst += RstStreamFrame(stream_id, error_code=8).serialize()
        with contextlib.suppress(OSError):  # the server may close before reading all of it
            sock.sendall(burst)
        frames = read_frames(sock)
    assert goaway_code(frames) == ENHANCE_YOUR_CALM


def test_continuation_flood_is_cut_off(h2mesh: dict[str, Any]) -> None:
    """CVE-2024-27316 class: an endless header block in CONTINUATION frames never ends up buffered."""
    sock = socket.create_connection(("127.0.0.1", h2mesh["ports"]["out"]), timeout=5)
    with sock:
        flood = bytearray(PREFACE + SettingsFrame(0).serialize() + HeadersFrame(1, data=request_block()).serialize())
        for _ in range(200):
            flood += ContinuationFrame(1, data=b"\x40\x01a\x01b" * 100).serialize()
        with contextlib.suppress(OSError):
            sock.sendall(flood)
        frames = read_frames(sock)
    assert goaway_code(frames) == ENHANCE_YOUR_CALM


def test_slow_header_block_times_out(h2mesh: dict[str, Any]) -> None:
    """A client that opens a header block and trickles nothing more is closed after the header timeout."""
    sock = socket.create_connection(("127.0.0.1", h2mesh["ports"]["out"]), timeout=5)
    with sock:
        sock.sendall(PREFACE + SettingsFrame(0).serialize() + HeadersFrame(1, data=request_block()).serialize())
        started = time.monotonic()
        frames = read_frames(sock, within=20)
        assert goaway_code(frames) is not None
        assert time.monotonic() - started < 19


def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """A frame as bytes, valid or not (hyperframe refuses to build the invalid ones)."""
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream_id.to_bytes(4, "big") + payload


def frame_strategy() -> st.SearchStrategy[bytes]:
    stream_ids = st.sampled_from([0, 1, 3, 5, 2, 0x7FFFFFFF])
    block = st.sampled_from([request_block(), request_block("/echo"), b"", b"\xff\xff\xff", b"\x82\x84"])
    payload = st.one_of(block, st.binary(max_size=64))
    frames = st.one_of(
        # HEADERS, CONTINUATION, DATA with any flags (END_STREAM 0x1, END_HEADERS 0x4, PADDED 0x8, PRIORITY 0x20)
        st.builds(raw_frame, st.sampled_from([0x0, 0x1, 0x9]), st.sampled_from([0, 1, 4, 5, 8, 0x20, 0x25]),
                  stream_ids, payload),
        st.builds(lambda s, c: raw_frame(0x3, 0, s, c.to_bytes(4, "big")), stream_ids, st.integers(0, 20)),
        st.builds(lambda s, i: raw_frame(0x8, 0, s, i.to_bytes(4, "big")), stream_ids,
                  st.sampled_from([0, 1, 65535, 0x7FFFFFFF])),
        st.builds(lambda d: PingFrame(0, opaque_data=d).serialize(), st.binary(min_size=8, max_size=8)),
        st.builds(lambda v: SettingsFrame(0, settings=v).serialize(),
                  st.dictionaries(st.sampled_from([1, 2, 3, 4, 5, 6, 99]), st.integers(0, 2**31), max_size=3)),
        st.builds(lambda c: GoAwayFrame(0, error_code=c).serialize(), st.integers(0, 13)),
        st.builds(raw_frame, st.integers(0, 255), st.integers(0, 255), stream_ids, st.binary(max_size=32)),
        st.binary(min_size=1, max_size=40),  # garbage, including bad frame headers
    )
    return st.lists(frames, min_size=1, max_size=12).map(b"".join)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=frame_strategy(), preface=st.booleans(), close_early=st.booleans())
def test_adversarial_frames_never_break_the_sidecar(h2mesh: dict[str, Any], frames: bytes, preface: bool,
                                                    close_early: bool) -> None:
    """Whatever arrives, the sidecar answers, resets or closes; it keeps serving others and leaks nothing."""
    port = h2mesh["ports"]["out"]
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    with sock:
        with contextlib.suppress(OSError):
            sock.sendall((PREFACE + SettingsFrame(0).serialize() if preface else b"") + frames)
        if not close_early:
            read_frames(sock, within=0.3)
    result = curl_h2(f"http://127.0.0.1:{port}/after")
    assert json.loads(result.stdout)["path"] == "/after", result.stderr


def test_no_connection_leaks_after_abuse(h2mesh: dict[str, Any]) -> None:
    """Runs after the hostile tests (file order): every downstream connection they opened has been closed."""
    client = h2mesh["client"]
    wait_for(lambda: metric(client.admin, 'meshcast_dp_active_connections{direction="outbound"}') == 0, within=15)
    assert client.proc is not None and client.proc.poll() is None
