"""HTTP/1.1 codec: framing, keep-alive, pipelining, 100-continue, upgrades, limits and smuggling cases."""

from __future__ import annotations

import pytest

from dataplane.codec import (
    CONTINUE_RESPONSE,
    ClientConnection,
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
    ServerConnection,
)


def body(events: list[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, DataReceived))


def violation(data: bytes, **limits: int) -> ProtocolViolation:
    with pytest.raises(ProtocolViolation) as info:
        ServerConnection(**limits).receive_data(data)
    assert "\n" not in str(info.value)
    return info.value


def test_pipelined_requests_come_out_in_order() -> None:
    wire = (b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"PUT /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-Sum: 9\r\n\r\n")
    events = ServerConnection().receive_data(wire)
    heads = [e for e in events if isinstance(e, RequestReceived)]
    assert [(h.method, h.target, h.body_length) for h in heads] == [
        (b"GET", b"/a", 0), (b"POST", b"/b", 3), (b"PUT", b"/c", None)]
    ends = [e for e in events if isinstance(e, MessageCompleted)]
    assert len(ends) == 3 and ends[2].trailers == [(b"X-Sum", b"9")]
    assert body(events) == b"abchi"


def test_headers_keep_order_and_case_with_case_insensitive_lookup() -> None:
    (head, _) = ServerConnection().receive_data(
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\nAccept: */*\r\n\r\n")
    assert isinstance(head, RequestReceived)
    assert head.headers == [(b"Host", b"x"), (b"X-A", b"1"), (b"x-a", b"2"), (b"Accept", b"*/*")]
    assert head.headers.get(b"x-A") == b"1" and head.headers.get_all(b"X-A") == [b"1", b"2"]
    assert head.headers.get(b"nope") is None and head.headers.has(b"ACCEPT")


def test_keep_alive_and_close() -> None:
    server = ServerConnection()
    events = server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /ignored HTTP/1.1\r\n\r\n")
    assert [type(e) for e in events] == [RequestReceived, MessageCompleted]
    assert isinstance(events[0], RequestReceived) and not events[0].keep_alive
    assert server.receive_data(b"more") == []
    head = server.send_response(200, [], body_length=0)
    assert b"connection: close\r\n" in head.lower() and server.must_close
    (old,) = ServerConnection().receive_data(b"GET / HTTP/1.0\r\n\r\n")[:1]
    assert isinstance(old, RequestReceived) and not old.keep_alive and old.http_version == b"1.0"


def test_response_framing_is_rewritten() -> None:
    server = ServerConnection()
    server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head = server.send_response(200, [(b"Content-Length", b"99"), (b"Transfer-Encoding", b"gzip"), (b"X", b"y")],
                                body_length=None)
    assert head == b"HTTP/1.1 200 OK\r\nX: y\r\ntransfer-encoding: chunked\r\n\r\n"
    assert server.send_data(b"hello") == b"5\r\nhello\r\n"
    assert server.send_end([(b"x-t", b"1")]) == b"0\r\nx-t: 1\r\n\r\n"
    server.receive_data(b"GET / HTTP/1.0\r\n\r\n")
    head = server.send_response(200, [], body_length=None)  # unknown length to 1.0: close-delimited
    assert b"transfer-encoding" not in head and b"connection: close" in head and server.must_close
    assert server.send_data(b"raw") == b"raw"


def test_content_length_is_enforced_on_send() -> None:
    client = ClientConnection()
    head = client.send_request(b"POST", b"/", [(b"Host", b"x")], body_length=3)
    assert head == b"POST / HTTP/1.1\r\nHost: x\r\ncontent-length: 3\r\n\r\n"
    with pytest.raises(LocalProtocolError):
        client.send_data(b"abcd")
    client = ClientConnection()
    client.send_request(b"POST", b"/", [(b"Host", b"x")], body_length=3)
    client.send_data(b"ab")
    with pytest.raises(LocalProtocolError):
        client.send_end()


@pytest.mark.parametrize("headers", [[(b"X", b"a\r\nInjected: 1")], [(b"X\r\n", b"a")], [(b"X", b"a\nb")]])
def test_cr_lf_in_headers_are_refused(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(LocalProtocolError):
        ClientConnection().send_request(b"GET", b"/", headers)


def test_get_without_body_gets_no_content_length_but_post_does() -> None:
    assert b"content-length" not in ClientConnection().send_request(b"GET", b"/", [(b"Host", b"x")])
    assert b"content-length: 0" in ClientConnection().send_request(b"POST", b"/", [(b"Host", b"x")])


def test_expect_100_continue() -> None:
    server = ServerConnection()
    (head,) = server.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert isinstance(head, RequestReceived) and head.expects_100_continue
    assert server.send_continue() == CONTINUE_RESPONSE == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert server.receive_data(b"ok") == [DataReceived(b"ok"), MessageCompleted()]
    client = ClientConnection()
    client.send_request(b"POST", b"/", [(b"Host", b"x"), (b"Expect", b"100-continue")], body_length=2)
    (interim,) = client.receive_data(CONTINUE_RESPONSE)
    assert isinstance(interim, ResponseReceived) and interim.informational and interim.status == 100


def test_server_upgrade_hands_back_trailing_bytes() -> None:
    server = ServerConnection()
    events = server.receive_data(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x02")
    assert isinstance(events[0], RequestReceived) and events[0].upgrade == b"websocket"
    assert server.receive_data(b"hi") == []  # held until the response decides
    head = server.send_response(101, [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")])
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert server.switched and server.trailing_data == b"\x81\x02hi"
    with pytest.raises(LocalProtocolError):
        server.receive_data(b"x")


def test_refused_upgrade_resumes_http() -> None:
    server = ServerConnection()
    server.receive_data(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                        b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    server.send_response(426, [], body_length=0)
    events = server.receive_data(b"")
    assert isinstance(events[0], RequestReceived) and events[0].target == b"/next"


def test_client_upgrade_and_connect() -> None:
    client = ClientConnection()
    client.send_request(b"GET", b"/ws", [(b"Host", b"x"), (b"Connection", b"upgrade"), (b"Upgrade", b"websocket")])
    events = client.receive_data(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\n\r\nframes")
    assert isinstance(events[0], ResponseReceived) and events[0].status == 101
    assert events[-1] == ProtocolSwitched(b"frames") and client.switched
    client = ClientConnection()
    client.send_request(b"CONNECT", b"db:5432", [(b"Host", b"db:5432")])
    events = client.receive_data(b"HTTP/1.1 200 Connection established\r\n\r\n\x00\x01")
    assert events[-1] == ProtocolSwitched(b"\x00\x01")
    client = ClientConnection()
    client.send_request(b"CONNECT", b"db:5432", [(b"Host", b"db:5432")])
    events = client.receive_data(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
    assert body(events) == b"no" and isinstance(events[-1], MessageCompleted) and not client.switched


@pytest.mark.parametrize(("method", "status"), [(b"HEAD", 200), (b"GET", 204), (b"GET", 304), (b"HEAD", 404)])
def test_bodyless_responses(method: bytes, status: int) -> None:
    client = ClientConnection()
    client.send_request(method, b"/", [(b"Host", b"x")])
    events = client.receive_data(b"HTTP/1.1 %d X\r\nContent-Length: 5\r\n\r\n" % status)
    assert isinstance(events[0], ResponseReceived) and events[0].body_length == 0
    assert events[1:] == [MessageCompleted()]
    client.send_request(b"GET", b"/", [(b"Host", b"x")])  # the connection is reusable at once
    events = client.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert body(events) == b"ok"


def test_head_response_keeps_its_content_length_when_forwarded() -> None:
    server = ServerConnection()
    server.receive_data(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    head = server.send_response(200, [(b"Content-Length", b"1234")], body_length=0)
    assert b"Content-Length: 1234\r\n" in head and b"content-length: 0" not in head


def test_close_delimited_response_ends_at_eof() -> None:
    client = ClientConnection()
    client.send_request(b"GET", b"/", [(b"Host", b"x")])
    events = client.receive_data(b"HTTP/1.1 200 OK\r\n\r\npart")
    assert isinstance(events[0], ResponseReceived) and events[0].body_length is None and not events[0].keep_alive
    assert client.receive_eof() == [MessageCompleted(), ConnectionClosed()]


def test_upstream_eof_mid_response_is_502() -> None:
    client = ClientConnection()
    client.send_request(b"GET", b"/", [(b"Host", b"x")])
    client.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\npart")
    with pytest.raises(ProtocolViolation) as info:
        client.receive_eof()
    assert info.value.status == 502


def test_unsolicited_response_is_502() -> None:
    with pytest.raises(ProtocolViolation) as info:
        ClientConnection().receive_data(b"HTTP/1.1 200 OK\r\n\r\n")
    assert info.value.status == 502


SMUGGLING = [
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\nabcd",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
    b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",  # obs-fold
    b"GET / HTTP/1.1\nHost: x\n\n",  # bare LF
    b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # no Host
    b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
    b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
    b"G\x00T / HTTP/1.1\r\nHost: x\r\n\r\n",
]


@pytest.mark.parametrize("wire", SMUGGLING)
def test_smuggling_and_malformed_requests_are_400(wire: bytes) -> None:
    assert violation(wire).status == 400


@pytest.mark.parametrize("version", [b"2.0", b"0.9", b"1.2", b"3.0"])
def test_unsupported_versions_are_505(version: bytes) -> None:
    assert violation(b"GET / HTTP/" + version + b"\r\nHost: x\r\n\r\n").status == 505


def test_limits() -> None:
    assert violation(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 101 + b"\r\n").status == 431
    assert violation(b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n").status == 431
    many = b"".join(b"X-%d: %s\r\n" % (i, b"a" * 1000) for i in range(70))
    assert violation(b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n").status == 431
    assert violation(b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n").status == 414
    assert violation(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n", max_body_bytes=10).status == 413
    chunked = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n"
    assert violation(chunked, max_body_bytes=10).status == 413
    assert violation(b"GET / HTTP/1.1\r\nHost: x\r\nX: y\r\nZ: w\r\n\r\n", max_header_bytes=20).status == 431


def test_a_head_growing_over_many_reads_is_stopped() -> None:
    server = ServerConnection(max_header_bytes=1000, max_header_size=100_000)
    server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
    with pytest.raises(ProtocolViolation) as info:
        for _ in range(20):
            server.receive_data(b"a" * 100)
    assert info.value.status == 431
    with pytest.raises(ProtocolViolation):
        server.receive_data(b"\r\n\r\n")  # a failed connection stays failed


def test_trailers_growing_over_many_reads_are_stopped() -> None:
    server = ServerConnection(max_header_bytes=1000, max_header_size=100_000)
    server.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX: ")
    with pytest.raises(ProtocolViolation) as info:
        for _ in range(20):
            server.receive_data(b"a" * 100)
    assert info.value.status == 431


def test_good_requests_before_a_bad_one_are_kept() -> None:
    with pytest.raises(ProtocolViolation) as info:
        ServerConnection().receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nBROKEN\r\n\r\n")
    assert [type(e) for e in info.value.events] == [RequestReceived, MessageCompleted]


def test_eof_mid_request_is_400_and_clean_eof_is_closed() -> None:
    server = ServerConnection()
    server.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab")
    with pytest.raises(ProtocolViolation):
        server.receive_eof()
    assert ServerConnection().receive_eof() == [ConnectionClosed()]


def test_shared_end_of_message_trailers_are_read_only() -> None:
    (_, end) = ServerConnection().receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(end, MessageCompleted) and end.trailers == Headers()
    with pytest.raises(TypeError):
        end.trailers.append((b"a", b"b"))
