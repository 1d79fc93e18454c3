"""A simulated dataplane: registers with a zone CP, optionally gets a certificate, holds the real config stream,
acknowledges every snapshot and heartbeats. It runs no proxy, so a thousand of them fit in one process."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any

import trio

from meshcast.pki import build_csr, generate_workload_key
from meshcast.wire.configstream import SnapshotReceived
from meshcast.wire.cpclient import ControlPlaneClient


class SimDataplane:
    def __init__(
        self,
        cp_url: str,
        token: str,
        dataplane: Mapping[str, Any],
        *,
        heartbeat_interval: float | None = None,
        want_certificate: bool = False,
        on_snapshot: Callable[[SnapshotReceived, float], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.client = ControlPlaneClient(cp_url, token, ssl_context=ssl_context)
        self.doc = dict(dataplane)
        self.mesh = str(self.doc.get("mesh", "default"))
        self.name = str(self.doc["name"])
        self.heartbeat_interval = heartbeat_interval
        self.want_certificate = want_certificate
        self.on_snapshot = on_snapshot
        self.snapshot: dict[str, Any] | None = None
        self.version: str | None = None
        self.received = 0
        self.certificate: dict[str, Any] | None = None
        self.heartbeats = True  # set False to fall silent while keeping the stream open
        self._changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        registered = await self.client.register(self.doc)
        if self.heartbeat_interval is None:  # as a real sidecar does: the interval the control plane asks for
            self.heartbeat_interval = float(registered["heartbeatInterval"])
        if self.want_certificate:
            key = generate_workload_key()
            service = self.doc["spec"]["inbound"][0]["service"]
            csr = build_csr(key, f"spiffe://{self.mesh}/{service}")
            self.certificate = await self.client.sign_certificate(self.mesh, self.name, csr)
        async with self.client.config_stream(self.mesh, self.name) as stream, trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeat, stream)
            started = False
            async for event in stream.snapshots():
                now = time.monotonic()
                self.snapshot, self.version = event.snapshot, event.version
                self.received += 1
                await stream.ack(event)
                if self.on_snapshot is not None:
                    self.on_snapshot(event, now)
                self._changed.set()
                self._changed = trio.Event()
                if not started:
                    started = True
                    task_status.started()
            nursery.cancel_scope.cancel()

    async def _heartbeat(self, stream: Any) -> None:
        while True:
            await trio.sleep(self.heartbeat_interval or 1.0)
            if self.heartbeats:
                await stream.heartbeat()

    def endpoints(self, service: str) -> list[dict[str, Any]]:
        for outbound in (self.snapshot or {}).get("outbound", []):
            if outbound["service"] == service:
                return list(outbound["endpoints"])
        return []

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], within: float = 10.0) -> dict[str, Any]:
        """Wait until the latest snapshot satisfies `predicate`; raise TimeoutError naming the last snapshot."""
        with trio.move_on_after(within):
            while self.snapshot is None or not predicate(self.snapshot):
                await self._changed.wait()
            return self.snapshot
        raise TimeoutError(f"{self.name}: no matching snapshot within {within}s; last: {self.snapshot}")
