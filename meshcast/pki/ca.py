"""The mesh certificate authority: a root per mesh at the global CP, an intermediate per zone, the leaves.

Hierarchy (design.md, "Identity and security")::

    root      CN=Meshcast <mesh> root CA                 CA:true pathLen:1   URI spiffe://<mesh>   (global CP)
    └ zone    CN=Meshcast <mesh> <zone> intermediate CA  CA:true pathLen:0   URI spiffe://<mesh>   (zone CP)
      └ leaf  (empty subject)                            CA:false            URI spiffe://<mesh>/<service>
                                                                             URI meshcast://tag/<name>/<value> ...

A root may also sign leaves directly (a single-zone mesh). Leaves have an empty subject and a critical
subjectAltName, as RFC 5280 requires for an empty subject; the SPIFFE ID is the identity, nothing else is. After it
come the instance's tags (`version`, `zone`, ...), one URI each, sorted by name, percent-encoded
(`meshcast.pki.spiffe.tag_uri`): the zone CP takes them from the registered Dataplane, so a workload cannot claim
tags it was not registered with, and receiving sidecars select callers by them (`MeshSubset` in `from`).
Every key is ECDSA P-256 and every signature ECDSA with SHA-256.

Signing is pure CPU work (about half a millisecond); everything that does not depend on the request (issuer
name, authority key identifier, the fixed extensions, the chain to append) is computed once per CA.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshcast.errors import MeshcastError, ValidationError, Violation
from meshcast.pki import _files
from meshcast.pki._clock import CLOCK_SKEW, aware_now
from meshcast.pki.spiffe import (
    check_label,
    check_tags,
    parse_id,
    spiffe_id_of,
    tag_uri,
    trust_domain_id,
    workload_id,
)
from meshcast.pki.workload import build_csr

DEFAULT_ROOT_VALIDITY = timedelta(days=3650)
DEFAULT_INTERMEDIATE_VALIDITY = timedelta(days=365)
DEFAULT_WORKLOAD_TTL = timedelta(hours=24)

KEY_FILE = "ca.key"
CERT_FILE = "ca.crt"
BUNDLE_FILE = "bundle.crt"

_MAX_CSR_BYTES = 16 * 1024
_SHA256 = hashes.SHA256()
_CSR_HASHES = (hashes.SHA256, hashes.SHA384, hashes.SHA512)
_PEM = serialization.Encoding.PEM


def _key_usage(*, leaf: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=leaf,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=not leaf,
        crl_sign=not leaf,
        encipher_only=False,
        decipher_only=False,
    )


_LEAF_BASIC = x509.BasicConstraints(ca=False, path_length=None)
_LEAF_KEY_USAGE = _key_usage(leaf=True)
_LEAF_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
_CA_KEY_USAGE = _key_usage(leaf=False)
_EMPTY_NAME = x509.Name([])


def _csr_error(message: str) -> ValidationError:
    return ValidationError("csr", [Violation("", message)])


def _is_p256(key: object) -> bool:
    return isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) and isinstance(
        key.curve, ec.SECP256R1
    )


def _csr_public_key(csr_pem: bytes) -> ec.EllipticCurvePublicKey:
    """The public key of a PEM CSR whose self-signature verifies; ValidationError otherwise."""
    if not isinstance(csr_pem, bytes):
        raise _csr_error("must be PEM bytes")
    if len(csr_pem) > _MAX_CSR_BYTES:
        raise _csr_error(f"larger than {_MAX_CSR_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except (ValueError, x509.InvalidVersion):
        raise _csr_error("not a PEM certificate signing request") from None
    try:
        key = csr.public_key()
        algorithm = csr.signature_hash_algorithm
    except (ValueError, UnsupportedAlgorithm):
        raise _csr_error("unsupported key or signature algorithm") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise _csr_error("public key must be ECDSA P-256")
    if not isinstance(algorithm, _CSR_HASHES):
        raise _csr_error("signature must use SHA-256, SHA-384 or SHA-512")
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        valid = False
    if not valid:
        raise _csr_error("signature does not verify")
    return key


_now = aware_now


def _serial() -> int:
    # 128 random bits (CA/B asks for at least 64); zero is not a valid serial number.
    return secrets.randbits(128) or 1


def _pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(_PEM) for c in certs)


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


class MeshCA:
    """A CA of one mesh: a self-signed root, or a zone intermediate under one of the roots in its bundle.

    Owns its private key, which leaves the object only through `key_pem()` and `save()`, never through repr.
    Instances are immutable and safe to share between threads.

    Raises `ValidationError` for a bad CSR or name, `MeshcastError` when the CA itself has expired, and
    `ValueError` for misuse (an intermediate asked to sign intermediates, a non-positive TTL, another mesh).
    Guarantees that every leaf it signs names exactly one ``spiffe://<mesh>/<service>`` URI SAN, then one
    ``meshcast://tag/<name>/<value>`` URI SAN per tag it was given and no other name, is not a CA, and expires no
    later than the signing CA.
    """

    __slots__ = (
        "_aki",
        "_cert",
        "_cert_pem",
        "_issuer",
        "_key",
        "_mesh",
        "_not_after",
        "_not_before",
        "_presented_pem",
        "_roots",
    )

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        cert: x509.Certificate,
        *,
        roots: Sequence[x509.Certificate] = (),
    ) -> None:
        """Pair a key with its CA certificate (an intermediate needs its root in `roots`)."""
        if not _is_p256(key):
            raise ValueError("CA key must be ECDSA P-256")
        pub = serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(serialization.Encoding.DER, pub) != cert.public_key().public_bytes(
            serialization.Encoding.DER, pub
        ):
            raise ValueError("CA key does not match the CA certificate")
        try:
            basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            basic = None
        try:
            signs_certs = cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
        except x509.ExtensionNotFound:
            signs_certs = False
        if basic is None or not basic.ca or not signs_certs:
            raise ValueError("certificate is not a CA certificate (needs CA:true and keyUsage keyCertSign)")
        mesh, service = parse_id(spiffe_id_of(cert))
        if service is not None:
            raise ValueError(f"CA certificate must name spiffe://<mesh>, not {spiffe_id_of(cert)}")

        is_root = cert.issuer == cert.subject and _signed_by(cert, cert)
        all_roots: list[x509.Certificate] = [cert] if is_root else []
        for root in roots:
            if root not in all_roots:
                all_roots.append(root)
        for root in all_roots:
            if spiffe_id_of(root) != trust_domain_id(mesh):
                raise ValueError(f"root {root.subject.rfc4514_string()} is not a root of mesh {mesh}")
        if not is_root and not any(_signed_by(cert, root) for root in all_roots):
            raise ValueError("intermediate CA is not signed by any root in the trust bundle")

        try:
            ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        except x509.ExtensionNotFound:
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())

        self._key = key
        self._cert = cert
        self._mesh = mesh
        self._roots = tuple(all_roots)
        self._issuer = cert.subject
        self._aki = aki
        self._not_before = cert.not_valid_before_utc
        self._not_after = cert.not_valid_after_utc
        self._cert_pem = cert.public_bytes(_PEM)
        self._presented_pem = b"" if is_root else self._cert_pem

    # --- creating and persisting ---------------------------------------------------------------------------

    @classmethod
    def generate(
        cls, mesh: str, validity: timedelta = DEFAULT_ROOT_VALIDITY, *, now: datetime | None = None
    ) -> MeshCA:
        """A new self-signed root for `mesh` with a fresh P-256 key."""
        violations = check_label("mesh", mesh)
        if violations:
            raise ValidationError("mesh CA", violations)
        if validity <= timedelta(0):
            raise ValueError("validity must be positive")
        now = _now(now)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Meshcast {mesh} root CA")])
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
        builder = _ca_builder(name, name, key.public_key(), aki, mesh, 1, now - CLOCK_SKEW, now + validity)
        cert = builder.sign(key, _SHA256)
        return cls(key, cert)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes, *, bundle_pem: bytes | None = None) -> MeshCA:
        """Rebuild a CA from PEM; `bundle_pem` (root certificates) is required for an intermediate."""
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ValueError("CA key is not an unencrypted PEM private key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("CA key must be ECDSA P-256")
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            roots = x509.load_pem_x509_certificates(bundle_pem) if bundle_pem and bundle_pem.strip() else []
        except (ValueError, x509.InvalidVersion):
            raise ValueError("CA certificate or trust bundle is not PEM certificates") from None
        return cls(key, cert, roots=roots)

    def save(self, directory: str | Path) -> None:
        """Write ca.crt, bundle.crt (0644) and ca.key (0600, never readable by others, even briefly)."""
        directory = Path(directory)
        _files.ensure_dir(directory)
        _files.write_public(directory / CERT_FILE, self._cert_pem)
        _files.write_public(directory / BUNDLE_FILE, self.trust_bundle())
        _files.write_private(directory / KEY_FILE, self.key_pem())

    @classmethod
    def load(cls, directory: str | Path) -> MeshCA:
        """Read what `save` wrote."""
        directory = Path(directory)
        bundle = directory / BUNDLE_FILE
        return cls.from_pem(
            (directory / CERT_FILE).read_bytes(),
            (directory / KEY_FILE).read_bytes(),
            bundle_pem=bundle.read_bytes() if bundle.exists() else None,
        )

    def key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (a method, so that reading it is deliberate)."""
        return self._key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

    def with_trusted_roots(self, bundle_pem: bytes) -> MeshCA:
        """This CA also trusting the roots in `bundle_pem` (root rotation: old and new trusted together)."""
        extra = x509.load_pem_x509_certificates(bundle_pem)
        return MeshCA(self._key, self._cert, roots=[*self._roots, *extra])

    # --- what it is -----------------------------------------------------------------------------------------

    @property
    def mesh(self) -> str:
        return self._mesh

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    @property
    def cert_pem(self) -> bytes:
        return self._cert_pem

    @property
    def is_root(self) -> bool:
        return not self._presented_pem

    @property
    def not_after(self) -> datetime:
        return self._not_after

    @property
    def chain_pem(self) -> bytes:
        """Certificates a workload presents after its leaf: the intermediate, or nothing under a root."""
        return self._presented_pem

    def trust_bundle(self) -> bytes:
        """PEM of every trusted root (a root CA lists itself first): what peers verify workloads against."""
        return _pem(self._roots)

    def __repr__(self) -> str:
        kind = "root" if self.is_root else "intermediate"
        return (
            f"MeshCA(mesh={self._mesh!r}, kind={kind!r}, subject={self._issuer.rfc4514_string()!r}, "
            f"not_after={self._not_after.isoformat()!r})"
        )

    # --- signing --------------------------------------------------------------------------------------------

    def sign_workload_csr(
        self,
        csr_pem: bytes,
        *,
        service: str,
        mesh: str,
        ttl: timedelta,
        tags: Mapping[str, str] | None = None,
        now: datetime | None = None,
    ) -> bytes:
        """Sign a workload certificate for ``spiffe://<mesh>/<service>`` with `tags`; return the chain to present.

        The caller (the zone CP) has already authorized `service` and read `tags` from the registered Dataplane
        (`service` is not among them: the SPIFFE ID names it); every name the CSR asks for is ignored, only its
        public key is used, and only after its signature proves possession of the private key.
        """
        if mesh != self._mesh:
            raise ValueError(f"this CA signs for mesh {self._mesh!r}, not {mesh!r}")
        uri = workload_id(mesh, service)
        tags = dict(tags or {})
        violations = check_tags(tags)
        if violations:
            raise ValidationError("workload certificate", violations)
        names = [x509.UniformResourceIdentifier(uri)]
        names += [x509.UniformResourceIdentifier(tag_uri(name, tags[name])) for name in sorted(tags)]
        if ttl <= timedelta(0):
            raise ValueError("ttl must be positive")
        public_key = _csr_public_key(csr_pem)
        now = _now(now)
        not_before, not_after = self._window(now, ttl)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_EMPTY_NAME)
            .issuer_name(self._issuer)
            .public_key(public_key)
            .serial_number(_serial())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(_LEAF_BASIC, critical=True)
            .add_extension(_LEAF_KEY_USAGE, critical=True)
            .add_extension(_LEAF_EKU, critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(self._aki, critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=True)
            .sign(self._key, _SHA256)
        )
        return cert.public_bytes(_PEM) + self._presented_pem

    def sign_intermediate(
        self,
        csr_pem: bytes,
        *,
        zone: str,
        validity: timedelta = DEFAULT_INTERMEDIATE_VALIDITY,
        now: datetime | None = None,
    ) -> bytes:
        """Sign a zone's intermediate CA (pathLen 0: it signs leaves only); return its certificate as PEM."""
        if not self.is_root:
            raise ValueError("only a root CA signs intermediates (an intermediate has pathLen 0)")
        violations = check_label("zone", zone)
        if violations:
            raise ValidationError("intermediate CA", violations)
        if validity <= timedelta(0):
            raise ValueError("validity must be positive")
        public_key = _csr_public_key(csr_pem)
        not_before, not_after = self._window(_now(now), validity)
        name = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, f"Meshcast {self._mesh} {zone} intermediate CA")]
        )
        builder = _ca_builder(name, self._issuer, public_key, self._aki, self._mesh, 0, not_before, not_after)
        return builder.sign(self._key, _SHA256).public_bytes(_PEM)

    def generate_intermediate(
        self, *, zone: str, validity: timedelta = DEFAULT_INTERMEDIATE_VALIDITY, now: datetime | None = None
    ) -> MeshCA:
        """Key, CSR and signature in one process, for tests and single-process setups.

        Across processes the zone CP keeps its key, sends `build_csr(key, "spiffe://<mesh>")` and gets back
        `sign_intermediate`'s PEM, then builds ``MeshCA(key, cert, roots=bundle)``.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        csr = build_csr(key, trust_domain_id(self._mesh))
        cert = x509.load_pem_x509_certificate(
            self.sign_intermediate(csr, zone=zone, validity=validity, now=now)
        )
        return MeshCA(key, cert, roots=self._roots)

    def _window(self, now: datetime, lifetime: timedelta) -> tuple[datetime, datetime]:
        if now >= self._not_after:
            raise MeshcastError(
                f"mesh {self._mesh} CA {self._issuer.rfc4514_string()} expired at "
                f"{self._not_after.isoformat()}; rotate it"
            )
        not_before, not_after = max(now - CLOCK_SKEW, self._not_before), min(now + lifetime, self._not_after)
        if not_after <= not_before:
            raise MeshcastError(
                f"mesh {self._mesh} CA {self._issuer.rfc4514_string()} is not valid before "
                f"{self._not_before.isoformat()}; check the system clock"
            )
        return not_before, not_after


def _ca_builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    aki: x509.AuthorityKeyIdentifier,
    mesh: str,
    path_length: int,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_CA_KEY_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(aki, critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(trust_domain_id(mesh))]),
            critical=False,
        )
    )
