"""The global control plane's view of the zones: what each publishes under `zones/` and whether it is online.

Theory of operation: `ZoneTracker` reads the `zones/` prefix every `interval` seconds (one range read: the
keyspace grows with zones x services, not with instances) and keeps the parsed view for `meshcast get zones` and
`meshcast inspect services`. A zone seen for the first time gets a `Zone` resource, so it is still listed, as
offline, after its lease is gone. While the global store is unreachable the last view is kept and marked stale.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import trio

from meshcast.errors import AlreadyExists, MeshcastError, StoreUnavailable
from meshcast.federation.keyspace import ZONES_PREFIX, ZoneState, parse_zones, services_view
from meshcast.pki.ca import DEFAULT_INTERMEDIATE_VALIDITY
from meshcast.resources import Resource
from meshcast.resources.types import ZoneSpec

if TYPE_CHECKING:
    from zone_cp.control_plane import ZoneControlPlane

log = logging.getLogger("meshcast.global_cp.zones")


class ZoneTracker:
    def __init__(self, cp: ZoneControlPlane, *, interval: float = 1.0) -> None:
        self.cp = cp
        self.interval = interval
        self.zones: dict[str, ZoneState] = {}
        self.known: set[str] = set()  # zones with a Zone resource
        self.stale = True

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except StoreUnavailable as exc:
                if not self.stale:
                    log.warning("global store unavailable, zone view is stale: %s", exc)
                self.stale = True
            await trio.sleep(self.interval)

    async def refresh(self) -> None:
        keys = await self.cp.global_store.get_keys(ZONES_PREFIX)
        self.zones = parse_zones(keys)
        listing = await self.cp.store.list("Zone")
        self.known = {r.name for r in listing.items}
        await self._sign_intermediates(keys, {r.name for r in listing.items
                                              if isinstance(r.spec, ZoneSpec) and r.spec.enabled})
        for name in sorted(set(self.zones) - self.known):
            try:
                await self.cp.store.create(Resource(type="Zone", name=name, spec=ZoneSpec()))
                log.info("zone %s joined", name)
            except AlreadyExists:
                pass
            self.known.add(name)
        self.stale = False
        metrics = self.cp.metrics
        for zone in self.view():
            metrics.zone_online.labels(zone=zone["name"]).set(1 if zone["status"] == "online" else 0)
            metrics.zone_services.labels(zone=zone["name"]).set(zone["services"])

    async def _sign_intermediates(self, keys: dict[str, bytes], enabled: set[str]) -> None:
        """Sign, with the mesh root, every intermediate CA a zone asks for that it does not hold yet: the
        zone's CSR under its own prefix (which only it can write) for a mesh that exists."""
        for zone, mesh, csr in pending_csrs(keys):
            if zone not in enabled or mesh not in self.cp.inventory.meshes:
                continue
            root = self.cp.cas.get(mesh)
            self.cp.metrics.ca_expiry.labels(mesh=mesh, ca="root").set(root.not_after.timestamp())
            try:
                validity = self.cp.config.intermediate_validity or DEFAULT_INTERMEDIATE_VALIDITY
                certificate = root.sign_intermediate(csr, zone=zone, validity=validity)
            except (MeshcastError, ValueError) as exc:
                log.warning("not signing zone %s's intermediate CA for mesh %s: %s", zone, mesh, exc)
                continue
            message = {"certificate": certificate.decode(), "trustBundle": root.trust_bundle().decode()}
            await self.cp.global_store.put_key(f"{ZONES_PREFIX}{zone}/ca/{mesh}/intermediate",
                                               json.dumps(message).encode())
            log.info("signed zone %s's intermediate CA for mesh %s", zone, mesh)

    def view(self) -> list[dict[str, Any]]:
        """Every zone, known or publishing, with its status (`meshcast get zones`)."""
        out = []
        for name in sorted(self.known | set(self.zones)):
            state = self.zones.get(name)
            info = state.info if state is not None else None
            out.append({
                "name": name,
                "status": "online" if info is not None else "offline",
                "apiAddress": (info or {}).get("apiAddress"),
                "ingressAddress": (info or {}).get("ingressAddress"),
                "version": (info or {}).get("version"),
                "services": len(state.services) if state is not None else 0,
                "stale": self.stale,
            })
        return out

    def services(self) -> list[dict[str, Any]]:
        """Where each service is available (`meshcast inspect services`)."""
        return services_view(self.zones)


def pending_csrs(keys: dict[str, bytes]) -> list[tuple[str, str, bytes]]:
    """(zone, mesh, CSR) for every CSR under `zones/*/ca/*/csr` whose intermediate is missing or is for another
    key (the zone made a new key: it lost its state, or it renews)."""
    out = []
    for key, csr in sorted(keys.items()):
        parts = key[len(ZONES_PREFIX):].split("/") if key.startswith(ZONES_PREFIX) else []
        if len(parts) != 4 or parts[1] != "ca" or parts[3] != "csr":
            continue
        zone, mesh = parts[0], parts[2]
        offered = keys.get(f"{ZONES_PREFIX}{zone}/ca/{mesh}/intermediate")
        if offered is None or not _same_key(csr, offered):
            out.append((zone, mesh, csr))
    return out


def _same_key(csr_pem: bytes, offered: bytes) -> bool:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(json.loads(offered)["certificate"].encode())
        return bool(cert.public_key() == x509.load_pem_x509_csr(csr_pem).public_key())
    except (ValueError, KeyError, TypeError, AttributeError):
        return False
