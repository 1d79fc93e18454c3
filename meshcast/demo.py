"""`meshcast demo`: a small mesh on this machine (loopback only), run by the real components, and a look at it.

It starts a zone control plane (memory store), a demo application — `web`, which calls `backend`, which runs as
two instances (v1 and v2) — and a sidecar (`meshcast dataplane run`) beside each instance. Every call from web to
backend goes app → web's sidecar → mutual TLS → a backend sidecar → backend app, and the backend answers with the
caller's SPIFFE ID as its sidecar passed it. The demo prints what to try, shows live traffic, and tears everything
down on Ctrl-C (or after the tour with --once). Everything lives under ./.demo; root is not needed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import click
import httpx

DEMO_DIR = Path(".demo")


def _free_port(preferred: int = 0) -> int:
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port on 127.0.0.1")


def _app(name: str, answer: Callable[[BaseHTTPRequestHandler], dict[str, Any]]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = json.dumps(answer(self)).encode() + b"\n"
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server


class Demo:
    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.servers: list[ThreadingHTTPServer] = []
        DEMO_DIR.mkdir(exist_ok=True)

    def spawn(self, name: str, *args: str) -> None:
        with open(DEMO_DIR / f"{name}.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "meshcast.cli.main", *args], stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, proc))

    def wait_ready(self, name: str, url: str, within: float = 30) -> None:
        deadline = time.monotonic() + within
        proc = dict(self.procs)[name]
        while True:
            if proc.poll() is not None:
                raise click.ClickException(f"{name} exited; see {DEMO_DIR / (name + '.log')}")
            try:
                if httpx.get(url, timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise click.ClickException(f"{name} not ready in {within}s; see {DEMO_DIR / (name + '.log')}")
            time.sleep(0.1)

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for server in self.servers:
            server.shutdown()
            server.server_close()


def _cli(cp: str, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "meshcast.cli.main", "--cp", cp, *args], capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        raise click.ClickException(f"meshcast {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def _say(title: str, command: str, output: str) -> None:
    click.secho(f"\n# {title}", fg="cyan")
    click.secho(f"$ {command}", bold=True)
    click.echo(output.rstrip())


def _sidecar(demo: Demo, cp: str, name: str, service: str, version: str, app_port: int,
             outbound: dict[str, int]) -> str:
    workdir = DEMO_DIR / name
    workdir.mkdir(exist_ok=True)
    (workdir / "token").write_text(_cli(cp, "generate", "dataplane-token", "--service", service).strip())
    doc = {"type": "Dataplane", "mesh": "default", "name": name, "spec": {
        "address": "127.0.0.1",
        "inbound": [{"port": _free_port(), "appPort": app_port, "service": service, "protocol": "http",
                     "tags": {"version": version}}],
        "outbound": [{"port": port, "service": svc} for svc, port in outbound.items()]}}
    (workdir / "dataplane.json").write_text(json.dumps(doc, indent=2))
    admin = _free_port()
    demo.spawn(name, "dataplane", "run", "--cp", cp, "--token-file", str(workdir / "token"),
               "--dataplane-file", str(workdir / "dataplane.json"), "--state-dir", str(workdir / "state"),
               "--admin-addr", f"127.0.0.1:{admin}")
    return f"http://127.0.0.1:{admin}"


def run_demo(once: bool) -> None:
    demo = Demo()
    try:
        port = _free_port(5681)
        cp = f"http://127.0.0.1:{port}"
        demo.spawn("zone-cp", "zone-cp", "run", "--api-addr", f"127.0.0.1:{port}",
                   "--dp-addr", f"127.0.0.1:{_free_port(5678)}", "--state-dir", str(DEMO_DIR / "zone-state"))
        demo.wait_ready("zone-cp", cp + "/readyz")
        click.secho(f"Zone control plane running at {cp} (logs in {DEMO_DIR}/)", fg="green")
        _say("The zone CP created the mesh 'default' with builtin mTLS", "meshcast get meshes",
             _cli(cp, "get", "meshes"))

        web_out = _free_port(10080)
        for index, version in ((1, "v1"), (2, "v2")):
            name = f"backend-{index}"
            def backend_answer(handler: BaseHTTPRequestHandler, name: str = name,
                               version: str = version) -> dict[str, Any]:
                return {"backend": name, "version": version, "caller": handler.headers.get("x-meshcast-source")}

            app = _app(name, backend_answer)
            demo.servers.append(app)
            admin = _sidecar(demo, cp, name, "backend", version, app.server_address[1], {})
            demo.wait_ready(name, admin + "/ready")

        def web_answer(handler: BaseHTTPRequestHandler) -> dict[str, Any]:
            with urllib.request.urlopen(f"http://127.0.0.1:{web_out}/", timeout=5) as reply:
                return {"web": "web-1", "backend said": json.loads(reply.read())}

        web_app = _app("web-1", web_answer)
        demo.servers.append(web_app)
        web_admin = _sidecar(demo, cp, "web-1", "web", "v1", web_app.server_address[1], {"backend": web_out})
        demo.wait_ready("web-1", web_admin + "/ready")
        web_url = f"http://127.0.0.1:{web_app.server_address[1]}/"

        _say("Three sidecars registered with dataplane tokens and got SPIFFE certificates",
             "meshcast inspect dataplanes", _cli(cp, "inspect", "dataplanes"))
        answers: list[dict[str, Any]] = []
        deadline = time.monotonic() + 20
        while len({a["backend said"]["backend"] for a in answers}) < 2 and time.monotonic() < deadline:
            try:
                answers.append(json.loads(httpx.get(web_url, timeout=5).text))
            except (httpx.HTTPError, ValueError):
                time.sleep(0.2)
        if not answers:
            raise click.ClickException(f"web never answered; see the logs in {DEMO_DIR}/")
        _say("web calls backend through the mesh: app -> sidecar -> mTLS -> sidecar -> app", f"curl {web_url}",
             "\n".join(json.dumps(a) for a in answers[-2:]))
        click.secho(f"\nTry:\n  curl {web_url}\n  curl http://127.0.0.1:{web_out}/      # web's outbound to backend\n"
                    f"  MESHCAST_CP={cp} meshcast inspect dataplanes\n  curl {web_admin}/config\n", fg="green")
        if once:
            return
        click.secho("Live traffic (Ctrl-C stops the demo):", fg="cyan")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(1.0):
                try:
                    said = json.loads(httpx.get(web_url, timeout=5).text)["backend said"]
                    click.echo(f"  web -> {said['backend']} ({said['version']}), caller {said['caller']}")
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    click.echo(f"  web -> error: {exc}")
        except KeyboardInterrupt:
            pass
    finally:
        demo.stop()
        click.secho("Demo stopped; everything it started has exited.", fg="green")
