"""The edge gateway's routing and TLS (the routing is pure; the TLS contexts read certificate files).

Theory of operation: an edge gateway is a dataplane whose snapshot carries a MeshGateway (`GatewayConfig`):
listeners on the region's anycast addresses, and routes to mesh services. For every request the first route whose
match holds wins, in the order the MeshGateway lists them: its hosts (exact, `*.domain` for one or more labels
under the domain, or `*`; none listed: any host; compared without the port, case-insensitively), its path prefix
(segment-aware: `/api` matches `/api` and `/api/x`, not `/apix`; the query is ignored), its methods (none listed:
any) and its headers (exact values; every one listed must be present). No route: 404 `no_route`. The service is then
reached like any upstream of a sidecar: mTLS to its instances, local zone first, other zones' ingresses on failover.

HTTPS listeners terminate TLS with the certificate whose hosts match the client's SNI (`GatewayTls`): one
`ssl.SSLContext` per certificate, chosen in the server context's SNI callback; a client naming no host, or one no
certificate covers, gets the listener's first certificate. ALPN offers h2 and http/1.1.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from dataplane.config import GatewayListenerConfig, GatewayRouteConfig

ALPN_EDGE = ["h2", "http/1.1"]


def host_matches(pattern: str, host: str) -> bool:
    """`host` (lowercase, without port) against `*`, `*.domain` or an exact name."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def path_matches(prefix: str, path: str) -> bool:
    """Segment-aware prefix match on the path without its query."""
    path = path.split("?", 1)[0]
    if prefix == "/" or path == prefix:
        return True
    return path.startswith(prefix if prefix.endswith("/") else prefix + "/")


def host_of(authority: str) -> str:
    """The host of a Host header or :authority, lowercase, without port (IPv6 literals keep their brackets)."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority.split("]", 1)[0] + "]"
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


@dataclass(frozen=True)
class GatewayRoutes:
    routes: tuple[GatewayRouteConfig, ...]

    @classmethod
    def of(cls, routes: Iterable[GatewayRouteConfig]) -> GatewayRoutes:
        return cls(tuple(routes))

    def match(self, host: str, path: str, method: str, header: Callable[[str], str | None]) -> str | None:
        """The service of the first route matching the request, or None. `header(name)`: a request header's value
        by lowercase name, None when absent."""
        host = host_of(host)
        for route in self.routes:
            m = route.match
            if m.hosts and not any(host_matches(p, host) for p in m.hosts):
                continue
            if not path_matches(m.path_prefix, path):
                continue
            if m.methods and method.upper() not in m.methods:
                continue
            if any(header(name) != value for name, value in m.headers.items()):
                continue
            return route.to
        return None


def services_of(routes: Sequence[GatewayRouteConfig]) -> set[str]:
    return {route.to for route in routes}


def server_context(listener: GatewayListenerConfig) -> ssl.SSLContext:
    """The TLS server context of an https listener: the certificate chosen by SNI. Raises OSError/ssl.SSLError
    when a certificate or key file cannot be read or does not match."""
    assert listener.tls is not None
    contexts: list[tuple[list[str], ssl.SSLContext]] = []
    for cert in listener.tls.certificates:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert.cert_file, cert.key_file)
        context.set_alpn_protocols(ALPN_EDGE)
        contexts.append((cert.hosts, context))
    default = contexts[0][1]

    def choose(sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: ssl.SSLContext) -> None:
        if name:
            host = name.lower()
            for hosts, context in contexts:
                if any(host_matches(p, host) for p in hosts):
                    sock.context = context
                    return
        sock.context = default

    default.sni_callback = choose
    return default
