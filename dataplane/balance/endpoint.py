"""One upstream endpoint as the load balancers see it: an immutable value built from a config-snapshot entry.

The zone control plane sends, per outbound service, a list of endpoint dicts
`{"address", "port", "protocol", "tags", "dataplane", "priority", "sni"}` (see `zone_cp.inventory.Inventory.upstream`;
the last two only for locality). `Endpoint.from_snapshot` turns one into a frozen, hashable value.
`priority` is the endpoint's locality: 0 for the sidecar's own zone, 1, 2, ... for other zones in failover order.
An endpoint with an `sni` is another zone's ingress, which routes a TLS connection by its server name to the
service there without terminating it; the sidecar sends `sni` as the TLS server name.

Its `key` names where a connection ends up: the socket the proxy dials, `address:port`, and for an ingress also the
server name, `address:port#sni`, since one ingress address fronts every service of its zone. It is what every piece
of per-endpoint state (outstanding requests, failures, ejections, ring positions, pooled connections) is filed
under, so two services behind the same ingress never share any of it, while an endpoint whose tags, dataplane name
or priority change between snapshots keeps its state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

EndpointKey = str
"""`address:port` (`[address]:port` for IPv6), `#sni` appended for a zone ingress: the identity of an endpoint
across updates."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An upstream the proxy can connect to. Immutable and hashable; equal when every field is equal."""

    address: str
    port: int
    tags: tuple[tuple[str, str], ...] = ()
    dataplane: str = ""
    protocol: str = "tcp"
    priority: int = 0
    sni: str = ""
    # Derived from the fields above, once: the balancers read it several times per request.
    key: EndpointKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.address, str) or not self.address:
            raise ValueError(f"endpoint address must be a non-empty string, got {self.address!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ValueError(f"endpoint port must be an integer in 1..65535, got {self.port!r}")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int) or self.priority < 0:
            raise ValueError(f"endpoint priority must be an integer >= 0, got {self.priority!r}")
        if not isinstance(self.sni, str) or "#" in self.sni:
            raise ValueError(f"endpoint sni must be a server name, got {self.sni!r}")
        # Tags are kept sorted so two endpoints with the same tags compare (and hash) equal whatever the order.
        object.__setattr__(self, "tags", tuple(sorted(self.tags)))
        socket = f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"
        object.__setattr__(self, "key", f"{socket}#{self.sni}" if self.sni else socket)

    def tag(self, name: str, default: str | None = None) -> str | None:
        for tag_name, value in self.tags:
            if tag_name == name:
                return value
        return default

    @property
    def tag_map(self) -> dict[str, str]:
        """The tags as a fresh dict (a copy: the endpoint stays immutable)."""
        return dict(self.tags)

    @classmethod
    def from_snapshot(cls, entry: Mapping[str, Any]) -> Endpoint:
        """Build from one config-snapshot endpoint dict; raises ValueError (one line) when it is malformed.

        Unknown fields are ignored, as the sidecar's config model does: a newer control plane may add some.
        `EndpointConfig.model_dump()` from `dataplane.config` is accepted as well.
        """
        if not isinstance(entry, Mapping):
            raise ValueError(f"endpoint must be a mapping, got {type(entry).__name__}")
        if "address" not in entry or "port" not in entry:
            raise ValueError(f"endpoint needs 'address' and 'port', got keys {sorted(entry)}")
        raw_tags = entry.get("tags") or {}
        if not isinstance(raw_tags, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw_tags.items()
        ):
            raise ValueError(f"endpoint tags must map strings to strings, got {raw_tags!r}")
        dataplane = entry.get("dataplane") or ""
        protocol = entry.get("protocol") or "tcp"
        sni = entry.get("sni") or ""
        if not isinstance(dataplane, str) or not isinstance(protocol, str) or not isinstance(sni, str):
            raise ValueError("endpoint 'dataplane', 'protocol' and 'sni' must be strings")
        return cls(
            address=entry["address"],
            port=entry["port"],
            tags=tuple(raw_tags.items()),
            dataplane=dataplane,
            protocol=protocol,
            priority=entry.get("priority", 0),
            sni=sni,
        )
