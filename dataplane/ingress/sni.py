"""The first ClientHello of a TLS connection, read without IO: its server name (SNI) and ALPN protocols.

Theory of operation: `parse_client_hello(buf)` is given every byte received so far and answers `NeedMore`,
`Hello`, or raises `NotClientHello`; the caller appends what it reads next and asks again. It reassembles the
handshake message from as many TLS records as it spans (RFC 8446 §5.1: a handshake message may be fragmented over
records, which are never interleaved with other content types), so it reads nothing past the ClientHello's last
byte and ignores what follows (the caller forwards all of it). It rejects as soon as the bytes at hand cannot begin a
ClientHello, so a plaintext client is refused on its first byte rather than left waiting.

Bounds, against a peer that feeds a slow or endless prefix: the handshake message is at most `MAX_HELLO` bytes,
a record at most 2^14 bytes (the TLS maximum), and the message spans at most `MAX_RECORDS` records. While the
answer is `NeedMore`, the buffer therefore holds less than `MAX_HELLO + MAX_RECORDS * 5 + 5` bytes, and each call is
linear in it. The parser raises nothing but `NotClientHello`, whatever the bytes (tested with hypothesis).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_HELLO = 16384  # the whole handshake message, header included
MAX_RECORDS = 64  # real clients use one record, two for a hello over 16 KiB (which we refuse anyway)
MAX_RECORD = 16384  # TLSPlaintext.length, RFC 8446 §5.1

_HANDSHAKE = 22  # ContentType.handshake
_CLIENT_HELLO = 1  # HandshakeType.client_hello
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_HOST_NAME = 0  # NameType.host_name, RFC 6066 §3

# A DNS name as SNI carries it (RFC 6066 §3: ASCII, no trailing dot). Underscores are let through: some hosts use
# them, and refusing them here would turn "unknown name" into "malformed hello" for no gain.
_HOST_LABEL = re.compile(rb"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


class NotClientHello(ValueError):
    """The bytes cannot be (the start of) a TLS ClientHello; `reason` says why, in one line."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class NeedMore:
    """So far a valid prefix of a ClientHello: read more and parse the whole buffer again."""


@dataclass(frozen=True, slots=True)
class Hello:
    """A complete ClientHello. `sni` is the host_name as sent (None without the extension); `alpn` the protocols in
    the client's order, each decoded as latin-1 (ALPN names are opaque bytes; latin-1 maps them one to one)."""

    sni: str | None
    alpn: list[str] = field(default_factory=list)


def parse_client_hello(buf: bytes) -> NeedMore | Hello:
    """Parse the ClientHello at the start of a TLS record stream; raise NotClientHello if it cannot be one."""
    message = _reassemble(buf)
    if message is None:
        return NeedMore()
    return _parse_body(message)


def _reassemble(buf: bytes) -> bytes | None:
    """The ClientHello's body once all of it has arrived, None while a valid prefix; raise if it cannot be one."""
    message = bytearray()  # the handshake message, gathered from the records' fragments
    pos = 0
    records = 0
    while True:
        if message:
            if message[0] != _CLIENT_HELLO:
                raise NotClientHello(f"handshake message type {message[0]} is not client_hello")
            if len(message) >= 4:
                need = 4 + int.from_bytes(message[1:4], "big")
                if need > MAX_HELLO:
                    raise NotClientHello(f"client hello over {MAX_HELLO} bytes")
                if len(message) >= need:
                    return bytes(message[4:need])
        header = buf[pos : pos + 5]  # empty past the end, also after a partial record
        if not header:
            return None
        if header[0] != _HANDSHAKE:
            raise NotClientHello(f"not a handshake record (content type {header[0]})")
        if len(header) >= 2 and header[1] != 3:
            raise NotClientHello(f"record version {header[1]}.x is not TLS")
        if len(header) >= 3 and not 1 <= header[2] <= 4:
            raise NotClientHello(f"record version 3.{header[2]} is not TLS 1.0-1.3")
        if len(header) < 5:
            return None
        length = int.from_bytes(header[3:5], "big")
        if length == 0:
            raise NotClientHello("empty handshake record")
        if length > MAX_RECORD:
            raise NotClientHello(f"record of {length} bytes is over {MAX_RECORD}")
        records += 1
        if records > MAX_RECORDS:
            raise NotClientHello(f"client hello spans over {MAX_RECORDS} records")
        message += buf[pos + 5 : pos + 5 + length]
        pos += 5 + length


class _Reader:
    """Bounded reads over the hello body: running short of bytes is a malformed hello, never an IndexError."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, count: int, what: str) -> bytes:
        if count > self.left():
            raise NotClientHello(f"{what} runs past the end of the {self.what}")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def number(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def vector(self, size: int, what: str) -> _Reader:
        """A length-prefixed vector (`size`-byte length) as a reader of its own."""
        return _Reader(self.take(self.number(size, f"{what} length"), what), what)


def _parse_body(body: bytes) -> Hello:
    reader = _Reader(body, "client hello")
    version = reader.take(2, "client version")
    if version[0] != 3 or not 1 <= version[1] <= 4:
        raise NotClientHello(f"client version {version[0]}.{version[1]} is not TLS 1.0-1.3")
    reader.take(32, "random")
    if len(reader.vector(1, "session id").data) > 32:
        raise NotClientHello("session id over 32 bytes")
    suites = reader.vector(2, "cipher suites").data
    if not suites or len(suites) % 2:
        raise NotClientHello(f"cipher suite list of {len(suites)} bytes")
    if not reader.vector(1, "compression methods").data:
        raise NotClientHello("empty compression method list")
    if not reader.left():
        return Hello(sni=None)  # TLS 1.0-1.2 allow a hello without extensions
    extensions = reader.vector(2, "extension list")
    if reader.left():
        raise NotClientHello(f"{reader.left()} bytes after the extension list")
    sni: str | None = None
    alpn: list[str] = []
    seen: set[int] = set()
    while extensions.left():
        kind = extensions.number(2, "extension type")
        data = extensions.vector(2, f"extension {kind}")
        if kind in seen:
            raise NotClientHello(f"extension {kind} appears twice")
        seen.add(kind)
        if kind == _EXT_SERVER_NAME:
            sni = _server_name(data)
        elif kind == _EXT_ALPN:
            alpn = _alpn(data)
    return Hello(sni=sni, alpn=alpn)


def _server_name(ext: _Reader) -> str:
    names = ext.vector(2, "server name list")
    if ext.left():
        raise NotClientHello(f"{ext.left()} bytes after the server name list")
    if not names.left():
        raise NotClientHello("empty server name list")
    host: bytes | None = None
    while names.left():
        name_type = names.number(1, "server name type")
        name = names.vector(2, "server name").data
        if name_type != _HOST_NAME:
            raise NotClientHello(f"server name of type {name_type} is not a host_name")
        if host is not None:
            raise NotClientHello("more than one host_name in the server name list")
        host = name
    assert host is not None  # the list is not empty and every entry is a host_name
    if not 1 <= len(host) <= 253 or not all(_HOST_LABEL.fullmatch(label) for label in host.split(b".")):
        raise NotClientHello(f"server name {host[:64]!r} is not a valid host name")
    return host.decode("ascii")


def _alpn(ext: _Reader) -> list[str]:
    protocols = ext.vector(2, "ALPN protocol list")
    if ext.left():
        raise NotClientHello(f"{ext.left()} bytes after the ALPN protocol list")
    if not protocols.left():
        raise NotClientHello("empty ALPN protocol list")
    names: list[str] = []
    while protocols.left():
        name = protocols.vector(1, "ALPN protocol").data
        if not name:
            raise NotClientHello("empty ALPN protocol name")
        names.append(name.decode("latin-1"))
    return names
