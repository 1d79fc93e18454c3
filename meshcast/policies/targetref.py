"""What a policy applies to: `targetRef`, as in Kuma's policies.

A policy's top-level `targetRef` selects **proxies** (the sidecars, gateways it configures); the `targetRef` of each
`to` item names the **destination** service of the traffic it configures, and that of each `from` item the
**caller**. Kinds, from the least to the most specific (the order that decides which of several matching policies
wins, see `meshcast.policies.resolve`):

| kind                | fields         | selects a proxy when             | in `to`      | in `from`: callers that are |
|---------------------|----------------|----------------------------------|--------------|-----------------------------|
| `Mesh`              | —              | always                           | any          | any                         |
| `MeshSubset`        | `tags`         | an inbound has all `tags`        | —            | instances with all `tags`   |
| `MeshGateway`       | `name`         | it is that MeshGateway's gateway | —            | —                           |
| `MeshService`       | `name`         | an inbound is that service       | that service | that service                |
| `MeshServiceSubset` | `name`, `tags` | an inbound is it with all `tags` | —            | it, with all `tags`         |

A caller is known by its certificate: the SPIFFE ID (`spiffe://<mesh>/<service>`) names its service, and one URI SAN
per tag (`meshcast://tag/<name>/<value>`) the tags of its instance, written by the zone CP from the caller's
registered Dataplane (its inbounds' tags and the zone as `zone`; `meshcast.pki.spiffe`), so a caller cannot claim
tags it was not registered with. A `from` item's `tags` are matched against those tags and `service`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from pydantic import Field, model_validator

from meshcast.resources.model import Spec
from meshcast.resources.types import Name, Tags

Kind = Literal["Mesh", "MeshSubset", "MeshGateway", "MeshService", "MeshServiceSubset"]

RANK: dict[str, int] = {"Mesh": 0, "MeshSubset": 1, "MeshGateway": 2, "MeshService": 2, "MeshServiceSubset": 3}


class TargetRef(Spec):
    kind: Kind = Field(description="what is selected, see the table of kinds")
    name: Name | None = Field(
        default=None,
        description="the service (`MeshService`, `MeshServiceSubset`) or the MeshGateway (`MeshGateway`); "
        "required by those kinds, refused by the others",
    )
    tags: Tags = Field(
        default_factory=dict,
        description="tags an inbound must all have (`MeshSubset`, `MeshServiceSubset`); required by those kinds, "
        "refused by the others",
    )

    @model_validator(mode="after")
    def _fields_of_kind(self) -> Self:
        needs_name = self.kind in ("MeshService", "MeshServiceSubset", "MeshGateway")
        needs_tags = self.kind in ("MeshSubset", "MeshServiceSubset")
        if needs_name and self.name is None:
            raise ValueError(f"kind {self.kind} needs a name")
        if not needs_name and self.name is not None:
            raise ValueError(f"kind {self.kind} takes no name")
        if needs_tags and not self.tags:
            raise ValueError(f"kind {self.kind} needs tags")
        if not needs_tags and self.tags:
            raise ValueError(f"kind {self.kind} takes no tags")
        return self

    @property
    def rank(self) -> tuple[int, int]:
        """Specificity: the kind's rank, then how many tags it requires."""
        return (RANK[self.kind], len(self.tags))

    def selects(self, proxy: ProxyFacts) -> bool:
        """Whether this top-level targetRef selects `proxy`."""
        if self.kind == "Mesh":
            return True
        if self.kind == "MeshGateway":
            return proxy.gateway == self.name
        for tags in proxy.inbound_tags:
            if self.name is not None and tags.get("service") != self.name:
                continue
            if all(tags.get(key) == value for key, value in self.tags.items()):
                return True
        return False

    def names_service(self, service: str) -> bool:
        """Whether this `to`/`from` targetRef covers traffic to (or from) `service`."""
        return self.kind == "Mesh" or self.name == service

    @property
    def wire(self) -> dict[str, Any]:
        """The fields a sidecar matches a `from` item by (`dataplane.policy`): kind, name and tags if any."""
        return {"kind": self.kind, **({"name": self.name} if self.name is not None else {}),
                **({"tags": dict(self.tags)} if self.tags else {})}

    def describe(self) -> str:
        if self.kind == "Mesh":
            return "Mesh"
        words = [self.kind, *([self.name] if self.name else []), *(f"{k}={v}" for k, v in sorted(self.tags.items()))]
        return " ".join(words)


MESH = TargetRef(kind="Mesh")


@dataclass(frozen=True)
class ProxyFacts:
    """What targetRefs select a proxy by: its inbounds' tags (each with `service`) and, for an edge gateway, the
    name of its MeshGateway."""

    inbound_tags: Sequence[Mapping[str, str]] = field(default_factory=tuple)
    gateway: str | None = None

    @property
    def services(self) -> list[str]:
        found = {tags["service"] for tags in self.inbound_tags if "service" in tags}
        return sorted(found | ({self.gateway} if self.gateway else set()))
