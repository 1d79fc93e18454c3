"""HTTP/1.1 codec under hypothesis: split anywhere, pipelined, random chunking, arbitrary bytes."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from dataplane.codec import (
    ClientConnection,
    DataReceived,
    Event,
    MessageCompleted,
    ProtocolViolation,
    RequestReceived,
    ResponseReceived,
    ServerConnection,
    encode_chunk,
    encode_last_chunk,
    serialize_request_head,
)

TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!#$%&'*+.^`|~", min_size=1,
                max_size=12).map(str.encode).filter(
    lambda n: n.lower() not in {b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade",
                                b"expect", b"keep-alive", b"proxy-connection"})
VALUE = st.binary(max_size=20).map(lambda b: bytes(c for c in b if c >= 0x21 and c != 0x7F) or b"v")
HEADERS = st.lists(st.tuples(TOKEN, VALUE), max_size=6)
TARGET = st.text("abcdefghijklmnopqrstuvwxyz0123456789/-._~%?=&", min_size=0, max_size=20).map(
    lambda t: b"/" + t.encode())
METHOD = st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"])
BODY = st.binary(max_size=64)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes, bool]:
    method, target, headers, body = draw(METHOD), draw(TARGET), draw(HEADERS), draw(BODY)
    chunked = draw(st.booleans())
    return method, target, [(b"Host", b"svc"), *headers], body, chunked


def encode_request(req: tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes, bool], sizes: list[int]) -> bytes:
    method, target, headers, body, chunked = req
    head = serialize_request_head(method, target, headers, body_length=None if chunked else len(body))
    if not chunked:
        return head + body
    out, rest = [head], body
    for size in sizes:
        out.append(encode_chunk(rest[:size]))
        rest = rest[size:]
    out.append(encode_chunk(rest))
    out.append(encode_last_chunk([(b"X-Trailer", b"t")]))
    return b"".join(out)


def normalize(events: list[Event]) -> list[object]:
    """Merge adjacent body pieces: their boundaries depend on how the input was split."""
    out: list[object] = []
    for event in events:
        if isinstance(event, DataReceived) and out and isinstance(out[-1], bytes):
            out[-1] += event.data
        else:
            out.append(event.data if isinstance(event, DataReceived) else event)
    return out


def feed_split(conn: ServerConnection | ClientConnection, wire: bytes, cuts: list[int]) -> list[Event]:
    events: list[Event] = []
    start = 0
    for cut in [*sorted(cuts), len(wire)]:
        events += conn.receive_data(wire[start:cut])
        start = cut
    return events


SIZES = st.lists(st.integers(1, 20), max_size=6)


@given(st.lists(requests(), min_size=1, max_size=4), SIZES, st.data())
def test_pipelined_requests_split_anywhere_give_the_same_events(
    reqs: list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes, bool]], sizes: list[int], data: st.DataObject
) -> None:
    wire = b"".join(encode_request(r, sizes) for r in reqs)
    whole = normalize(ServerConnection().receive_data(wire))
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=10))
    assert normalize(feed_split(ServerConnection(), wire, cuts)) == whole
    heads = [e for e in whole if isinstance(e, RequestReceived)]
    assert [(h.method, h.target, h.headers[: len(r[2])]) for h, r in zip(heads, reqs, strict=True)] == [
        (r[0], r[1], r[2]) for r in reqs]
    bodies = [e for e in whole if isinstance(e, bytes)]
    assert b"".join(bodies) == b"".join(r[3] for r in reqs)
    assert sum(isinstance(e, MessageCompleted) for e in whole) == len(reqs)


@settings(max_examples=50)
@given(requests(), SIZES)
def test_every_byte_boundary(req: tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes, bool],
                             sizes: list[int]) -> None:
    wire = encode_request(req, sizes)
    whole = normalize(ServerConnection().receive_data(wire))
    server = ServerConnection()
    events: list[Event] = []
    for i in range(len(wire)):
        events += server.receive_data(wire[i: i + 1])
    assert normalize(events) == whole


@given(BODY, st.lists(st.integers(1, 30), max_size=8), st.data())
def test_chunked_bodies_round_trip(body: bytes, sizes: list[int], data: st.DataObject) -> None:
    server = ServerConnection()
    server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    wire = [server.send_response(200, [(b"X", b"1")], body_length=None)]
    rest = body
    for size in sizes:
        wire.append(server.send_data(rest[:size]))
        rest = rest[size:]
    wire.append(server.send_data(rest))
    wire.append(server.send_end([(b"Digest", b"abc")]))
    raw = b"".join(wire)
    client = ClientConnection()
    client.send_request(b"GET", b"/", [(b"Host", b"x")])
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=6))
    events = feed_split(client, raw, cuts)
    assert isinstance(events[0], ResponseReceived) and events[0].body_length is None
    assert b"".join(e.data for e in events if isinstance(e, DataReceived)) == body
    assert events[-1] == MessageCompleted(type(events[0].headers)([(b"Digest", b"abc")]))


VALID = (b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nT: 1\r\n\r\n"
         b"GET /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")


@settings(max_examples=300)
@given(st.binary(max_size=200) | st.builds(
    lambda pos, junk: VALID[:pos] + junk + VALID[pos:], st.integers(0, len(VALID)), st.binary(min_size=1, max_size=4)))
@example(b"\xff" * 10)
@example(b"GET / HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n")
def test_arbitrary_bytes_only_raise_protocol_violation(wire: bytes) -> None:
    for conn in (ServerConnection(max_header_bytes=100), ServerConnection()):
        try:
            conn.receive_data(wire)
            conn.receive_data(wire)
            conn.receive_eof()
        except ProtocolViolation as exc:
            assert exc.status in (400, 413, 414, 431, 505) and "\n" not in str(exc)


@settings(max_examples=200)
@given(st.binary(max_size=200), st.sampled_from([b"GET", b"HEAD", b"CONNECT", b"POST"]), st.booleans())
def test_arbitrary_upstream_bytes_only_raise_protocol_violation(wire: bytes, method: bytes, upgrade: bool) -> None:
    client = ClientConnection()
    headers = [(b"Host", b"x")] + ([(b"Connection", b"upgrade"), (b"Upgrade", b"ws")] if upgrade else [])
    client.send_request(method, b"/", headers)
    try:
        client.receive_data(b"HTTP/1.1 " + wire)
        if not client.switched:
            client.receive_eof()
    except ProtocolViolation as exc:
        assert exc.status == 502


@given(st.sampled_from([b"HEAD", b"GET"]), st.sampled_from([200, 204, 304, 404]), st.integers(0, 50), st.data())
def test_bodyless_responses_split_anywhere(method: bytes, status: int, length: int, data: st.DataObject) -> None:
    raw = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n" % (status, length))
    client = ClientConnection()
    client.send_request(method, b"/", [(b"Host", b"x")])
    events = feed_split(client, raw, data.draw(st.lists(st.integers(0, len(raw)), max_size=5)))
    if method == b"HEAD" or status in (204, 304):
        assert [type(e) for e in events] == [ResponseReceived, ResponseReceived, MessageCompleted]
    else:
        assert [type(e) for e in events] == [ResponseReceived, ResponseReceived] + (
            [MessageCompleted] if length == 0 else [])
