"""Settings of a zone control plane (from the command line)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshcast.store.etcd import EtcdTLS

ROLES = ("standalone", "global", "zone")


@dataclass(frozen=True)
class ZoneCPConfig:
    """`role`: standalone (a single-zone mesh), global (the operators' API for every zone: meshes and policies,
    no dataplanes) or zone (federated: global resources come from `global_etcd`, local edits of them refused)."""

    state_dir: Path
    role: str = "standalone"
    global_etcd: str = ""
    global_etcd_user: str | None = None
    global_etcd_password: str | None = None
    zone_lease_ttl: int = 10
    global_cp: str = ""  # zone: the global CP's API, where the zone token is exchanged for etcd credentials
    zone_token: str | None = None
    etcd_endpoints: str = ""  # global: the global etcd, whose zone users it administers
    etcd_user: str | None = None
    etcd_password: str | None = None
    etcd_tls: EtcdTLS | None = None  # global: TLS to the global etcd (https:// endpoints)
    global_etcd_tls: EtcdTLS | None = None  # zone: TLS to the global etcd
    api_addr: str = "127.0.0.1:5681"
    dp_addr: str = "127.0.0.1:5678"
    zone: str = ""
    heartbeat_timeout: float = 10.0
    heartbeat_interval: float = 2.0
    create_default_mesh: bool = True
    allow_remote_admin: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # global: the lifetime of the zone intermediates it signs; None: the PKI's default (meshcast.pki.ca, 365 days;
    # not imported here: the sidecar reads this module and stays free of cryptography)
    intermediate_validity: timedelta | None = None


def split_host_port(addr: str, *, default_port: int) -> tuple[str, int]:
    """'127.0.0.1:5681', '[::1]:5681', ':5681' or 'host' -> (host, port); ValueError with a clear reason."""
    host, sep, port_text = addr.rpartition(":")
    if not sep or "]" in port_text:
        host, port_text = addr, str(default_port)
    host = host.strip("[]") or "0.0.0.0"
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"invalid address {addr!r}: the port must be a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"invalid address {addr!r}: the port must be between 0 and 65535")
    return host, port
