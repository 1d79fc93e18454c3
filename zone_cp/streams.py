"""One sidecar's config stream on the control plane's side, independent of the transport that carries it.

`StreamHandler.on_bytes` takes what the sidecar sent (acks, nacks, heartbeats) and `push_forever` sends snapshots
through a callable whenever the sidecar's snapshot changes. The transport (`zone_cp.dpserver`) only moves bytes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from meshcast.wire.configstream import (
    MessageDecoder,
    ServerSession,
    SnapshotAcked,
    SnapshotRejected,
    encode_message,
)

if TYPE_CHECKING:
    from zone_cp.control_plane import ZoneControlPlane

log = logging.getLogger("meshcast.zone_cp.streams")


class StreamHandler:
    def __init__(self, cp: ZoneControlPlane, mesh: str, name: str) -> None:
        self.cp = cp
        self.mesh, self.name = mesh, name
        self.key = (mesh, name)
        self.session = ServerSession()
        self.decoder = MessageDecoder()
        self.status = cp.stream_status(self.key)
        self._sent_at: dict[str, float] = {}
        self._opened = time.monotonic()

    def __enter__(self) -> StreamHandler:
        self.status.connected += 1
        self.cp.metrics.connected.inc()
        self.cp.heard_from(self.key)
        return self

    def __exit__(self, *exc: object) -> None:
        self.status.connected -= 1
        self.cp.metrics.connected.dec()

    def on_bytes(self, data: bytes) -> None:
        """Handle bytes from the sidecar; raises ProtocolError when it breaks the protocol."""
        metrics = self.cp.metrics
        for message in self.decoder.feed(data):
            self.cp.heard_from(self.key)
            event = self.session.receive(message)
            if isinstance(event, SnapshotAcked):
                self.status.acked_version = event.version
                self.status.last_error = None
                metrics.pushes.labels(result="acked").inc()
                started = self._sent_at.pop(event.version, None)
                if started is not None:
                    metrics.push_latency.observe(max(0.0, time.monotonic() - started))
            elif isinstance(event, SnapshotRejected):
                self.status.last_error = event.error
                metrics.pushes.labels(result="rejected").inc()
                log.warning("dataplane %s/%s rejected config %s: %s", self.mesh, self.name, event.version,
                            event.error)

    async def push_forever(self, send: Callable[[bytes], Awaitable[None]]) -> None:
        """Send the sidecar's snapshot whenever it changes; return once the dataplane is no longer registered."""
        cp = self.cp
        await cp.warm.wait()
        while True:
            generation = cp.inventory.generation
            snapshot = cp.inventory.snapshot_for(self.mesh, self.name)
            if snapshot is None:
                await send(encode_message(
                    {"type": "error", "error": f"dataplane {self.mesh}/{self.name} is no longer registered"}))
                return
            data = self.session.offer(snapshot)
            if data is not None:
                # Latency counts from the change that produced this snapshot, or from the stream's opening for
                # the first snapshot of a (re)connecting sidecar.
                self._sent_at[self.session.sent_version or ""] = max(self._opened, cp.inventory.change_time(generation))
                self.status.sent_version = self.session.sent_version
                cp.metrics.pushes.labels(result="sent").inc()
                await send(data)
            await cp.wait_changed(generation)
