"""An h2c (and HTTP/1.1) test app: hypercorn serving a small ASGI app in a thread, stopped when the context ends.

GET any path answers JSON: the instance name, the HTTP version, the path and the `x-meshcast-source` it saw.
POST /echo streams the request body back. GET /slow waits until the client goes away, counting cancellations.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve


class H2App:
    def __init__(self, name: str) -> None:
        self.name = name
        self.disconnects = 0
        self.requests = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        self.requests += 1
        headers = dict(scope["headers"])
        if scope["path"] == "/echo":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                await send({"type": "http.response.body", "body": message.get("body", b""), "more_body": True})
                if not message.get("more_body"):
                    break
            await send({"type": "http.response.body", "body": b""})
            return
        if scope["path"] == "/slow":
            if (await receive())["type"] == "http.request":
                message = await receive()  # blocks until the client goes away
                if message["type"] == "http.disconnect":
                    self.disconnects += 1
            return
        body = json.dumps({"instance": self.name, "http_version": scope["http_version"], "path": scope["path"],
                           "source": headers.get(b"x-meshcast-source", b"").decode()}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})


@contextmanager
def serve_h2_app(app: H2App, port: int) -> Iterator[H2App]:
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.loglevel = "WARNING"
    config.keep_alive_max_requests = 1 << 30  # hypercorn drops streams in flight when it recycles a connection
    stop = trio.Event()
    token: list[trio.lowlevel.TrioToken] = []
    ready = threading.Event()

    async def run() -> None:
        token.append(trio.lowlevel.current_trio_token())
        ready.set()
        await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    thread = threading.Thread(target=trio.run, args=(run,), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield app
    finally:
        if token:
            token[0].run_sync_soon(stop.set)
        thread.join(timeout=10)
