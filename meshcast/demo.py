"""`meshcast demo`: a two-zone mesh on this machine (loopback only), run by the real components, and a look at it.

It starts a single-node etcd and the global control plane on it, two zones (`eu`, `us`: a zone CP joined with a
zone token, and a zone ingress each), and a demo application with a sidecar (`meshcast dataplane run`) beside every
instance: in eu, `web` and `backend-1`; in us, `backend-2` and `payments`, which only us has. web calls backend
(locality: its own zone's instance) and payments (through us's ingress: the mTLS session stays end to end between
the two sidecars), and every app answers with the caller's SPIFFE ID as its sidecar passed it. The tour then stops
backend-1 and shows web's calls failing over to us. The demo prints what to try, shows live traffic, and tears
everything down on Ctrl-C (or after the tour with --once). Everything lives under ./.demo; root is not needed.
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

    def stop_one(self, name: str) -> None:
        proc = dict(self.procs)[name]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)

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


def _etcd(demo: Demo) -> str:
    """A single-node etcd for the global control plane, on loopback, with its data under .demo/."""
    import shutil

    binary = shutil.which("etcd") or "/usr/bin/etcd"
    if not os.access(binary, os.X_OK):
        raise click.ClickException("etcd not found: install etcd-server (make demo does)")
    client, peer = _free_port(), _free_port()
    data = DEMO_DIR / "etcd"
    shutil.rmtree(data, ignore_errors=True)
    with open(DEMO_DIR / "etcd.log", "wb") as log:
        proc = subprocess.Popen(
            [binary, "--name", "demo", "--data-dir", str(data), "--logger", "zap",
             "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls",
             f"http://127.0.0.1:{client}", "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", f"demo=http://127.0.0.1:{peer}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    demo.procs.append(("etcd", proc))
    demo.wait_ready("etcd", f"http://127.0.0.1:{client}/health")
    return f"http://127.0.0.1:{client}"


def _zone(demo: Demo, name: str, global_cp: str, etcd: str) -> str:
    """A zone CP joined to the global CP with a zone token, and its ingress."""
    port = _free_port()
    cp = f"http://127.0.0.1:{port}"
    state = DEMO_DIR / f"zone-{name}"
    state.mkdir(exist_ok=True)
    (state / "zone-token").write_text(_cli(global_cp, "generate", "zone-token", "--zone", name).strip())
    demo.spawn(f"zone-{name}", "zone-cp", "run", "--zone", name, "--api-addr", f"127.0.0.1:{port}",
               "--dp-addr", f"127.0.0.1:{_free_port()}", "--state-dir", str(state), "--global-etcd", etcd,
               "--global-cp", global_cp, "--zone-token-file", str(state / "zone-token"), "--zone-lease-ttl", "5")
    demo.wait_ready(f"zone-{name}", cp + "/readyz")
    (state / "ingress-token").write_text(_cli(cp, "generate", "ingress-token").strip())
    admin = _free_port()
    demo.spawn(f"ingress-{name}", "ingress", "run", "--cp", cp, "--token-file", str(state / "ingress-token"),
               "--addr", f"127.0.0.1:{_free_port()}", "--admin-addr", f"127.0.0.1:{admin}",
               "--state-dir", str(state / "ingress"))
    demo.wait_ready(f"ingress-{name}", f"http://127.0.0.1:{admin}/ready")
    return cp


def _backend_app(demo: Demo, name: str, zone: str, version: str) -> int:
    def answer(handler: BaseHTTPRequestHandler) -> dict[str, Any]:
        return {"instance": name, "zone": zone, "version": version,
                "caller": handler.headers.get("x-meshcast-source")}

    app = _app(name, answer)
    demo.servers.append(app)
    return int(app.server_address[1])


def _web_calls(web_url: str, until: Callable[[list[dict[str, Any]]], bool], within: float = 30) -> list[dict[str, Any]]:
    answers: list[dict[str, Any]] = []
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            answers.append(json.loads(httpx.get(web_url, timeout=5).text))
            if until(answers):
                return answers
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.2)
    raise click.ClickException(f"web did not answer as expected; see the logs in {DEMO_DIR}/ (last: "
                               f"{answers[-1] if answers else 'none'})")


def run_demo(once: bool) -> None:
    demo = Demo()
    try:
        etcd = _etcd(demo)
        port = _free_port(5681)
        global_cp = f"http://127.0.0.1:{port}"
        demo.spawn("global-cp", "global-cp", "run", "--api-addr", f"127.0.0.1:{port}", "--etcd-endpoints", etcd,
                   "--state-dir", str(DEMO_DIR / "global-state"))
        demo.wait_ready("global-cp", global_cp + "/readyz")
        click.secho(f"Global control plane at {global_cp}, on etcd at {etcd} (logs in {DEMO_DIR}/)", fg="green")
        zones = {name: _zone(demo, name, global_cp, etcd) for name in ("eu", "us")}
        _say("The global CP created the mesh 'default' (builtin mTLS); every zone received it",
             f"meshcast --cp {zones['eu']} get meshes", _cli(zones["eu"], "get", "meshes"))

        # us: a backend instance and payments, which only us has. eu: a backend instance and web, calling both.
        for zone, name, service, version in (("us", "backend-2", "backend", "v2"), ("us", "payments-1", "payments",
                                                                                    "v1"),
                                             ("eu", "backend-1", "backend", "v1")):
            app_port = _backend_app(demo, name, zone, version)
            admin = _sidecar(demo, zones[zone], name, service, version, app_port, {})
            demo.wait_ready(name, admin + "/ready")
        backend_out, payments_out = _free_port(10080), _free_port(10081)

        def web_answer(handler: BaseHTTPRequestHandler) -> dict[str, Any]:
            said = {}
            for service, port in (("backend", backend_out), ("payments", payments_out)):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as reply:
                        said[service] = json.loads(reply.read())
                except OSError as exc:
                    said[service] = {"error": str(exc)}
            return {"web": "web-1", **said}

        web_app = _app("web-1", web_answer)
        demo.servers.append(web_app)
        web_admin = _sidecar(demo, zones["eu"], "web-1", "web", "v1", web_app.server_address[1],
                             {"backend": backend_out, "payments": payments_out})
        demo.wait_ready("web-1", web_admin + "/ready")
        web_url = f"http://127.0.0.1:{web_app.server_address[1]}/"

        def served(answers: list[dict[str, Any]]) -> bool:
            last = answers[-1]
            return "instance" in last.get("backend", {}) and "instance" in last.get("payments", {})

        _say("Both zones are online at the global CP", f"meshcast --cp {global_cp} get zones",
             _web_calls_then(lambda: _cli(global_cp, "get", "zones"), lambda out: out.count("online") == 2))
        _say("Where each service is available", f"meshcast --cp {global_cp} inspect services",
             _web_calls_then(lambda: _cli(global_cp, "inspect", "services"),
                             lambda out: "payments" in out and "eu (1), us (1)" in out))
        answers = _web_calls(web_url, served)
        _say("web (eu) calls backend in its own zone and payments in us, through us's ingress, over mTLS end to end",
             f"curl {web_url}", json.dumps(answers[-1], indent=1))

        pid = dict(demo.procs)["backend-1"].pid
        demo.stop_one("backend-1")
        _say("backend-1 (eu) stops: web's calls to backend fail over to us", f"kill -TERM {pid}  # backend-1's sidecar",
             "backend-1 drained and left; web's sidecar now sends backend calls to us's ingress:")
        answers = _web_calls(web_url, lambda a: a[-1].get("backend", {}).get("zone") == "us")
        click.echo(json.dumps(answers[-1]["backend"]))
        click.secho(f"\nTry:\n  curl {web_url}\n  meshcast --cp {global_cp} get zones\n"
                    f"  meshcast --cp {global_cp} inspect services\n  meshcast --cp {zones['eu']} inspect dataplanes\n"
                    f"  curl {web_admin}/config\n", fg="green")
        if once:
            return
        click.secho("Live traffic (Ctrl-C stops the demo):", fg="cyan")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(1.0):
                try:
                    said = json.loads(httpx.get(web_url, timeout=5).text)
                    click.echo("  web -> " + ", ".join(
                        f"{service}: {said[service].get('instance', 'error')} ({said[service].get('zone', '-')})"
                        for service in ("backend", "payments")))
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    click.echo(f"  web -> error: {exc}")
        except KeyboardInterrupt:
            pass
    finally:
        demo.stop()
        click.secho("Demo stopped; everything it started has exited.", fg="green")


def _web_calls_then(read: Callable[[], str], ok: Callable[[str], bool], within: float = 20) -> str:
    """`read()` until its output satisfies `ok` (the zones' publication takes a moment)."""
    deadline = time.monotonic() + within
    out = read()
    while not ok(out) and time.monotonic() < deadline:
        time.sleep(0.3)
        out = read()
    return out
