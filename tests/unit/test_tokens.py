"""Dataplane and zone tokens: what verifies, and that everything else is `Unauthorized` and nothing else."""

from __future__ import annotations

import base64
import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import event, given, settings
from hypothesis import strategies as st

from meshcast.errors import Unauthorized, ValidationError
from meshcast.pki import DATAPLANE, INGRESS, ZONE, TokenClaims, TokenIssuer, TokenVerifier, key_id

NOW = datetime(2030, 6, 1, 8, 0, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
MANY = settings(max_examples=300, deadline=None)


@pytest.fixture(scope="module")
def issuer() -> TokenIssuer:
    return TokenIssuer.generate()


@pytest.fixture(scope="module")
def token(issuer: TokenIssuer) -> str:
    return issuer.issue("demo", ["web", "api"], HOUR, now=NOW)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64json(value: object) -> str:
    return b64(json.dumps(value).encode())


def signed(issuer_key: Ed25519PrivateKey, header: object, claims: object) -> str:
    """A token with arbitrary header and claims, signed properly: reaches the checks after the signature."""
    head = f"{b64json(header)}.{b64json(claims)}"
    return f"{head}.{b64(issuer_key.sign(head.encode()))}"


def test_round_trip(issuer: TokenIssuer, token: str) -> None:
    claims = issuer.verify(token, now=NOW + timedelta(minutes=30))
    assert claims == TokenClaims(
        mesh="demo",
        services=("web", "api"),
        kind=DATAPLANE,
        issued_at=NOW,
        expires_at=NOW + HOUR,
        token_id=claims.token_id,
    )
    assert len(claims.token_id) >= 16
    assert claims.allows("demo", "web") and claims.allows("demo", "api")
    assert not claims.allows("demo", "db") and not claims.allows("other", "web")


def test_token_is_a_standard_compact_jws(issuer: TokenIssuer, token: str) -> None:
    header_b64, claims_b64, signature_b64 = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=="))
    assert header == {"alg": "EdDSA", "kid": issuer.kid, "typ": "JWT"}
    claims = json.loads(base64.urlsafe_b64decode(claims_b64 + "=="))
    assert set(claims) == {"mesh", "services", "kind", "iat", "exp", "jti"}
    assert claims["exp"] - claims["iat"] == 3600
    issuer.public_key.verify(
        base64.urlsafe_b64decode(signature_b64 + "=="), f"{header_b64}.{claims_b64}".encode()
    )
    assert "=" not in token


def test_tokens_are_unique(issuer: TokenIssuer) -> None:
    tokens = {issuer.issue("demo", ["web"], HOUR, now=NOW) for _ in range(20)}
    assert len(tokens) == 20


def test_expired(issuer: TokenIssuer, token: str) -> None:
    issuer.verify(token, now=NOW + HOUR - timedelta(seconds=1))
    with pytest.raises(Unauthorized) as info:
        issuer.verify(token, now=NOW + HOUR)
    assert str(info.value) == "token expired at 2030-06-01T09:00:00Z"


def test_issued_in_the_future(issuer: TokenIssuer, token: str) -> None:
    issuer.verify(token, now=NOW - timedelta(seconds=60))  # within the leeway for clocks
    with pytest.raises(Unauthorized, match="issued in the future"):
        issuer.verify(token, now=NOW - timedelta(minutes=5))


def test_tampered_claims(issuer: TokenIssuer, token: str) -> None:
    header_b64, claims_b64, signature_b64 = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(claims_b64 + "=="))
    claims["services"].append("payments")
    forged = f"{header_b64}.{b64json(claims)}.{signature_b64}"
    with pytest.raises(Unauthorized) as info:
        issuer.verify(forged, now=NOW)
    assert str(info.value) == "token tampered: signature does not verify"


def test_wrong_kind(issuer: TokenIssuer) -> None:
    zone_token = issuer.issue_zone("eu", HOUR, now=NOW)
    claims = issuer.verify(zone_token, kind=ZONE, now=NOW)
    assert (claims.kind, claims.zone, claims.mesh, claims.services) == (ZONE, "eu", "", ())
    with pytest.raises(Unauthorized, match="it is a 'zone' token, expected a 'dataplane' token"):
        issuer.verify(zone_token, now=NOW)
    ingress_token = issuer.issue_zone("eu", HOUR, INGRESS, now=NOW)
    with pytest.raises(Unauthorized, match="it is a 'ingress' token, expected a 'zone' token"):
        issuer.verify(ingress_token, kind=ZONE, now=NOW)
    dataplane_token = issuer.issue("demo", ["web"], HOUR, now=NOW)
    with pytest.raises(Unauthorized, match="expected a 'zone' token"):
        issuer.verify(dataplane_token, kind=ZONE, now=NOW)


def test_zone_token_expiry_and_names(issuer: TokenIssuer) -> None:
    token = issuer.issue_zone("us", timedelta(seconds=5), now=NOW)
    with pytest.raises(Unauthorized, match="token expired at"):
        issuer.verify(token, kind=ZONE, now=NOW + timedelta(seconds=5))
    with pytest.raises(ValidationError):
        issuer.issue_zone("Not A Zone", HOUR)
    with pytest.raises(ValueError, match="use issue_zone"):
        issuer.issue("demo", [], HOUR, kind=ZONE)


def test_wrong_kid(issuer: TokenIssuer, token: str) -> None:
    other = TokenIssuer.generate()
    with pytest.raises(Unauthorized, match="signed by unknown key"):
        other.verify(token, now=NOW)
    # Same kid, another key: the signature decides.
    header_b64, claims_b64, _ = token.split(".")
    head = f"{header_b64}.{claims_b64}"
    impostor = f"{head}.{b64(Ed25519PrivateKey.generate().sign(head.encode()))}"
    with pytest.raises(Unauthorized, match="tampered"):
        issuer.verify(impostor, now=NOW)


def test_rotation_accepts_old_and_new_keys_by_kid(issuer: TokenIssuer, token: str) -> None:
    new = TokenIssuer.generate()
    verifier = new.verifier(issuer.public_key)
    assert verifier.kids == {issuer.kid, new.kid}
    assert verifier.verify(token, now=NOW).mesh == "demo"
    assert verifier.verify(new.issue("demo", ["web"], HOUR, now=NOW), now=NOW).services == ("web",)
    from_pem = TokenVerifier.from_pem([issuer.public_key_pem(), new.public_key_pem()])
    assert from_pem.kids == verifier.kids
    assert from_pem.verify(token, now=NOW).services == ("web", "api")


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "none", "typ": "JWT"},
        {"alg": "HS256", "typ": "JWT"},
        {"alg": "ES256", "typ": "JWT"},
        {"alg": "EdDSA", "typ": "JWT", "crit": ["exp"]},
        {"alg": "EdDSA", "typ": "JOSE"},
        {"alg": ["EdDSA"], "typ": "JWT"},
    ],
)
def test_header_is_strict(issuer: TokenIssuer, token: str, header: dict[str, Any]) -> None:
    _, claims_b64, signature_b64 = token.split(".")
    for sig in (signature_b64, ""):
        with pytest.raises(Unauthorized):
            issuer.verify(f"{b64json({**header, 'kid': issuer.kid})}.{claims_b64}.{sig}", now=NOW)


def test_non_canonical_base64_is_refused(issuer: TokenIssuer, token: str) -> None:
    # 64 signature bytes take 86 characters; the last one carries 4 bits that decoders ignore.
    head, signature_b64 = token.rsplit(".", 1)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature_b64[-1])
    same_bytes = alphabet[last | 0b0001 if last & 0b0001 == 0 else last & ~0b0001]
    twin = f"{head}.{signature_b64[:-1]}{same_bytes}"
    assert base64.urlsafe_b64decode(twin.rsplit(".", 1)[1] + "==") == base64.urlsafe_b64decode(
        signature_b64 + "=="
    )
    with pytest.raises(Unauthorized, match="not canonical"):
        issuer.verify(twin, now=NOW)


@MANY
@given(index=st.integers(min_value=0), mask=st.integers(min_value=1, max_value=255))
def test_flipping_any_byte_makes_verify_raise_unauthorized(
    issuer: TokenIssuer, token: str, index: int, mask: int
) -> None:
    raw = bytearray(token.encode("ascii"))
    raw[index % len(raw)] ^= mask
    with pytest.raises(Unauthorized):
        issuer.verify(raw.decode("latin-1"), now=NOW)


@MANY
@given(index=st.integers(min_value=0), char=st.characters())
def test_replacing_any_character_makes_verify_raise_unauthorized(
    issuer: TokenIssuer, token: str, index: int, char: str
) -> None:
    i = index % len(token)
    if token[i] == char:
        return
    with pytest.raises(Unauthorized):
        issuer.verify(token[:i] + char + token[i + 1 :], now=NOW)


@MANY
@given(text=st.text() | st.from_regex(r"[A-Za-z0-9_-]{0,60}\.[A-Za-z0-9_-]{0,60}\.[A-Za-z0-9_-]{0,90}"))
def test_arbitrary_text_only_ever_raises_unauthorized(issuer: TokenIssuer, text: str) -> None:
    with pytest.raises(Unauthorized):
        issuer.verify(text, now=NOW)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@MANY
@given(header=JSON | st.fixed_dictionaries({"alg": JSON, "kid": JSON, "typ": JSON}), claims=JSON)
def test_arbitrary_json_parts_only_ever_raise_unauthorized(
    issuer: TokenIssuer, header: Any, claims: Any
) -> None:
    with pytest.raises(Unauthorized):
        issuer.verify(f"{b64json(header)}.{b64json(claims)}.{b64(os.urandom(64))}", now=NOW)


SIGNING_KEY = Ed25519PrivateKey.generate()
SIGNER = TokenIssuer(SIGNING_KEY)
CLAIM_VALUES = st.fixed_dictionaries(
    {
        "mesh": JSON | st.just("demo"),
        "services": JSON | st.lists(st.text(max_size=10), max_size=3),
        "kind": JSON | st.just(DATAPLANE),
        "iat": st.just(int(NOW.timestamp())) | JSON | st.integers(),
        "exp": st.just(int((NOW + HOUR).timestamp())) | JSON | st.integers(),
        "jti": JSON | st.text(max_size=10),
    },
    optional={"extra": JSON},
)

T = int(NOW.timestamp())
PLAUSIBLE_CLAIMS = st.fixed_dictionaries(
    {
        "mesh": st.text(max_size=10),
        "services": st.lists(st.text(max_size=10), max_size=3),
        "kind": st.sampled_from([DATAPLANE, ZONE]),
        "iat": st.integers(T - 10_000, T + 120),
        "exp": st.integers(T - 100, T + 10_000),
        "jti": st.text(max_size=10),
    }
)


@MANY
@given(claims=PLAUSIBLE_CLAIMS | CLAIM_VALUES | JSON)
def test_signed_arbitrary_claims_verify_or_raise_unauthorized(claims: Any) -> None:
    # Past the signature only our own keys' tokens arrive; still, claims we did not expect must not crash.
    token = signed(SIGNING_KEY, {"alg": "EdDSA", "kid": SIGNER.kid, "typ": "JWT"}, claims)
    try:
        result = SIGNER.verify(token, now=NOW)
    except Unauthorized:
        event("rejected")
        return
    event("accepted")
    assert isinstance(claims, dict) and result.mesh == claims["mesh"] and result.kind == DATAPLANE
    assert result.expires_at > NOW


def test_oversized_and_deeply_nested_tokens(issuer: TokenIssuer) -> None:
    with pytest.raises(Unauthorized, match="longer than"):
        issuer.verify("a" * 10_000)
    deep = b64(b"[" * 4000 + b"]" * 4000)
    with pytest.raises(Unauthorized, match="malformed"):
        issuer.verify(f"{deep}.{deep}.{deep}")


def test_key_id_is_the_rfc_7638_thumbprint() -> None:
    # RFC 8037, appendix A.2 and A.3.
    x = base64.urlsafe_b64decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo=")
    assert key_id(Ed25519PublicKey.from_public_bytes(x)) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_issue_validates_its_arguments(issuer: TokenIssuer) -> None:
    with pytest.raises(ValidationError, match=r"services\[1\]"):
        issuer.issue("demo", ["web", "Web Server"], HOUR)
    with pytest.raises(ValidationError, match="mesh"):
        issuer.issue("", ["web"], HOUR)
    with pytest.raises(TypeError):
        issuer.issue("demo", "web", HOUR)
    with pytest.raises(ValueError, match="kind"):
        issuer.issue("demo", ["web"], HOUR, kind="admin")
    with pytest.raises(ValueError, match="one second"):
        issuer.issue("demo", ["web"], timedelta(milliseconds=500))


def test_save_load_round_trip_with_a_private_key_file(
    issuer: TokenIssuer, token: str, tmp_path: Path
) -> None:
    old_umask = os.umask(0)
    try:
        issuer.save(tmp_path / "tokens")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "tokens" / "token-signing.key").stat().st_mode) == 0o600
    loaded = TokenIssuer.load(tmp_path / "tokens")
    assert loaded.kid == issuer.kid and loaded.key_pem() == issuer.key_pem()
    assert loaded.verify(token, now=NOW).services == ("web", "api")
    assert issuer.verify(loaded.issue("demo", ["web"], HOUR, now=NOW), now=NOW).mesh == "demo"
    public = TokenVerifier.from_pem([(tmp_path / "tokens" / "token-signing.pub").read_bytes()])
    assert public.verify(token, now=NOW).mesh == "demo"


def test_repr_hides_the_key(issuer: TokenIssuer) -> None:
    raw = issuer._key.private_bytes(  # the 32-byte seed, in every spelling it might leak in
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    for text in (repr(issuer), str(issuer)):
        assert "PRIVATE" not in text
        assert raw.hex() not in text and b64(raw) not in text and str(raw) not in text
    assert issuer.kid in repr(issuer)
    assert not hasattr(issuer, "__dict__")


def test_only_ed25519_keys(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="Ed25519"):
        TokenIssuer.from_pem(pem)
