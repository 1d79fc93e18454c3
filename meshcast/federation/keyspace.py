"""Keys of the federation keyspace and the zone view parsed from them (pure, no IO).

Layout under ``/meshcast/v1/`` (design.md, "Federation over etcd")::

    global/resources/<Type>/[<mesh>/]<name>     meshes and policies, written by the global CP only
    zones/<zone>/info                           the zone CP's addresses and version, on the zone's lease
    zones/<zone>/services/<mesh>/<service>      healthy endpoint count and protocol, on the zone's lease

A zone's keys live on one lease that its CP keeps alive: when the CP dies they vanish within the lease TTL, which
is how the rest of the mesh learns the zone is offline. Individual dataplanes never leave their zone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

ROOT = "/meshcast/v1/"
GLOBAL_PREFIX = ROOT + "global/"
ZONES_PREFIX = ROOT + "zones/"
ORIGIN_LABEL = "meshcast.io/origin"


def zone_prefix(zone: str) -> str:
    return f"{ZONES_PREFIX}{zone}/"


def info_key(zone: str) -> str:
    return f"{ZONES_PREFIX}{zone}/info"


def service_key(zone: str, mesh: str, service: str) -> str:
    return f"{ZONES_PREFIX}{zone}/services/{mesh}/{service}"


@dataclass
class ZoneState:
    """What one zone publishes: its info (None when its lease is gone) and its services."""

    name: str
    info: dict[str, Any] | None = None
    services: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    @property
    def online(self) -> bool:
        return self.info is not None


def parse_zones(keys: dict[str, bytes]) -> dict[str, ZoneState]:
    """The zones found under `ZONES_PREFIX`; keys that do not fit the layout or hold bad JSON are skipped (a zone
    can only write its own prefix, so one zone's bad data never hides another's)."""
    zones: dict[str, ZoneState] = {}
    for key, raw in keys.items():
        if not key.startswith(ZONES_PREFIX):
            continue
        parts = key[len(ZONES_PREFIX):].split("/")
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            continue
        if not isinstance(value, dict) or not parts[0]:
            continue
        zone = zones.setdefault(parts[0], ZoneState(parts[0]))
        if parts[1:] == ["info"]:
            zone.info = value
        elif len(parts) == 4 and parts[1] == "services" and parts[2] and parts[3]:
            zone.services[(parts[2], parts[3])] = value
    # Services outlive nothing: without its info key (lease gone) a zone offers no service.
    for zone in zones.values():
        if zone.info is None:
            zone.services.clear()
    return zones


def services_view(zones: dict[str, ZoneState]) -> list[dict[str, Any]]:
    """Where each service is available: one entry per (mesh, service), with every online zone that has it."""
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for name in sorted(zones):
        zone = zones[name]
        for (mesh, service), value in sorted(zone.services.items()):
            found.setdefault((mesh, service), []).append(
                {"zone": name, "healthy": value.get("healthy", 0), "protocol": value.get("protocol", "tcp")})
    return [{"mesh": mesh, "service": service, "zones": where} for (mesh, service), where in sorted(found.items())]
