"""Mutual TLS between sidecars: the workload identity and the SSL contexts built from it.

Inbound listeners accept TLS 1.3 only, require a client certificate that chains to the mesh's trust bundle, and
read the caller's SPIFFE ID and tags from it (`peer_identity`); outbound connections present the sidecar's
certificate and verify the peer against the same bundle. Hostname checks are off: the peer's identity is its SPIFFE
URI SAN, checked by the proxy's authorization, not a DNS name. A rotated identity builds new contexts; connections
already open keep the context they were made with, so rotation drops nothing.

Certificates are read with the standard library (`meshcast.pki.certinfo`): the long-lived sidecar never imports
`cryptography`, whose keys and CSRs are made in a short-lived child process (`dataplane.transport.keygen`).
"""

from __future__ import annotations

import functools
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from meshcast.pki import CLOCK_SKEW
from meshcast.pki.certinfo import CertificateInfo, read_der, read_pem
from meshcast.pki.spiffe import parse_id

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

ALPN_MESH = ["h2", "http/1.1"]


@dataclass(frozen=True)
class Identity:
    """A workload's key, its certificate chain (leaf first) and the mesh's trust bundle, all PEM."""

    key_pem: bytes
    chain_pem: bytes
    bundle_pem: bytes

    @classmethod
    def from_key(cls, key: ec.EllipticCurvePrivateKey, chain_pem: bytes, bundle_pem: bytes) -> Identity:
        """From a `cryptography` key (tests, tools); the sidecar itself gets PEM from `keygen`."""
        from cryptography.hazmat.primitives import serialization

        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        return cls(pem, chain_pem, bundle_pem)

    @functools.cached_property
    def leaf(self) -> CertificateInfo:
        """Validity and SANs of the first certificate of the chain; ValueError if it is not a certificate."""
        return read_pem(self.chain_pem)

    @property
    def spiffe_id(self) -> str:
        return self.leaf.spiffe_id

    @property
    def not_before(self) -> datetime:
        return self.leaf.not_before

    @property
    def not_after(self) -> datetime:
        return self.leaf.not_after

    @property
    def issued_at(self) -> datetime:
        """When the certificate was signed: the mesh CA back-dates notBefore by CLOCK_SKEW for peers' clocks."""
        return min(self.not_before + CLOCK_SKEW, self.not_after)

    def rotate_at(self) -> datetime:
        """Two thirds into the certificate's life: time enough to retry if the control plane is briefly away."""
        return self.issued_at + (self.not_after - self.issued_at) * 2 / 3

    def __repr__(self) -> str:  # never show the key
        return f"Identity({self.spiffe_id!r}, not_after={self.not_after.isoformat()!r})"


def _load_chain(context: ssl.SSLContext, identity: Identity) -> None:
    # ssl only loads keys from files: write them to a private temporary directory and remove it at once.
    with tempfile.TemporaryDirectory(prefix="meshcast-id-") as tmp:
        key_path, chain_path = Path(tmp) / "key.pem", Path(tmp) / "chain.pem"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(identity.key_pem)
        chain_path.write_bytes(identity.chain_pem)
        context.load_cert_chain(chain_path, key_path)


def server_context(identity: Identity, *, alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=identity.bundle_pem.decode())
    _load_chain(context, identity)
    context.set_alpn_protocols(alpn or ALPN_MESH)
    return context


def client_context(identity: Identity, *, alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # identities are SPIFFE IDs, authorized by the proxy
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=identity.bundle_pem.decode())
    _load_chain(context, identity)
    context.set_alpn_protocols(alpn or ALPN_MESH)
    return context


def peer_spiffe_id(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
    """The SPIFFE ID of a verified peer, or None if it presented no usable certificate."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    try:
        return read_der(der).spiffe_id
    except ValueError:  # no SPIFFE ID, several, or a malformed one: no identity
        return None


@dataclass(frozen=True)
class PeerIdentity:
    """Who a verified peer is: its SPIFFE ID, the service that names, and the tags its certificate names (signed by
    the mesh CA from the peer's registered Dataplane; `service` not among them)."""

    spiffe_id: str
    service: str
    tags: Mapping[str, str]


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> PeerIdentity | None:
    """The identity of a verified peer, or None if it presented no usable certificate (no SPIFFE ID, several, a
    mesh's rather than a workload's, or a malformed tag)."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    try:
        info = read_der(der)
        spiffe_id = info.spiffe_id
        _, service = parse_id(spiffe_id)
        tags = info.tags
    except ValueError:
        return None
    return None if service is None else PeerIdentity(spiffe_id, service, tags)
