"""Two real sidecars between a client and a TCP app: mTLS with SPIFFE identities, refusals, CP outages."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.sidecar import SidecarProcess
from tests.support.tls import make_server_cert
from tests.support.zone import ZoneCPProcess, free_port


class EchoApp:
    """A TCP app on loopback that echoes what it receives, counting the connections that reach it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


def tcp_dataplane(name: str, service: str, port: int, app_port: int, outbound: dict[str, int] | None = None,
                  ) -> dict[str, Any]:
    return {"type": "Dataplane", "mesh": "default", "name": name, "spec": {
        "address": "127.0.0.1",
        "inbound": [{"port": port, "appPort": app_port, "service": service, "protocol": "tcp"}],
        "outbound": [{"port": p, "service": s} for s, p in (outbound or {}).items()]}}


def roundtrip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)  # half-close: the echo must still come back through both sidecars
        out = b""
        while chunk := conn.recv(65536):
            out += chunk
    return out


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[dict[str, Any]]:
    cp = ZoneCPProcess(tmp_path / "cp", "--heartbeat-timeout", "3", "--heartbeat-interval", "0.5")
    app, web_app = EchoApp(), EchoApp()
    backend_in, web_in, web_out = free_port(), free_port(), free_port()
    started: list[SidecarProcess] = []
    try:
        cp.start()
        backend = SidecarProcess(tmp_path / "backend-1", cp.url, cp.token("backend"),
                                 tcp_dataplane("backend-1", "backend", backend_in, app.port))
        web = SidecarProcess(tmp_path / "web-1", cp.url, cp.token("web"),
                             tcp_dataplane("web-1", "web", web_in, web_app.port, {"backend": web_out}))
        for sidecar in (backend, web):
            started.append(sidecar)
            sidecar.start()
        yield {"cp": cp, "app": app, "backend": backend, "web": web, "backend_in": backend_in, "web_out": web_out,
               "tmp": tmp_path}
    finally:
        for sidecar in started:
            sidecar.stop()
        cp.stop()
        app.close()
        web_app.close()


def wait_for(check: Callable[[], bool], within: float = 15.0) -> None:
    """Poll `check` (which may raise while the mesh converges) until it holds."""
    deadline = time.monotonic() + within
    while True:
        try:
            if check():
                return
        except (OSError, AssertionError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"not converged within {within}s")
        time.sleep(0.1)


def wait_for_traffic(port: int, payload: bytes = b"ping", within: float = 15.0) -> None:
    wait_for(lambda: roundtrip(port, payload) == payload, within)


def test_tcp_through_two_sidecars_with_mtls(mesh: dict[str, Any]) -> None:
    wait_for_traffic(mesh["web_out"])  # web's sidecar learns backend's endpoint from the config stream
    payload = bytes(range(256)) * 4096  # 1 MiB
    assert roundtrip(mesh["web_out"], payload) == payload


def test_inbound_refuses_plaintext_and_foreign_certificates(mesh: dict[str, Any]) -> None:
    wait_for_traffic(mesh["web_out"])
    before = mesh["app"].connections
    port = mesh["backend_in"]
    # openssl without a client certificate: the handshake fails and nothing reaches the app.
    no_cert = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3", "-quiet"],
                             input=b"hello\n", capture_output=True, timeout=30)
    assert no_cert.returncode != 0 or b"hello" not in no_cert.stdout
    # A certificate from another CA: refused too.
    _ca, cert, key = make_server_cert(mesh["tmp"] / "foreign")
    foreign = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3", "-quiet",
                              "-cert", str(cert), "-key", str(key)], input=b"hello\n", capture_output=True,
                             timeout=30)
    assert foreign.returncode != 0 or b"hello" not in foreign.stdout
    # Plaintext: no TLS handshake, no app connection.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        conn.settimeout(5)
        try:
            reply = conn.recv(100)
        except (TimeoutError, ConnectionResetError):
            reply = b""
        assert b"HTTP" not in reply
    assert mesh["app"].connections == before
    assert ssl.OPENSSL_VERSION  # the test ran against the system's OpenSSL


def test_sidecars_keep_serving_without_their_zone_cp(mesh: dict[str, Any]) -> None:
    wait_for_traffic(mesh["web_out"])
    mesh["cp"].stop()
    assert roundtrip(mesh["web_out"], b"still here") == b"still here"
    # A sidecar restarted while its CP is down starts from its saved config and identity.
    mesh["web"].stop()
    mesh["web"].start()
    assert roundtrip(mesh["web_out"], b"after restart") == b"after restart"


def test_workers_share_the_listeners(tmp_path: Path) -> None:
    """--workers 2: two processes accept on the same ports (SO_REUSEPORT), both serving from the leader's state."""
    cp = ZoneCPProcess(tmp_path / "cp")
    app = EchoApp()
    backend_in, web_out = free_port(), free_port()
    started: list[SidecarProcess] = []
    try:
        cp.start()
        backend = SidecarProcess(tmp_path / "backend-1", cp.url, cp.token("backend"),
                                 tcp_dataplane("backend-1", "backend", backend_in, app.port))
        web = SidecarProcess(tmp_path / "web-1", cp.url, cp.token("web"),
                             tcp_dataplane("web-1", "web", free_port(), app.port, {"backend": web_out}),
                             "--workers", "2")
        for sidecar in (backend, web):
            started.append(sidecar)
            sidecar.start()

        def listeners(port: int) -> int:
            out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout
            return len(out.strip().splitlines())

        wait_for(lambda: listeners(web_out) == 2)
        for i in range(20):
            assert roundtrip(web_out, f"hello {i}".encode()) == f"hello {i}".encode()
    finally:
        for sidecar in started:
            sidecar.stop()
        cp.stop()
        app.close()
    assert listeners(web_out) == 0  # the worker stopped with its leader
