"""Wiring of `meshcast zone-cp run`: builds the store and the control plane, runs them until a signal."""

from __future__ import annotations

import gc
import logging
import signal
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click
import trio

from meshcast.errors import MeshcastError
from meshcast.store import MemoryStore, ResourceStore

if TYPE_CHECKING:
    from meshcast.store.etcd import EtcdTLS

log = logging.getLogger("meshcast.zone_cp")


async def open_store(kind: str, endpoints: str, prefix: str, user: str | None, password: str | None,
                     tls: EtcdTLS | None = None) -> ResourceStore:
    if kind == "memory":
        return MemoryStore()
    from meshcast.store.etcd import EtcdStore

    urls = [u.strip() for u in endpoints.split(",") if u.strip()]
    if not urls:
        raise click.BadParameter("at least one URL is needed", param_hint="--etcd-endpoints")
    try:
        return await EtcdStore.open(urls, prefix=prefix, username=user, password=password, tls=tls)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--etcd-endpoints") from None


def etcd_tls(ca_file: Path | None, cert_file: Path | None, key_file: Path | None, endpoints: str,
             flag: str) -> EtcdTLS | None:
    """The TLS settings of `--<flag>-ca-file/-cert-file/-key-file`, checked against the endpoints' scheme."""
    from meshcast.store.etcd import EtcdTLS, check_tls, parse_endpoint_urls

    if ca_file is None and (cert_file is not None or key_file is not None):
        raise click.UsageError(f"--{flag}-cert-file and --{flag}-key-file need --{flag}-ca-file (https:// etcd)")
    try:
        tls = EtcdTLS(ca_file, cert_file, key_file) if ca_file is not None else None
        if endpoints.strip():
            check_tls(parse_endpoint_urls(endpoints)[0], tls)
        if tls is not None:
            tls.credentials()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=f"--{flag}-ca-file") from None
    return tls


async def _until_signal(cancel: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s: shutting down", signal.Signals(signum).name)
            cancel.cancel()
            return


def run_global_cp(
    *, etcd_endpoints: str, etcd_user: str | None, etcd_password: str | None, api_addr: str, state_dir: Path,
    no_default_mesh: bool, allow_remote_admin: bool, tls_cert: Path | None, tls_key: Path | None,
    etcd_ca_file: Path | None = None, etcd_cert_file: Path | None = None, etcd_key_file: Path | None = None,
    intermediate_validity: str = "8760h",
) -> None:
    """The global CP is the control plane's API and store over the global keyspace, without dataplanes."""
    from meshcast.federation.keyspace import GLOBAL_PREFIX
    from meshcast.wire.duration import parse_duration

    try:
        validity = parse_duration(intermediate_validity)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--intermediate-validity") from None
    if validity < timedelta(seconds=30):
        raise click.BadParameter("must be at least 30s (zones renew at 2/3 of it)",
                                 param_hint="--intermediate-validity")

    run_zone_cp(
        store_kind="etcd", etcd_endpoints=etcd_endpoints, etcd_prefix=GLOBAL_PREFIX, etcd_user=etcd_user,
        etcd_password=etcd_password, api_addr=api_addr, dp_addr="127.0.0.1:0", state_dir=state_dir, zone="",
        heartbeat_timeout=10.0, heartbeat_interval=2.0, no_default_mesh=no_default_mesh,
        allow_remote_admin=allow_remote_admin, tls_cert=tls_cert, tls_key=tls_key, role="global",
        etcd_ca_file=etcd_ca_file, etcd_cert_file=etcd_cert_file, etcd_key_file=etcd_key_file,
        intermediate_validity=validity,
    )


def run_zone_cp(
    *, store_kind: str, etcd_endpoints: str, etcd_prefix: str, etcd_user: str | None, etcd_password: str | None,
    api_addr: str, dp_addr: str, state_dir: Path, zone: str, heartbeat_timeout: float, heartbeat_interval: float,
    no_default_mesh: bool, allow_remote_admin: bool, tls_cert: Path | None, tls_key: Path | None,
    global_etcd: str = "", global_etcd_user: str | None = None, global_etcd_password: str | None = None,
    zone_lease_ttl: int = 10, role: str | None = None, global_cp: str = "", zone_token_file: Path | None = None,
    etcd_ca_file: Path | None = None, etcd_cert_file: Path | None = None, etcd_key_file: Path | None = None,
    global_etcd_ca_file: Path | None = None, global_etcd_cert_file: Path | None = None,
    global_etcd_key_file: Path | None = None, intermediate_validity: timedelta | None = None,
) -> None:
    from meshcast.federation.keyspace import GLOBAL_PREFIX
    from meshcast.pki.spiffe import check_label
    from zone_cp.config import ZoneCPConfig, split_host_port
    from zone_cp.control_plane import ZoneControlPlane

    if role is None:
        role = "zone" if global_etcd else "standalone"
    if role == "zone":
        if not zone:
            raise click.UsageError("--global-etcd needs --zone: the name this zone publishes under")
        violations = check_label("zone", zone)
        if violations:
            raise click.BadParameter(violations[0].message, param_hint="--zone")
        if not [u for u in global_etcd.split(",") if u.strip()]:
            raise click.BadParameter("at least one URL is needed", param_hint="--global-etcd")
        if zone_token_file is not None and not global_cp:
            raise click.UsageError("--zone-token-file needs --global-cp: the global control plane's API URL")
        if store_kind == "etcd" and etcd_prefix.startswith(GLOBAL_PREFIX):
            raise click.BadParameter("a zone's own store must not be the global keyspace",
                                     param_hint="--etcd-prefix")
    for flag, value in (("--api-addr", api_addr), ("--dp-addr", dp_addr)):
        try:
            split_host_port(value, default_port=5681)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=flag) from None
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if heartbeat_timeout <= heartbeat_interval:
        raise click.BadParameter("must be longer than --heartbeat-interval", param_hint="--heartbeat-timeout")
    store_tls = etcd_tls(etcd_ca_file, etcd_cert_file, etcd_key_file,
                         etcd_endpoints if store_kind == "etcd" else "", "etcd")
    global_tls = etcd_tls(global_etcd_ca_file, global_etcd_cert_file, global_etcd_key_file, global_etcd,
                          "global-etcd")
    config = ZoneCPConfig(
        state_dir=state_dir, api_addr=api_addr, dp_addr=dp_addr, zone=zone, heartbeat_timeout=heartbeat_timeout,
        heartbeat_interval=heartbeat_interval, create_default_mesh=not no_default_mesh,
        allow_remote_admin=allow_remote_admin, tls_cert=tls_cert, tls_key=tls_key, role=role,
        global_etcd=global_etcd, global_etcd_user=global_etcd_user, global_etcd_password=global_etcd_password,
        zone_lease_ttl=zone_lease_ttl, global_cp=global_cp,
        zone_token=zone_token_file.read_text().strip() if zone_token_file else None,
        etcd_endpoints=etcd_endpoints if role == "global" else "", etcd_user=etcd_user if role == "global" else None,
        etcd_password=etcd_password if role == "global" else None,
        etcd_tls=store_tls if role == "global" else None, global_etcd_tls=global_tls,
        intermediate_validity=intermediate_validity,
    )

    async def main() -> None:
        store = await open_store(store_kind, etcd_endpoints, etcd_prefix, etcd_user, etcd_password, store_tls)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_until_signal, nursery.cancel_scope)
                cp = ZoneControlPlane(config, store)
                port = await nursery.start(cp.run)
                # What start-up allocated (modules, schemas, the first listing) lives as long as the process: move
                # it out of the collector's way so full collections stay short.
                gc.freeze()
                what = "global control plane" if role == "global" else "zone control plane"
                federated = f", zone {zone} federated with {global_etcd}" if role == "zone" else ""
                click.echo(f"{what} ready on {api_addr.rsplit(':', 1)[0]}:{port} "
                           f"(store: {store_kind}{federated})", err=True)
        finally:
            with trio.CancelScope(shield=True):
                await store.aclose()

    try:
        trio.run(main)
    except MeshcastError as exc:
        raise click.ClickException(str(exc)) from None
    except BaseExceptionGroup as group:  # raised inside a task: report it as one line all the same
        found = first_error(group, MeshcastError)
        if found is None:
            raise
        raise click.ClickException(str(found)) from None


def first_error(group: BaseExceptionGroup[BaseException], kind: type[BaseException]) -> BaseException | None:
    """The first `kind` among the leaves of an exception group."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            inner = first_error(exc, kind)
            if inner is not None:
                return inner
        elif isinstance(exc, kind):
            return exc
    return None
