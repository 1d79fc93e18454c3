"""`meshcast demo`: a zone control plane with a few simulated dataplanes, and a guided look at them.

It starts a real `meshcast zone-cp run` process (memory store, state under .demo/), registers simulated sidecars
that speak the real registration, certificate and config-stream protocols, and prints what an operator would look
at. It keeps running until Ctrl-C (or exits after the tour with --once). Later issues grow it to real sidecars,
several zones and an anycast edge.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import httpx
import trio

DEMO_DIR = Path(".demo")


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port on 127.0.0.1")


def _cli(cp: str, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run([sys.executable, "-m", "meshcast.cli.main", "--cp", cp, *args], input=stdin,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise click.ClickException(f"meshcast {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def _say(title: str, command: str, output: str) -> None:
    click.secho(f"\n# {title}", fg="cyan")
    click.secho(f"$ {command}", bold=True)
    click.echo(output.rstrip())


def _dataplane(name: str, service: str, port: int, version: str, outbound: list[str]) -> dict[str, object]:
    return {
        "type": "Dataplane", "mesh": "default", "name": name,
        "spec": {"address": "127.0.0.1",
                 "inbound": [{"port": port, "appPort": port + 1000, "service": service, "protocol": "http",
                              "tags": {"version": version}}],
                 "outbound": [{"port": 20000 + i, "service": s} for i, s in enumerate(outbound)]},
    }


def run_demo(once: bool) -> None:
    from meshcast.testing.simdp import SimDataplane

    DEMO_DIR.mkdir(exist_ok=True)
    port = _free_port(5681)
    cp = f"http://127.0.0.1:{port}"
    log = open(DEMO_DIR / "zone-cp.log", "wb")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshcast.cli.main", "zone-cp", "run", "--api-addr", f"127.0.0.1:{port}",
         "--dp-addr", f"127.0.0.1:{_free_port(5678)}",
         "--state-dir", str(DEMO_DIR / "zone-state")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise click.ClickException(f"the zone CP exited; see {DEMO_DIR / 'zone-cp.log'}")
            try:
                if httpx.get(cp + "/readyz", timeout=0.5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise click.ClickException("the zone CP did not become ready in 30s")
            time.sleep(0.1)
        click.secho(f"Zone control plane running at {cp} (log: {DEMO_DIR / 'zone-cp.log'})", fg="green")
        _say("The zone CP created the mesh 'default' with builtin mTLS", "meshcast get meshes",
             _cli(cp, "get", "meshes"))
        tokens = {svc: _cli(cp, "generate", "dataplane-token", "--service", svc).strip() for svc in ("web", "backend")}
        dps = [
            SimDataplane(cp, tokens["backend"], _dataplane("backend-1", "backend", 10001, "v1", []),
                         want_certificate=True),
            SimDataplane(cp, tokens["backend"], _dataplane("backend-2", "backend", 10002, "v2", []),
                         want_certificate=True),
            SimDataplane(cp, tokens["web"], _dataplane("web-1", "web", 10010, "v1", ["backend"]),
                         want_certificate=True),
        ]

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                for dp in dps:
                    await nursery.start(dp.run)
                web = dps[-1]
                await web.wait_for(lambda s: len(s["outbound"][0]["endpoints"]) == 2)
                assert web.certificate is not None
                _say("Three simulated sidecars registered with dataplane tokens", "meshcast get dataplanes",
                     await trio.to_thread.run_sync(_cli, cp, "get", "dataplanes"))
                _say("Their health, config versions and certificates", "meshcast inspect dataplanes",
                     await trio.to_thread.run_sync(_cli, cp, "inspect", "dataplanes"))
                endpoints = ", ".join(f"{e['dataplane']}:{e['port']} {e['tags']}" for e in web.endpoints("backend"))
                _say("web-1 received its config over the stream", "(web-1's snapshot)",
                     f"identity {web.certificate['spiffeId']}, expires {web.certificate['expiresAt']}\n"
                     f"outbound backend -> {endpoints}")
                if once:
                    nursery.cancel_scope.cancel()
                    return
                click.secho(f"\nThe mesh keeps running. Try: MESHCAST_CP={cp} meshcast inspect dataplanes\n"
                            "Press Ctrl-C to stop.", fg="green")
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        break
                nursery.cancel_scope.cancel()

        trio.run(main)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    click.secho("Demo stopped; everything it started has exited.", fg="green")
