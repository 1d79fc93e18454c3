"""HTTP/1.1 through two real sidecars with a real client (curl): identity header, keep-alive, bodies, errors."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.test_sidecar_tcp import wait_for
from tests.support.sidecar import SidecarProcess
from tests.support.zone import ZoneCPProcess, free_port


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        payload = json.dumps({
            "method": self.command, "path": self.path, "bodyLength": len(body),
            "source": self.headers.get_all("x-meshcast-source"), "server": self.server.name,  # type: ignore[attr-defined]
            "forwardedFor": self.headers.get_all("x-forwarded-for"),
            "forwardedProto": self.headers.get_all("x-forwarded-proto"),
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args: Any) -> None:
        pass


class HttpApp:
    def __init__(self, name: str) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
        self.server.name = name  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def http_dataplane(name: str, service: str, port: int, app_port: int, outbound: dict[str, int] | None = None,
                   ) -> dict[str, Any]:
    return {"type": "Dataplane", "mesh": "default", "name": name, "spec": {
        "address": "127.0.0.1",
        "inbound": [{"port": port, "appPort": app_port, "service": service, "protocol": "http"}],
        "outbound": [{"port": p, "service": s} for s, p in (outbound or {}).items()]}}


@pytest.fixture
def http_mesh(tmp_path: Path) -> Iterator[dict[str, Any]]:
    cp = ZoneCPProcess(tmp_path / "cp", "--heartbeat-timeout", "3", "--heartbeat-interval", "0.5")
    apps = [HttpApp("backend-1"), HttpApp("backend-2"), HttpApp("web-1")]
    ports = {k: free_port() for k in ("b1", "b2", "web_in", "web_out", "nobody_out", "proxy")}
    started: list[SidecarProcess] = []
    try:
        cp.start()
        sidecars = [
            SidecarProcess(tmp_path / "backend-1", cp.url, cp.token("backend"),
                           http_dataplane("backend-1", "backend", ports["b1"], apps[0].port)),
            SidecarProcess(tmp_path / "backend-2", cp.url, cp.token("backend"),
                           http_dataplane("backend-2", "backend", ports["b2"], apps[1].port)),
            SidecarProcess(tmp_path / "web-1", cp.url, cp.token("web"),
                           {**(web := http_dataplane("web-1", "web", ports["web_in"], apps[2].port,
                                                     {"backend": ports["web_out"], "nobody": ports["nobody_out"]})),
                            "spec": {**web["spec"], "httpProxy": {"port": ports["proxy"]}}}),
        ]
        for sidecar in sidecars:
            started.append(sidecar)
            sidecar.start()
        url = f"http://127.0.0.1:{ports['web_out']}"
        wait_for(lambda: len({curl_json(url + "/warm")["server"] for _ in range(6)}) == 2)
        yield {"url": url, "ports": ports, "tmp": tmp_path, "cp": cp, "sidecars": sidecars}
    finally:
        for sidecar in started:
            sidecar.stop()
        cp.stop()
        for app in apps:
            app.close()


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, text=True, timeout=30)


def curl_json(url: str, *args: str) -> dict[str, Any]:
    result = curl(url, *args)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_request_reaches_the_app_with_the_callers_identity(http_mesh: dict[str, Any]) -> None:
    answer = curl_json(http_mesh["url"] + "/hello?x=1", "-H", "x-meshcast-source: spiffe://default/admin")
    assert answer["path"] == "/hello?x=1"
    assert answer["source"] == ["spiffe://default/web"]  # the spoofed value never reaches the app
    assert answer["server"] in ("backend-1", "backend-2")


def test_keep_alive_bodies_and_100_continue(http_mesh: dict[str, Any], tmp_path: Path) -> None:
    url = http_mesh["url"]
    many = curl("-w", "\\n%{num_connects}\\n", *(f"{url}/r{i}" for i in range(5)))
    assert many.returncode == 0 and many.stdout.count('"method": "GET"') == 5
    assert many.stdout.strip().splitlines()[-1] == "0"  # curl reused its first connection for every request
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (3 * 1024 * 1024))
    posted = curl_json(url + "/upload", "--data-binary", f"@{big}", "-H", "Expect: 100-continue")
    assert posted["bodyLength"] == 3 * 1024 * 1024
    chunked = curl_json(url + "/chunked", "--data-binary", f"@{big}", "-H", "Transfer-Encoding: chunked")
    assert chunked["bodyLength"] == 3 * 1024 * 1024


def test_errors_are_http_answers(http_mesh: dict[str, Any]) -> None:
    # 'nobody' has one registered HTTP instance that never speaks: first unreachable, then out of the endpoints.
    ghost = http_dataplane("nobody-1", "nobody", free_port(), free_port())
    applied = http_mesh["cp"].cli("apply", "-f", "-", stdin=json.dumps(ghost))
    assert applied.returncode == 0, applied.stderr
    nobody = f"http://127.0.0.1:{http_mesh['ports']['nobody_out']}/"

    def answers(reason: str) -> bool:
        result = curl("-i", nobody)
        return result.stdout.startswith("HTTP/1.1 503") and f"x-meshcast-error: {reason}" in result.stdout.lower()

    wait_for(lambda: answers("connect_failure"))
    wait_for(lambda: answers("no_healthy_upstream"))  # after the heartbeat timeout
    huge = curl("-o", "/dev/null", "-w", "%{http_code}", "-H", "x-big: " + "a" * 70000, http_mesh["url"] + "/")
    assert huge.stdout == "431"
    with socket.create_connection(("127.0.0.1", http_mesh["ports"]["web_out"]), timeout=10) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert conn.recv(100).startswith(b"HTTP/1.1 400")
    # The sidecar still serves after all that.
    assert curl_json(http_mesh["url"] + "/after")["path"] == "/after"


def test_killing_a_backend_under_load_fails_at_most_the_requests_in_flight(http_mesh: dict[str, Any]) -> None:
    """Steady sequential traffic while one backend's sidecar is SIGKILLed: every request but the one in flight
    at the kill succeeds (retried on the other instance), and the dead one leaves the endpoint lists."""
    import httpx

    backend_1 = next(s for s in http_mesh["sidecars"] if s.name == "backend-1")
    web = next(s for s in http_mesh["sidecars"] if s.name == "web-1")
    outcomes: list[int] = []
    servers: list[str] = []
    deadline = time.monotonic() + 8
    killed_at: int | None = None
    with httpx.Client(base_url=http_mesh["url"], timeout=10) as client:
        while time.monotonic() < deadline:
            if killed_at is None and len(outcomes) >= 50:
                backend_1.stop(kill=True)
                killed_at = len(outcomes)
            try:
                response = client.get("/load")
                outcomes.append(response.status_code)
                if response.status_code == 200:
                    servers.append(response.json()["server"])
            except httpx.HTTPError:
                outcomes.append(0)
    failures = [code for code in outcomes if code != 200]
    assert killed_at is not None and len(outcomes) > killed_at + 50
    assert len(failures) <= 1, f"{len(failures)} failed of {len(outcomes)}: {failures}"
    assert set(servers[killed_at + 5:]) == {"backend-2"}

    def endpoints() -> list[dict[str, Any]]:
        config = httpx.get(web.admin + "/config").json()["config"]
        return next(o for o in config["outbound"] if o["service"] == "backend")["endpoints"]

    wait_for(lambda: [e["dataplane"] for e in endpoints()] == ["backend-2"], within=10)


_REQUEST_LINES = st.sampled_from([
    b"GET / HTTP/1.1\r\n", b"GET /x HTTP/1.0\r\n", b"POST /u HTTP/1.1\r\n", b"GET / HTTP/2.0\r\n",
    b"BREW / HTCPCP/1.0\r\n", b"GET /a b HTTP/1.1\r\n", b"\x00\x01\x02\r\n", b"GET / HTTP/1.1\n", b"",
])
_HEADER_LINES = st.sampled_from([
    b"Host: x\r\n", b"Content-Length: 5\r\n", b"Content-Length: -1\r\n", b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n", b"Content-Length: 99999999999999999999\r\n", b"Expect: 100-continue\r\n",
    b"Connection: Upgrade\r\nUpgrade: websocket\r\n", b"X: \x00\r\n", b" folded\r\n", b"no-colon\r\n",
    b"X-Long: " + b"a" * 20000 + b"\r\n", b"Host: a\r\nHost: b\r\n",
])
_BODIES = st.sampled_from([b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"ffffffffffffffff\r\n", b"zz\r\n", b"0\r\n\r\n"])
adversarial = st.one_of(
    st.binary(max_size=512),
    st.builds(lambda line, headers, body, garbage: line + b"".join(headers) + b"\r\n" + body + garbage,
              _REQUEST_LINES, st.lists(_HEADER_LINES, max_size=6), _BODIES, st.binary(max_size=32)),
    st.builds(lambda n: b"GET / HTTP/1.1\r\n" + b"X-Flood: 1\r\n" * n + b"\r\n", st.integers(90, 400)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=adversarial, close_early=st.booleans())
def test_adversarial_http_never_breaks_the_sidecar(http_mesh: dict[str, Any], data: bytes, close_early: bool) -> None:
    """Malformed and hostile input gets an error answer or a closed connection; the sidecar keeps serving."""
    port = http_mesh["ports"]["web_out"]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.settimeout(2)
        try:
            conn.sendall(data)
            if close_early:
                conn.shutdown(socket.SHUT_WR)
            reply = conn.recv(200)
        except (TimeoutError, ConnectionResetError, BrokenPipeError):
            reply = b""
    assert reply == b"" or reply.startswith(b"HTTP/1.1 "), reply
    # And it still serves a well-formed request at once.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"GET /ok HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n")
        conn.settimeout(10)
        assert conn.recv(12) == b"HTTP/1.1 200"


def test_sidecar_is_intact_after_adversarial_input(http_mesh: dict[str, Any]) -> None:
    """Bad connections at both listeners, then: still serving, and no connection left open (the
    active-connections gauge returns to zero)."""
    import httpx

    port = http_mesh["ports"]["web_out"]
    for payload in (b"\x16\x03\x01garbage", b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 500, b"GET /" + b"a" * 70000):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn, contextlib.suppress(OSError):
            conn.sendall(payload)
            conn.settimeout(2)
            conn.recv(100)
    for backend_port in (http_mesh["ports"]["b1"], http_mesh["ports"]["b2"]):  # TLS garbage at the inbound
        with socket.create_connection(("127.0.0.1", backend_port), timeout=5) as conn, contextlib.suppress(OSError):
            conn.sendall(b"\x16\x03\x01\x00\x05hello" + bytes(range(256)))
            conn.settimeout(2)
            conn.recv(100)
    assert curl_json(http_mesh["url"] + "/still")["path"] == "/still"
    web = next(s for s in http_mesh["sidecars"] if s.name == "web-1")

    def no_open_connections() -> bool:
        metrics = httpx.get(web.admin + "/metrics").text
        return 'meshcast_dp_active_connections{direction="outbound"} 0.0' in metrics
    wait_for(no_open_connections, within=10)


class WebSocketEchoApp:
    """A WebSocket echo server (wsproto over a plain socket, a thread per connection)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import AcceptConnection, CloseConnection, Message, Request

        ws = WSConnection(ConnectionType.SERVER)
        with conn:
            while data := conn.recv(65536):
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, Request):
                        conn.sendall(ws.send(AcceptConnection()))
                    elif isinstance(event, Message):
                        conn.sendall(ws.send(Message(data=event.data)))
                    elif isinstance(event, CloseConnection):
                        conn.sendall(ws.send(event.response()))
                        return

    def close(self) -> None:
        self.sock.close()


def test_websocket_echo_through_two_sidecars(tmp_path: Path) -> None:
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, CloseConnection, Message, Request

    cp = ZoneCPProcess(tmp_path / "cp")
    app = WebSocketEchoApp()
    ws_in, web_out = free_port(), free_port()
    started: list[SidecarProcess] = []
    try:
        cp.start()
        for name, service, port, outbound in (("ws-1", "ws", ws_in, {}), ("web-1", "web", free_port(),
                                                                           {"ws": web_out})):
            sidecar = SidecarProcess(tmp_path / name, cp.url, cp.token(service),
                                     http_dataplane(name, service, port, app.port, outbound))
            started.append(sidecar)
            sidecar.start()
        import httpx

        web_admin = started[1].admin

        def ws_endpoint_known() -> bool:
            config = httpx.get(web_admin + "/config").json()["config"]
            return any(o["service"] == "ws" and o["endpoints"] for o in config["outbound"])

        wait_for(ws_endpoint_known)
        client = WSConnection(ConnectionType.CLIENT)
        with socket.create_connection(("127.0.0.1", web_out), timeout=10) as conn:
            conn.sendall(client.send(Request(host="ws", target="/echo")))
            received: list[str] = []
            accepted = False
            messages = [f"message {i} " + "x" * (i * 1000) for i in range(5)]
            while len(received) < len(messages):
                client.receive_data(conn.recv(65536))
                for event in client.events():
                    if isinstance(event, AcceptConnection):
                        accepted = True
                        for text in messages:
                            conn.sendall(client.send(Message(data=text)))
                    elif isinstance(event, Message):
                        received.append(str(event.data))
            assert accepted and received == messages
            conn.sendall(client.send(CloseConnection(code=1000)))
            client.receive_data(conn.recv(65536))
            assert any(isinstance(e, CloseConnection) for e in client.events())
    finally:
        for sidecar in started:
            sidecar.stop()
        cp.stop()
        app.close()


def test_http_proxy_mode_routes_by_host(http_mesh: dict[str, Any]) -> None:
    proxy = f"http://127.0.0.1:{http_mesh['ports']['proxy']}"
    by_host = curl_json(proxy + "/via-host", "-H", "Host: backend.mesh")
    assert by_host["path"] == "/via-host" and by_host["source"] == ["spiffe://default/web"]
    as_proxy = curl_json("http://backend.mesh/via-proxy", "-x", proxy)  # absolute-form, as HTTP proxies get it
    assert as_proxy["path"].endswith("/via-proxy")
    unknown = curl("-i", proxy + "/", "-H", "Host: nosuch.mesh")
    assert unknown.stdout.startswith("HTTP/1.1 503") and "x-meshcast-error: unknown_service" in unknown.stdout.lower()
    outside = curl("-i", proxy + "/", "-H", "Host: example.com")
    assert "x-meshcast-error: unknown_service" in outside.stdout.lower()


def test_a_draining_sidecar_closes_its_callers_idle_connections(http_mesh: dict[str, Any]) -> None:
    """SIGTERM drains: the callers' pooled keep-alive connections, idle between calls, are closed at once, so the
    drain ends when the work in flight does, not at the drain timeout (it used to wait the whole timeout)."""
    backend_1 = next(s for s in http_mesh["sidecars"] if s.name == "backend-1")
    for _ in range(6):  # web's sidecar now holds pooled connections to both backends
        curl_json(http_mesh["url"] + "/")
    assert backend_1.proc is not None
    backend_1.proc.send_signal(signal.SIGTERM)
    backend_1.proc.wait(timeout=20)
    assert "still open after the drain timeout" not in backend_1.log(), backend_1.log()
    for _ in range(6):  # web's sidecar notices the closed connections and calls backend-2
        assert curl_json(http_mesh["url"] + "/")["server"] == "backend-2"
