"""Wiring of `meshcast zone-cp run`: builds the store and the control plane, runs them until a signal."""

from __future__ import annotations

import gc
import logging
import signal
from pathlib import Path

import click
import trio

from meshcast.errors import MeshcastError
from meshcast.store import MemoryStore, ResourceStore

log = logging.getLogger("meshcast.zone_cp")


async def open_store(kind: str, endpoints: str, prefix: str, user: str | None, password: str | None) -> ResourceStore:
    if kind == "memory":
        return MemoryStore()
    from meshcast.store.etcd import EtcdStore

    urls = [u.strip() for u in endpoints.split(",") if u.strip()]
    if not urls:
        raise click.BadParameter("at least one URL is needed", param_hint="--etcd-endpoints")
    return await EtcdStore.open(urls, prefix=prefix, username=user, password=password)


async def _until_signal(cancel: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s: shutting down", signal.Signals(signum).name)
            cancel.cancel()
            return


def run_zone_cp(
    *, store_kind: str, etcd_endpoints: str, etcd_prefix: str, etcd_user: str | None, etcd_password: str | None,
    api_addr: str, dp_addr: str, state_dir: Path, zone: str, heartbeat_timeout: float, heartbeat_interval: float,
    no_default_mesh: bool, allow_remote_admin: bool, tls_cert: Path | None, tls_key: Path | None,
) -> None:
    from zone_cp.config import ZoneCPConfig, split_host_port
    from zone_cp.control_plane import ZoneControlPlane

    for flag, value in (("--api-addr", api_addr), ("--dp-addr", dp_addr)):
        try:
            split_host_port(value, default_port=5681)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=flag) from None
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if heartbeat_timeout <= heartbeat_interval:
        raise click.BadParameter("must be longer than --heartbeat-interval", param_hint="--heartbeat-timeout")
    config = ZoneCPConfig(
        state_dir=state_dir, api_addr=api_addr, dp_addr=dp_addr, zone=zone, heartbeat_timeout=heartbeat_timeout,
        heartbeat_interval=heartbeat_interval, create_default_mesh=not no_default_mesh,
        allow_remote_admin=allow_remote_admin, tls_cert=tls_cert, tls_key=tls_key,
    )

    async def main() -> None:
        store = await open_store(store_kind, etcd_endpoints, etcd_prefix, etcd_user, etcd_password)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_until_signal, nursery.cancel_scope)
                cp = ZoneControlPlane(config, store)
                port = await nursery.start(cp.run)
                # What start-up allocated (modules, schemas, the first listing) lives as long as the process: move
                # it out of the collector's way so full collections stay short.
                gc.freeze()
                click.echo(f"zone control plane ready on {api_addr.rsplit(':', 1)[0]}:{port} "
                           f"(store: {store_kind})", err=True)
        finally:
            with trio.CancelScope(shield=True):
                await store.aclose()

    try:
        trio.run(main)
    except MeshcastError as exc:
        raise click.ClickException(str(exc)) from None
