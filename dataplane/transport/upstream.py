"""Connections from a sidecar to its upstream sidecars: mutual TLS with the expected peer identity.

Every connection verifies that the peer presents the SPIFFE ID of the service it was dialled for
(`spiffe://<mesh>/<service>`), so a mis-routed or hijacked endpoint cannot impersonate a service: a sidecar
is trusted for exactly what its certificate says. ALPN names the hop protocol; the peer must agree to it.

An endpoint in another zone is that zone's ingress, which routes the connection by the TLS server name (SNI) to an
instance of the service without terminating TLS: the handshake, and so the identity check, is still with the remote
sidecar. Such a connection sends the endpoint's `sni` as the server name and is otherwise the same; it needs mTLS,
since an ingress has nothing to route a plaintext connection by.
"""

from __future__ import annotations

import ssl

import trio

from dataplane.transport.leantls import LeanTLSStream
from dataplane.transport.tls import Identity, client_context, peer_spiffe_id
from meshcast.wire.leanio import open_lean_tcp_stream

ALPN_TCP = "meshcast-tcp"


class UpstreamError(Exception):
    """A failed attempt to reach an endpoint; `reason` is the short code reported to the app and in metrics."""

    def __init__(self, reason: str, detail: str, *, status: int = 503,
                 headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self.reason = reason
        self.status = status  # what the proxy answers when this ends a request before any response
        self.headers = headers  # and fields it adds to that answer (retry-after for a rate limit)
        super().__init__(f"{reason}: {detail}")


class UpstreamConnector:
    def __init__(self, mesh: str, *, connect_timeout: float = 5.0) -> None:
        self.mesh = mesh
        self.connect_timeout = connect_timeout
        self.mtls = True
        self._identity: Identity | None = None
        self._contexts: dict[str, ssl.SSLContext] = {}

    def set_identity(self, identity: Identity) -> None:
        """Use a new certificate for new connections; open ones keep theirs until they close."""
        self._identity = identity
        self._contexts = {}

    def _context(self, alpn: str) -> ssl.SSLContext:
        context = self._contexts.get(alpn)
        if context is None:
            if self._identity is None:
                raise UpstreamError("no_identity", "this sidecar has no certificate yet")
            context = self._contexts[alpn] = client_context(self._identity, alpn=[alpn])
        return context

    async def connect(self, address: str, port: int, *, service: str, alpn: str, sni: str = "",
                      connect_timeout: float | None = None) -> trio.abc.HalfCloseableStream:
        """A connection to `service` at `address:port` (through a zone ingress when `sni` is set), its peer verified
        as `spiffe://<mesh>/<service>` speaking `alpn`, within `connect_timeout` (TCP and TLS; the connector's
        default otherwise). Raises UpstreamError with the reason."""
        timeout = self.connect_timeout if connect_timeout is None else connect_timeout
        where = f"{address}:{port} (SNI {sni})" if sni else f"{address}:{port}"
        if sni and not self.mtls:
            raise UpstreamError("tls_required", f"{where} is a zone ingress, which only routes TLS")
        context = self._context(alpn) if self.mtls else None
        try:
            with trio.fail_after(timeout):
                tcp = await open_lean_tcp_stream(address, port)
                if context is None:
                    return tcp
                try:
                    tls = LeanTLSStream(tcp, context, server_side=False, server_hostname=sni or None)
                except (ValueError, TypeError) as exc:  # a server name ssl refuses (the config lets none by)
                    await tcp.aclose()
                    raise UpstreamError("tls_failure", f"{where}: {exc}") from None
                try:
                    await tls.do_handshake()
                except trio.BrokenResourceError as exc:
                    await tls.aclose()
                    raise UpstreamError("tls_failure", f"{where}: {exc}") from None
        except trio.TooSlowError:
            raise UpstreamError("connect_timeout", f"{where} after {timeout:g}s") from None
        except OSError as exc:
            raise UpstreamError("connect_failure", f"{where}: {exc.strerror or exc}") from None
        expected = f"spiffe://{self.mesh}/{service}"
        peer = peer_spiffe_id(tls.ssl_object)
        if peer != expected:
            await tls.aclose()
            raise UpstreamError("identity_mismatch", f"{where} is {peer}, not {expected}")
        if tls.selected_alpn_protocol() != alpn:
            await tls.aclose()
            raise UpstreamError("protocol_mismatch", f"{where} does not speak {alpn}")
        return tls
