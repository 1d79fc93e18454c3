"""The requester's side of the PKI: workload keys, CSRs, and verifying a peer's chain against a trust bundle.

Private keys are generated where they are used (the sidecar) and never travel: only CSRs go to the zone CP.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from meshcast.errors import Unauthorized
from meshcast.pki.spiffe import parse_id, spiffe_id_of


def generate_workload_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key, the only kind the mesh CA signs."""
    return ec.generate_private_key(ec.SECP256R1())


def build_csr(key: ec.EllipticCurvePrivateKey, spiffe_id: str) -> bytes:
    """A PEM CSR asking for `spiffe_id`. The CA picks the name itself; the CSR only proves key possession."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=False
        )
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


class TrustBundle:
    """The roots a peer's chain must end in; parse once, verify many chains.

    `verify` raises `Unauthorized` (one line) for any chain it does not accept and returns the SPIFFE ID
    otherwise. It checks signatures, validity times, CA flags, path lengths and key usages along the chain
    (RFC 5280 via `cryptography.x509.verification`, as a TLS client certificate, so the leaf needs clientAuth,
    which every Meshcast leaf has), then that the leaf names exactly one ``spiffe://<mesh>/<service>`` and
    that every CA in the chain belongs to that same mesh.
    """

    __slots__ = ("_store",)

    def __init__(self, roots: Iterable[x509.Certificate]) -> None:
        roots = list(roots)
        if not roots:
            raise ValueError("a trust bundle needs at least one root certificate")
        self._store = Store(roots)

    @classmethod
    def from_pem(cls, bundle_pem: bytes) -> TrustBundle:
        return cls(x509.load_pem_x509_certificates(bundle_pem))

    def verify(self, chain: bytes | Sequence[x509.Certificate], *, now: datetime | None = None) -> str:
        """Verify leaf → intermediates → a root of this bundle; return the leaf's SPIFFE ID."""
        if isinstance(chain, bytes):
            try:
                certs = x509.load_pem_x509_certificates(chain)
            except (ValueError, x509.InvalidVersion):
                raise Unauthorized("certificate chain rejected: not PEM certificates") from None
        else:
            certs = list(chain)
        if not certs:
            raise Unauthorized("certificate chain rejected: empty")
        verifier = PolicyBuilder().store(self._store).time(now or datetime.now(UTC)).build_client_verifier()
        try:
            verified = verifier.verify(certs[0], certs[1:])
        except VerificationError as e:
            reason = " ".join(str(e).split())
            raise Unauthorized(f"certificate chain rejected: {reason}") from None
        try:
            spiffe_id = spiffe_id_of(certs[0])
            mesh, service = parse_id(spiffe_id)
            if service is None:
                raise ValueError(f"{spiffe_id} names a mesh, not a workload")
            for ca in verified.chain[1:]:
                if spiffe_id_of(ca) != f"spiffe://{mesh}":
                    raise ValueError(f"issuer {ca.subject.rfc4514_string()} is not a CA of mesh {mesh}")
        except ValueError as e:
            raise Unauthorized(f"certificate rejected: {e}") from None
        return spiffe_id


def verify_chain(leaf_pem_chain: bytes, bundle_pem: bytes, *, now: datetime | None = None) -> str:
    """`TrustBundle.from_pem(bundle_pem).verify(leaf_pem_chain)`; keep a TrustBundle to verify many chains."""
    try:
        bundle = TrustBundle.from_pem(bundle_pem)
    except ValueError as e:
        raise ValueError(f"trust bundle: {e}") from None
    return bundle.verify(leaf_pem_chain, now=now)
