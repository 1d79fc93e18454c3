"""Reading a certificate with the standard library only (`meshcast.pki.certinfo`), checked against cryptography:
validity, the SPIFFE ID and the tags."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshcast.pki import MeshCA, build_csr, generate_workload_key, spiffe_id_of, verify_chain
from meshcast.pki.certinfo import read_der, read_pem
from meshcast.pki.spiffe import TAG_KEY, TAG_VALUE

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def root() -> MeshCA:
    return MeshCA.generate("demo", now=NOW - timedelta(days=1))


@pytest.fixture(scope="module")
def chain(root: MeshCA) -> bytes:
    zone = root.generate_intermediate(zone="eu-west", now=NOW - timedelta(days=1))
    csr = build_csr(generate_workload_key(), "spiffe://demo/web")
    return zone.sign_workload_csr(csr, service="web", mesh="demo", ttl=timedelta(hours=1), now=NOW)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def self_signed(not_after: datetime, san: x509.SubjectAlternativeName | None) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(1).not_valid_before(datetime(1999, 12, 31, tzinfo=UTC)).not_valid_after(not_after))
    if san is not None:
        builder = builder.add_extension(san, critical=True)
    return builder.sign(key, hashes.SHA256())


def test_reads_what_cryptography_reads(root: MeshCA, chain: bytes) -> None:
    certs = x509.load_pem_x509_certificates(chain) + x509.load_pem_x509_certificates(root.trust_bundle())
    assert len(certs) == 3  # leaf, zone intermediate, root
    for cert in certs:
        info = read_der(der(cert))
        assert info.not_before == cert.not_valid_before_utc
        assert info.not_after == cert.not_valid_after_utc
        assert info.spiffe_id == spiffe_id_of(cert)
    leaf = read_pem(chain)  # a PEM chain: its first certificate
    assert leaf.spiffe_id == "spiffe://demo/web" and leaf.uris == ("spiffe://demo/web",)
    assert leaf.not_after - leaf.not_before == timedelta(hours=1, minutes=1)  # back-dated by the clock skew


def test_both_time_forms() -> None:
    # RFC 5280: UTCTime up to 2049 (a two-digit year, 1950-2049), GeneralizedTime from 2050.
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://demo/web")])
    for not_after in (datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC), datetime(2050, 1, 1, tzinfo=UTC)):
        info = read_der(der(self_signed(not_after, san)))
        assert (info.not_before, info.not_after) == (datetime(1999, 12, 31, tzinfo=UTC), not_after)


@pytest.mark.parametrize(("san", "reason"), [
    (None, "no subjectAltName"),
    (x509.SubjectAlternativeName([x509.DNSName("web.example")]), "names 0"),
    (x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://demo/a"),
                                  x509.UniformResourceIdentifier("spiffe://demo/b")]), "names 2"),
    (x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://Demo/a")]), "not a Meshcast SPIFFE ID"),
])
def test_spiffe_id_rules_are_those_of_spiffe_id_of(san: x509.SubjectAlternativeName | None, reason: str) -> None:
    cert = self_signed(datetime(2030, 1, 1, tzinfo=UTC), san)
    with pytest.raises(ValueError, match=reason):
        spiffe_id_of(cert)
    with pytest.raises(ValueError, match=reason):
        _ = read_der(der(cert)).spiffe_id


@pytest.mark.parametrize("pem", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                                 b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"])
def test_what_is_not_a_certificate_is_a_value_error(pem: bytes) -> None:
    with pytest.raises(ValueError):
        read_pem(pem)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(min_value=0), mask=st.integers(min_value=1, max_value=255), cut=st.booleans())
def test_damaged_certificates_raise_only_value_error(chain: bytes, index: int, mask: int, cut: bool) -> None:
    data = bytearray(der(x509.load_pem_x509_certificate(chain)))
    index %= len(data)
    if cut:
        del data[index:]
    else:
        data[index] ^= mask
    try:
        info = read_der(bytes(data))
        _ = info.spiffe_id, info.tags
    except ValueError:
        pass


# --- tags: one `meshcast://tag/<name>/<value>` URI SAN each ------------------------------------------------------

TAG_NAMES = st.from_regex(TAG_KEY, fullmatch=True).filter(lambda name: name != "service")
TAG_VALUES = st.from_regex(TAG_VALUE, fullmatch=True)


@pytest.fixture(scope="module")
def csr() -> bytes:
    return build_csr(generate_workload_key(), "spiffe://demo/web")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tags=st.dictionaries(TAG_NAMES, TAG_VALUES, max_size=6))
def test_tags_round_trip_through_the_certificate(root: MeshCA, csr: bytes, tags: dict[str, str]) -> None:
    chain = root.sign_workload_csr(csr, service="web", mesh="demo", ttl=timedelta(hours=1), tags=tags, now=NOW)
    info = read_pem(chain)
    assert info.spiffe_id == "spiffe://demo/web" and info.tags == tags
    cert = x509.load_pem_x509_certificate(chain)
    assert spiffe_id_of(cert) == "spiffe://demo/web" and len(info.uris or ()) == 1 + len(tags)
    assert verify_chain(chain, root.trust_bundle(), now=NOW) == "spiffe://demo/web"  # RFC 5280 path validation


SPIFFE = x509.UniformResourceIdentifier("spiffe://demo/web")


@pytest.mark.parametrize(("tag_uris", "reason"), [
    (["meshcast://tag/version"], "malformed tag URI"),
    (["meshcast://tag/version/v1/x"], "malformed tag URI"),
    (["meshcast://tag/team%2fowner/a"], "malformed tag URI"),  # not the canonical encoding (%2F)
    (["meshcast://tag/team/owner/a"], "malformed tag URI"),  # a `/` left unencoded
    (["meshcast://tag/version/v%201"], "malformed tag URI"),  # a space: not a tag value
    (["meshcast://tag/version/%FF"], "decode"),  # not UTF-8
    (["meshcast://tag/service/admin"], "malformed tag URI"),  # the SPIFFE ID names the service
    (["meshcast://tag/version/v1", "meshcast://tag/version/v2"], "tag 'version' twice"),
])
def test_a_malformed_tag_is_a_value_error_not_a_tag(tag_uris: list[str], reason: str) -> None:
    san = x509.SubjectAlternativeName([SPIFFE, *(x509.UniformResourceIdentifier(u) for u in tag_uris)])
    info = read_der(der(self_signed(datetime(2030, 1, 1, tzinfo=UTC), san)))
    assert info.spiffe_id == "spiffe://demo/web"
    with pytest.raises(ValueError, match=reason):
        _ = info.tags


def test_two_spiffe_ids_are_refused_whatever_the_tags() -> None:
    san = x509.SubjectAlternativeName([SPIFFE, x509.UniformResourceIdentifier("meshcast://tag/version/v1"),
                                       x509.UniformResourceIdentifier("spiffe://demo/admin")])
    info = read_der(der(self_signed(datetime(2030, 1, 1, tzinfo=UTC), san)))
    assert info.tags == {"version": "v1"}
    with pytest.raises(ValueError, match="names 2"):
        _ = info.spiffe_id
