"""The zone ingress's ClientHello parser and SNI naming scheme: real hellos from Python's ssl, re-framed over several
records, fed byte by byte; malformed hellos by table; arbitrary and mutated bytes under hypothesis."""

from __future__ import annotations

import itertools
import json
import ssl
import subprocess
import sys
from collections.abc import Sequence

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dataplane.ingress.sni import MAX_HELLO, MAX_RECORDS, Hello, NeedMore, NotClientHello, parse_client_hello
from meshcast.resources.model import DNS_LABEL
from meshcast.wire import sni as names
from meshcast.wire.sni import parse_service_sni, service_sni

# --- building hellos ------------------------------------------------------------------------------------------


def real_hello(server_hostname: str | None, alpn: list[str] | None = None, *,
               maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED) -> bytes:
    """The first flight of a real TLS client (one or more records holding its ClientHello)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = maximum
    if alpn:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def handshake_message(records: bytes) -> bytes:
    """The handshake bytes carried by a run of handshake records."""
    message, pos = b"", 0
    while pos < len(records):
        assert records[pos] == 22
        length = int.from_bytes(records[pos + 3 : pos + 5], "big")
        message += records[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return message


def frame(message: bytes, cuts: Sequence[int] = (), version: bytes = b"\x03\x01") -> bytes:
    """`message` in handshake records, cut at the given offsets."""
    bounds = [0, *sorted(set(cuts)), len(message)]
    return b"".join(b"\x16" + version + (end - start).to_bytes(2, "big") + message[start:end]
                    for start, end in itertools.pairwise(bounds) if end > start)


def build_hello(extensions: list[tuple[int, bytes]] | None, *, version: bytes = b"\x03\x03",
                session_id: bytes = b"", suites: bytes = b"\x13\x01", compression: bytes = b"\x00") -> bytes:
    """A ClientHello handshake message made by hand (for what Python's ssl will not send)."""
    body = (version + bytes(32) + bytes([len(session_id)]) + session_id + len(suites).to_bytes(2, "big") + suites
            + bytes([len(compression)]) + compression)
    if extensions is not None:
        raw = b"".join(kind.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data for kind, data in extensions)
        body += len(raw).to_bytes(2, "big") + raw
    return b"\x01" + len(body).to_bytes(3, "big") + body


def sni_ext(*entries: tuple[int, bytes]) -> tuple[int, bytes]:
    raw = b"".join(bytes([kind]) + len(name).to_bytes(2, "big") + name for kind, name in entries)
    return 0, len(raw).to_bytes(2, "big") + raw


def alpn_ext(*protocols: bytes) -> tuple[int, bytes]:
    raw = b"".join(bytes([len(p)]) + p for p in protocols)
    return 16, len(raw).to_bytes(2, "big") + raw


def outcome(buf: bytes) -> NeedMore | Hello | str:
    try:
        return parse_client_hello(buf)
    except NotClientHello as exc:
        return f"refused: {exc.reason}"


NAME = "web.default.mesh.meshcast"
HELLO = real_hello(NAME, ["h2", "http/1.1"])
MESSAGE = handshake_message(HELLO)

# --- real hellos ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server_hostname", "alpn", "maximum"),
    [
        (NAME, ["h2", "http/1.1"], ssl.TLSVersion.MAXIMUM_SUPPORTED),
        (NAME, ["meshcast-tcp"], ssl.TLSVersion.TLSv1_2),
        ("api.payments.mesh.meshcast", None, ssl.TLSVersion.MAXIMUM_SUPPORTED),
        ("Example.COM", ["http/1.1"], ssl.TLSVersion.MAXIMUM_SUPPORTED),
        ("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61, None, ssl.TLSVersion.MAXIMUM_SUPPORTED),
    ],
)
def test_real_hellos_give_their_name_and_alpn(server_hostname: str, alpn: list[str] | None,
                                               maximum: ssl.TLSVersion) -> None:
    hello = real_hello(server_hostname, alpn, maximum=maximum)
    assert parse_client_hello(hello) == Hello(sni=server_hostname, alpn=alpn or [])


def test_a_hello_without_sni() -> None:
    assert parse_client_hello(real_hello(None, ["h2"])) == Hello(sni=None, alpn=["h2"])


def test_byte_by_byte_it_needs_more_until_the_last_byte() -> None:
    for end in range(len(HELLO)):
        assert parse_client_hello(HELLO[:end]) == NeedMore(), end
    assert parse_client_hello(HELLO) == Hello(sni=NAME, alpn=["h2", "http/1.1"])


def test_bytes_after_the_hello_are_ignored() -> None:
    # TLS 1.3 early data or a change_cipher_spec may follow in the same read; the caller forwards them untouched.
    assert parse_client_hello(HELLO + b"\x14\x03\x03\x00\x01\x01" + b"junk") == Hello(NAME, ["h2", "http/1.1"])


@pytest.mark.parametrize("cuts", [[1], [3], [4], [5, 200], [len(MESSAGE) - 1], [2, 40, 41]])
def test_a_hello_split_over_records(cuts: list[int]) -> None:
    framed = frame(MESSAGE, cuts)
    assert parse_client_hello(framed) == Hello(sni=NAME, alpn=["h2", "http/1.1"])
    for end in range(len(framed)):
        assert parse_client_hello(framed[:end]) == NeedMore(), end


@given(st.lists(st.integers(1, len(MESSAGE) - 1), min_size=1, max_size=2),
       st.sampled_from([b"\x03\x01", b"\x03\x03"]))
def test_a_hello_split_anywhere_over_two_or_three_records(cuts: list[int], version: bytes) -> None:
    framed = frame(MESSAGE, cuts, version)
    assert parse_client_hello(framed) == Hello(sni=NAME, alpn=["h2", "http/1.1"])
    assert all(parse_client_hello(framed[:end]) == NeedMore() for end in range(0, len(framed), 7))


def test_a_hello_of_the_maximum_size_fits_and_one_byte_more_does_not() -> None:
    def padded(size: int) -> bytes:
        base = build_hello([sni_ext((0, NAME.encode())), (21, b"")])
        return build_hello([sni_ext((0, NAME.encode())), (21, bytes(size - len(base)))])

    largest = padded(MAX_HELLO)
    assert len(largest) == MAX_HELLO
    assert parse_client_hello(frame(largest)) == Hello(sni=NAME)
    assert parse_client_hello(frame(largest, [9000])) == Hello(sni=NAME)
    too_large = frame(padded(MAX_HELLO + 1), [5000])
    # Refused from its handshake header on (record header + 4 bytes), not after buffering the rest.
    assert outcome(too_large[:9]) == f"refused: client hello over {MAX_HELLO} bytes"
    assert outcome(too_large) == f"refused: client hello over {MAX_HELLO} bytes"


# --- malformed hellos -------------------------------------------------------------------------------------------

GOOD_EXTENSIONS = [sni_ext((0, b"web.default.mesh.meshcast")), alpn_ext(b"h2")]


BARE_BODY = build_hello(None)[4:]  # a ClientHello body without extensions


def retype(message: bytes, handshake_type: int) -> bytes:
    return bytes([handshake_type]) + message[1:]


def reheader(body: bytes) -> bytes:
    """A ClientHello handshake message around `body`, whatever it holds."""
    return b"\x01" + len(body).to_bytes(3, "big") + body


MALFORMED = {
    "plaintext HTTP": (b"GET / HTTP/1.1\r\nHost: web\r\n\r\n", "not a handshake record (content type 71)"),
    "HTTP on its first byte": (b"G", "not a handshake record"),
    "an alert record": (b"\x15\x03\x03\x00\x02\x02\x28", "not a handshake record (content type 21)"),
    "SSLv2-compatible hello": (b"\x80\x2e\x01\x03\x01", "not a handshake record"),
    "record major version 2": (b"\x16\x02", "record version 2.x is not TLS"),
    "record version SSL 3.0": (b"\x16\x03\x00", "record version 3.0 is not TLS 1.0-1.3"),
    "record version 3.5": (b"\x16\x03\x05\x00\x10", "record version 3.5 is not TLS 1.0-1.3"),
    "empty record": (b"\x16\x03\x01\x00\x00", "empty handshake record"),
    "record over 2^14": (b"\x16\x03\x01\x40\x01", "record of 16385 bytes is over 16384"),
    "server hello": (frame(retype(MESSAGE, 2)), "handshake message type 2 is not client_hello"),
    "server hello, first byte": (frame(retype(MESSAGE, 2))[:6], "handshake message type 2"),
    "client version 2.0": (frame(build_hello(GOOD_EXTENSIONS, version=b"\x02\x00")), "client version 2.0"),
    "oversized session id": (frame(build_hello(GOOD_EXTENSIONS, session_id=bytes(33))), "session id over 32"),
    "odd cipher suite list": (frame(build_hello(GOOD_EXTENSIONS, suites=b"\x13\x01\x13")), "cipher suite list"),
    "no compression method": (frame(build_hello(GOOD_EXTENSIONS, compression=b"")), "empty compression method"),
    "truncated random": (frame(reheader(b"\x03\x03" + bytes(10))), "random runs past the end"),
    "truncated extension list": (frame(reheader(build_hello(GOOD_EXTENSIONS)[4:-2])),
                                 "extension list runs past the end"),
    "extension longer than its list": (frame(reheader(BARE_BODY + b"\x00\x06" + b"\x00\x00\x00\x05ab")),
                                       "extension 0 runs past the end"),
    "half an extension header": (frame(reheader(BARE_BODY + b"\x00\x03" + b"\x00\x00\x00")),
                                 "extension 0 length runs past the end"),
    "SNI not a host_name": (frame(build_hello([sni_ext((1, b"web"))])), "server name of type 1 is not a host_name"),
    "two host names": (frame(build_hello([sni_ext((0, b"a"), (0, b"b"))])), "more than one host_name"),
    "empty server name list": (frame(build_hello([sni_ext()])), "empty server name list"),
    "empty host name": (frame(build_hello([sni_ext((0, b""))])), "is not a valid host name"),
    "host name with a space": (frame(build_hello([sni_ext((0, b"web service"))])), "is not a valid host name"),
    "host name with a NUL": (frame(build_hello([sni_ext((0, b"web\x00.evil"))])), "is not a valid host name"),
    "host name in UTF-8": (frame(build_hello([sni_ext((0, "wéb".encode()))])), "is not a valid host name"),
    "trailing dot": (frame(build_hello([sni_ext((0, b"web.default."))])), "is not a valid host name"),
    "label of 64": (frame(build_hello([sni_ext((0, b"a" * 64))])), "is not a valid host name"),
    "label starting with '-'": (frame(build_hello([sni_ext((0, b"-web"))])), "is not a valid host name"),
    "duplicate SNI": (frame(build_hello([sni_ext((0, b"a")), sni_ext((0, b"b"))])), "extension 0 appears twice"),
    "empty ALPN list": (frame(build_hello([alpn_ext()])), "empty ALPN protocol list"),
    "empty ALPN name": (frame(build_hello([alpn_ext(b"h2", b"")])), "empty ALPN protocol name"),
    "bytes after extensions": (frame(reheader(build_hello(GOOD_EXTENSIONS)[4:] + b"\x00")),
                               "1 bytes after the extension list"),
    "too many records": (frame(MESSAGE, list(range(1, MAX_RECORDS + 1))), f"spans over {MAX_RECORDS} records"),
    "another record type in between": (frame(MESSAGE[:10]) + b"\x17\x03\x03\x00\x01\x00",
                                       "not a handshake record (content type 23)"),
}


@pytest.mark.parametrize(("data", "reason"), list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_hellos_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(NotClientHello) as info:
        parse_client_hello(data)
    assert reason in info.value.reason
    assert "\n" not in info.value.reason


def test_hand_built_hellos_parse() -> None:
    assert parse_client_hello(frame(build_hello(None))) == Hello(sni=None)
    assert parse_client_hello(frame(build_hello([]))) == Hello(sni=None)
    assert parse_client_hello(frame(build_hello([sni_ext((0, b"_acme.Web-1")), alpn_ext(b"h2", b"\xff")]))) == \
        Hello(sni="_acme.Web-1", alpn=["h2", "\xff"])
    # Unknown extensions, GREASE ones included, are skipped.
    assert parse_client_hello(frame(build_hello([(0x0A0A, b""), sni_ext((0, b"a")), (0x1A1A, b"\x00")]))) == \
        Hello(sni="a")


# --- any bytes --------------------------------------------------------------------------------------------------

NEED_MORE_BOUND = MAX_HELLO + MAX_RECORDS * 5 + 5


def check_contract(data: bytes) -> None:
    """Only NeedMore, Hello or NotClientHello; NeedMore only for a buffer under the bound."""
    try:
        result = parse_client_hello(data)
    except NotClientHello as exc:
        assert exc.reason and "\n" not in exc.reason
        return
    assert isinstance(result, NeedMore | Hello)
    if isinstance(result, NeedMore):
        assert len(data) < NEED_MORE_BOUND


@settings(max_examples=500)
@given(st.binary(max_size=600))
@example(b"")
@example(b"\x16\x03\x01\x00\x04\x01\x00\x00\x00")
def test_arbitrary_bytes(data: bytes) -> None:
    check_contract(data)


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_behind_a_plausible_header(data: bytes) -> None:
    check_contract(b"\x16\x03\x01" + len(data).to_bytes(2, "big") + b"\x01" + data)
    check_contract(frame(b"\x01" + (len(data)).to_bytes(3, "big") + data))


@settings(max_examples=500)
@given(st.data())
def test_mutated_real_hellos(data: st.DataObject) -> None:
    hello = bytearray(data.draw(st.sampled_from([HELLO, frame(MESSAGE, [100, 300]), real_hello(None)])))
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        at = data.draw(st.integers(0, max(len(hello) - 1, 0)))
        if action == "flip" and hello:
            hello[at] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "set" and hello:
            hello[at] = data.draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        elif action == "insert":
            hello[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        elif action == "delete":
            del hello[at : at + data.draw(st.integers(1, 4))]
        else:
            del hello[at:]
    check_contract(bytes(hello))


def test_a_long_run_of_tiny_records_is_refused_early() -> None:
    # A peer that dribbles one-byte records would otherwise make every read re-walk a growing buffer.
    framed = frame(MESSAGE, list(range(1, len(MESSAGE))))
    assert outcome(framed) == f"refused: client hello spans over {MAX_RECORDS} records"
    early = outcome(framed[: (MAX_RECORDS + 1) * 6])
    assert isinstance(early, str) and early.startswith("refused")


# --- the naming scheme ------------------------------------------------------------------------------------------

LABELS = st.from_regex(DNS_LABEL, fullmatch=True)


def test_the_label_rule_is_the_resource_models() -> None:
    assert names._LABEL.pattern == DNS_LABEL.pattern


def test_the_scheme() -> None:
    assert service_sni("default", "web") == "web.default.mesh.meshcast"
    assert parse_service_sni("web.default.mesh.meshcast") == ("default", "web")
    assert parse_service_sni("WEB.Default.MESH.meshcast") == ("default", "web")
    assert parse_service_sni("meshcast.mesh.mesh.meshcast") == ("mesh", "meshcast")


@given(LABELS, LABELS)
@example("a" * 63, "b" * 63)
@example("mesh", "meshcast")
def test_names_round_trip(mesh: str, service: str) -> None:
    name = service_sni(mesh, service)
    assert parse_service_sni(name) == (mesh, service)
    assert parse_service_sni(name.upper()) == (mesh, service)
    # A valid DNS name, and a valid SNI as the ingress reads it.
    assert len(name) <= 253 and all(1 <= len(label) <= 63 for label in name.split("."))
    assert parse_client_hello(frame(build_hello([sni_ext((0, name.encode()))]))) == Hello(sni=name)


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=80), st.builds("{}.{}.mesh.meshcast".format, st.text(max_size=8),
                                                  st.text(max_size=8))))
@example("web.default.mesh.meshcast.")
@example("web.mesh.meshcast")
@example("a.b.c.mesh.meshcast")
@example("web.default.mesh.meshcast\n")
@example("web.default.mesh.me\u017fhcast")  # a long s: uppercases to "S"
@example("\u212a.default.mesh.meshcast")  # a Kelvin sign: lowercases to "k"
def test_only_names_of_the_scheme_parse(name: str) -> None:
    parsed = parse_service_sni(name)
    if parsed is not None:
        assert service_sni(*parsed) == name.lower()


@pytest.mark.parametrize(("mesh", "service"), [("Default", "web"), ("default", "web_1"), ("", "web"),
                                               ("default", "a.b"), ("default", "-web"), ("d" * 64, "web")])
def test_invalid_names_have_no_sni(mesh: str, service: str) -> None:
    with pytest.raises(ValueError, match="is not a valid"):
        service_sni(mesh, service)


def test_a_real_client_sends_the_scheme() -> None:
    hello = parse_client_hello(real_hello(service_sni("payments", "ledger"), ["meshcast-tcp"]))
    assert isinstance(hello, Hello) and hello.sni is not None
    assert parse_service_sni(hello.sni) == ("payments", "ledger")


def test_the_ingress_imports_no_heavy_library() -> None:
    # The ingress is the sidecar's proxy in another role: the same memory rule holds (docs/adr/0004).
    code = ("import json, sys\nimport dataplane.ingress.router\nprint(json.dumps(sorted(sys.modules)))")
    modules = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                        check=True).stdout)
    heavy = ("cryptography", "pydantic", "meshcast.resources", "httpx", "yaml")
    assert not [m for m in modules if any(m == h or m.startswith(h + ".") for h in heavy)]
