"""The sidecar: its agent, its listeners, and the proxying of each accepted connection.

Inbound connections (from other sidecars) must complete mutual TLS 1.3 with a certificate of the mesh's trust
bundle before a single byte reaches the app; outbound connections (from the app) go to an endpoint of the
upstream service chosen per request (HTTP) or per connection (TCP), over mutual TLS that verifies the upstream's
SPIFFE ID. A failed connect is retried on another endpoint. The hop protocol is negotiated by ALPN: `http/1.1`
for HTTP/1.1 (pooled connections, a request per exchange), `meshcast-tcp` for opaque TCP (a connection per
connection). HTTP/2 and gRPC from apps are spliced as opaque TCP until the HTTP/2 layer lands.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from prometheus_client import CollectorRegistry

from dataplane.agent import ControlPlaneAgent
from dataplane.balance import Endpoint, make_balancer
from dataplane.balance.base import BalancerBase
from dataplane.balance.outlier import OutlierDetector
from dataplane.codec.events import RequestReceived
from dataplane.codec.http1 import ClientConnection
from dataplane.config import ProxyConfig
from dataplane.http1proxy import Http1Proxy, Upstream
from dataplane.listeners import ListenerSet, ListenerSpec
from dataplane.metrics import SidecarMetrics
from dataplane.splice import splice
from dataplane.transport.leantls import LeanTLSStream
from dataplane.transport.pool import ConnectionPool
from dataplane.transport.tls import ALPN_MESH, Identity, peer_spiffe_id, server_context
from dataplane.transport.upstream import ALPN_TCP, UpstreamConnector, UpstreamError
from meshcast.wire.leanio import LeanSocketStream, open_lean_tcp_stream

log = logging.getLogger("meshcast.dataplane")

HANDSHAKE_TIMEOUT = 10.0
CONNECT_ATTEMPTS = 3


class Sidecar:
    def __init__(
        self,
        *,
        cp_url: str,
        token: str,
        dataplane: dict[str, Any],
        state_dir: Path,
        cp_ssl_context: ssl.SSLContext | None = None,
        registry: CollectorRegistry | None = None,
        connect_timeout: float = 5.0,
        workers: int = 1,
        follower: bool = False,
    ) -> None:
        """`workers` > 1 binds listeners with SO_REUSEPORT; a `follower` (a worker process) applies the state the
        leading process saves instead of talking to the control plane."""
        self.workers = workers
        self.follower = follower
        self.metrics = SidecarMetrics(registry or CollectorRegistry())
        self.agent = ControlPlaneAgent(
            cp_url=cp_url, token=token, dataplane=dataplane, state_dir=state_dir, cp_ssl_context=cp_ssl_context,
            on_config=self._on_config, on_identity=self._on_identity,
        )
        self.mesh = self.agent.mesh
        self.connector = UpstreamConnector(self.mesh, connect_timeout=connect_timeout)
        self.config: ProxyConfig | None = None
        self.server_ssl: ssl.SSLContext | None = None
        self.listeners: ListenerSet | None = None
        self.draining = False
        self.in_flight = 0
        self._idle = trio.Event()
        self._idle.set()
        self._config_changed = trio.Event()
        self.balancers: dict[str, BalancerBase] = {}
        self.mesh_pool: ConnectionPool[ClientConnection] = ConnectionPool()
        self.app_pool: ConnectionPool[ClientConnection] = ConnectionPool()

    # --- state from the agent ---------------------------------------------------------------------------------

    def _on_config(self, config: ProxyConfig) -> None:
        self.config = config
        now = time.monotonic()
        upstreams = {o.service: o.endpoints for o in config.outbound}
        upstreams.update({name: svc.endpoints for name, svc in config.services.items() if name not in upstreams})
        for service, endpoints in upstreams.items():
            balancer = self.balancers.get(service)
            if balancer is None:
                balancer = self.balancers[service] = make_balancer(outlier=OutlierDetector())
            # New requests see the new endpoints at once; requests in flight keep their connections.
            balancer.update((Endpoint.from_snapshot(e.model_dump()) for e in endpoints), now=now)
        for service in set(self.balancers) - set(upstreams):
            del self.balancers[service]
        self.connector.mtls = config.mtls.enabled
        self.metrics.config_version.clear()
        self.metrics.config_version.labels(version=self.agent.version or "saved").set(1)
        self._config_changed.set()
        self._config_changed = trio.Event()

    def _on_identity(self, identity: Identity) -> None:
        self.server_ssl = server_context(identity, alpn=[*ALPN_MESH, ALPN_TCP])
        self.connector.set_identity(identity)
        self.mesh_pool.clear()  # new connections present the new certificate; open ones finish with the old
        self.metrics.cert_expiry.set(identity.not_after.timestamp())

    @property
    def ready(self) -> bool:
        """Config in force, identity when mTLS is on, and every listener bound."""
        if self.draining or self.config is None:
            return False
        if self.listeners is not None and self.listeners.errors:
            return False
        return not self.config.mtls.enabled or self.server_ssl is not None

    # --- lifetime ---------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as connections, trio.open_nursery() as nursery:
            self.listeners = ListenerSet(self._handler_for, connections, reuse_port=self.workers > 1)
            await nursery.start(self.agent.follow_saved if self.follower else self.agent.run)
            nursery.start_soon(self._follow_config, nursery)
            await self._reconcile(nursery)
            task_status.started()
            await trio.sleep_forever()

    async def _reconcile(self, nursery: trio.Nursery) -> None:
        if self.config is not None and self.listeners is not None and not self.draining:
            await self.listeners.reconcile(self.config, nursery)

    async def _follow_config(self, nursery: trio.Nursery) -> None:
        while True:
            await self._config_changed.wait()
            await self._reconcile(nursery)

    async def drain(self, grace: float) -> bool:
        """Stop accepting (and report unready), then wait up to `grace` seconds for connections in flight.

        True if everything finished in time."""
        self.draining = True
        if self.listeners is not None:
            self.listeners.stop_all()
        with trio.move_on_after(grace):
            await self._idle.wait()
        return self.in_flight == 0

    def _begin(self, direction: str) -> None:
        self.in_flight += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self.metrics.active.labels(direction=direction).inc()

    def _end(self, direction: str) -> None:
        self.in_flight -= 1
        self.metrics.active.labels(direction=direction).dec()
        if self.in_flight == 0:
            self._idle.set()

    # --- connections ------------------------------------------------------------------------------------------

    def _handler_for(self, spec: ListenerSpec) -> Callable[[LeanSocketStream], Awaitable[None]]:
        if spec.direction == "inbound":
            return lambda stream: self._inbound(spec, stream)
        if spec.direction == "proxy":
            return self._proxy_mode
        return lambda stream: self._outbound(spec, stream)

    async def _proxy_mode(self, stream: LeanSocketStream) -> None:
        """HTTP proxy mode: each request's Host (`<service>.mesh`, any port) names the service it goes to."""
        self.metrics.connections.labels(direction="outbound", service="*.mesh").inc()
        self._begin("outbound")
        try:
            await Http1Proxy(stream, self._route_by_host).serve()
        finally:
            self._end("outbound")
            await stream.aclose()

    def _route_by_host(self, request: RequestReceived) -> Upstream | UpstreamError:
        host = (request.headers.get(b"host") or b"").decode("latin-1").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if not name.endswith(".mesh"):
            return UpstreamError("unknown_service", f"Host {host!r} is not <service>.mesh")
        service = name[: -len(".mesh")]
        upstream = self.config.upstream(service) if self.config is not None else None
        if upstream is None:
            return UpstreamError("unknown_service", f"no service {service!r} in mesh {self.mesh}")
        if upstream.protocol != "http":
            return UpstreamError("not_http", f"service {service!r} speaks {upstream.protocol}, not http")
        return self._http_route(service)

    async def _inbound(self, spec: ListenerSpec, stream: LeanSocketStream) -> None:
        self.metrics.connections.labels(direction="inbound", service=spec.target).inc()
        self._begin("inbound")
        peer: trio.abc.HalfCloseableStream = stream
        try:
            if self.config is not None and self.config.mtls.enabled:
                if self.server_ssl is None:
                    self.metrics.refused.labels(reason="no_identity").inc()
                    return
                tls = LeanTLSStream(stream, self.server_ssl, server_side=True)
                peer = tls
                with trio.move_on_after(HANDSHAKE_TIMEOUT) as timer:
                    try:
                        await tls.do_handshake()
                    except trio.BrokenResourceError as exc:
                        self.metrics.refused.labels(reason="tls").inc()
                        log.info("refused an inbound connection: %s", exc)
                        return
                if timer.cancelled_caught:
                    self.metrics.refused.labels(reason="handshake_timeout").inc()
                    return
                if peer_spiffe_id(tls.ssl_object) is None:
                    self.metrics.refused.labels(reason="no_spiffe_id").inc()
                    return
            caller = peer_spiffe_id(peer.ssl_object) if isinstance(peer, LeanTLSStream) else None
            alpn = peer.selected_alpn_protocol() if isinstance(peer, LeanTLSStream) else None
            if spec.protocol == "http" and alpn in (None, "http/1.1"):
                await self._inbound_http(spec, peer, caller)
                return
            host, _, port = spec.target.rpartition(":")
            try:
                with trio.fail_after(self.connector.connect_timeout):
                    app = await open_lean_tcp_stream(host, int(port))
            except (OSError, trio.TooSlowError) as exc:
                log.warning("inbound %s: the app at %s is unreachable: %s", spec.port, spec.target, exc)
                return
            await self._splice_and_close(peer, app, "inbound")
        finally:
            self._end("inbound")
            await peer.aclose()

    async def _splice_and_close(self, near: trio.abc.HalfCloseableStream, far: trio.abc.HalfCloseableStream,
                                direction: str) -> None:
        """Relay opaque bytes both ways, count them, and close the far side (the caller closes the near one)."""
        try:
            sent, received = await splice(near, far)
            self.metrics.bytes.labels(direction=direction).inc(sent + received)
        finally:
            await far.aclose()

    async def _inbound_http(self, spec: ListenerSpec, peer: trio.abc.HalfCloseableStream, caller: str | None) -> None:
        host, _, port_text = spec.target.rpartition(":")
        app = (host, int(port_text))

        async def dial() -> tuple[tuple[str, int], trio.abc.HalfCloseableStream]:
            try:
                with trio.fail_after(self.connector.connect_timeout):
                    return app, await open_lean_tcp_stream(*app)
            except (OSError, trio.TooSlowError) as exc:
                raise UpstreamError("app_unreachable", f"{spec.target}: {exc}") from None

        upstream = Upstream(self.app_pool, app, dial)
        source = [(b"x-meshcast-source", caller.encode())] if caller else []
        proxy = Http1Proxy(peer, lambda request: upstream, drop=frozenset({b"x-meshcast-source"}),
                           add=lambda request: source)
        await proxy.serve()

    def _http_route(self, service: str) -> Upstream | UpstreamError:
        endpoint = self.pick(service, set())
        balancer = self.balancers.get(service)
        if endpoint is None or balancer is None:
            return UpstreamError("no_healthy_upstream", f"service {service} has no endpoint")

        async def dial() -> tuple[tuple[str, int], trio.abc.HalfCloseableStream]:
            return await self._dial_endpoints(service, "http/1.1", first=endpoint)

        balancer.started(endpoint)  # least-request counts requests in flight
        return Upstream(self.mesh_pool, (endpoint.address, endpoint.port), dial,
                        done=lambda: balancer.finished(endpoint))

    def pick(self, service: str, exclude: set[str]) -> Endpoint | None:
        balancer = self.balancers.get(service)
        return balancer.pick(exclude=exclude, now=time.monotonic()) if balancer is not None else None

    async def connect_upstream(self, service: str, alpn: str) -> trio.abc.HalfCloseableStream:
        """A connection to some endpoint of `service`, trying up to three endpoints; raises UpstreamError."""
        _, stream = await self._dial_endpoints(service, alpn)
        return stream

    async def _dial_endpoints(self, service: str, alpn: str, first: Endpoint | None = None,
                              ) -> tuple[tuple[str, int], trio.abc.HalfCloseableStream]:
        """Connect to `first` or a balancer's pick; a failed connect is reported (passive health) and retried on
        another endpoint, up to CONNECT_ATTEMPTS endpoints."""
        tried: set[str] = set()
        last: UpstreamError | None = None
        balancer = self.balancers.get(service)
        for attempt in range(CONNECT_ATTEMPTS):
            endpoint = first if attempt == 0 and first is not None else self.pick(service, tried)
            if endpoint is None or balancer is None:
                break
            tried.add(endpoint.key)
            try:
                stream = await self.connector.connect(endpoint.address, endpoint.port, service=service, alpn=alpn)
            except UpstreamError as exc:
                self.metrics.upstream_errors.labels(service=service, reason=exc.reason).inc()
                if balancer.connect_failed(endpoint, now=time.monotonic()):
                    log.warning("upstream %s: %s ejected after repeated connect failures", service, endpoint.key)
                log.info("upstream %s: %s", service, exc)
                last = exc
                continue
            balancer.connect_succeeded(endpoint, now=time.monotonic())
            self.metrics.upstream_connects.labels(service=service).inc()
            return (endpoint.address, endpoint.port), stream
        if last is None:
            raise UpstreamError("no_healthy_upstream", f"service {service} has no endpoint")
        raise last

    async def _outbound(self, spec: ListenerSpec, stream: LeanSocketStream) -> None:
        self.metrics.connections.labels(direction="outbound", service=spec.target).inc()
        self._begin("outbound")
        try:
            outbound = self.config.outbound_for(spec.target) if self.config is not None else None
            if outbound is not None and outbound.protocol == "http":
                await Http1Proxy(stream, lambda request: self._http_route(spec.target)).serve()
                return
            try:
                upstream = await self.connect_upstream(spec.target, ALPN_TCP)
            except UpstreamError as exc:
                log.warning("outbound %s: %s", spec.target, exc)
                return
            await self._splice_and_close(stream, upstream, "outbound")
        finally:
            self._end("outbound")
            await stream.aclose()
