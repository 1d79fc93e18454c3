"""The global control plane's view of the zones: what each publishes under `zones/` and whether it is online.

Theory of operation: `ZoneTracker` reads the `zones/` prefix every `interval` seconds (one range read: the
keyspace grows with zones x services, not with instances) and keeps the parsed view for `meshcast get zones` and
`meshcast inspect services`. A zone seen for the first time gets a `Zone` resource, so it is still listed, as
offline, after its lease is gone. While the global store is unreachable the last view is kept and marked stale.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from meshcast.errors import AlreadyExists, StoreUnavailable
from meshcast.federation.keyspace import ZONES_PREFIX, ZoneState, parse_zones, services_view
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
        self.zones = parse_zones(await self.cp.global_store.get_keys(ZONES_PREFIX))
        listing = await self.cp.store.list("Zone")
        self.known = {r.name for r in listing.items}
        for name in sorted(set(self.zones) - self.known):
            try:
                await self.cp.store.create(Resource(type="Zone", name=name, spec=ZoneSpec()))
                log.info("zone %s joined", name)
            except AlreadyExists:
                pass
            self.known.add(name)
        self.stale = False

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
