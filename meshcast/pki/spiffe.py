"""SPIFFE IDs as Meshcast uses them: ``spiffe://<mesh>`` names a mesh (its trust domain, carried by its
CAs) and ``spiffe://<mesh>/<service>`` a workload. Mesh and service names follow the resource-name rule (DNS
labels, as `meshcast.resources.model.DNS_LABEL`), which keeps every ID inside the SPIFFE character set.

A workload certificate also names the tags of the instance (``version: v1``, ``zone: eu``), one URI SAN each:
``meshcast://tag/<name>/<value>``, name and value percent-encoded (RFC 3986: everything but letters, digits and
``-._~``, so ``/`` and ``:`` are escaped and each is exactly one path segment). Tag names and values follow the
resource rule for tags (`meshcast.resources.types.Tags`, repeated here). `service` is not a tag SAN: the SPIFFE ID
names it. The zone CP writes them from the registered Dataplane (never from the CSR); a receiving sidecar selects
callers by them (`from` items with `MeshSubset` / `MeshServiceSubset`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from meshcast.errors import ValidationError, Violation

if TYPE_CHECKING:
    from cryptography import x509

SCHEME = "spiffe://"
TAG_PREFIX = "meshcast://tag/"
SERVICE_TAG = "service"  # implied by the SPIFFE ID, never a tag SAN
ZONE_TAG = "zone"  # the zone of the control plane that signed the certificate
NO_SAN = "certificate has no subjectAltName, so no SPIFFE ID"
# Same rule as meshcast.resources.model.DNS_LABEL; repeated so that pki stays free of the resource model.
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# Same rules as meshcast.resources.types._TAG_KEY and _TAG_VALUE (a unit test checks they stay equal).
TAG_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?")
TAG_VALUE = re.compile(r"[A-Za-z0-9._:/-]{1,253}")


def check_label(field: str, value: object) -> list[Violation]:
    """Violations (empty if none) of `value` as a mesh, service or zone name."""
    if not isinstance(value, str) or not _LABEL.fullmatch(value):
        return [Violation(field, f"invalid name {value!r}: use lowercase letters, digits and '-' (max 63)")]
    return []


def trust_domain_id(mesh: str) -> str:
    """``spiffe://<mesh>``, the ID carried by the mesh's CA certificates."""
    return f"{SCHEME}{mesh}"


def workload_id(mesh: str, service: str) -> str:
    """``spiffe://<mesh>/<service>``; raise ValidationError if either name is not a label."""
    violations = check_label("mesh", mesh) + check_label("service", service)
    if violations:
        raise ValidationError("spiffe id", violations)
    return f"{SCHEME}{mesh}/{service}"


def parse_id(uri: str) -> tuple[str, str | None]:
    """Split a Meshcast SPIFFE ID into (mesh, service or None); raise ValueError if it is not one."""
    if not uri.startswith(SCHEME):
        raise ValueError(f"not a SPIFFE ID: {uri!r}")
    mesh, sep, service = uri[len(SCHEME) :].partition("/")
    if not _LABEL.fullmatch(mesh) or (sep and not _LABEL.fullmatch(service)):
        raise ValueError(f"not a Meshcast SPIFFE ID (spiffe://<mesh>[/<service>]): {uri!r}")
    return mesh, (service if sep else None)


def spiffe_id_of(cert: x509.Certificate) -> str:
    """The one SPIFFE ID a certificate names in its URI SANs; raise ValueError if it has none or several."""
    from cryptography import x509  # here: the sidecar imports this module without cryptography (`certinfo`)

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ValueError(NO_SAN) from None
    return spiffe_id_in(san.get_values_for_type(x509.UniformResourceIdentifier))


def spiffe_id_in(uris: Iterable[str]) -> str:
    """The one SPIFFE ID among a certificate's URI SANs; raise ValueError if there are none or several."""
    ids = [u for u in uris if u.startswith(SCHEME)]
    if len(ids) != 1:
        raise ValueError(f"certificate must name exactly one SPIFFE ID, it names {len(ids)}")
    parse_id(ids[0])
    return ids[0]


def check_tags(tags: Mapping[str, str]) -> list[Violation]:
    """Violations (empty if none) of `tags` as the tags a workload certificate may carry."""
    violations = []
    for name, value in tags.items():
        if not isinstance(name, str) or not TAG_KEY.fullmatch(name):
            violations.append(Violation("tags", f"invalid tag name {name!r}: letters, digits and . _ / - (max 63)"))
        elif name == SERVICE_TAG:
            violations.append(Violation(f"tags.{name}", "the SPIFFE ID names the service: not a tag"))
        elif not isinstance(value, str) or not TAG_VALUE.fullmatch(value):
            violations.append(Violation(f"tags.{name}", f"invalid tag value {value!r}: letters, digits and "
                                        ". _ : / - (1-253)"))
    return violations


def tag_uri(name: str, value: str) -> str:
    """``meshcast://tag/<name>/<value>``, both percent-encoded; the caller has checked them (`check_tags`)."""
    return f"{TAG_PREFIX}{quote(name, safe='')}/{quote(value, safe='')}"


def tags_in(uris: Iterable[str]) -> dict[str, str]:
    """The tags among a certificate's URI SANs; ValueError for a malformed or non-canonical tag URI, a tag named
    twice or a `service` tag (none of which the mesh CA issues)."""
    tags: dict[str, str] = {}
    for uri in uris:
        if not uri.startswith(TAG_PREFIX):
            continue
        parts = uri[len(TAG_PREFIX):].split("/")
        if len(parts) != 2:
            raise ValueError(f"malformed tag URI {uri!r}: meshcast://tag/<name>/<value>")
        name, value = unquote(parts[0], errors="strict"), unquote(parts[1], errors="strict")
        if tag_uri(name, value) != uri or check_tags({name: value}):
            raise ValueError(f"malformed tag URI {uri!r}")
        if name in tags:
            raise ValueError(f"certificate names tag {name!r} twice")
        tags[name] = value
    return tags


def workload_tags(inbound_tags: Iterable[Mapping[str, str]], zone: str = "") -> dict[str, str]:
    """The tags a certificate for a service names: those every inbound of the service has, with the same value
    (an instance whose inbounds disagree on a tag claims neither value), without `service`; `zone` is the zone of
    the control plane that signs it, whatever the inbounds say, when it has a zone name."""
    common: dict[str, str] | None = None
    for tags in inbound_tags:
        common = dict(tags) if common is None else {k: v for k, v in common.items() if tags.get(k) == v}
    out = {k: v for k, v in (common or {}).items() if k != SERVICE_TAG}
    if zone:
        out[ZONE_TAG] = zone
    return out
