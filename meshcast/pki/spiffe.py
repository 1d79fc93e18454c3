"""SPIFFE IDs as Meshcast uses them: ``spiffe://<mesh>`` names a mesh (its trust domain, carried by its
CAs) and ``spiffe://<mesh>/<service>`` a workload. Mesh and service names follow the resource-name rule (DNS
labels, as `meshcast.resources.model.DNS_LABEL`), which keeps every ID inside the SPIFFE character set.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from meshcast.errors import ValidationError, Violation

if TYPE_CHECKING:
    from cryptography import x509

SCHEME = "spiffe://"
NO_SAN = "certificate has no subjectAltName, so no SPIFFE ID"
# Same rule as meshcast.resources.model.DNS_LABEL; repeated so that pki stays free of the resource model.
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


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
