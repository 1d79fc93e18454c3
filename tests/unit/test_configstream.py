"""Config-stream protocol: framing at every byte boundary, versioning and ack bookkeeping."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcast.wire.configstream import (
    ClientSession,
    HeartbeatReceived,
    MessageDecoder,
    ProtocolError,
    ServerSession,
    SnapshotAcked,
    SnapshotRejected,
    encode_message,
    snapshot_version,
)

json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
payloads = st.dictionaries(st.text(max_size=6), json_scalars, max_size=4)


@given(st.lists(payloads, min_size=1, max_size=5), st.data())
def test_decoder_reassembles_messages_split_anywhere(bodies: list[dict[str, object]], data: st.DataObject) -> None:
    messages = [{**b, "type": "snapshot"} for b in bodies]
    wire = b"".join(encode_message(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    decoder = MessageDecoder()
    out = []
    start = 0
    for cut in [*cuts, len(wire)]:
        out += decoder.feed(wire[start:cut])
        start = cut
    assert out == messages


@given(st.binary(max_size=64))
def test_decoder_rejects_garbage_with_protocol_error_only(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        MessageDecoder(max_bytes=32).feed(data + b"\n")


def test_decoder_bounds_its_buffer() -> None:
    with pytest.raises(ProtocolError, match="larger than 10 bytes"):
        MessageDecoder(max_bytes=10).feed(b"x" * 11)


def test_version_is_a_digest_of_content() -> None:
    assert snapshot_version({"a": 1, "b": [1, 2]}) == snapshot_version({"b": [1, 2], "a": 1})
    assert snapshot_version({"a": 1}) != snapshot_version({"a": 2})


def test_server_sends_only_new_versions_and_matches_acks_by_nonce() -> None:
    server, client = ServerSession(), ClientSession()
    first = server.offer({"endpoints": [1]})
    assert first is not None
    assert server.offer({"endpoints": [1]}) is None  # same content, same version: nothing to send
    (msg,) = MessageDecoder().feed(first)
    received = client.receive(msg)
    second = server.offer({"endpoints": [1, 2]})
    assert second is not None
    # An ack of the replaced push is stale and ignored.
    (stale,) = MessageDecoder().feed(client.ack(received))
    assert server.receive(stale) is None
    (msg2,) = MessageDecoder().feed(second)
    received2 = client.receive(msg2)
    (ack,) = MessageDecoder().feed(client.ack(received2))
    assert server.receive(ack) == SnapshotAcked(received2.version, received2.nonce)
    assert server.acked_version == snapshot_version({"endpoints": [1, 2]})


def test_nack_is_reported_and_heartbeats_recognised() -> None:
    server, client = ServerSession(), ClientSession()
    (msg,) = MessageDecoder().feed(server.offer({"x": 1}) or b"")
    received = client.receive(msg)
    (nack,) = MessageDecoder().feed(client.nack(received, "port 80 in use"))
    event = server.receive(nack)
    assert isinstance(event, SnapshotRejected) and event.error == "port 80 in use"
    assert server.acked_version is None
    (beat,) = MessageDecoder().feed(client.heartbeat())
    assert isinstance(server.receive(beat), HeartbeatReceived)


@pytest.mark.parametrize("message", [{"type": "ack"}, {"type": "what"}, {"type": "nack", "version": 1, "nonce": "1"}])
def test_server_rejects_malformed_messages(message: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        ServerSession().receive(message)
