"""ExaBGP's text API (5.x), our end of it, without IO: commands out as bytes, answers in as bytes, events back.

A `process` with `encoder text` gets one command per line on its stdout and, with `api.ack` on (ExaBGP 5's
default), one answer per command on its stdin, in order: `done`, or `error` (a route it could not parse, a
`neighbor` selector that matched no peer). On shutdown ExaBGP writes `shutdown <pid> <ppid>`. With
`api { neighbor-changes; }` it also writes `neighbor A up`, `neighbor A connected` and `neighbor A down - REASON`;
anything else is passed on as `MessageReceived`.

Commands name their peer (`neighbor 10.255.1.1 announce route ...`) so each session gets the AS path that fits it:
eBGP peers get the local AS written out, repeated for prepends (ExaBGP sends `as-path [...]` exactly as written),
iBGP peers get no AS path. `next-hop self` resolves to the session's local address.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from bgp.settings import IPNetwork, PathAttributes, Peer

MAX_LINE = 64 * 1024  # ExaBGP's answers are words; a longer line means the stream is not what we think


def as_path(peer: Peer, attrs: PathAttributes, local_as: int) -> tuple[int, ...]:
    """The AS path a peer is sent: empty over iBGP, else the local AS once plus `prepend` more times."""
    if peer.asn == local_as:
        return ()
    return (local_as,) * (1 + attrs.prepend)


def announce_command(peer: Peer, prefix: IPNetwork, attrs: PathAttributes, local_as: int) -> str:
    words = [f"neighbor {peer.address} announce route {prefix} next-hop self"]
    if attrs.med is not None:
        words.append(f"med {attrs.med}")
    path = as_path(peer, attrs, local_as)
    if path:
        words.append(f"as-path [ {' '.join(map(str, path))} ]")
    if attrs.communities:
        words.append(f"community [ {' '.join(attrs.communities)} ]")
    if attrs.large_communities:
        words.append(f"large-community [ {' '.join(attrs.large_communities)} ]")
    return " ".join(words)


def withdraw_command(peer: Peer, prefix: IPNetwork) -> str:
    return f"neighbor {peer.address} withdraw route {prefix} next-hop self"


def eor_command(peer: Peer, version: int) -> str:
    """End-of-RIB for a family: with graceful restart the peer keeps our stale routes until it gets this."""
    return f"neighbor {peer.address} announce eor ipv{version} unicast"


@dataclass(frozen=True)
class CommandDone:
    command: str


@dataclass(frozen=True)
class CommandFailed:
    command: str


@dataclass(frozen=True)
class ShutdownAnnounced:
    """ExaBGP is stopping; stdin will close next."""


@dataclass(frozen=True)
class UnsolicitedAnswer:
    """A `done`/`error` with no command waiting: acks were off, or the stream lost a line."""

    answer: str


@dataclass(frozen=True)
class NeighborUp:
    """A session reached Established (`api { neighbor-changes; }`): ExaBGP re-sends its routes to it."""

    address: str


@dataclass(frozen=True)
class NeighborDown:
    address: str
    reason: str


@dataclass(frozen=True)
class MessageReceived:
    """Any other line (`neighbor X connected`, updates if a config asks for them)."""

    line: str


Event = (CommandDone | CommandFailed | ShutdownAnnounced | UnsolicitedAnswer | NeighborUp | NeighborDown
         | MessageReceived)


class ApiProtocolError(Exception):
    """The bytes from ExaBGP cannot be ExaBGP's text API (a line longer than MAX_LINE, or not ASCII)."""


class ApiChannel:
    """Owns the order of commands in flight and matches each answer to the oldest. Pure: bytes in, bytes out."""

    def __init__(self) -> None:
        self._pending: deque[str] = deque()
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def send(self, command: str) -> bytes:
        """The bytes to write for `command` (one line); it now waits for its answer."""
        if "\n" in command or "\r" in command or not command.isascii() or not command.strip():
            raise ValueError(f"not a single-line ASCII command: {command!r}")
        self._pending.append(command)
        return command.encode("ascii") + b"\n"

    def receive_data(self, data: bytes) -> list[Event]:
        self._buffer += data
        events: list[Event] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            raw = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            events.extend(self._line(raw))
        if len(self._buffer) > MAX_LINE:
            raise ApiProtocolError(f"a line from ExaBGP longer than {MAX_LINE} bytes")
        return events

    def _line(self, raw: bytes) -> list[Event]:
        try:
            line = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise ApiProtocolError("non-ASCII bytes from ExaBGP") from None
        if not line:
            return []
        if line in ("done", "error"):
            if not self._pending:
                return [UnsolicitedAnswer(line)]
            command = self._pending.popleft()
            return [CommandDone(command) if line == "done" else CommandFailed(command)]
        if line == "shutdown" or line.startswith("shutdown "):  # 5.x writes `shutdown <pid> <ppid>`
            return [ShutdownAnnounced()]
        words = line.split(" ", 3)
        if len(words) >= 3 and words[0] == "neighbor":
            if words[2] == "up" and len(words) == 3:
                return [NeighborUp(words[1])]
            if words[2] == "down":
                return [NeighborDown(words[1], words[3].removeprefix("- ").strip() if len(words) > 3 else "")]
        return [MessageReceived(line)]
