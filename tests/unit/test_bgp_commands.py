"""The ExaBGP text API without IO (bgp/commands.py): command lines, and answers split at every byte boundary."""

from __future__ import annotations

import ipaddress
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgp.commands import (
    ApiChannel,
    ApiProtocolError,
    CommandDone,
    CommandFailed,
    Event,
    MessageReceived,
    NeighborDown,
    NeighborUp,
    ShutdownAnnounced,
    UnsolicitedAnswer,
    announce_command,
    eor_command,
    withdraw_command,
)
from bgp.settings import PathAttributes, Peer

EBGP = Peer(ipaddress.ip_address("10.255.1.1"), 65000)
IBGP = Peer(ipaddress.ip_address("10.255.1.5"), 65001)
PREFIX = ipaddress.ip_network("198.51.100.1/32")


def test_announce_over_ebgp_writes_the_as_path_with_prepends() -> None:
    attrs = PathAttributes(med=100, prepend=2, communities=("65001:100", "no-export"), large_communities=("1:2:3",))
    assert announce_command(EBGP, PREFIX, attrs, 65001) == (
        "neighbor 10.255.1.1 announce route 198.51.100.1/32 next-hop self med 100 as-path [ 65001 65001 65001 ] "
        "community [ 65001:100 no-export ] large-community [ 1:2:3 ]")


def test_announce_minimal_and_over_ibgp() -> None:
    assert announce_command(EBGP, PREFIX, PathAttributes(), 65001) == (
        "neighbor 10.255.1.1 announce route 198.51.100.1/32 next-hop self as-path [ 65001 ]")
    assert announce_command(IBGP, PREFIX, PathAttributes(med=5), 65001) == (
        "neighbor 10.255.1.5 announce route 198.51.100.1/32 next-hop self med 5")


def test_withdraw_and_eor() -> None:
    assert withdraw_command(EBGP, PREFIX) == "neighbor 10.255.1.1 withdraw route 198.51.100.1/32 next-hop self"
    assert eor_command(EBGP, 4) == "neighbor 10.255.1.1 announce eor ipv4 unicast"


def test_answers_match_commands_in_order() -> None:
    channel = ApiChannel()
    assert channel.send("announce route 1") == b"announce route 1\n"
    channel.send("announce route 2")
    channel.send("announce route 3")
    events = channel.receive_data(b"done\nerror\nneighbor 10.255.1.1 up\n")
    assert events == [CommandDone("announce route 1"), CommandFailed("announce route 2"), NeighborUp("10.255.1.1")]
    assert channel.pending == 1
    assert channel.receive_data(b"done\ndone\n") == [CommandDone("announce route 3"), UnsolicitedAnswer("done")]
    assert channel.pending == 0


def test_other_lines() -> None:
    channel = ApiChannel()
    assert channel.receive_data(b"neighbor 10.255.1.1 down - peer reset the connection\r\n") == [
        NeighborDown("10.255.1.1", "peer reset the connection")]
    assert channel.receive_data(b"neighbor 10.255.1.1 connected\n\n") == [
        MessageReceived("neighbor 10.255.1.1 connected")]
    assert channel.receive_data(b"shutdown 123 45\n") == [ShutdownAnnounced()]
    assert channel.receive_data(b"shutdown\n") == [ShutdownAnnounced()]


def test_commands_are_single_ascii_lines() -> None:
    channel = ApiChannel()
    for bad in ("two\nlines", "cr\r", "", "  ", "caf\u00e9"):
        with pytest.raises(ValueError):
            channel.send(bad)
    assert channel.pending == 0


def test_broken_streams_raise() -> None:
    with pytest.raises(ApiProtocolError):
        ApiChannel().receive_data(b"\xff\n")
    with pytest.raises(ApiProtocolError):
        ApiChannel().receive_data(b"x" * (64 * 1024 + 1))


STREAM = (b"done\nerror\nneighbor 10.255.1.1 up\nneighbor 10.255.1.1 connected\ndone\n"
          b"neighbor 10.255.1.1 down - hold timer expired\nshutdown 1 2\n")


def _events(chunks: list[bytes]) -> list[Event]:
    channel = ApiChannel()
    for n in range(3):
        channel.send(f"command {n}")
    return [event for chunk in chunks for event in channel.receive_data(chunk)]


def test_every_split_point_gives_the_same_events() -> None:
    whole = _events([STREAM])
    assert len(whole) == 7
    for cut in range(len(STREAM) + 1):
        assert _events([STREAM[:cut], STREAM[cut:]]) == whole


@settings(max_examples=300)
@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_any_chunking_gives_the_same_events(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(points)]
    assert _events(chunks) == _events([STREAM])
