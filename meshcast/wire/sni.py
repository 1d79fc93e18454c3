"""The SNI that names a service of a mesh in cross-zone traffic: ``<service>.<mesh>.mesh.meshcast``.

A sidecar dialling a service in another zone sends this name as the SNI of its ClientHello; the zone ingress routes
on it without terminating TLS (the session stays end to end between the sidecars, so the name is only a routing
key: the peer's identity is still its certificate's SPIFFE ID).

Mesh and service names are resource names: DNS labels of 1-63 lowercase letters, digits and '-', starting and
ending with a letter or digit (`meshcast.resources.model.DNS_LABEL`). Every such pair is therefore already a pair
of valid DNS labels and needs no encoding; the name is at most 63 + 1 + 63 + 14 = 141 characters, well within the
253 of a DNS name. Neither label contains a dot and the suffix is fixed, so the name splits back unambiguously (a
mesh or service may itself be called ``mesh`` or ``meshcast``). `parse_service_sni` accepts the name in any case,
as DNS names are case-insensitive (RFC 4343), and refuses a trailing dot, which SNI never carries (RFC 6066 §3).
"""

from __future__ import annotations

import re

SUFFIX = "mesh.meshcast"

# Same rule as meshcast.resources.model.DNS_LABEL; repeated so the data plane stays free of the resource model
# (pydantic: docs/adr/0004-sidecar-memory.md). A unit test checks the two stay equal.
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def service_sni(mesh: str, service: str) -> str:
    """The SNI for `service` of `mesh`; raise ValueError if either is not a valid resource name."""
    for what, value in (("mesh", mesh), ("service", service)):
        if not _LABEL.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid {what} name: use 1-63 lowercase letters, digits or '-'")
    return f"{service}.{mesh}.{SUFFIX}"


def parse_service_sni(name: str) -> tuple[str, str] | None:
    """(mesh, service) named by an SNI of the form `service_sni` makes, or None if it is not one."""
    if not name.isascii():  # str.lower() would fold some non-ASCII letters into ASCII ones
        return None
    head, dot, suffix = name.lower().rpartition("." + SUFFIX)
    if not dot or suffix:
        return None
    service, dot, mesh = head.partition(".")
    if not dot or not _LABEL.fullmatch(service) or not _LABEL.fullmatch(mesh):
        return None
    return mesh, service
