"""The mesh CA: what a workload certificate carries, what the CA refuses, and how keys are kept on disk."""

from __future__ import annotations

import base64
import os
import ssl
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from meshcast.errors import MeshcastError, Unauthorized, ValidationError
from meshcast.pki import (
    CLOCK_SKEW,
    MeshCA,
    TrustBundle,
    _files,
    build_csr,
    generate_workload_key,
    spiffe_id_of,
    verify_chain,
)

E = TypeVar("E", bound=x509.ExtensionType)
NOW = datetime.now(UTC).replace(microsecond=0)  # certificates hold whole seconds; OpenSSL checks real time
DAY = timedelta(days=1)
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def root() -> MeshCA:
    return MeshCA.generate("demo", now=NOW - DAY)


@pytest.fixture(scope="module")
def zone(root: MeshCA) -> MeshCA:
    return root.generate_intermediate(zone="eu-west", now=NOW - DAY)


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return generate_workload_key()


@pytest.fixture(scope="module")
def csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    return build_csr(key, "spiffe://demo/web")


def certs(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def ext(cert: x509.Certificate, kind: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(kind)


def sign(ca: MeshCA, csr: bytes, service: str = "web", ttl: timedelta = DAY, now: datetime = NOW) -> bytes:
    return ca.sign_workload_csr(csr, service=service, mesh="demo", ttl=ttl, now=now)


# --- what a leaf carries --------------------------------------------------------------------------


def test_leaf_carries_exactly_the_spiffe_id_and_chains_to_the_root(root: MeshCA, csr: bytes) -> None:
    chain = sign(root, csr)
    [leaf] = certs(chain)  # under a root, the leaf travels alone

    san = ext(leaf, x509.SubjectAlternativeName)
    assert san.critical  # the subject is empty, so RFC 5280 requires it
    assert list(san.value) == [x509.UniformResourceIdentifier("spiffe://demo/web")]
    assert leaf.subject == x509.Name([])
    assert leaf.issuer == root.certificate.subject
    basic = ext(leaf, x509.BasicConstraints)
    assert basic.critical and basic.value == x509.BasicConstraints(ca=False, path_length=None)
    usage = ext(leaf, x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert set(ext(leaf, x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    root_ski = ext(root.certificate, x509.SubjectKeyIdentifier).value
    assert ext(leaf, x509.AuthorityKeyIdentifier).value.key_identifier == root_ski.digest
    assert ext(leaf, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(
        leaf.public_key()
    )
    assert 0 < leaf.serial_number < 2**128
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)
    assert spiffe_id_of(leaf) == "spiffe://demo/web"
    assert verify_chain(chain, root.trust_bundle(), now=NOW) == "spiffe://demo/web"


def test_serial_numbers_differ(root: MeshCA, csr: bytes) -> None:
    serials = {certs(sign(root, csr))[0].serial_number for _ in range(50)}
    assert len(serials) == 50


def test_root_and_intermediate_constraints(root: MeshCA, zone: MeshCA) -> None:
    for ca, path_length in ((root, 1), (zone, 0)):
        cert = ca.certificate
        basic = ext(cert, x509.BasicConstraints)
        assert basic.critical and basic.value == x509.BasicConstraints(ca=True, path_length=path_length)
        usage = ext(cert, x509.KeyUsage).value
        assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
        assert spiffe_id_of(cert) == "spiffe://demo"
    assert (
        root.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        == "Meshcast demo root CA"
    )
    assert zone.certificate.issuer == root.certificate.subject
    assert ext(zone.certificate, x509.AuthorityKeyIdentifier).value.key_identifier == (
        ext(root.certificate, x509.SubjectKeyIdentifier).value.digest
    )
    assert zone.certificate.not_valid_after_utc <= root.not_after
    assert root.is_root and not zone.is_root
    assert zone.trust_bundle() == root.trust_bundle() == root.cert_pem


def test_leaf_via_intermediate_presents_leaf_then_intermediate(
    root: MeshCA, zone: MeshCA, csr: bytes
) -> None:
    chain = sign(zone, csr)
    leaf, intermediate = certs(chain)
    assert intermediate == zone.certificate
    assert leaf.issuer == zone.certificate.subject
    assert chain.endswith(zone.chain_pem)
    assert verify_chain(chain, root.trust_bundle(), now=NOW) == "spiffe://demo/web"
    # Without the intermediate the leaf does not reach the root.
    with pytest.raises(Unauthorized, match="certificate chain rejected"):
        verify_chain(leaf.public_bytes(serialization.Encoding.PEM), root.trust_bundle(), now=NOW)


def test_only_a_root_signs_intermediates(zone: MeshCA, key: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(ValueError, match="only a root"):
        zone.sign_intermediate(build_csr(key, "spiffe://demo"), zone="other")


def test_intermediate_across_processes(root: MeshCA) -> None:
    """The zone CP keeps its key; only the CSR and the signed certificate cross between CPs."""
    zone_key = generate_workload_key()
    cert_pem = root.sign_intermediate(build_csr(zone_key, "spiffe://demo"), zone="us-east", now=NOW)
    key_pem = zone_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    zone = MeshCA.from_pem(cert_pem, key_pem, bundle_pem=root.trust_bundle())
    assert not zone.is_root and zone.mesh == "demo"
    leaf_chain = zone.sign_workload_csr(
        build_csr(generate_workload_key(), "x"), service="api", mesh="demo", ttl=DAY
    )
    assert verify_chain(leaf_chain, root.trust_bundle()) == "spiffe://demo/api"
    with pytest.raises(ValueError, match="not signed by any root"):
        MeshCA.from_pem(cert_pem, key_pem, bundle_pem=MeshCA.generate("demo").trust_bundle())
    with pytest.raises(ValueError, match="does not match"):
        MeshCA.from_pem(cert_pem, root.key_pem(), bundle_pem=root.trust_bundle())


@FAST
@given(
    requested=st.lists(
        st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40), max_size=4
    ),
    common_name=st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=40),
)
def test_names_in_the_csr_are_ignored(
    root: MeshCA, key: ec.EllipticCurvePrivateKey, requested: list[str], common_name: str
) -> None:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(f"spiffe://{r}") for r in requested]
    names.append(x509.UniformResourceIdentifier("spiffe://demo/admin"))
    names.append(x509.DNSName("admin.demo.mesh"))
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    csr = (
        builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    [leaf] = certs(sign(root, csr))
    assert list(ext(leaf, x509.SubjectAlternativeName).value) == [
        x509.UniformResourceIdentifier("spiffe://demo/web")
    ]
    assert leaf.subject == x509.Name([])
    assert ext(leaf, x509.BasicConstraints).value.ca is False


# --- what the CA refuses --------------------------------------------------------------------------


def _pem_csr(der: bytes) -> bytes:
    text = base64.b64encode(der)
    lines = b"".join(text[i : i + 64] + b"\n" for i in range(0, len(text), 64))
    return b"-----BEGIN CERTIFICATE REQUEST-----\n" + lines + b"-----END CERTIFICATE REQUEST-----\n"


def _with_flipped_byte(csr_pem: bytes, index: int, mask: int) -> bytes:
    der = bytearray(x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER))
    der[index % len(der)] ^= mask
    return _pem_csr(bytes(der))


def test_csr_with_a_bad_signature_is_rejected(root: MeshCA, csr: bytes) -> None:
    tampered = _with_flipped_byte(csr, -1, 0x01)  # last byte of the signature's s
    with pytest.raises(ValidationError) as info:
        sign(root, tampered)
    assert str(info.value) == "csr: signature does not verify"


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    length = (
        bytes([n])
        if n < 128
        else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8)
    )
    return bytes([tag]) + length + content


def test_csr_signed_by_another_key_is_rejected(root: MeshCA) -> None:
    """A CSR carrying a victim's public key but signed by someone else proves no possession of the key."""
    victim, attacker = generate_workload_key(), generate_workload_key()
    tbs = x509.load_pem_x509_csr(build_csr(victim, "spiffe://demo/web")).tbs_certrequest_bytes
    ecdsa_with_sha256 = _tlv(0x30, _tlv(0x06, bytes.fromhex("2a8648ce3d040302")))
    signature = attacker.sign(tbs, ec.ECDSA(hashes.SHA256()))
    der = _tlv(0x30, tbs + ecdsa_with_sha256 + _tlv(0x03, b"\x00" + signature))
    assert x509.load_der_x509_csr(der).public_key() == victim.public_key()
    with pytest.raises(ValidationError, match="signature does not verify"):
        sign(root, _pem_csr(der))


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@FAST
@given(index=st.integers(min_value=0), mask=st.integers(min_value=1, max_value=255))
@example(index=8, mask=1)  # the version number: cryptography raises InvalidVersion, not ValueError
def test_flipping_any_byte_of_a_csr_is_refused(root: MeshCA, csr: bytes, index: int, mask: int) -> None:
    flipped = _with_flipped_byte(csr, index, mask)
    try:
        chain = sign(root, flipped)
    except ValidationError as e:
        assert str(e).startswith("csr: ")
        return
    # Accepted only if the flip left what is signed intact: the count of unused bits in the signature's
    # BIT STRING can change when the signature's last bits are zero. Same key, same proof of possession.
    original = x509.load_pem_x509_csr(csr)
    assert x509.load_pem_x509_csr(flipped).tbs_certrequest_bytes == original.tbs_certrequest_bytes
    assert certs(chain)[0].public_key() == original.public_key()


@FAST
@given(garbage=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_garbage_is_a_validation_error(root: MeshCA, garbage: bytes) -> None:
    with pytest.raises(ValidationError, match=r"^csr: "):
        sign(root, garbage)


def test_a_certificate_is_not_a_csr(root: MeshCA) -> None:
    with pytest.raises(ValidationError, match="not a PEM certificate signing request"):
        sign(root, root.cert_pem)


@pytest.mark.parametrize(
    "other_key",
    [ec.generate_private_key(ec.SECP384R1()), ed25519.Ed25519PrivateKey.generate()],
    ids=["p384", "ed25519"],
)
def test_only_p256_keys_are_signed(root: MeshCA, other_key: ec.EllipticCurvePrivateKey) -> None:
    algorithm = None if isinstance(other_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(other_key, algorithm)
    with pytest.raises(ValidationError, match="public key must be ECDSA P-256"):
        sign(root, csr.public_bytes(serialization.Encoding.PEM))


def test_bad_names_and_wrong_mesh(root: MeshCA, csr: bytes) -> None:
    with pytest.raises(ValidationError, match="service"):
        sign(root, csr, service="../admin")
    with pytest.raises(ValueError, match="mesh 'demo', not 'other'"):
        root.sign_workload_csr(csr, service="web", mesh="other", ttl=DAY)
    with pytest.raises(ValueError, match="ttl"):
        sign(root, csr, ttl=timedelta(0))


# --- lifetimes ------------------------------------------------------------------------------------


@FAST
@given(ttl_s=st.integers(min_value=1, max_value=30 * 86400))
def test_ttl_is_respected(root: MeshCA, csr: bytes, ttl_s: int) -> None:
    [leaf] = certs(sign(root, csr, ttl=timedelta(seconds=ttl_s)))
    assert leaf.not_valid_before_utc == NOW - CLOCK_SKEW
    assert leaf.not_valid_after_utc == NOW + timedelta(seconds=ttl_s)


def test_ttl_is_capped_by_the_signing_ca(csr: bytes) -> None:
    short_root = MeshCA.generate("demo", validity=timedelta(days=3), now=NOW)
    [leaf] = certs(sign(short_root, csr, ttl=timedelta(days=30)))
    assert leaf.not_valid_after_utc == short_root.not_after
    zone = short_root.generate_intermediate(zone="z", validity=timedelta(days=365), now=NOW)
    assert zone.not_after == short_root.not_after
    leaf, _ = certs(sign(zone, csr, ttl=timedelta(days=30)))
    assert leaf.not_valid_after_utc == short_root.not_after


def test_expired_ca_signs_nothing(csr: bytes) -> None:
    ca = MeshCA.generate("demo", validity=DAY, now=NOW)
    with pytest.raises(MeshcastError, match=r"expired at .*rotate it"):
        sign(ca, csr, now=NOW + 2 * DAY)


def test_ca_from_the_future_signs_nothing(csr: bytes) -> None:
    ca = MeshCA.generate("demo", now=NOW + 30 * DAY)
    with pytest.raises(MeshcastError, match=r"not valid before .*check the system clock"):
        sign(ca, csr, ttl=timedelta(hours=1))


def test_expired_leaf_fails_verification(root: MeshCA, csr: bytes) -> None:
    chain = sign(root, csr, ttl=timedelta(hours=1))
    verify_chain(chain, root.trust_bundle(), now=NOW + timedelta(minutes=59))
    with pytest.raises(Unauthorized, match="not valid at validation time"):
        verify_chain(chain, root.trust_bundle(), now=NOW + timedelta(hours=2))


# --- trust bundles --------------------------------------------------------------------------------


def test_other_roots_do_not_vouch(root: MeshCA, csr: bytes) -> None:
    stranger = MeshCA.generate("demo")
    with pytest.raises(Unauthorized, match="certificate chain rejected"):
        verify_chain(sign(stranger, csr), root.trust_bundle(), now=NOW)


def test_bundle_with_several_roots_for_rotation(root: MeshCA, csr: bytes) -> None:
    new_root = MeshCA.generate("demo", now=NOW - DAY)
    both = new_root.with_trusted_roots(root.trust_bundle())
    assert certs(both.trust_bundle()) == [new_root.certificate, root.certificate]
    bundle = TrustBundle.from_pem(both.trust_bundle())
    assert bundle.verify(sign(root, csr), now=NOW) == "spiffe://demo/web"
    assert bundle.verify(sign(new_root, csr), now=NOW) == "spiffe://demo/web"
    with pytest.raises(ValueError, match="not a root of mesh demo"):
        root.with_trusted_roots(MeshCA.generate("elsewhere").trust_bundle())


def test_a_mesh_ca_cannot_vouch_for_another_mesh(root: MeshCA, key: ec.EllipticCurvePrivateKey) -> None:
    # MeshCA never signs such a leaf; build one with its key to prove that the verifier checks the mesh too.
    ca_key = serialization.load_pem_private_key(root.key_pem(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(root.certificate.subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://payments/db")]),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    with pytest.raises(Unauthorized, match="not a CA of mesh payments"):
        TrustBundle([root.certificate]).verify([leaf], now=NOW)


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")  # e.g. serial <= 0
@FAST
@given(which=st.integers(0, 1), index=st.integers(min_value=0), mask=st.integers(min_value=1, max_value=255))
@example(which=0, index=8, mask=1)  # the version number
def test_flipping_any_byte_of_a_chain_is_unauthorized(
    root: MeshCA, zone: MeshCA, csr: bytes, which: int, index: int, mask: int
) -> None:
    chain = certs(sign(zone, csr))
    der = bytearray(chain[which].public_bytes(serialization.Encoding.DER))
    der[index % len(der)] ^= mask
    text = base64.b64encode(bytes(der))
    pems = [c.public_bytes(serialization.Encoding.PEM) for c in chain]
    pems[which] = b"-----BEGIN CERTIFICATE-----\n" + text + b"\n-----END CERTIFICATE-----\n"
    try:
        spiffe_id = verify_chain(b"".join(pems), root.trust_bundle(), now=NOW)
    except Unauthorized:
        return
    # As for CSRs: accepted only when the signed part is intact (the signature BIT STRING's padding count).
    assert (
        x509.load_pem_x509_certificate(pems[which]).tbs_certificate_bytes
        == chain[which].tbs_certificate_bytes
    )
    assert spiffe_id == "spiffe://demo/web"


@pytest.mark.parametrize(
    "chain", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]
)
def test_unparseable_chains_are_unauthorized(root: MeshCA, chain: bytes) -> None:
    with pytest.raises(Unauthorized):
        verify_chain(chain, root.trust_bundle())


def test_mutual_tls_handshake_with_workload_certificates(root: MeshCA, zone: MeshCA, tmp_path: Path) -> None:
    """OpenSSL accepts what we issue: empty subject, critical URI SAN, chain through the zone intermediate."""
    (tmp_path / "bundle.pem").write_bytes(root.trust_bundle())

    def context(side: int, service: str) -> ssl.SSLContext:
        key = generate_workload_key()
        chain = zone.sign_workload_csr(build_csr(key, ""), service=service, mesh="demo", ttl=DAY)
        (tmp_path / f"{service}.crt").write_bytes(chain)
        (tmp_path / f"{service}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        ctx = ssl.SSLContext(side)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False  # identities are SPIFFE IDs, checked after the handshake
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(tmp_path / "bundle.pem")
        ctx.load_cert_chain(tmp_path / f"{service}.crt", tmp_path / f"{service}.key")
        return ctx

    client_ctx, server_ctx = context(ssl.PROTOCOL_TLS_CLIENT, "web"), context(ssl.PROTOCOL_TLS_SERVER, "api")
    bios = [ssl.MemoryBIO() for _ in range(4)]  # client in/out, server in/out
    client = client_ctx.wrap_bio(bios[0], bios[1], server_side=False)
    server = server_ctx.wrap_bio(bios[2], bios[3], server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, conn in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    conn.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        bios[2].write(bios[1].read())
        bios[0].write(bios[3].read())
        if all(done.values()):
            break
    assert all(done.values())
    server_cert, client_cert = client.getpeercert(binary_form=True), server.getpeercert(binary_form=True)
    assert server_cert is not None and client_cert is not None
    assert spiffe_id_of(x509.load_der_x509_certificate(server_cert)) == "spiffe://demo/api"
    assert spiffe_id_of(x509.load_der_x509_certificate(client_cert)) == "spiffe://demo/web"


# --- keeping the key ------------------------------------------------------------------------------


def test_save_and_load_round_trip_with_a_private_key_file(root: MeshCA, zone: MeshCA, tmp_path: Path) -> None:
    old_umask = os.umask(0)  # even a permissive umask must not widen the key file
    try:
        root.save(tmp_path / "root")
        zone.save(tmp_path / "zone")
    finally:
        os.umask(old_umask)
    for name in ("root", "zone"):
        assert stat.S_IMODE((tmp_path / name / "ca.key").stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o700
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["bundle.crt", "ca.crt", "ca.key"]
    loaded_root, loaded_zone = MeshCA.load(tmp_path / "root"), MeshCA.load(tmp_path / "zone")
    assert loaded_root.cert_pem == root.cert_pem and loaded_root.key_pem() == root.key_pem()
    assert loaded_zone.cert_pem == zone.cert_pem and loaded_zone.key_pem() == zone.key_pem()
    assert loaded_root.is_root and not loaded_zone.is_root
    chain = loaded_zone.sign_workload_csr(
        build_csr(generate_workload_key(), ""), service="db", mesh="demo", ttl=DAY
    )
    assert verify_chain(chain, root.trust_bundle()) == "spiffe://demo/db"


def test_key_file_is_never_created_readable(
    root: MeshCA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[tuple[str, int, int]] = []
    real_open = os.open

    def spy(path: str | os.PathLike[str], flags: int, mode: int = 0o777, **kw: object) -> int:
        opened.append((os.fspath(path), flags, mode))
        return real_open(path, flags, mode, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", spy)
    root.save(tmp_path)
    monkeypatch.undo()
    key_opens = [(flags, mode) for path, flags, mode in opened if ".ca.key." in path]
    assert len(key_opens) == 1
    flags, mode = key_opens[0]
    assert flags & os.O_CREAT and flags & os.O_EXCL and mode == _files.PRIVATE_MODE
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_saving_again_replaces_the_files(root: MeshCA, tmp_path: Path) -> None:
    other = MeshCA.generate("demo")
    other.save(tmp_path)
    root.save(tmp_path)
    assert MeshCA.load(tmp_path).cert_pem == root.cert_pem
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600


def test_repr_hides_the_key(root: MeshCA, zone: MeshCA) -> None:
    for ca in (root, zone):
        key = serialization.load_pem_private_key(ca.key_pem(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        secret = key.private_numbers().private_value
        for text in (repr(ca), str(ca), f"{ca!r}"):
            assert "PRIVATE" not in text
            assert str(secret) not in text and format(secret, "x") not in text
        assert "mesh='demo'" in repr(ca)
    assert not hasattr(root, "__dict__")  # nothing to dump with vars()


def test_generate_validates_the_mesh_name() -> None:
    with pytest.raises(ValidationError, match="mesh"):
        MeshCA.generate("Not A Label")


# --- tags: written by the CA from what the zone CP passes, never from the CSR -----------------------------------


def uris(cert: x509.Certificate) -> list[str]:
    return ext(cert, x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)


def test_tags_come_from_the_signer_never_from_the_csr(root: MeshCA, key: ec.EllipticCurvePrivateKey) -> None:
    claimed = [x509.UniformResourceIdentifier(u) for u in (
        "spiffe://demo/web", "meshcast://tag/version/v9", "meshcast://tag/admin/true", "meshcast://tag/zone/us")]
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName(claimed), critical=False)
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    [leaf] = certs(root.sign_workload_csr(csr, service="web", mesh="demo", ttl=DAY, now=NOW,
                                          tags={"zone": "eu", "version": "v1", "team/owner": "a:b"}))
    assert uris(leaf) == ["spiffe://demo/web", "meshcast://tag/team%2Fowner/a%3Ab", "meshcast://tag/version/v1",
                          "meshcast://tag/zone/eu"]  # the SPIFFE ID first, then the tags by name
    assert spiffe_id_of(leaf) == "spiffe://demo/web"
    [bare] = certs(root.sign_workload_csr(csr, service="web", mesh="demo", ttl=DAY, now=NOW))
    assert uris(bare) == ["spiffe://demo/web"]


@pytest.mark.parametrize(("tags", "message"), [
    ({"service": "admin"}, "tags.service: the SPIFFE ID names the service"),
    ({"version": "v 1"}, "tags.version: invalid tag value 'v 1'"),
    ({"-version": "v1"}, "tags: invalid tag name '-version'"),
    ({"version": ""}, "tags.version: invalid tag value ''"),
])
def test_tags_that_are_not_tags_are_refused(root: MeshCA, csr: bytes, tags: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        root.sign_workload_csr(csr, service="web", mesh="demo", ttl=DAY, tags=tags)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_tag_rules_are_the_resource_rules() -> None:
    from meshcast.pki import spiffe
    from meshcast.resources import types

    assert spiffe.TAG_KEY.pattern == types._TAG_KEY.pattern
    assert spiffe.TAG_VALUE.pattern == types._TAG_VALUE.pattern


def test_workload_tags_are_those_every_inbound_agrees_on_and_the_signing_zone() -> None:
    from meshcast.pki.spiffe import workload_tags

    inbounds = [{"version": "v1", "team": "a", "service": "web", "zone": "us"}, {"version": "v1", "team": "b"}]
    assert workload_tags(inbounds, "eu") == {"version": "v1", "zone": "eu"}
    assert workload_tags(inbounds[:1], "eu") == {"version": "v1", "team": "a", "zone": "eu"}  # the signer's zone
    assert workload_tags(inbounds[:1], "") == {"version": "v1", "team": "a", "zone": "us"}  # no zone name: as is
    assert workload_tags([], "eu") == {"zone": "eu"}  # an edge gateway's identity: no inbound of its own
