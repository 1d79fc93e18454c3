"""Wiring of `meshcast dataplane run`: the sidecar, its admin endpoint, and a graceful drain on SIGTERM."""

from __future__ import annotations

import logging
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import click
import trio

from meshcast.cli.dataplane_file import load_dataplane

log = logging.getLogger("meshcast.dataplane")


def _spawn_workers(count: int, argv: list[str]) -> list[subprocess.Popen[bytes]]:
    """Worker processes: the same command as ours, as followers of our saved state (no CP, no admin)."""
    command = [sys.executable, "-m", "meshcast.cli.main", *argv, "--follower"]
    return [subprocess.Popen(command) for _ in range(count)]


def _stop_workers(workers: list[subprocess.Popen[bytes]], grace: float) -> None:
    for proc in workers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in workers:
        try:
            proc.wait(timeout=grace + 5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_dataplane(
    *, cp: str, token_file: Path, dataplane_file: Path, state_dir: Path | None, admin_addr: str,
    ca_file: Path | None, drain_timeout: float, workers: int = 1, follower: bool = False,
    withdraw_delay: float = 1.0, while_withdrawing: str = "serve", gateway: bool = False,
) -> None:
    from dataplane.admin import serve_admin
    from dataplane.listeners import bind
    from dataplane.sidecar import Sidecar
    from zone_cp.config import split_host_port

    token = token_file.read_text().strip()
    if not token:
        raise click.BadParameter("the file is empty", param_hint="--token-file")
    try:
        doc = load_dataplane(dataplane_file)  # in a child process: the resource model stays out of the sidecar
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--dataplane-file") from None
    mesh, name = str(doc.get("mesh", "default")), str(doc["name"])
    if gateway and not doc.get("spec", {}).get("gateway"):
        raise click.BadParameter("a gateway's Dataplane names its MeshGateway in spec.gateway",
                                 param_hint="--dataplane-file")
    state = state_dir or Path("/var/lib/meshcast/dataplanes") / mesh / name
    try:
        admin_host, admin_port = split_host_port(admin_addr, default_port=9901)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--admin-addr") from None
    cp_ssl = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None

    if workers < 1:
        raise click.BadParameter("must be at least 1", param_hint="--workers")
    drop_new = while_withdrawing == "drop"  # a gateway's new connections during its withdraw delay

    async def follow() -> None:
        sidecar = Sidecar(cp_url=cp, token=token, dataplane=doc, state_dir=state, cp_ssl_context=cp_ssl,
                          workers=2, follower=True, withdraw_delay=withdraw_delay,
                          drop_while_withdrawing=drop_new)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(sidecar.run)
                async for _ in signals:
                    await sidecar.drain(drain_timeout)
                    nursery.cancel_scope.cancel()
                    break

    if follower:
        trio.run(follow)
        return
    spawned: list[subprocess.Popen[bytes]] = []

    async def main() -> None:
        sidecar = Sidecar(cp_url=cp, token=token, dataplane=doc, state_dir=state, cp_ssl_context=cp_ssl,
                          workers=workers, withdraw_delay=withdraw_delay,
                          drop_while_withdrawing=drop_new)
        try:
            admin_sock = bind(admin_host, admin_port)
        except OSError as exc:
            raise click.ClickException(f"cannot listen on --admin-addr {admin_addr}: {exc.strerror}") from None
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_admin, sidecar, admin_sock)
                click.echo(f"dataplane {mesh}/{name}: admin on {admin_host}:{admin_sock.getsockname()[1]}, "
                           "waiting for a config", err=True)

                started = False

                async def on_signals() -> None:
                    # Read from the start: a signal before the first config (a refused token keeps the sidecar
                    # retrying) stops the process at once, one after it drains first.
                    async for signum in signals:
                        if not started:
                            log.info("%s before the first config: stopping", signal.Signals(signum).name)
                            nursery.cancel_scope.cancel()
                            return
                        log.info("%s: draining (up to %.0fs)", signal.Signals(signum).name, drain_timeout)
                        for proc in spawned:
                            proc.send_signal(signal.SIGTERM)
                        clean = await sidecar.drain(drain_timeout)
                        if not clean:
                            log.warning("%d connection(s) still open after the drain timeout", sidecar.in_flight)
                        with trio.move_on_after(2):
                            try:
                                await sidecar.agent.client.deregister(mesh, name)
                            except Exception as exc:
                                log.info("could not deregister: %s", exc)
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(on_signals)
                await nursery.start(sidecar.run)
                started = True
                if workers > 1:  # they follow the state this process saved before it became ready
                    spawned.extend(_spawn_workers(workers - 1, sys.argv[1:]))
                click.echo(f"dataplane {mesh}/{name} ready (config {sidecar.agent.version}, "
                           f"{workers} worker process(es))", err=True)

    try:
        trio.run(main)
    finally:
        _stop_workers(spawned, drain_timeout)
