"""What a sidecar reads of a certificate (its validity, its SPIFFE ID and its tags), with the standard library only.

The long-lived sidecar does not load `cryptography` (about 8 MB of its memory, docs/benchmarks.md): the `ssl` module
loads its certificate and verifies its peers', and this is all it needs to know besides. A certificate is DER
(X.509, RFC 5280 §4.1); this walks the few elements it needs and skips the rest:

    Certificate     SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
    tbsCertificate  SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer, validity, subject,
                               subjectPublicKeyInfo, [1] OPTIONAL, [2] OPTIONAL, [3] extensions OPTIONAL }
    validity        SEQUENCE { notBefore Time, notAfter Time }          Time: UTCTime or GeneralizedTime
    extension       SEQUENCE { extnID OID, critical BOOLEAN OPTIONAL, extnValue OCTET STRING }
    subjectAltName  (2.5.29.17) SEQUENCE OF GeneralName, a URI being [6] IA5String

It only reads certificates that OpenSSL verified (a peer's) or that the mesh CA issued (the sidecar's own); anything
it cannot follow raises ValueError, never a wrong answer. The URI SANs are one ``spiffe://<mesh>/<service>`` and
the instance's tags, one ``meshcast://tag/<name>/<value>`` each (`meshcast.pki.spiffe`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from meshcast.pki.spiffe import NO_SAN, spiffe_id_in, tags_in

_SEQUENCE, _OID, _OCTET_STRING, _UTC_TIME, _GENERALIZED_TIME = 0x30, 0x06, 0x04, 0x17, 0x18
_VERSION, _EXTENSIONS, _URI = 0xA0, 0xA3, 0x86
_SUBJECT_ALT_NAME = bytes([0x55, 0x1D, 0x11])  # 2.5.29.17
_PEM_BEGIN, _PEM_END = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"


@dataclass(frozen=True)
class CertificateInfo:
    not_before: datetime
    not_after: datetime
    uris: tuple[str, ...] | None  # the URI subject alternative names; None without a subjectAltName extension

    @property
    def spiffe_id(self) -> str:
        """The one SPIFFE ID the certificate names; ValueError if it names none or several."""
        if self.uris is None:
            raise ValueError(NO_SAN)
        return spiffe_id_in(self.uris)

    @property
    def tags(self) -> dict[str, str]:
        """The tags the certificate names (`meshcast://tag/<name>/<value>` URI SANs), `service` not among them;
        ValueError if one is malformed or named twice."""
        return tags_in(self.uris or ())


def read_pem(pem: bytes) -> CertificateInfo:
    """The first certificate of a PEM chain (the leaf); ValueError if there is none or it is malformed."""
    start = pem.find(_PEM_BEGIN)
    end = pem.find(_PEM_END, start)
    if start < 0 or end < 0:
        raise ValueError("no PEM certificate found")
    try:
        der = base64.b64decode(b"".join(pem[start + len(_PEM_BEGIN) : end].split()), validate=True)
    except binascii.Error:
        raise ValueError("PEM certificate is not valid base64") from None
    return read_der(der)


def read_der(der: bytes) -> CertificateInfo:
    """Validity and URI SANs of a DER certificate; ValueError if it is not one this can read."""
    tag, start, end = _element(der, 0, len(der))
    if tag != _SEQUENCE or end != len(der):
        raise ValueError("not a DER certificate")
    tag, start, end = _element(der, start, end)
    if tag != _SEQUENCE:
        raise ValueError("not a DER certificate: no tbsCertificate")
    fields = list(_elements(der, start, end))
    if fields and fields[0][0] == _VERSION:
        fields = fields[1:]
    if len(fields) < 6:
        raise ValueError("truncated tbsCertificate")
    tag, start, end = fields[3]  # after serialNumber, signature, issuer
    times = list(_elements(der, start, end))
    if tag != _SEQUENCE or len(times) != 2:
        raise ValueError("malformed validity")
    uris: tuple[str, ...] | None = None
    for tag, start, end in fields[6:]:
        if tag == _EXTENSIONS:
            uris = _subject_alt_uris(der, start, end)
    return CertificateInfo(_time(der, *times[0]), _time(der, *times[1]), uris)


def _subject_alt_uris(der: bytes, start: int, end: int) -> tuple[str, ...] | None:
    tag, start, end = _element(der, start, end)
    if tag != _SEQUENCE:
        raise ValueError("malformed extensions")
    for tag, ext_start, ext_end in _elements(der, start, end):
        oid_tag, oid_start, oid_end = _element(der, ext_start, ext_end)
        if tag != _SEQUENCE or oid_tag != _OID:
            raise ValueError("malformed extension")
        if der[oid_start:oid_end] != _SUBJECT_ALT_NAME:
            continue
        *_, (value_tag, value_start, value_end) = _elements(der, oid_end, ext_end)  # after `critical`, if any
        tag, names_start, names_end = _element(der, value_start, value_end)
        if value_tag != _OCTET_STRING or tag != _SEQUENCE:
            raise ValueError("malformed subjectAltName")
        return tuple(der[s:e].decode("ascii") for tag, s, e in _elements(der, names_start, names_end) if tag == _URI)
    return None


def _time(der: bytes, tag: int, start: int, end: int) -> datetime:
    """UTCTime YYMMDDHHMMSSZ or GeneralizedTime YYYYMMDDHHMMSSZ, the forms RFC 5280 allows."""
    text = der[start:end].decode("ascii")
    if tag == _UTC_TIME and len(text) == 13:
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != _GENERALIZED_TIME or len(text) != 15:
        raise ValueError(f"unsupported certificate time {text!r}")
    if not text.endswith("Z") or not text[:14].isdigit():
        raise ValueError(f"unsupported certificate time {text!r}")
    return datetime(int(text[:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]), int(text[10:12]),
                    int(text[12:14]), tzinfo=UTC)


def _element(der: bytes, pos: int, limit: int) -> tuple[int, int, int]:
    """(tag, start, end) of the element at `pos`, its content being der[start:end], within der[:limit]."""
    if pos + 2 > limit:
        raise ValueError("truncated DER")
    tag, length = der[pos], der[pos + 1]
    if tag & 0x1F == 0x1F:
        raise ValueError("unsupported DER tag")
    pos += 2
    if length & 0x80:
        size = length & 0x7F
        if not 1 <= size <= 4 or pos + size > limit:
            raise ValueError("malformed DER length")
        length = int.from_bytes(der[pos : pos + size], "big")
        pos += size
    if pos + length > limit:
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def _elements(der: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """The elements one after another in der[start:end] (the content of a SEQUENCE)."""
    while start < end:
        element = _element(der, start, end)
        yield element
        start = element[2]
