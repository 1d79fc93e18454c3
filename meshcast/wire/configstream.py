"""The config stream between a zone control plane and a sidecar, as pure protocol logic (no IO).

Theory of operation: a sidecar opens one long-lived HTTP/2 request (`POST /v1/dataplanes/<mesh>/<name>/stream`,
authenticated by its dataplane token) and both sides exchange newline-delimited JSON messages on it, full duplex:

    CP -> sidecar   {"type": "snapshot", "version": V, "nonce": N, "snapshot": {...}}
    sidecar -> CP   {"type": "ack", "version": V, "nonce": N}
                    {"type": "nack", "version": V, "nonce": N, "error": "why"}
                    {"type": "heartbeat"}

A snapshot is the whole configuration of one sidecar; its version is a digest of its content, so the same
configuration always has the same version, across control plane restarts too, and a sidecar that reconnects with a
cached snapshot gets nothing new to apply. The CP sends a snapshot only when its version differs from the last one it
sent on this stream; each carries a fresh nonce so an ack names exactly which push it answers (as xDS does). A NACK
keeps the sidecar on its previous version and is reported to the operator; the CP does not resend the same version.

`ServerSession` and `ClientSession` take decoded messages in and hand bytes out; the HTTP/2 and trio plumbing that
moves the bytes lives with the components.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
CONTENT_TYPE = "application/x-ndjson"


class ProtocolError(Exception):
    """The peer broke the protocol; the stream must close."""


def canonical_json(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def snapshot_version(snapshot: Mapping[str, Any]) -> str:
    """Digest of the canonical JSON of a snapshot: equal content, equal version."""
    return _digest(canonical_json(snapshot))


def _digest(canonical: bytes) -> str:
    return hashlib.sha256(canonical).hexdigest()[:16]


def encode_message(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


class MessageDecoder:
    """Splits a byte stream into JSON messages, one per line, with a bounded buffer."""

    def __init__(self, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_bytes

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        messages: list[dict[str, Any]] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if not line.strip():
                continue
            messages.append(_decode_line(line))
        if len(self._buffer) > self._max:
            raise ProtocolError(f"message larger than {self._max} bytes")
        return messages


def _decode_line(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"invalid JSON message: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("a message must be a JSON object with a string 'type'")
    return message


# --- events -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotAcked:
    version: str
    nonce: str


@dataclass(frozen=True)
class SnapshotRejected:
    version: str
    nonce: str
    error: str


@dataclass(frozen=True)
class HeartbeatReceived:
    pass


@dataclass(frozen=True)
class SnapshotReceived:
    version: str
    nonce: str
    snapshot: dict[str, Any]


ServerEvent = SnapshotAcked | SnapshotRejected | HeartbeatReceived


_nonces = itertools.count(1)


@dataclass
class ServerSession:
    """The control plane's side of one stream."""

    sent_version: str | None = None
    sent_nonce: str | None = None
    acked_version: str | None = None
    rejected: dict[str, str] = field(default_factory=dict)

    def offer(self, snapshot: Mapping[str, Any]) -> bytes | None:
        """Bytes to send for `snapshot`, or None when the sidecar already has this version."""
        # Serialize once: the canonical bytes give the version and are embedded as they are in the message.
        canonical = canonical_json(snapshot)
        version = _digest(canonical)
        if version == self.sent_version:
            return None
        self.sent_version = version
        self.sent_nonce = str(next(_nonces))
        head = f'{{"type":"snapshot","version":"{version}","nonce":"{self.sent_nonce}","snapshot":'.encode()
        return head + canonical + b"}\n"

    def receive(self, message: Mapping[str, Any]) -> ServerEvent | None:
        """Interpret one message from the sidecar; None for a stale ack (an older nonce)."""
        kind = message.get("type")
        if kind == "heartbeat":
            return HeartbeatReceived()
        if kind in ("ack", "nack"):
            version, nonce = message.get("version"), message.get("nonce")
            if not isinstance(version, str) or not isinstance(nonce, str):
                raise ProtocolError(f"{kind} needs string 'version' and 'nonce'")
            if nonce != self.sent_nonce:
                return None  # answers a push that a newer one replaced
            if kind == "ack":
                self.acked_version = version
                return SnapshotAcked(version, nonce)
            error = str(message.get("error") or "rejected without a reason")
            self.rejected[version] = error
            return SnapshotRejected(version, nonce, error)
        raise ProtocolError(f"unexpected message type {kind!r}")


@dataclass
class ClientSession:
    """The sidecar's side of one stream: turns snapshots into events and answers them."""

    accepted_version: str | None = None

    def receive(self, message: Mapping[str, Any]) -> SnapshotReceived:
        if message.get("type") != "snapshot":
            raise ProtocolError(f"unexpected message type {message.get('type')!r}")
        version, nonce, snapshot = message.get("version"), message.get("nonce"), message.get("snapshot")
        if not isinstance(version, str) or not isinstance(nonce, str) or not isinstance(snapshot, dict):
            raise ProtocolError("snapshot needs string 'version', 'nonce' and an object 'snapshot'")
        return SnapshotReceived(version, nonce, snapshot)

    def ack(self, event: SnapshotReceived) -> bytes:
        self.accepted_version = event.version
        return encode_message({"type": "ack", "version": event.version, "nonce": event.nonce})

    def nack(self, event: SnapshotReceived, error: str) -> bytes:
        return encode_message({"type": "nack", "version": event.version, "nonce": event.nonce, "error": error})

    @staticmethod
    def heartbeat() -> bytes:
        return encode_message({"type": "heartbeat"})
