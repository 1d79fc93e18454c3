"""The gRPC health-checking protocol (`grpc.health.v1.Health/Check`), for MeshHealthCheck's `grpc` checks.

Theory of operation. A check is one unary call on a fresh HTTP/2 connection: the caller's sidecar dials the endpoint
the way a gRPC call would (mTLS, ALPN `h2`), sends `POST /grpc.health.v1.Health/Check` with a HealthCheckRequest
naming the service asked about, ends its side, and reads the answer. The instance is healthy exactly when the HTTP
status is 200, the content type is gRPC's, `grpc-status` is 0 (in the trailers, or in the headers of a trailers-only
answer) and the one message in the body is a HealthCheckResponse whose status is SERVING. Anything else fails the
check, with a reason: another health status, any other gRPC status (12 UNIMPLEMENTED: the app has no health service),
a reset, a GOAWAY or the end of the connection before the answer is complete, a malformed answer.

The two messages are tiny, so their protobuf is written by hand here (the sidecar carries no protobuf runtime):
HealthCheckRequest is `{string service = 1}`, HealthCheckResponse `{ServingStatus status = 1}`. `HealthCheckExchange`
is the call without IO, in h2's manner (bytes in, bytes out, a result at the end); `check` runs it over a stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

CHECK_PATH = b"/grpc.health.v1.Health/Check"
USER_AGENT = b"meshcast-health-check"
SERVING = 1
STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
GRPC_CODES = {0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
              7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 12: "UNIMPLEMENTED", 13: "INTERNAL",
              14: "UNAVAILABLE", 16: "UNAUTHENTICATED"}
MAX_ANSWER = 16384  # bytes of body: a HealthCheckResponse takes 7; more is not a health service answering
READ_SIZE = 16384
_MAX_VARINT = 10  # bytes: a 64-bit value


# --- the messages (pure) ------------------------------------------------------------------------------------------

def encode_varint(value: int) -> bytes:
    """Protobuf's base-128 varint of an unsigned 64-bit value (a negative int32/int64 as its two's complement)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(data: bytes, offset: int) -> tuple[int, int]:
    """The varint at `offset` and the offset after it. Raises ValueError when truncated or longer than 10 bytes."""
    value = 0
    for i in range(_MAX_VARINT):
        if offset + i >= len(data):
            raise ValueError("truncated varint")
        byte = data[offset + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value & ((1 << 64) - 1), offset + i + 1
    raise ValueError("varint longer than 10 bytes")


def frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: flag 0 (not compressed), 4-byte big-endian length, the bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def unframe(data: bytes) -> bytes:
    """The one message of a unary answer's body. Raises ValueError unless `data` is exactly one uncompressed
    length-prefixed message."""
    if len(data) < 5:
        raise ValueError(f"no complete gRPC message ({len(data)} bytes)")
    if data[0] != 0:
        raise ValueError("compressed or flagged gRPC message" if data[0] == 1 else f"bad gRPC message flag {data[0]}")
    length = int.from_bytes(data[1:5], "big")
    if length != len(data) - 5:
        raise ValueError(f"gRPC message of {length} bytes announced, {len(data) - 5} received")
    return data[5:]


def encode_request(service: str) -> bytes:
    """HealthCheckRequest{service}, framed; the empty name (the server as a whole) is the empty message."""
    name = service.encode("utf-8", "surrogatepass")  # a lone surrogate from JSON: the server refuses it, we do not
    return frame(b"\x0a" + encode_varint(len(name)) + name if name else b"")


MAX_FIELD_NUMBER = (1 << 29) - 1  # protobuf's field numbers: a key is a uint32, 3 bits of it the wire type


def decode_status(message: bytes) -> int:
    """The status of a HealthCheckResponse (protobuf bytes): the last `status` field, 0 (UNKNOWN) if none; unknown
    fields are skipped. Raises ValueError, and nothing else, on any malformed input."""
    status = 0
    offset = 0
    while offset < len(message):
        key, offset = decode_varint(message, offset)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if number > MAX_FIELD_NUMBER:
            raise ValueError(f"field number {number} is above the largest protobuf allows")
        if wire == 0:  # varint
            value, offset = decode_varint(message, offset)
            if number == 1:
                value &= 0xFFFFFFFF  # an enum is an int32: the low 32 bits, signed
                status = value - (1 << 32) if value & 0x80000000 else value
            continue
        if number == 1:
            raise ValueError(f"status field with wire type {wire}")
        if wire == 1:  # 64-bit
            offset += 8
        elif wire == 5:  # 32-bit
            offset += 4
        elif wire == 2:  # length-delimited
            length, offset = decode_varint(message, offset)
            offset += length
        else:  # 3 and 4 (groups, deprecated) never appear in proto3; 6 and 7 do not exist
            raise ValueError(f"unsupported wire type {wire}")
        if offset > len(message):
            raise ValueError(f"field {number} truncated")
    return status


def decode_response(body: bytes) -> int:
    """The status of the HealthCheckResponse in a unary answer's body. Raises ValueError."""
    return decode_status(unframe(body))


# --- the call (pure) ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CheckResult:
    healthy: bool
    reason: str  # what the instance answered, or why the check failed


def _h2_code(code: int | None) -> str:
    try:
        return h2.errors.ErrorCodes(code or 0).name
    except ValueError:
        return f"code {code}"


def _fields(headers: Iterable[tuple[bytes | str, bytes | str]]) -> dict[bytes, bytes]:
    return {k if isinstance(k, bytes) else k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in headers}


def judge(headers: dict[bytes, bytes], body: bytes, trailers: dict[bytes, bytes]) -> CheckResult:
    """The verdict on a complete answer; a trailers-only answer passes its headers as `trailers` too."""
    status = headers.get(b":status", b"")
    if status != b"200":
        return CheckResult(False, f"HTTP status {status.decode('latin-1')}")
    if not headers.get(b"content-type", b"").startswith(b"application/grpc"):
        return CheckResult(False, "not a gRPC answer (content-type "
                                  f"{headers.get(b'content-type', b'').decode('latin-1')!r})")
    code = trailers.get(b"grpc-status")
    if code is None:
        return CheckResult(False, "no grpc-status")
    if code != b"0":
        name = GRPC_CODES.get(int(code), "") if code.isdigit() else ""
        message = trailers.get(b"grpc-message", b"").decode("latin-1")
        return CheckResult(False, f"grpc-status {code.decode('latin-1')} {name}" + (f": {message}" if message else ""))
    try:
        serving = decode_response(body)
    except ValueError as exc:
        return CheckResult(False, f"malformed answer: {exc}")
    return CheckResult(serving == SERVING, STATUS_NAMES.get(serving, f"status {serving}"))


class HealthCheckExchange:
    """One Health/Check call as the first stream of a new HTTP/2 client connection, without IO: `data_to_send()`
    for the bytes to write, `receive(data)` for those read (b"" at the end of the connection), and `result` once
    the call is over. `receive` raises nothing: broken HTTP/2 fails the check."""

    def __init__(self, service: str, authority: str) -> None:
        config = h2.config.H2Configuration(client_side=True, header_encoding=None, validate_inbound_headers=True,
                                           normalize_inbound_headers=True)
        self._h2 = h2.connection.H2Connection(config)
        self._h2.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 16384,
        })
        self.result: CheckResult | None = None
        self._headers: dict[bytes, bytes] | None = None
        self._body = bytearray()
        self._h2.initiate_connection()
        self._stream_id = self._h2.get_next_available_stream_id()
        request = encode_request(service)
        if len(request) > self._h2.max_outbound_frame_size:  # one DATA frame, within the initial windows
            self.result = CheckResult(False, "the service name is too long")
            return
        self._h2.send_headers(self._stream_id, [
            (b":method", b"POST"), (b":scheme", b"https"), (b":path", CHECK_PATH),
            (b":authority", authority.encode()), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
            (b"user-agent", USER_AGENT)])
        self._h2.send_data(self._stream_id, request, end_stream=True)

    def data_to_send(self) -> bytes:
        return self._h2.data_to_send()

    def receive(self, data: bytes | bytearray) -> None:
        if self.result is not None:
            return
        if not data:
            self._fail("the connection ended before the answer")
            return
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.H2Error as exc:
            self._fail(f"HTTP/2 protocol error: {exc}")
            return
        for event in events:
            self._on(event)
            if self.result is not None:
                return

    def _fail(self, why: str) -> None:
        self.result = CheckResult(False, why)

    def _on(self, event: h2.events.Event) -> None:
        if getattr(event, "stream_id", self._stream_id) != self._stream_id:
            return  # nothing else is open: a peer's stray frame
        if isinstance(event, h2.events.ResponseReceived):
            self._headers = _fields(event.headers)
            if event.stream_ended is not None:  # trailers-only: grpc-status is in the headers
                self.result = judge(self._headers, b"", self._headers)
        elif isinstance(event, h2.events.DataReceived):
            self._body += event.data
            if len(self._body) > MAX_ANSWER:
                self._fail(f"an answer of more than {MAX_ANSWER} bytes")
        elif isinstance(event, h2.events.TrailersReceived):
            self.result = judge(self._headers or {}, bytes(self._body), _fields(event.headers))
        elif isinstance(event, h2.events.StreamEnded):
            self._fail("the answer ended without trailers")  # those that had them were judged already
        elif isinstance(event, h2.events.StreamReset):
            self._fail(f"the stream was reset ({_h2_code(event.error_code)})")
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._fail(f"GOAWAY ({_h2_code(event.error_code)}) before the answer")


async def check(stream: trio.abc.Stream, service: str, *, authority: str) -> CheckResult:
    """One check over `stream`, already connected (and TLS-negotiated to `h2`); the caller closes it and bounds
    the time taken. Raises nothing but trio.Cancelled: a broken connection fails the check."""
    exchange = HealthCheckExchange(service, authority)
    try:
        while True:
            out = exchange.data_to_send()
            if out:
                await stream.send_all(out)
            if exchange.result is not None:
                return exchange.result
            exchange.receive(await stream.receive_some(READ_SIZE))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        return CheckResult(False, f"the connection broke: {exc}")
