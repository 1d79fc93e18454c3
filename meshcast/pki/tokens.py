"""Tokens control planes hand out: dataplane tokens (zone CP → sidecar), zone tokens (global CP → zone CP).

Theory of operation. A token is a compact JWS (RFC 7515), i.e. a JWT::

    base64url(header) "." base64url(claims) "." base64url(signature)          (unpadded base64url)
    header = {"alg": "EdDSA", "kid": <RFC 7638 thumbprint of the public key>, "typ": "JWT"}
    claims = {"mesh": ..., "services": [...], "kind": "dataplane", "iat": <s>, "exp": <s>, "jti": <random>}
    claims = {"zone": ..., "kind": "zone" | "ingress", "iat": <s>, "exp": <s>, "jti": <random>}

signed with Ed25519 (RFC 8037): deterministic (no per-signature nonce to get wrong), fast, 64-byte signatures,
and non-malleable. Any JWT tool can decode a token; only holders of the public key can check it.

`TokenVerifier.verify` trusts nothing in a token before its signature verifies. In order: size and shape;
each segment must be canonical unpadded base64url (so no two spellings of one token exist); the header must
be exactly alg/kid/typ with ``alg == "EdDSA"`` -- the algorithm is fixed by the key type, never chosen by
the token, so "none" and algorithm confusion cannot happen; `kid` selects one of the verifier's public keys
(several during a key rotation); the signature is checked over the two segments exactly as received; only
then are the claims parsed, their types checked, the kind matched, and the times compared. Every failure
raises `Unauthorized` with a one-line reason and nothing else escapes. No secret is compared on the verify
path (signature checking uses only the public key), so there is no secret-dependent timing to protect.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from meshcast.errors import Unauthorized, ValidationError
from meshcast.pki import _files
from meshcast.pki._clock import aware_now
from meshcast.pki.spiffe import check_label

DATAPLANE = "dataplane"
ZONE = "zone"  # a zone CP joining the global CP
INGRESS = "ingress"  # a zone ingress registering with its zone CP
KINDS = frozenset({DATAPLANE, ZONE, INGRESS})
ALGORITHM = "EdDSA"

KEY_FILE = "token-signing.key"
PUBLIC_KEY_FILE = "token-signing.pub"

MAX_TOKEN_LENGTH = 8192
ISSUED_AT_LEEWAY = timedelta(seconds=60)  # clock difference tolerated between HA control planes sharing a key
_MAX_TIME = 253_402_300_799  # 9999-12-31T23:59:59Z; keeps datetime conversions in range
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_HEADER_KEYS = {"alg", "kid", "typ"}
_CLAIM_KEYS = {"mesh", "services", "kind", "iat", "exp", "jti"}
_ZONE_CLAIM_KEYS = {"zone", "kind", "iat", "exp", "jti"}  # zone and ingress tokens
_RAW = serialization.Encoding.Raw


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token grants: identities in `services` of `mesh` (a dataplane token), or acting for
    `zone` (a zone or ingress token), until `expires_at`."""

    mesh: str
    services: tuple[str, ...]
    kind: str
    issued_at: datetime
    expires_at: datetime
    token_id: str
    zone: str = ""

    def allows(self, mesh: str, service: str) -> bool:
        return mesh == self.mesh and service in self.services


def key_id(public_key: Ed25519PublicKey) -> str:
    """The RFC 7638 JWK thumbprint of `public_key`: stable, derived, never stored separately."""
    x = _b64encode(public_key.public_bytes(_RAW, serialization.PublicFormat.Raw))
    jwk = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"), sort_keys=True)
    return _b64encode(hashlib.sha256(jwk.encode()).digest())


class TokenVerifier:
    """Verifies tokens signed by any of a set of Ed25519 public keys, chosen by `kid`.

    Raises `Unauthorized` for every token it does not accept, and nothing else, whatever the input.
    """

    __slots__ = ("_keys",)

    def __init__(self, public_keys: Iterable[Ed25519PublicKey]) -> None:
        self._keys = {key_id(k): k for k in public_keys}
        if not self._keys:
            raise ValueError("a token verifier needs at least one public key")

    @classmethod
    def from_pem(cls, public_key_pems: Iterable[bytes]) -> TokenVerifier:
        return cls(_load_public_key(pem) for pem in public_key_pems)

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def verify(self, token: str, *, kind: str = DATAPLANE, now: datetime | None = None) -> TokenClaims:
        """The claims of `token` if it is well formed, signed by one of our keys, of `kind`, not expired."""
        if not isinstance(token, str) or not token:
            raise _malformed("empty or not text")
        if len(token) > MAX_TOKEN_LENGTH:
            raise _malformed(f"longer than {MAX_TOKEN_LENGTH} characters")
        parts = token.split(".")
        if len(parts) != 3:
            raise _malformed("expected three dot-separated parts")
        header_b64, claims_b64, _ = parts
        # All three parts must be canonical base64url (hence ASCII) before anything else is looked at.
        header_raw, claims_raw, signature = (_b64decode(p) for p in parts)
        header = _json_object(header_raw, "header")
        if set(header) != _HEADER_KEYS or header["typ"] != "JWT":
            raise _malformed("header must hold exactly alg, kid and typ JWT")
        alg, kid = header["alg"], header["kid"]
        if alg != ALGORITHM:
            shown = repr(alg[:32]) if isinstance(alg, str) else "of the wrong type"
            raise Unauthorized(f"token rejected: algorithm {shown} is not {ALGORITHM}")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            shown = repr(kid[:64]) if isinstance(kid, str) else "of the wrong type"
            raise Unauthorized(f"token rejected: signed by unknown key {shown}")
        try:
            key.verify(signature, f"{header_b64}.{claims_b64}".encode("ascii"))
        except InvalidSignature:
            raise Unauthorized("token tampered: signature does not verify") from None
        return _check_claims(_json_object(claims_raw, "claims"), kind, _now(now))


class TokenIssuer:
    """Owns a control plane's Ed25519 token-signing key; issues tokens and verifies its own.

    The private key leaves the object only through `key_pem()` and `save()` and never shows in repr.
    """

    __slots__ = ("_key", "_kid", "_verifier")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("token signing key must be Ed25519")
        self._key = key
        self._kid = key_id(key.public_key())
        self._verifier = TokenVerifier([key.public_key()])

    @classmethod
    def generate(cls) -> TokenIssuer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, key_pem: bytes) -> TokenIssuer:
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ValueError("token signing key is not an unencrypted PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("token signing key must be Ed25519")
        return cls(key)

    def save(self, directory: str | Path) -> None:
        """Write token-signing.key (0600, never readable by others, even briefly) and token-signing.pub."""
        directory = Path(directory)
        _files.ensure_dir(directory)
        _files.write_public(directory / PUBLIC_KEY_FILE, self.public_key_pem())
        _files.write_private(directory / KEY_FILE, self.key_pem())

    @classmethod
    def load(cls, directory: str | Path) -> TokenIssuer:
        return cls.from_pem((Path(directory) / KEY_FILE).read_bytes())

    def key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (a method, so that reading it is deliberate)."""
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def public_key_pem(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    @property
    def kid(self) -> str:
        return self._kid

    def __repr__(self) -> str:
        return f"TokenIssuer(alg={ALGORITHM!r}, kid={self._kid!r})"

    def issue(
        self,
        mesh: str,
        services: Sequence[str],
        valid_for: timedelta,
        kind: str = DATAPLANE,
        *,
        now: datetime | None = None,
    ) -> str:
        """A signed dataplane token granting `services` of `mesh` for `valid_for` (whole seconds, at least one)."""
        if isinstance(services, str):
            raise TypeError("services must be a list of names, not one string")
        if kind in (ZONE, INGRESS):
            raise ValueError(f"{kind!r} tokens name a zone: use issue_zone")
        if kind != DATAPLANE:
            raise ValueError(f"unknown token kind {kind!r} (known: {', '.join(sorted(KINDS))})")
        violations = check_label("mesh", mesh)
        for i, service in enumerate(services):
            violations += check_label(f"services[{i}]", service)
        if violations:
            raise ValidationError("token", violations)
        return self._sign({"mesh": mesh, "services": list(dict.fromkeys(services)), "kind": kind},
                          valid_for, now)

    def issue_zone(self, zone: str, valid_for: timedelta, kind: str = ZONE, *, now: datetime | None = None) -> str:
        """A signed token for `zone`: a zone token (the zone CP joins the global CP) or an ingress token."""
        if kind not in (ZONE, INGRESS):
            raise ValueError(f"unknown zone token kind {kind!r} (known: {ZONE}, {INGRESS})")
        violations = check_label("zone", zone)
        if violations:
            raise ValidationError("token", violations)
        return self._sign({"zone": zone, "kind": kind}, valid_for, now)

    def _sign(self, claims: dict[str, Any], valid_for: timedelta, now: datetime | None) -> str:
        lifetime = int(valid_for.total_seconds())
        if lifetime < 1:
            raise ValueError("valid_for must be at least one second")
        iat = int(_now(now).timestamp())
        claims = {**claims, "iat": iat, "exp": iat + lifetime, "jti": secrets.token_urlsafe(16)}
        header = {"alg": ALGORITHM, "kid": self._kid, "typ": "JWT"}
        signing_input = f"{_b64json(header)}.{_b64json(claims)}"
        return f"{signing_input}.{_b64encode(self._key.sign(signing_input.encode('ascii')))}"

    def verifier(self, *other_public_keys: Ed25519PublicKey) -> TokenVerifier:
        """A verifier for this key and `other_public_keys` (e.g. the previous key during a rotation)."""
        return TokenVerifier([self._key.public_key(), *other_public_keys])

    def verify(self, token: str, *, kind: str = DATAPLANE, now: datetime | None = None) -> TokenClaims:
        """Verify a token signed by this issuer's key; see `TokenVerifier.verify`."""
        return self._verifier.verify(token, kind=kind, now=now)


def _check_claims(claims: dict[str, Any], kind: str, now: datetime) -> TokenClaims:
    keys = set(claims)
    if keys == _ZONE_CLAIM_KEYS:
        zone, mesh, services = claims["zone"], "", []
    elif keys == _CLAIM_KEYS:
        zone, mesh, services = "", claims["mesh"], claims["services"]
    else:
        raise _malformed("claims must hold exactly mesh, services, kind, iat, exp and jti "
                         "(zone, kind, iat, exp and jti for a zone token)")
    token_kind = claims["kind"]
    iat, exp, jti = claims["iat"], claims["exp"], claims["jti"]
    if not (
        isinstance(mesh, str)
        and isinstance(zone, str)
        and isinstance(services, list)
        and all(isinstance(s, str) for s in services)
        and isinstance(token_kind, str)
        and isinstance(jti, str)
        and _is_time(iat)
        and _is_time(exp)
    ):
        raise _malformed("claims have the wrong types")
    if token_kind != kind:
        raise Unauthorized(f"token rejected: it is a {token_kind[:32]!r} token, expected a {kind!r} token")
    issued_at = datetime.fromtimestamp(iat, UTC)
    expires_at = datetime.fromtimestamp(exp, UTC)
    if now >= expires_at:
        raise Unauthorized(f"token expired at {expires_at:%Y-%m-%dT%H:%M:%SZ}")
    if issued_at > now + ISSUED_AT_LEEWAY:
        raise Unauthorized(
            f"token rejected: issued in the future ({issued_at:%Y-%m-%dT%H:%M:%SZ}); check clocks"
        )
    if (keys == _ZONE_CLAIM_KEYS) != (token_kind in (ZONE, INGRESS)):
        raise _malformed(f"claims do not fit a {token_kind[:32]!r} token")
    return TokenClaims(mesh, tuple(services), token_kind, issued_at, expires_at, jti, zone)


def _is_time(value: object) -> bool:
    return type(value) is int and 0 <= value <= _MAX_TIME


def _malformed(reason: str) -> Unauthorized:
    return Unauthorized(f"malformed token: {reason}")


_now = aware_now


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    # Canonical form only: the alphabet, no padding, and zero unused bits (re-encoding gives the same text).
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise _malformed("a part is not base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise _malformed("a part is not base64url") from None
    if _b64encode(raw) != text:
        raise _malformed("a part is not canonical base64url")
    return raw


def _b64json(value: dict[str, Any]) -> str:
    return _b64encode(json.dumps(value, separators=(",", ":"), sort_keys=True).encode())


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key")
    return out


def _json_object(raw: bytes, part: str) -> dict[str, Any]:
    try:
        value = json.loads(
            raw.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_unique_keys
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _malformed(f"{part} is not JSON") from None
    if not isinstance(value, dict):
        raise _malformed(f"{part} is not a JSON object")
    return value


def _load_public_key(pem: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError("not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("token verification keys must be Ed25519")
    return key
