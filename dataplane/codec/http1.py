"""HTTP/1.1 codec on httptools (llhttp), sans IO: bytes in, events out; heads and bodies in, bytes out.

Theory of operation. Each side of a connection is one object. `receive_data(bytes)` feeds llhttp, whose
callbacks build the events of that input, returned in order (pipelined requests included). llhttp checks the
grammar and the framing (duplicate Content-Length, Content-Length with Transfer-Encoding, chunk sizes, bytes in
names and values); the callbacks add what llhttp leaves to its embedder: size limits, the HTTP version, Host,
and the response framing that depends on the request (HEAD, CONNECT).

Two things llhttp cannot be told through httptools, and how we get around them:
- A response to HEAD has no body whatever its Content-Length says (llhttp learns this from a return value of
  on_headers_complete that httptools does not pass on), and a 2xx to CONNECT starts a tunnel. The client side
  therefore frames the head of such a response itself: it buffers up to the blank line (`bytes.find`, no Python
  loop over bytes), feeds only the head, and decides. The same path serves upgrade requests (101).
- llhttp only knows sizes of complete fields, and httptools joins a field's fragments internally. Complete
  fields are counted in `on_header`; a head still growing across reads is bounded by counting whole inputs fed
  while the parser stays inside the same head (the first input's share is bounded by the read size).

The client side sends one request at a time (no upstream pipelining, as Envoy): HEAD and CONNECT need their
response framed by the request, and a pool gains more from more connections than from pipelining.
Errors raise `ProtocolViolation` with the status to answer; after one, the connection only raises it again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from http import HTTPStatus

import httptools

from dataplane.codec.events import (
    END_OF_MESSAGE,
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
    fast_constructor,
)

__all__ = [
    "CONTINUE_RESPONSE",
    "KEEP_FRAMING",
    "NO_FRAMING",
    "ClientConnection",
    "ServerConnection",
    "encode_chunk",
    "encode_last_chunk",
    "serialize_request_head",
    "serialize_response_head",
]

_new_request = fast_constructor(RequestReceived)
_new_response = fast_constructor(ResponseReceived)
_new_data = fast_constructor(DataReceived)
_new_end = fast_constructor(MessageCompleted)

CONTINUE_RESPONSE = b"HTTP/1.1 100 Continue\r\n\r\n"
_REASONS = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})
# Names whose value the codec reads: host(4) expect(6) upgrade(7) content-length(14) transfer-encoding(17).
# Checking the length first keeps `lower()` off every other field.
_READ_LENGTHS = frozenset({4, 6, 7, 14, 17})

# Framing of a head being serialized (body_length may be an int >= 0 or None for chunked).
KEEP_FRAMING = -1  # keep the caller's Content-Length / Transfer-Encoding: HEAD and 304 describe a body not sent
NO_FRAMING = -2  # strip them and add none: 1xx, 204, tunnels, bodies delimited by closing the connection
_CLOSE_DELIMITED = -3  # (sender state only) a body that ends when we close the connection

_OPEN, _PAUSED, _DONE, _SWITCHED, _ERROR = range(5)
_S_IDLE, _S_LENGTH, _S_CHUNKED, _S_CLOSE = range(4)


# --- serialization (pure) -------------------------------------------------------------------------------------


def _fields(parts: list[bytes], headers: Iterable[tuple[bytes, bytes]], strip: bool) -> tuple[int, bool, bool]:
    """Append `name: value CRLF` lines; drop Content-Length and Transfer-Encoding when `strip`.
    Return (lines written, asks to close, asks to upgrade)."""
    lines = 0
    close = upgrade = False
    for name, value in headers:
        n = len(name)
        if n == 14 or n == 17 or n == 10 or n == 7:
            lname = name.lower()
            if lname == b"connection":
                lvalue = value.lower()
                close = close or b"close" in lvalue
                upgrade = upgrade or b"upgrade" in lvalue
            elif strip and (lname == b"content-length" or lname == b"transfer-encoding"):
                continue
        parts += (name, b": ", value, b"\r\n")
        lines += 1
    return lines, close, upgrade


def _finish(parts: list[bytes], lines: int) -> bytes:
    parts.append(b"\r\n")
    head = b"".join(parts)
    # Every CR and LF must be one we wrote: a CR/LF/NUL inside a name, value, target or reason would let a caller
    # (or a header copied from elsewhere) split the message. Two C-level counts instead of a check per field.
    if head.count(b"\n") != lines + 2 or head.count(b"\r") != lines + 2 or b"\x00" in head:
        raise LocalProtocolError("CR, LF or NUL inside a header, target or reason")
    return head


def _framing_line(parts: list[bytes], body_length: int | None) -> int:
    if body_length is None:
        parts.append(b"transfer-encoding: chunked\r\n")
        return 1
    if body_length >= 0:
        parts.append(b"content-length: %d\r\n" % body_length)
        return 1
    return 0


def serialize_request_head(
    method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]], *, body_length: int | None = 0
) -> bytes:
    """An HTTP/1.1 request head. Framing is ours: any Content-Length/Transfer-Encoding in `headers` is replaced by
    `content-length: N` (body_length=N; omitted for 0 unless the method carries a body) or chunked (None)."""
    if b" " in method or b" " in target or not target:
        raise LocalProtocolError("method and target must be non-empty and hold no spaces")
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    lines, _, _ = _fields(parts, headers, True)
    if method == b"CONNECT" or (body_length == 0 and method not in _BODY_METHODS):
        body_length = NO_FRAMING
    return _finish(parts, lines + _framing_line(parts, body_length))


def serialize_response_head(
    status: int, headers: Iterable[tuple[bytes, bytes]], *, reason: bytes = b"", body_length: int | None = 0,
    close: bool = False,
) -> bytes:
    """An HTTP/1.1 response head. `body_length`: N for content-length, None for chunked, KEEP_FRAMING to keep the
    caller's framing fields (HEAD, 304), NO_FRAMING to strip them (1xx, 204, tunnels, close-delimited).
    `close` adds `connection: close` unless the headers already say so."""
    return _response_head(status, headers, reason, body_length, close)[0]


def _response_head(status: int, headers: Iterable[tuple[bytes, bytes]], reason: bytes, body_length: int | None,
                   close: bool) -> tuple[bytes, bool]:
    if not 100 <= status <= 999:
        raise LocalProtocolError(f"status {status} out of range")
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason or _REASONS.get(status, b""))]
    lines, asks_close, _ = _fields(parts, headers, body_length != KEEP_FRAMING)
    lines += _framing_line(parts, body_length)
    if close and not asks_close:
        parts.append(b"connection: close\r\n")
        lines += 1
    return _finish(parts, lines), close or asks_close


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body; empty data gives no bytes (an empty chunk would end the body)."""
    if not data:
        return b""
    return b"%x\r\n%b\r\n" % (len(data), data)


def encode_last_chunk(trailers: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
    parts = [b"0\r\n"]
    lines, _, _ = _fields(parts, trailers, False)
    parts.append(b"\r\n")
    out = b"".join(parts)
    if out.count(b"\n") != lines + 2 or out.count(b"\r") != lines + 2:
        raise LocalProtocolError("CR or LF inside a trailer")
    return out


# --- the connection halves -----------------------------------------------------------------------------------


class _Http1Connection:
    """What both sides share: the parser callbacks, limits, error handling and the body sender."""

    _peer_status = 400  # status of a violation by the peer: 400 downstream, 502 upstream
    _parser: httptools.HttpRequestParser | httptools.HttpResponseParser

    def __init__(self, *, max_header_bytes: int = 60 * 1024, max_headers: int = 100,
                 max_header_size: int = 16 * 1024, max_body_bytes: int | None = None) -> None:
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_header_size = max_header_size
        self.max_body_bytes = max_body_bytes
        self._events: list[Event] = []
        self._state = _OPEN
        self._error: ProtocolViolation | None = None
        self._trailing = b""
        self._peer_done = False  # the peer's last message (Connection: close) is complete: ignore what follows
        self._in_message = False
        self._in_head = False  # inside a head or trailer section, where the partial-size guard applies
        self._section = 0  # bumped when a head or trailer section starts
        self._partial = 0
        self._reset_message()
        self._send_mode = _S_IDLE
        self._send_remaining = 0
        self._close_after_send = False
        self._setup()

    def _setup(self) -> None:
        raise NotImplementedError

    def _reset_message(self) -> None:
        self._headers = Headers()
        self._head_bytes = 0
        self._headers_done = False
        self._trailers: Headers | None = None
        self._cl: int | None = None
        self._chunked = False
        self._has_te = False
        self._hosts = 0
        self._expect = False
        self._upgrade_token: bytes | None = None
        self._body_bytes = 0
        self._keep_alive = True

    # Public state ------------------------------------------------------------------------------------------

    @property
    def switched(self) -> bool:
        """True once the connection carries opaque bytes (after 101 or a CONNECT tunnel)."""
        return self._state == _SWITCHED

    @property
    def trailing_data(self) -> bytes:
        """After a switch: the bytes that followed the HTTP head, to relay before anything else."""
        return self._trailing

    @property
    def must_close(self) -> bool:
        """True when the connection must be closed after the current exchange (Connection: close either way,
        HTTP/1.0 without keep-alive, a close-delimited body, or a violation)."""
        return self._peer_done or self._close_after_send or self._state == _ERROR

    # Parser callbacks (called by llhttp through httptools) ----------------------------------------------------

    def _violation(self, message: str, status: int | None = None) -> ProtocolViolation:
        return ProtocolViolation(status or self._peer_status, message)

    def _too_large(self, message: str) -> ProtocolViolation:
        return self._violation(message, 431 if self._peer_status == 400 else None)

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 4
        self._head_bytes += size
        if self._head_bytes > self.max_header_bytes:
            raise self._too_large(f"header section larger than {self.max_header_bytes} bytes")
        if size > self.max_header_size:
            raise self._too_large(f"header field larger than {self.max_header_size} bytes")
        if self._headers_done:
            trailers = self._trailers
            if trailers is None:
                trailers = self._trailers = Headers()
            if len(trailers) >= self.max_headers:
                raise self._too_large(f"more than {self.max_headers} trailer fields")
            trailers.append((name, value))
            return
        headers = self._headers
        if len(headers) >= self.max_headers:
            raise self._too_large(f"more than {self.max_headers} header fields")
        headers.append((name, value))
        if len(name) in _READ_LENGTHS:
            lname = name.lower()
            if lname == b"content-length":
                self._cl = int(value)  # llhttp has checked the digits and rejected duplicates
            elif lname == b"transfer-encoding":
                self._has_te = True
                self._chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
            elif lname == b"host":
                self._hosts += 1
            elif lname == b"expect":
                self._expect = value.strip().lower() == b"100-continue"
            elif lname == b"upgrade":
                self._upgrade_token = value

    def on_body(self, data: bytes) -> None:
        self._in_head = False
        if self.max_body_bytes is not None:
            self._body_bytes += len(data)
            if self._body_bytes > self.max_body_bytes:
                raise self._violation(f"body larger than {self.max_body_bytes} bytes", 413)
        self._events.append(_new_data(data))

    def on_chunk_header(self) -> None:
        # Either a chunk's data or (after the last chunk) the trailer section follows; on_body tells them apart.
        self._in_head = True
        self._section += 1
        self._head_bytes = 0

    def on_chunk_complete(self) -> None:
        self._in_head = False

    def _http_version(self) -> bytes:
        version = self._parser.get_http_version()
        if version == "1.1":
            return b"1.1"
        if version == "1.0":
            return b"1.0"
        raise self._violation(f"HTTP version {version} not supported", 505 if self._peer_status == 400 else None)

    # Feeding --------------------------------------------------------------------------------------------------

    def _feed_parser(self, data: bytes) -> int | None:
        """Feed llhttp; return the offset where an upgrade or CONNECT paused it, else None."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            return int(exc.args[0])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, ProtocolViolation):
                raise cause from None
            if cause is not None:
                raise cause from None  # a bug in a callback: let it show as itself
            raise self._violation(f"malformed message: {exc}") from None
        except httptools.HttpParserError as exc:
            if self._peer_done:
                return None  # llhttp refuses bytes after `Connection: close`; they are ignored
            return self._parser_error(str(exc))
        return None

    def _parser_error(self, message: str) -> int | None:
        status = 505 if message == "Invalid HTTP version" and self._peer_status == 400 else None
        raise self._violation(f"malformed message: {message}", status)

    def _feed_guarded(self, data: bytes) -> int | None:
        section, was_in_head = self._section, self._in_head
        offset = self._feed_parser(data)
        if self._in_head:
            if self._section == section and was_in_head:
                self._partial += len(data)
                if self._partial > self.max_header_bytes:
                    raise self._too_large(f"header section larger than {self.max_header_bytes} bytes")
            elif self._section != section:
                self._partial = 0
        return offset

    def _take(self) -> list[Event]:
        events = self._events
        self._events = []
        return events

    def _fail(self, exc: ProtocolViolation) -> ProtocolViolation:
        exc.events = self._take()
        self._state = _ERROR
        self._error = ProtocolViolation(exc.status, exc.message)
        return exc

    def _receive_closed_states(self, data: bytes) -> list[Event]:
        if self._state == _ERROR:
            assert self._error is not None
            raise ProtocolViolation(self._error.status, self._error.message)
        if self._state == _SWITCHED:
            raise LocalProtocolError("the connection switched protocols: relay bytes directly")
        return []  # _DONE: the peer's last message is complete; what follows is ignored

    # Body sender ----------------------------------------------------------------------------------------------

    def send_data(self, data: bytes) -> bytes:
        """Frame a piece of the body being sent (chunk, or raw under content-length / close-delimited)."""
        mode = self._send_mode
        if mode == _S_CHUNKED:
            return encode_chunk(data)
        if mode == _S_LENGTH:
            self._send_remaining -= len(data)
            if self._send_remaining < 0:
                raise LocalProtocolError("more body than the content-length sent")
            return data
        if mode == _S_CLOSE or not data:
            return data
        raise LocalProtocolError("no message with a body being sent")

    def send_end(self, trailers: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
        """End the body being sent. Trailers go out only on a chunked body (elsewhere they are dropped, which
        RFC 9110 allows)."""
        mode = self._send_mode
        self._send_mode = _S_IDLE
        if mode == _S_IDLE:
            return b""  # a message without body is complete with its head
        if mode == _S_CHUNKED:
            return encode_last_chunk(trailers)
        if mode == _S_LENGTH and self._send_remaining:
            raise LocalProtocolError(f"body ended {self._send_remaining} bytes short of its content-length")
        return b""

    def _start_send(self, body_length: int | None) -> None:
        if self._send_mode != _S_IDLE:
            raise LocalProtocolError("the previous message is not finished")
        if body_length is None:
            self._send_mode = _S_CHUNKED
        elif body_length > 0:
            self._send_mode = _S_LENGTH
            self._send_remaining = body_length
        elif body_length == _CLOSE_DELIMITED:
            self._send_mode = _S_CLOSE
        # else: no body, the head completes the message


class ServerConnection(_Http1Connection):
    """The server half: parses requests from a downstream peer, serializes our responses.

    Owns one llhttp request parser. Pipelined requests are all parsed and handed out in order; responses must be
    sent in the same order (`send_response` answers the oldest unanswered request). After an upgrade or CONNECT
    request, parsing pauses until the response: 101 (or 2xx to CONNECT) switches protocols and `trailing_data`
    holds the bytes that followed; any other answer resumes HTTP, and `receive_data(b"")` parses what was held.
    Raises `ProtocolViolation` (400, 413, 414, 431, 505) for the peer's faults, `LocalProtocolError` for ours.
    """

    _parser: httptools.HttpRequestParser

    def _setup(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._target = b""
        self._queue: deque[RequestReceived] = deque()
        self._pending = b""
        self._going_away = False

    @property
    def going_away(self) -> bool:
        return self._going_away

    def close_after_response(self) -> None:
        """Drain: the next response head says Connection: close, and the connection ends after the current
        exchange (or now, between exchanges: `must_close`)."""
        self._going_away = True
        self._close_after_send = True

    def on_message_begin(self) -> None:
        self._section += 1
        self._in_head = self._in_message = True
        self._target = b""
        self._reset_message()

    def on_url(self, url: bytes) -> None:
        self._target += url
        self._head_bytes += len(url)
        if len(self._target) > self.max_header_size:
            raise self._violation(f"request target longer than {self.max_header_size} bytes", 414)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._headers_done = True
        version = self._http_version()
        if self._has_te and version == b"1.0":
            raise self._violation("transfer-encoding in an HTTP/1.0 request")
        if self._hosts > 1 or (self._hosts == 0 and version == b"1.1"):
            raise self._violation("an HTTP/1.1 request needs exactly one host header")
        parser = self._parser
        body_length = None if self._chunked else (self._cl or 0)
        if self.max_body_bytes is not None and body_length and body_length > self.max_body_bytes:
            raise self._violation(f"content-length over {self.max_body_bytes} bytes", 413)
        method = parser.get_method()
        upgrade = self._upgrade_token if method != b"CONNECT" and parser.should_upgrade() else None
        self._keep_alive = keep_alive = parser.should_keep_alive()
        request = _new_request(method, self._target, version, self._headers, keep_alive, body_length,
                                  self._expect and version == b"1.1", upgrade)
        self._events.append(request)
        self._queue.append(request)

    def on_message_complete(self) -> None:
        self._in_head = self._in_message = False
        trailers = self._trailers
        self._events.append(_new_end(trailers) if trailers is not None else END_OF_MESSAGE)
        if not self._keep_alive:
            self._peer_done = True

    def receive_data(self, data: bytes) -> list[Event]:
        """Parse `data`; return the events it completes, in order. Raises ProtocolViolation."""
        if self._state != _OPEN:
            if self._state == _PAUSED:
                self._pending += data
                return []
            return self._receive_closed_states(data)
        if self._pending:
            data = self._pending + data
            self._pending = b""
        if self._peer_done:
            return []
        try:
            offset = self._feed_guarded(data)
        except ProtocolViolation as exc:
            raise self._fail(exc) from None
        if offset is not None:  # an upgrade or CONNECT request: hold the rest until the response decides
            self._state = _PAUSED
            self._pending = data[offset:]
        if self._peer_done and self._state == _OPEN:
            self._state = _DONE
        return self._take()

    def receive_eof(self) -> list[Event]:
        """The peer closed its sending side."""
        if self._state == _ERROR or self._state == _SWITCHED:
            return self._receive_closed_states(b"")
        if self._in_message:
            raise self._fail(self._violation("connection closed in the middle of a request"))
        self._peer_done = True
        return [*self._take(), ConnectionClosed()]

    def send_continue(self) -> bytes:
        """The interim `100 Continue` for the oldest request, which must have asked for it."""
        if not self._queue or not self._queue[0].expects_100_continue:
            raise LocalProtocolError("no request waiting for 100-continue")
        return CONTINUE_RESPONSE

    def send_response(self, status: int, headers: Iterable[tuple[bytes, bytes]], *, reason: bytes = b"",
                      body_length: int | None = 0) -> bytes:
        """The head of the response to the oldest unanswered request. `body_length`: N (content-length), None
        (unknown: chunked to HTTP/1.1 peers, close-delimited to HTTP/1.0 ones). Framing fields in `headers` are
        replaced, except on HEAD and 304 responses where they describe a body that is not sent."""
        if not self._queue:
            raise LocalProtocolError("no request to answer")
        request = self._queue[0]
        if status < 200:
            if status == 101:
                if request.upgrade is None:
                    raise LocalProtocolError("101 to a request that asked for no upgrade")
                return self._switch(serialize_response_head(101, headers, reason=reason, body_length=NO_FRAMING))
            return serialize_response_head(status, headers, reason=reason, body_length=NO_FRAMING)
        if self._send_mode != _S_IDLE:
            raise LocalProtocolError("the previous response is not finished")
        self._queue.popleft()
        if request.method == b"CONNECT" and status < 300:
            return self._switch(serialize_response_head(status, headers, reason=reason, body_length=NO_FRAMING))
        close = not request.keep_alive or self._going_away
        framing: int | None
        if request.method == b"HEAD" or status == 304:
            framing, body_length = KEEP_FRAMING, 0
        elif status == 204:
            framing, body_length = NO_FRAMING, 0
        elif body_length is None and request.http_version == b"1.0":
            framing, body_length, close = NO_FRAMING, _CLOSE_DELIMITED, True
        else:
            framing = body_length
        head, close = _response_head(status, headers, reason, framing, close)
        self._start_send(body_length)
        self._close_after_send = self._close_after_send or close
        if self._state == _PAUSED:  # an upgrade was refused: HTTP goes on with what was held
            self._state = _OPEN
        return head

    def _switch(self, head: bytes) -> bytes:
        if self._state != _PAUSED:
            raise LocalProtocolError("switching protocols needs the upgrade or CONNECT request to be complete")
        self._queue.clear()
        self._state = _SWITCHED
        self._trailing = self._pending
        self._pending = b""
        return head


class ClientConnection(_Http1Connection):
    """The client half: serializes our requests, parses the upstream's responses.

    One request at a time: `send_request` raises while a response is outstanding. HEAD, CONNECT and upgrade
    requests have their response head framed here (see the module docstring); a 101 or a 2xx to CONNECT yields
    `ProtocolSwitched` with the bytes that followed the head. Every violation raises `ProtocolViolation(502)`.
    """

    _peer_status = 502

    _parser: httptools.HttpResponseParser

    def _setup(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._reason = b""
        self._method: bytes | None = None  # of the request awaiting its response
        self._upgrade_requested = False
        self._framed = False
        self._buffer = b""
        self._informational = False
        self._switching = False
        self._replace_parser = False
        self._until_close = False

    def send_request(self, method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]], *,
                     body_length: int | None = 0) -> bytes:
        """The head of a request (HTTP/1.1); framing fields in `headers` are replaced per `body_length`:
        N (content-length) or None (chunked)."""
        if self._method is not None:
            raise LocalProtocolError("a response is still outstanding (no upstream pipelining)")
        if self._state != _OPEN or self._peer_done:
            raise LocalProtocolError("the connection is not reusable")
        if self._send_mode != _S_IDLE:
            raise LocalProtocolError("the previous request is not finished")
        parts = [method, b" ", target, b" HTTP/1.1\r\n"]
        if b" " in method or b" " in target or not target:
            raise LocalProtocolError("method and target must be non-empty and hold no spaces")
        lines, close, upgrade = _fields(parts, headers, True)
        framing = NO_FRAMING if method == b"CONNECT" or (body_length == 0 and method not in _BODY_METHODS) \
            else body_length
        head = _finish(parts, lines + _framing_line(parts, framing))
        self._start_send(body_length if method != b"CONNECT" else 0)
        self._method = method
        self._upgrade_requested = upgrade
        self._framed = upgrade or method == b"HEAD" or method == b"CONNECT"
        self._close_after_send = close
        return head

    # Callbacks --------------------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._method is None:
            raise self._violation("response without a request")
        self._section += 1
        self._in_head = self._in_message = True
        self._reason = b""
        self._reset_message()

    def on_status(self, reason: bytes) -> None:
        self._reason += reason
        self._head_bytes += len(reason)
        if len(self._reason) > self.max_header_size:
            raise self._violation("reason phrase too long")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._headers_done = True
        version = self._http_version()
        parser = self._parser
        status = parser.get_status_code()
        method = self._method
        keep_alive = parser.should_keep_alive()
        self._informational = status < 200
        if status < 200:
            if status == 101:
                if not self._upgrade_requested:
                    raise self._violation("101 to a request that asked for no upgrade")
                self._switching = True
            elif status not in (100, 102, 103):
                raise self._violation(f"informational status {status} not supported")
            self._events.append(_new_response(status, self._reason, version, self._headers, keep_alive, 0))
            return
        body_length: int | None
        if method == b"HEAD" or status == 204 or status == 304:
            body_length = 0
        elif method == b"CONNECT" and status < 300:
            body_length = 0
            self._switching = True
        elif self._chunked:
            body_length = None
        elif self._cl is not None:
            body_length = self._cl
        else:
            body_length = None
            self._until_close = True
            keep_alive = False
        if self.max_body_bytes is not None and body_length and body_length > self.max_body_bytes:
            raise self._violation(f"content-length over {self.max_body_bytes} bytes")
        self._keep_alive = keep_alive
        self._events.append(_new_response(status, self._reason, version, self._headers, keep_alive, body_length))
        if method == b"HEAD":  # llhttp would wait for the Content-Length's bytes: end here, new parser
            self._replace_parser = True
            self._complete()

    def on_message_complete(self) -> None:
        if self._informational or self._replace_parser or self._switching:
            self._in_head = self._in_message = False
            return
        self._complete()

    def _complete(self) -> None:
        self._in_head = self._in_message = False
        trailers = self._trailers
        self._events.append(_new_end(trailers) if trailers is not None else END_OF_MESSAGE)
        self._method = None
        self._until_close = False
        if not self._keep_alive:
            self._peer_done = True

    def _parser_error(self, message: str) -> int | None:
        if self._switching:  # llhttp pauses on a bare 101 without flagging an upgrade: same outcome
            return 0
        return super()._parser_error(message)

    # Feeding ----------------------------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Parse `data` from upstream; return the events it completes. Raises ProtocolViolation (502)."""
        if self._state != _OPEN:
            return self._receive_closed_states(data)
        if self._peer_done:
            return []
        try:
            if self._framed:
                self._receive_framed(data)
            else:
                self._feed_guarded(data)
        except ProtocolViolation as exc:
            raise self._fail(exc) from None
        if self._peer_done and self._state == _OPEN:
            self._state = _DONE
        return self._take()

    def _receive_framed(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        while self._framed:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > self.max_header_bytes:
                    raise self._violation(f"header section larger than {self.max_header_bytes} bytes")
                self._buffer = buffer
                return
            end += 4
            self._feed_parser(buffer[:end])
            buffer = buffer[end:]
            if self._switching:
                self._state = _SWITCHED
                self._trailing = buffer
                self._events.append(ProtocolSwitched(buffer))
                self._buffer = b""
                return
            if self._replace_parser:
                self._parser = httptools.HttpResponseParser(self)
                self._replace_parser = False
                self._framed = False
            elif not self._informational:
                self._framed = False  # CONNECT or upgrade refused: an ordinary response, body and all
        self._buffer = b""
        if buffer:
            self._feed_guarded(buffer)

    def receive_eof(self) -> list[Event]:
        """Upstream closed its sending side: ends a close-delimited body; anything else unfinished is a 502."""
        if self._state == _ERROR or self._state == _SWITCHED:
            return self._receive_closed_states(b"")
        if self._until_close and self._in_message:
            self._complete()
        elif self._in_message or self._buffer:
            raise self._fail(self._violation("upstream closed in the middle of a response"))
        elif self._method is not None and self._state == _OPEN and not self._peer_done:
            raise self._fail(self._violation("upstream closed before responding"))
        self._peer_done = True
        self._state = _DONE
        return [*self._take(), ConnectionClosed()]
