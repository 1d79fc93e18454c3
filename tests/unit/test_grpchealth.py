"""gRPC health checks (dataplane.grpchealth): the hand-written protobuf against the protobuf runtime, the verdict on
every kind of answer, the HTTP/2 exchange against an h2 server (split at every byte boundary), and `check` over a
trio stream."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
import trio
import trio.testing
from hypothesis import example, given
from hypothesis import strategies as st

from dataplane.grpchealth import (
    CHECK_PATH,
    CheckResult,
    HealthCheckExchange,
    check,
    decode_response,
    decode_status,
    decode_varint,
    encode_request,
    encode_varint,
    frame,
    judge,
    unframe,
)
from dataplane.healthcheck import HealthCheckSpec
from tests.support.grpchealth import HealthCheckRequest, HealthCheckResponse

INT32 = st.integers(-(1 << 31), (1 << 31) - 1)


# --- the messages -------------------------------------------------------------------------------------------------


def test_a_request_is_the_framed_protobuf_message() -> None:
    assert encode_request("demo.Echo") == b"\x00\x00\x00\x00\x0b\x0a\x09demo.Echo"
    assert encode_request("") == b"\x00\x00\x00\x00\x00"  # proto3 leaves the empty string out
    assert encode_request("\ud800")[5:] == b"\x0a\x03\xed\xa0\x80"  # not UTF-8: sent as is, for the server to refuse


@given(st.text(max_size=300))
def test_the_protobuf_runtime_reads_our_request(service: str) -> None:
    framed = encode_request(service)
    assert int.from_bytes(framed[1:5], "big") == len(framed) - 5 and framed[0] == 0
    assert framed[5:] == HealthCheckRequest(service=service).SerializeToString()
    assert HealthCheckRequest.FromString(unframe(framed)).service == service


@given(st.integers(0, (1 << 64) - 1))
def test_varints_round_trip(value: int) -> None:
    assert decode_varint(b"\xff" + encode_varint(value), 1) == (value, 1 + len(encode_varint(value)))


def _unknown_field() -> st.SearchStrategy[bytes]:
    number = st.integers(2, (1 << 29) - 1)
    return st.one_of(
        st.tuples(number, st.integers(0, (1 << 64) - 1)).map(lambda f: encode_varint(f[0] << 3) + encode_varint(f[1])),
        st.tuples(number, st.binary(min_size=8, max_size=8)).map(lambda f: encode_varint(f[0] << 3 | 1) + f[1]),
        st.tuples(number, st.binary(max_size=40)).map(
            lambda f: encode_varint(f[0] << 3 | 2) + encode_varint(len(f[1])) + f[1]),
        st.tuples(number, st.binary(min_size=4, max_size=4)).map(lambda f: encode_varint(f[0] << 3 | 5) + f[1]))


@given(INT32, st.lists(_unknown_field(), max_size=4), st.lists(_unknown_field(), max_size=4))
def test_status_round_trips_among_unknown_fields(status: int, before: list[bytes], after: list[bytes]) -> None:
    message = b"".join(before) + HealthCheckResponse(status=status).SerializeToString() + b"".join(after)
    assert decode_response(frame(message)) == status == HealthCheckResponse.FromString(message).status


def test_the_last_status_wins_and_none_is_unknown() -> None:
    assert decode_status(b"\x08\x02\x08\x01") == 1
    assert decode_status(b"") == 0 and decode_status(b"\x12\x00") == 0


@example(b"\xc1\x80\x80\x80\x10" + bytes(8))  # field number 2**29 + 8: above protobuf's largest, refused by it
@given(st.binary(max_size=64))
def test_what_we_accept_the_protobuf_runtime_reads_the_same(message: bytes) -> None:
    try:
        status = decode_status(message)
    except ValueError:
        return
    assert HealthCheckResponse.FromString(message).status == status


@given(st.binary(max_size=64))
def test_arbitrary_bytes_raise_nothing_but_value_error(data: bytes) -> None:
    for decode in (decode_response, decode_status, unframe):
        with contextlib.suppress(ValueError):  # anything else fails the test
            decode(data)


@pytest.mark.parametrize(("body", "why"), [
    (b"", "no complete gRPC message"),
    (b"\x00\x00\x00", "no complete gRPC message"),
    (b"\x01\x00\x00\x00\x02\x08\x01", "compressed"),
    (b"\x00\x00\x00\x00\x03\x08\x01", "3 bytes announced, 2 received"),
    (b"\x00\x00\x00\x00\x02\x08\x01\x00", "2 bytes announced, 3 received"),
    (frame(b"\x08"), "truncated varint"),
    (frame(b"\x08" + b"\xff" * 10 + b"\x01"), "longer than 10 bytes"),
    (frame(b"\x0a\x01\x01"), "status field with wire type 2"),
    (frame(b"\x12\x05ab"), "field 2 truncated"),
    (frame(b"\x00\x01"), "field number 0"),
    (frame(b"\x13"), "unsupported wire type 3"),
])
def test_malformed_answers_say_why(body: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        decode_response(body)


# --- the verdict --------------------------------------------------------------------------------------------------

OK_HEAD = {b":status": b"200", b"content-type": b"application/grpc"}


@pytest.mark.parametrize(("headers", "body", "trailers", "expected"), [
    (OK_HEAD, frame(b"\x08\x01"), {b"grpc-status": b"0"}, CheckResult(True, "SERVING")),
    (OK_HEAD, frame(b"\x08\x02"), {b"grpc-status": b"0"}, CheckResult(False, "NOT_SERVING")),
    (OK_HEAD, frame(b""), {b"grpc-status": b"0"}, CheckResult(False, "UNKNOWN")),
    (OK_HEAD, frame(b"\x08\x07"), {b"grpc-status": b"0"}, CheckResult(False, "status 7")),
    (OK_HEAD, b"", {b"grpc-status": b"0"}, CheckResult(False, "malformed answer: no complete gRPC message (0 bytes)")),
    (OK_HEAD, b"", {b"grpc-status": b"12", b"grpc-message": b"nope"},
     CheckResult(False, "grpc-status 12 UNIMPLEMENTED: nope")),
    (OK_HEAD, frame(b"\x08\x01"), {}, CheckResult(False, "no grpc-status")),
    ({**OK_HEAD, b":status": b"503"}, b"", {b"grpc-status": b"0"}, CheckResult(False, "HTTP status 503")),
    ({**OK_HEAD, b"content-type": b"text/plain"}, frame(b"\x08\x01"), {b"grpc-status": b"0"},
     CheckResult(False, "not a gRPC answer (content-type 'text/plain')")),
])
def test_the_verdict(headers: dict[bytes, bytes], body: bytes, trailers: dict[bytes, bytes],
                     expected: CheckResult) -> None:
    assert judge(headers, body, trailers) == expected


# --- the exchange, against an h2 server ---------------------------------------------------------------------------

Respond = Callable[[h2.connection.H2Connection, int], None]


def answer(status: int, grpc_status: bytes = b"0") -> Respond:
    def respond(server: h2.connection.H2Connection, stream_id: int) -> None:
        server.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")])
        server.send_data(stream_id, frame(HealthCheckResponse(status=status).SerializeToString()))
        server.send_headers(stream_id, [(b"grpc-status", grpc_status)], end_stream=True)
    return respond


def trailers_only(code: bytes) -> Respond:
    def respond(server: h2.connection.H2Connection, stream_id: int) -> None:
        server.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc"),
                                        (b"grpc-status", code)], end_stream=True)
    return respond


def no_trailers(server: h2.connection.H2Connection, stream_id: int) -> None:
    server.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    server.send_data(stream_id, frame(b"\x08\x01"), end_stream=True)


def reset(server: h2.connection.H2Connection, stream_id: int) -> None:
    server.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)


def goaway(server: h2.connection.H2Connection, stream_id: int) -> None:
    server.close_connection(h2.errors.ErrorCodes.NO_ERROR, last_stream_id=stream_id)


def converse(respond: Respond, service: str = "demo.Echo") -> tuple[HealthCheckExchange, dict[bytes, bytes], bytes,
                                                                    bytes]:
    """Run the exchange against an h2 server answering with `respond`: the exchange, the request's headers and body,
    and the bytes the server answered (not yet given to the exchange)."""
    exchange = HealthCheckExchange(service, "echo")
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    headers: dict[bytes, bytes] = {}
    body = b""
    for event in server.receive_data(exchange.data_to_send()):
        if isinstance(event, h2.events.RequestReceived):
            headers = {bytes(k): bytes(v) for k, v in event.headers}
        elif isinstance(event, h2.events.DataReceived):
            body += event.data
        elif isinstance(event, h2.events.StreamEnded):
            respond(server, event.stream_id)
    return exchange, headers, body, server.data_to_send()


def test_the_request_is_a_grpc_call_for_the_service() -> None:
    _, headers, body, _ = converse(answer(1))
    assert headers == {b":method": b"POST", b":scheme": b"https", b":path": CHECK_PATH, b":authority": b"echo",
                       b"content-type": b"application/grpc", b"te": b"trailers",
                       b"user-agent": b"meshcast-health-check"}
    assert HealthCheckRequest.FromString(unframe(body)).service == "demo.Echo"


@pytest.mark.parametrize(("respond", "expected"), [
    (answer(1), CheckResult(True, "SERVING")),
    (answer(2), CheckResult(False, "NOT_SERVING")),
    (answer(3), CheckResult(False, "SERVICE_UNKNOWN")),
    (answer(1, grpc_status=b"14"), CheckResult(False, "grpc-status 14 UNAVAILABLE")),
    (trailers_only(b"12"), CheckResult(False, "grpc-status 12 UNIMPLEMENTED")),
    (trailers_only(b"0"), CheckResult(False, "malformed answer: no complete gRPC message (0 bytes)")),
    (no_trailers, CheckResult(False, "the answer ended without trailers")),
    (reset, CheckResult(False, "the stream was reset (REFUSED_STREAM)")),
    (goaway, CheckResult(False, "GOAWAY (NO_ERROR) before the answer")),
])
def test_every_answer_has_a_verdict(respond: Respond, expected: CheckResult) -> None:
    exchange, _, _, answered = converse(respond)
    exchange.receive(answered)
    assert exchange.result == expected


def test_the_end_of_the_connection_fails_the_check() -> None:
    exchange, _, _, answered = converse(lambda server, stream_id: None)
    exchange.receive(answered)
    assert exchange.result is None
    exchange.receive(b"")
    assert exchange.result == CheckResult(False, "the connection ended before the answer")


@given(st.sampled_from([answer(1), answer(2), trailers_only(b"12"), reset]), st.data())
def test_the_answer_split_anywhere_gives_the_same_verdict(respond: Respond, data: st.DataObject) -> None:
    exchange, _, _, answered = converse(respond)
    whole, _, _, _ = converse(respond)
    whole.receive(answered)
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(answered) - 1)), max_size=8)))
    for start, end in zip([0, *cuts], [*cuts, len(answered)], strict=True):
        exchange.receive(answered[start:end])
    assert exchange.result == whole.result is not None


@given(st.binary(max_size=200), st.booleans())
def test_garbage_from_the_server_fails_the_check_and_raises_nothing(garbage: bytes, after_settings: bool) -> None:
    exchange, _, _, answered = converse(lambda server, stream_id: None)
    if after_settings:
        exchange.receive(answered)
    exchange.receive(garbage)
    exchange.receive(b"")
    assert exchange.result is not None and not exchange.result.healthy


# --- check, over a trio stream ------------------------------------------------------------------------------------


async def serve_one(stream: trio.abc.Stream, respond: Respond) -> None:
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    await stream.send_all(server.data_to_send())
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return
        for event in server.receive_data(data):
            if isinstance(event, h2.events.StreamEnded):
                respond(server, event.stream_id)
        await stream.send_all(server.data_to_send())


@pytest.mark.parametrize(("respond", "healthy"), [(answer(1), True), (answer(2), False)])
async def test_check_over_a_stream(respond: Respond, healthy: bool) -> None:
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_one, server, respond)
        result = await check(client, "demo.Echo", authority="echo")
        await client.aclose()
    assert result.healthy is healthy


async def test_a_broken_connection_fails_the_check() -> None:
    client, server = trio.testing.memory_stream_pair()
    await server.aclose()
    result = await check(client, "demo.Echo", authority="echo")
    assert not result.healthy and result.reason.startswith("the connection broke")


# --- the settings -------------------------------------------------------------------------------------------------


def test_a_grpc_check_from_the_policy() -> None:
    spec = HealthCheckSpec.of({"interval": "200ms", "grpc": {"serviceName": "demo.Echo"}})
    assert (spec.grpc_service, spec.path, spec.interval) == ("demo.Echo", None, 0.2)
    assert HealthCheckSpec.of({"grpc": {}}).grpc_service == ""  # the server as a whole
    both = HealthCheckSpec.of({"grpc": {"serviceName": "x"}, "http": {"path": "/healthz"}})
    assert (both.grpc_service, both.path) == ("x", None)
    assert HealthCheckSpec.of({"http": {"path": "/healthz"}}).grpc_service is None
    assert HealthCheckSpec.of({"tcp": {}}).grpc_service is None
