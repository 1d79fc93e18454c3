"""What a dataplane (or a simulated one) uses to talk to its zone control plane: register, get a certificate,
hold the config stream. Errors from the control plane surface as `ControlPlaneError` with its one-line message;
failing to reach it raises `StreamClosed`, `OSError` or `trio.TooSlowError`.

Every call is HTTP/2 on the sidecar's own small client (`h2duplex`, which the config stream needs anyway): the API
port serves HTTP/2 (prior knowledge in clear text, ALPN `h2` over TLS), and a sidecar that loaded httpx for a few
calls would keep ~5 MB more for good.
"""

from __future__ import annotations

import functools
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import trio

from meshcast.errors import MeshcastError
from meshcast.wire.configstream import ClientSession, MessageDecoder, SnapshotReceived
from meshcast.wire.h2duplex import DuplexStream, open_duplex_stream, request


class ControlPlaneError(MeshcastError):
    def __init__(self, status: int, message: str) -> None:
        self.http_status = status
        super().__init__(message)


def raise_for_error(status: int, body: bytes) -> None:
    """ControlPlaneError for a status of 400 or more, with the `error` of the JSON body or the start of the text."""
    if status < 400:
        return
    try:
        message = str(json.loads(body).get("error"))
    except (ValueError, AttributeError):  # not JSON, or JSON but not an object
        message = body.decode(errors="replace").strip()[:200] or _reason(status)
    raise ControlPlaneError(status, f"control plane answered {status}: {message}")


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


class ControlPlaneClient:
    def __init__(
        self, url: str, token: str, *, timeout: float = 10.0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        """`ssl_context` verifies an https control plane (e.g. built from its CA file); the default trusts the
        system's CAs."""
        self.url = url.rstrip("/")
        self._ssl = ssl_context
        self.token = token
        self._auth = {"authorization": f"Bearer {token}"}
        self._timeout = timeout
        self.stream_url: str | None = None

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        # One connection per call keeps no connection across trio runs; the TLS context, the costly part of a
        # client, is built once per process and shared.
        headers = dict(self._auth)
        data = b""
        if body is not None:
            headers["content-type"] = "application/json"
            data = json.dumps(body).encode()
        context = (self._ssl or _tls_context()) if self.url.startswith("https:") else None
        prefix = urlsplit(self.url).path  # a control plane behind a path, as a base URL
        with trio.fail_after(self._timeout):
            response = await request(self.url, prefix + path, headers, data, method=method, ssl_context=context)
        raise_for_error(response.status, response.body)
        return json.loads(response.body) if response.body else None

    async def register(self, dataplane: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("POST", "/v1/dataplanes/register", dict(dataplane))
        self.stream_url = self._url_with_port(result["configStream"]["port"])
        return result

    def _url_with_port(self, port: int) -> str:
        """The dataplane server listens on its own port of the host this client reaches the API at."""
        parts = urlsplit(self.url)
        host = parts.hostname or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"{parts.scheme}://{host}:{port}"

    async def _discover_stream_url(self) -> str:
        if self.stream_url is None:
            index = await self._request("GET", "/")
            self.stream_url = self._url_with_port(int(index["dataplanePort"]))
        return self.stream_url

    async def deregister(self, mesh: str, name: str) -> None:
        await self._request("DELETE", f"/v1/dataplanes/{mesh}/{name}/registration")

    async def sign_certificate(
        self, mesh: str, name: str, csr_pem: bytes, service: str | None = None
    ) -> dict[str, Any]:
        body = {"csr": csr_pem.decode(), "service": service}
        result: dict[str, Any] = await self._request("POST", f"/v1/dataplanes/{mesh}/{name}/certificate", body)
        return result

    @asynccontextmanager
    async def config_stream(self, mesh: str, name: str) -> AsyncIterator[ConfigStream]:
        url = await self._discover_stream_url()
        async with open_duplex_stream(
            url, f"/v1/dataplanes/{mesh}/{name}/stream", {**self._auth, "content-type": "application/x-ndjson"},
            ssl_context=self._ssl,
        ) as duplex:
            status = await duplex.wait_response()
            if status != 200:
                body = b""
                with trio.move_on_after(2):
                    while chunk := await duplex.receive():
                        body += chunk
                raise_for_error(status, body)
            yield ConfigStream(duplex)


class ConfigStream:
    """The sidecar's end of one config stream: iterate `snapshots()`, answer each with `ack` or `nack`."""

    def __init__(self, duplex: DuplexStream) -> None:
        self._duplex = duplex
        self._session = ClientSession()
        self._decoder = MessageDecoder()

    async def snapshots(self) -> AsyncIterator[SnapshotReceived]:
        while True:
            chunk = await self._duplex.receive()
            if not chunk:
                return
            for message in self._decoder.feed(chunk):
                if message.get("type") == "error":
                    raise ControlPlaneError(410, str(message.get("error")))
                yield self._session.receive(message)

    async def ack(self, event: SnapshotReceived) -> None:
        await self._duplex.send(self._session.ack(event))

    async def nack(self, event: SnapshotReceived, error: str) -> None:
        await self._duplex.send(self._session.nack(event, error))

    async def heartbeat(self) -> None:
        await self._duplex.send(self._session.heartbeat())
