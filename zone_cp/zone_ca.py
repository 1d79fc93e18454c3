"""A federated zone's certificate authorities: per mesh, an intermediate CA whose key is generated here and whose
certificate the mesh root at the global control plane signs, through the global keyspace.

Theory of operation. For each mesh with mTLS the zone keeps `<state_dir>/ca/<mesh>/pending.key` (0600) until
`zones/<zone>/ca/<mesh>/intermediate` holds a certificate for that key; the certificate, checked against the key
and the root bundle that comes with it (`MeshCA` refuses a mismatch or a chain that does not verify), is then
saved beside the key as a regular CA directory and used from then on, also across restarts while the global side
is unreachable. The private key never leaves the zone: only its CSR travels (`zones/<zone>/ca/<mesh>/csr`).
Until its intermediate arrives, a mesh has no CA in this zone and certificate requests are answered 503 (sidecars
retry). Every workload certificate of every zone thus chains to the same mesh root, so mTLS works across zones.

Renewal: once two thirds of an installed intermediate's life have passed (`renew_due`), the zone makes a new
pending key and publishes its CSR in the same place; the global CP signs it (the CSR is for another key than the
certificate offered), and the new intermediate replaces the old one, which signs meanwhile. Certificates the old
one signed stay valid (same root) until their sidecars renew them. An offered certificate for another key than the
pending one (the old intermediate, still in etcd until the root signs the new CSR; or one whose key this zone lost)
is not installed, and a zone without a pending key makes one: a zone whose CA files were removed asks again, as
does one whose files cannot be used (set aside in `ca/<mesh>/unusable-<time>/` and logged).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshcast.errors import StoreUnavailable
from meshcast.federation.keyspace import zone_prefix
from meshcast.pki import MeshCA, _files, build_csr, generate_workload_key
from meshcast.pki.ca import BUNDLE_FILE, CERT_FILE, KEY_FILE
from meshcast.pki.spiffe import trust_domain_id

log = logging.getLogger("meshcast.zone_cp.ca")

PENDING_KEY = "pending.key"
RENEW_AT = 2 / 3  # of an intermediate's life, as sidecars renew their certificates


class CANotReady(StoreUnavailable):
    """The zone has no intermediate CA for a mesh yet (HTTP 503: retry)."""


def csr_key(zone: str, mesh: str) -> str:
    return f"{zone_prefix(zone)}ca/{mesh}/csr"


def intermediate_key(zone: str, mesh: str) -> str:
    return f"{zone_prefix(zone)}ca/{mesh}/intermediate"


class ZoneCAs:
    """Same interface as `CertificateAuthorities.get`, for a zone whose CAs the global root signs."""

    def __init__(self, state_dir: Path, zone: str) -> None:
        self._dir = state_dir / "ca"
        self.zone = zone
        self._cas: dict[str, MeshCA] = {}
        self._csrs: dict[str, tuple[ec.EllipticCurvePublicKey, bytes]] = {}

    def get(self, mesh: str) -> MeshCA:
        ca = self._cas.get(mesh)
        if ca is None and (self._dir / mesh / KEY_FILE).exists():
            try:
                ca = self._cas[mesh] = MeshCA.load(self._dir / mesh)
            except (ValueError, OSError) as exc:  # e.g. a crash between the writes of a renewal: key and cert differ
                aside = self._set_aside(mesh)
                log.error("zone %s: the intermediate CA of mesh %s cannot be used (%s): moved to %s; asking the "
                          "global control plane for a new one", self.zone, mesh, exc, aside)
        if ca is None:
            raise CANotReady(f"zone {self.zone} has no CA for mesh {mesh} yet: the global control plane signs "
                             "its intermediate (is the global etcd reachable?)")
        return ca

    def _set_aside(self, mesh: str) -> Path:
        """Move the CA files of `mesh` into a new `unusable-<time>` directory beside them (0700, like the key)."""
        aside = self._dir / mesh / f"unusable-{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}"
        _files.ensure_dir(aside)
        for name in (KEY_FILE, CERT_FILE, BUNDLE_FILE):
            if (self._dir / mesh / name).exists():
                (self._dir / mesh / name).rename(aside / name)
        return aside

    def ready(self, mesh: str) -> bool:
        try:
            self.get(mesh)
            return True
        except CANotReady:
            return False

    def renew_due(self, mesh: str, now: datetime | None = None) -> bool:
        """The installed intermediate has lived two thirds of its life (False while there is none)."""
        if not self.ready(mesh):
            return False
        cert = self.get(mesh).certificate
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        return (now or datetime.now(UTC)) >= start + (end - start) * RENEW_AT

    def _pending_key(self, mesh: str) -> ec.EllipticCurvePrivateKey:
        path = self._dir / mesh / PENDING_KEY
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            return key
        key = generate_workload_key()
        _files.ensure_dir(path.parent)
        _files.write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
        return key

    def csr(self, mesh: str) -> bytes:
        """The CSR of this zone's pending intermediate key for `mesh` (the key is created on first use). The same
        bytes until the key changes: ECDSA signatures differ each time, and a new CSR would be published again."""
        key = self._pending_key(mesh)
        cached = self._csrs.get(mesh)
        if cached is None or cached[0] != key.public_key():
            cached = self._csrs[mesh] = (key.public_key(), build_csr(key, trust_domain_id(mesh)))
        return cached[1]

    def install(self, mesh: str, message: dict[str, Any]) -> bool:
        """Install the signed intermediate if it is for our pending key and chains to its bundle."""
        path = self._dir / mesh / PENDING_KEY
        if not path.exists():
            return False  # nothing asked for (a pending key and its CSR come next)
        key_pem = path.read_bytes()
        if not _for_key(message, self._pending_key(mesh)):
            return False  # an earlier intermediate: ours is not signed yet
        try:
            ca = MeshCA.from_pem(str(message["certificate"]).encode(), key_pem,
                                 bundle_pem=str(message["trustBundle"]).encode())
        except (KeyError, ValueError) as exc:
            log.warning("ignoring the intermediate offered for mesh %s: %s", mesh, exc)
            return False
        renewed = mesh in self._cas or (self._dir / mesh / KEY_FILE).exists()
        ca.save(self._dir / mesh)
        path.unlink(missing_ok=True)
        self._cas[mesh] = ca
        log.info("zone %s: intermediate CA for mesh %s %s (signed by the mesh root, valid until %s)", self.zone,
                 mesh, "renewed" if renewed else "installed", ca.not_after.isoformat())
        return True


def _for_key(message: dict[str, Any], key: ec.EllipticCurvePrivateKey) -> bool:
    """The offered certificate is for `key` (a malformed offer is left to `MeshCA.from_pem` to report)."""
    try:
        cert = x509.load_pem_x509_certificate(str(message["certificate"]).encode())
    except (KeyError, ValueError):
        return True
    return bool(cert.public_key() == key.public_key())


def parse_intermediate(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None
