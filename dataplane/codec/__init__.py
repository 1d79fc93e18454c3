"""Protocol codecs without IO: bytes in, events out. `http1` is HTTP/1.1 on httptools (llhttp)."""

from dataplane.codec.events import (
    ConnectionClosed,
    DataReceived,
    Event,
    Headers,
    LocalProtocolError,
    MessageCompleted,
    ProtocolSwitched,
    ProtocolViolation,
    RequestReceived,
    ResponseReceived,
)
from dataplane.codec.http1 import (
    CONTINUE_RESPONSE,
    KEEP_FRAMING,
    NO_FRAMING,
    ClientConnection,
    ServerConnection,
    encode_chunk,
    encode_last_chunk,
    serialize_request_head,
    serialize_response_head,
)

__all__ = [
    "CONTINUE_RESPONSE",
    "KEEP_FRAMING",
    "NO_FRAMING",
    "ClientConnection",
    "ConnectionClosed",
    "DataReceived",
    "Event",
    "Headers",
    "LocalProtocolError",
    "MessageCompleted",
    "ProtocolSwitched",
    "ProtocolViolation",
    "RequestReceived",
    "ResponseReceived",
    "ServerConnection",
    "encode_chunk",
    "encode_last_chunk",
    "serialize_request_head",
    "serialize_response_head",
]
