"""The sidecar's admin endpoint: `/ready`, `/metrics` (Prometheus), `/config` (the config in force, JSON);
`serve_http` serves the zone ingress's too.

Low traffic, loopback by default: h11 (well-kept, pure Python) parses it; one request per connection.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import h11
import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from meshcast.wire.leanio import LeanSocketStream, serve_lean

if TYPE_CHECKING:
    from dataplane.sidecar import Sidecar


def _response(status: int, body: bytes, content_type: str) -> list[h11.Event]:
    headers = [("content-type", content_type), ("content-length", str(len(body))), ("connection", "close")]
    return [h11.Response(status_code=status, headers=headers), h11.Data(data=body), h11.EndOfMessage()]


def handle(sidecar: Sidecar, method: str, target: str) -> list[h11.Event]:
    path = target.split("?", 1)[0]
    if path == "/drain":
        if method != "POST":
            return _response(405, b'{"error": "POST /drain"}', "application/json")
        # The same drain as SIGTERM (unready, withdraw, stop accepting, finish in-flight, exit).
        os.kill(os.getpid(), signal.SIGTERM)
        return _response(202, b'{"draining": true}', "application/json")
    if path == "/ready":
        ready = sidecar.ready
        status: dict[str, Any] = {
            "ready": ready, "draining": sidecar.draining, "connectedToControlPlane": sidecar.agent.connected,
            "configVersion": sidecar.agent.version, "lastError": sidecar.agent.last_error,
            "listenerErrors": sorted(sidecar.listeners.errors.values()) if sidecar.listeners else [],
        }
        return _response(200 if ready else 503, json.dumps(status).encode(), "application/json")
    if path == "/metrics":
        return _response(200, generate_latest(sidecar.metrics.registry), CONTENT_TYPE_LATEST)
    if path == "/config":
        config = sidecar.config.model_dump(mode="json", by_alias=True) if sidecar.config else None
        identity = sidecar.agent.identity
        body: dict[str, object] = {"version": sidecar.agent.version, "config": config,
                "identity": {"spiffeId": identity.spiffe_id, "notAfter": identity.not_after.isoformat()}
                if identity else None}
        return _response(200, json.dumps(body, indent=2).encode(), "application/json")
    return _response(404, b'{"error": "not found"}', "application/json")


async def serve_admin(sidecar: Sidecar, sock: socket.socket, *,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    await serve_http(functools.partial(handle, sidecar), sock, task_status=task_status)


def json_response(status: int, body: object) -> list[h11.Event]:
    return _response(status, json.dumps(body, indent=2).encode(), "application/json")


def metrics_response(registry: CollectorRegistry) -> list[h11.Event]:
    return _response(200, generate_latest(registry), CONTENT_TYPE_LATEST)


async def serve_http(handler: Callable[[str, str], list[h11.Event]], sock: socket.socket, *,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `sock`, one request per connection: `handler(method, target)` gives the response's events."""
    async def one(stream: LeanSocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        try:
            with trio.fail_after(10):
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(16 * 1024))
                        continue
                    break
            if isinstance(event, h11.Request):
                events = handler(event.method.decode("ascii", "replace"), event.target.decode("ascii", "replace"))
            else:
                events = _response(400, b'{"error": "bad request"}', "application/json")
            for out in events:
                await stream.send_all(conn.send(out) or b"")
        except (h11.RemoteProtocolError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()

    await serve_lean(sock, one, task_status=task_status)
