"""The sidecar: its agent, its listeners, and the proxying of each accepted connection.

Inbound connections (from other sidecars) must complete mutual TLS 1.3 with a certificate of the mesh's trust
bundle before a single byte reaches the app; outbound connections (from the app) go to an endpoint of the
upstream service chosen per request (HTTP) or per connection (TCP), over mutual TLS that verifies the upstream's
SPIFFE ID. A failed connect is retried on another endpoint. The hop protocol is negotiated by ALPN: `http/1.1`
for HTTP/1.1 (pooled connections, a request per exchange), `h2` for HTTP/2 and gRPC (multiplexed connections, a
stream per request), `meshcast-tcp` for opaque TCP (a connection per connection).

Endpoints carry a locality: the balancer prefers those of this zone and fails over to other zones (see
`dataplane.balance.priority`). An endpoint in another zone is that zone's ingress: every dial to it (pooled
HTTP/1.1, HTTP/2, TCP) sends the endpoint's SNI, and connections are pooled per `Endpoint.key`, which includes the
SNI, so services sharing an ingress address never share a connection.

What the app speaks is detected, not configured: on a listener of an HTTP-family service (http, http2, grpc) a
connection that opens with the HTTP/2 preface is HTTP/2 with prior knowledge and is proxied per request; otherwise
it is HTTP/1.1 for an `http` service, and opaque TCP for `http2`/`grpc` ones (an HTTP/1.1 client of an h2c app).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio
from prometheus_client import CollectorRegistry

from dataplane.agent import ControlPlaneAgent
from dataplane.balance import DEFAULT_POLICY, Endpoint, EndpointKey, make_balancer
from dataplane.balance.base import BalancerBase
from dataplane.balance.outlier import OutlierDetector
from dataplane.codec.events import RequestReceived
from dataplane.codec.http1 import ClientConnection
from dataplane.config import ProxyConfig
from dataplane.gateway import GatewayRoutes, services_of
from dataplane.gateway import server_context as gateway_server_context
from dataplane.grpchealth import check as grpc_check
from dataplane.h2.connection import Fields, H2Connection, H2Limits
from dataplane.h2.proxy import H2Pool, H2Proxy, H2Target, header, sniff_h2
from dataplane.healthcheck import HealthCheckSpec, HealthState
from dataplane.http1proxy import Http1Proxy, Upstream
from dataplane.listeners import ListenerSet, ListenerSpec
from dataplane.metrics import SidecarMetrics
from dataplane.observe.accesslog import FileSink, StdoutSink
from dataplane.observe.exchange import Exchange, Observability, otlp_endpoint
from dataplane.observe.requests import RequestMetrics
from dataplane.observe.tracing import Tracer
from dataplane.policy import (
    Backend,
    CallerPolicy,
    InboundPolicy,
    OutboundPolicy,
    Policies,
    Request,
    Rule,
    pick_weighted,
)
from dataplane.splice import splice
from dataplane.transport.leantls import LeanTLSStream
from dataplane.transport.limits import DEFAULT_MAX_PENDING, ConnectionLimit, LimitedStream
from dataplane.transport.pool import ConnectionPool
from dataplane.transport.tls import ALPN_MESH, Identity, PeerIdentity, peer_identity, server_context
from dataplane.transport.upstream import ALPN_TCP, UpstreamConnector, UpstreamError
from meshcast.wire.duration import parse_duration
from meshcast.wire.leanio import LeanSocketStream, open_lean_tcp_stream

log = logging.getLogger("meshcast.dataplane")

FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto"})  # set by the edge gateway, never by its clients

HANDSHAKE_TIMEOUT = 10.0
CONNECT_ATTEMPTS = 3
BIND_RETRY_INTERVAL = 1.0
POOL_SWEEP_INTERVAL = 1.0  # idle pooled connections past their idle timeout are closed this often
HTTP_FAMILY = frozenset({"http", "http2", "grpc"})
SOURCE_HEADER = b"x-meshcast-source"
# MeshLoadBalancingStrategy's loadBalancer.type -> the balancer (dataplane.balance)
LB_ALGORITHMS = {"RoundRobin": "round_robin", "LeastRequest": "least_request", "Random": "random",
                 "RingHash": "ring_hash"}


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
        withdraw_delay: float = 1.0,
        drop_while_withdrawing: bool = False,
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
        self.mesh_h2: H2Pool | None = None  # created with the nursery their connections run in
        self.app_h2: H2Pool | None = None
        self.h2_serving: set[H2Connection] = set()
        self.http1_serving: set[Http1Proxy] = set()  # HTTP/1.1 connections served, told to go on drain
        self.gateway_routes = GatewayRoutes.of(())
        self.gateway_tls: dict[tuple[str, int], ssl.SSLContext] = {}
        self.gateway_errors: list[str] = []
        self.withdraw_delay = withdraw_delay
        self.drop_while_withdrawing = drop_while_withdrawing
        self.policies = Policies()
        self._balancer_confs: dict[str, tuple[Any, str]] = {}
        self.rng = random.Random()
        self.obs = Observability(mesh=self.mesh, dataplane=self.agent.name, service=self.agent.service)
        self._sinks_running: dict[str, trio.CancelScope] = {}
        self._all_endpoints: dict[str, tuple[list[Endpoint], float]] = {}  # by balancer key, health aside
        self._health: dict[str, HealthState] = {}  # MeshHealthCheck by service
        self._health_running: dict[str, trio.CancelScope] = {}
        self._calls_in_flight: dict[str, int] = {}  # by service, under a MeshCircuitBreaker maxRequests
        self._limits: dict[str, ConnectionLimit] = {}  # by service, under a MeshCircuitBreaker maxConnections
        self.mesh_pool.on_give_back = self._given_back
        self.mesh_pool.idle_timeout_for = lambda service: self._idle_timeout(service, None)

    # --- state from the agent ---------------------------------------------------------------------------------

    def _on_config(self, config: ProxyConfig) -> None:
        self.config = config
        now = time.monotonic()
        upstreams = {o.service: (o.endpoints, o.failover_threshold) for o in config.outbound}
        upstreams.update({name: (svc.endpoints, svc.failover_threshold) for name, svc in config.services.items()
                          if name not in upstreams})
        self.policies = config.compiled if config.compiled is not None else Policies()
        self._configure_observability(config)
        # A route's backend may be a subset of a service's instances (by tags): it gets a balancer of its own.
        for outbound in self.policies.outbound.values():
            rules = outbound.routes.rules if outbound.routes is not None else []
            for backend in [b for rule in rules for b in rule.backends] + outbound.tcp_backends:
                found = upstreams.get(backend.service)
                if backend.tags and found is not None:
                    wanted = dict(backend.tags)
                    subset = [e for e in found[0] if all(e.tags.get(k) == v for k, v in wanted.items())]
                    upstreams[balancer_key(backend)] = (subset, found[1])
        for key, (endpoints, failover_threshold) in upstreams.items():
            balancer = self.balancers.get(key)
            breaker = self.policies.outbound.get(key.split("|")[0])
            outlier_conf = breaker.outlier if breaker is not None else None
            algorithm = LB_ALGORITHMS.get(breaker.load_balancer or "", DEFAULT_POLICY) if breaker else DEFAULT_POLICY
            if balancer is None or self._balancer_confs.get(key) != (outlier_conf, algorithm):
                # A new algorithm or outlier detection starts afresh (ejections and counts are not carried over).
                balancer = self.balancers[key] = make_balancer(algorithm,
                                                               outlier=self._outlier_for(key.split("|")[0]))
                self._balancer_confs[key] = (outlier_conf, algorithm)
            self._all_endpoints[key] = ([Endpoint.from_snapshot(e.model_dump()) for e in endpoints],
                                        failover_threshold)
            self._balance_over(key, now)
        for key in set(self.balancers) - set(upstreams):
            del self.balancers[key]
            self._all_endpoints.pop(key, None)
        self._configure_health_checks()
        self.connector.mtls = config.mtls.enabled
        self._configure_gateway(config)
        self.metrics.config_version.clear()
        self.metrics.config_version.labels(version=self.agent.version or "saved").set(1)
        self._config_changed.set()
        self._config_changed = trio.Event()

    def _balance_over(self, key: str, now: float) -> None:
        """Give balancer `key` its endpoints, less those failing their active health checks. New requests see the
        new set at once; requests in flight keep their connections."""
        endpoints, failover_threshold = self._all_endpoints[key]
        health = self._health.get(key.split("|")[0])
        if health is not None:
            usable = health.usable([e.key for e in endpoints])
            endpoints = [e for e in endpoints if e.key in usable]
        self.balancers[key].update(endpoints, now=now, failover_threshold=failover_threshold)

    def _configure_health_checks(self) -> None:
        """A HealthState per outbound service with a MeshHealthCheck (kept while its settings are the same); the
        probing tasks follow in `_reconcile`."""
        wanted = {service: policy.health for service, policy in self.policies.outbound.items()
                  if policy.health is not None and service in self.balancers}
        for service in list(self._health):
            if wanted.get(service) != self._health[service].spec:
                del self._health[service]
                scope = self._health_running.pop(service, None)
                if scope is not None:
                    scope.cancel()
        for service, spec in wanted.items():
            if service not in self._health:
                self._health[service] = HealthState(spec)
        for service, state in self._health.items():
            state.keep(e.key for e in self._all_endpoints.get(service, ([], 0.0))[0])

    async def _check_health(self, service: str, state: HealthState, *,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Probe every endpoint of `service` each interval, concurrently; rebalance when one changes state."""
        with trio.CancelScope() as scope:
            self._health_running[service] = scope
            task_status.started()
            while True:
                endpoints = self._all_endpoints.get(service, ([], 0.0))[0]
                results: dict[str, bool] = {}

                async def probe(endpoint: Endpoint, results: dict[str, bool] = results) -> None:
                    results[endpoint.key] = await self._probe(service, endpoint, state.spec)

                async with trio.open_nursery() as probes:
                    for endpoint in endpoints:
                        probes.start_soon(probe, endpoint)
                changed = [key for key, ok in results.items() if state.record(key, ok)]
                if changed:
                    log.warning("health check %s: %s", service, ", ".join(
                        f"{key} {'failing' if key in state.failing else 'passing'}" for key in changed))
                    now = time.monotonic()
                    for key in [k for k in self.balancers if k.split("|")[0] == service]:
                        self._balance_over(key, now)
                await trio.sleep(state.spec.interval)

    async def _probe(self, service: str, endpoint: Endpoint, spec: HealthCheckSpec) -> bool:
        """One check: an mTLS connection to the endpoint (TCP), `GET path` answered as expected (HTTP), and
        Health/Check answered SERVING (gRPC)."""
        with trio.move_on_after(spec.timeout):
            try:
                stream = await self.connector.connect(endpoint.address, endpoint.port, service=service,
                                                      alpn="http/1.1" if spec.grpc_service is None else "h2",
                                                      sni=endpoint.sni)
            except UpstreamError:
                return False
            try:
                if spec.grpc_service is not None:
                    result = await grpc_check(stream, spec.grpc_service, authority=service)
                    if not result.healthy:
                        log.debug("gRPC health check of %s at %s: %s", service, endpoint.key, result.reason)
                    return result.healthy
                if spec.path is None:
                    return True
                host = service.encode()
                await stream.send_all(b"GET " + spec.path.encode() + b" HTTP/1.1\r\nhost: " + host +
                                      b"\r\nuser-agent: meshcast-health-check\r\nconnection: close\r\n\r\n")
                head = b""
                while b"\r\n" not in head and len(head) < 1024:
                    data = await stream.receive_some(1024)
                    if not data:
                        break
                    head += data
                parts = head.split(b" ", 2)
                return len(parts) >= 2 and parts[1].isdigit() and spec.passes(int(parts[1]))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return False
            finally:
                await stream.aclose()
        return False

    def _configure_observability(self, config: ProxyConfig) -> None:
        """Request metrics from the first config (they carry its zone), the tracer MeshTrace asks for, and the
        access-log sinks MeshAccessLog names (their writer tasks start in `_reconcile`)."""
        obs = self.obs
        if obs.metrics is None:
            obs.zone = config.zone
            obs.metrics = RequestMetrics(self.metrics.registry, zone=config.zone)
        trace = self.policies.trace
        endpoint = otlp_endpoint(trace[0]) if trace is not None else None
        if obs.tracer is not None and (trace is None or (endpoint, trace[1]) != (obs.tracer_endpoint,
                                                                                  obs.tracer.sampling)):
            old, obs.tracer, obs.tracer_endpoint = obs.tracer, None, None
            threading.Thread(target=old.shutdown, daemon=True).start()  # flushes what it holds, off the loop
        if trace is not None and obs.tracer is None and endpoint is not None:
            obs.tracer = Tracer(self.agent.service, endpoint, sampling=trace[1],
                                resource_attributes={"meshcast.mesh": self.mesh, "meshcast.dataplane": self.agent.name,
                                                     "meshcast.zone": config.zone})
            obs.tracer_endpoint = endpoint
        wanted = self.policies.log_paths
        for path in set(obs.sinks) - wanted:
            del obs.sinks[path]
            scope = self._sinks_running.pop(path, None)
            if scope is not None:
                scope.cancel()  # its writer flushes what is buffered, then ends
        for path in wanted - set(obs.sinks):
            obs.sinks[path] = StdoutSink() if path == "/dev/stdout" else FileSink(path)

    async def _run_sink(self, path: str, sink: Any, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.CancelScope() as scope:
            self._sinks_running[path] = scope
            try:
                await sink.run(task_status=task_status)
            except OSError as exc:
                log.error("access log %s cannot be written: %s", path, exc)
                self.obs.sinks.pop(path, None)
                task_status.started()

    def _observe(self, direction: Any, source: str | None, destination: str | None,
                 logs: Callable[[], tuple[str, ...]]) -> Callable[[RequestReceived], Exchange | None]:
        """The observation of each HTTP/1.1 request of one connection."""
        obs = self.obs

        def start(request: RequestReceived) -> Exchange | None:
            return obs.start(direction, "HTTP/1.1", request.method, request.target, request.headers.get(b"host"),
                             request.headers, source=source, destination=destination, logs=logs())

        return start

    def _outbound_logs(self, service: str) -> tuple[str, ...]:
        policy = self.policies.outbound.get(service)
        return policy.access_logs if policy is not None else ()

    def _outlier_for(self, service: str) -> OutlierDetector:
        """Outlier detection as the service's MeshCircuitBreaker sets it (connect failures count always; 5xx and
        gateway errors when a detector asks for them, see `_observer`)."""
        policy = self.policies.outbound.get(service)
        conf = (policy.outlier if policy is not None else None) or {}
        detectors = conf.get("detectors") or {}
        consecutive = min([d["consecutive"] for d in detectors.values() if d] or [5])
        base = seconds_of(conf.get("baseEjectionTime"), 30.0)
        return OutlierDetector(consecutive_failures=consecutive, base_ejection_time=base,
                               max_ejection_time=max(base, 300.0),
                               max_ejection_share=float(conf.get("maxEjectionPercent", 50)) / 100)

    def _configure_gateway(self, config: ProxyConfig) -> None:
        """An edge gateway's routes, and a TLS context per https listener (certificate files read now: a missing
        or broken one makes the gateway unready, naming it)."""
        gateway = config.gateway
        self.gateway_routes = GatewayRoutes.of(gateway.routes if gateway is not None else ())
        contexts: dict[tuple[str, int], ssl.SSLContext] = {}
        errors = []
        for listener in gateway.listeners if gateway is not None else []:
            if listener.protocol == "https":
                try:
                    contexts[(listener.address, listener.port)] = gateway_server_context(listener)
                except (OSError, ssl.SSLError, ValueError) as exc:
                    errors.append(f"listener {listener.address}:{listener.port}: cannot load its certificates: "
                                  f"{exc}")
                    log.error("gateway %s", errors[-1])
        self.gateway_tls, self.gateway_errors = contexts, errors

    @property
    def is_gateway(self) -> bool:
        return bool(self.agent.doc.get("spec", {}).get("gateway"))

    def gateway_backends(self) -> dict[str, int]:
        """Usable endpoints (not ejected) per routed service."""
        out = {}
        for service in services_of(self.gateway_routes.routes):
            balancer = self.balancers.get(service)
            stats = balancer.statistics(now=time.monotonic()) if balancer is not None else None
            out[service] = stats.endpoints - stats.ejected if stats is not None else 0
        return out

    def _on_identity(self, identity: Identity) -> None:
        self.server_ssl = server_context(identity, alpn=[*ALPN_MESH, ALPN_TCP])
        self.connector.set_identity(identity)
        self.mesh_pool.clear()  # new connections present the new certificate; open ones finish with the old
        if self.mesh_h2 is not None:
            self.mesh_h2.close_all()
        self.metrics.cert_expiry.set(identity.not_after.timestamp())

    @property
    def ready(self) -> bool:
        """Config in force, identity when mTLS is on, and every listener bound."""
        if self.draining or self.config is None:
            return False
        if self.listeners is not None and not self.listeners.all_bound(self.config):
            return False
        if self.is_gateway:  # an accepted MeshGateway, its certificates, and a healthy backend for its routes
            if self.config.gateway is None or self.gateway_errors:
                return False
            if not any(self.gateway_backends().values()):
                return False
        return not self.config.mtls.enabled or self.server_ssl is not None

    # --- lifetime ---------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as connections, trio.open_nursery() as nursery:
            self.mesh_h2, self.app_h2 = H2Pool(connections), H2Pool(connections)
            self.listeners = ListenerSet(self._handler_for, connections, reuse_port=self.workers > 1)
            await nursery.start(self.agent.follow_saved if self.follower else self.agent.run)
            nursery.start_soon(self._follow_config, nursery)
            nursery.start_soon(self._sweep_pools)
            await self._reconcile(nursery)
            task_status.started()
            await trio.sleep_forever()

    async def _sweep_pools(self) -> None:
        """Close pooled connections idle past their timeout (MeshTimeout idleTimeout), not only on their next use."""
        while True:
            await trio.sleep(POOL_SWEEP_INTERVAL)
            self.mesh_pool.sweep()
            self.app_pool.sweep()
            if self.mesh_h2 is not None:
                self.mesh_h2.sweep(lambda service: self._idle_timeout(service, None))

    async def _reconcile(self, nursery: trio.Nursery) -> None:
        for service, state in list(self._health.items()):
            if service not in self._health_running:
                await nursery.start(self._check_health, service, state)
        for path, sink in list(self.obs.sinks.items()):
            if path not in self._sinks_running:
                await nursery.start(self._run_sink, path, sink)
        if self.config is not None and self.listeners is not None and not self.draining:
            await self.listeners.reconcile(self.config, nursery)

    async def _follow_config(self, nursery: trio.Nursery) -> None:
        while True:
            # A listener that could not bind (its port held a moment by another process) is tried again every
            # second until it binds or leaves the configuration; the sidecar reports unready meanwhile.
            retry = self.listeners is not None and bool(self.listeners.errors)
            with trio.move_on_after(BIND_RETRY_INTERVAL if retry else math.inf):
                await self._config_changed.wait()
            await self._reconcile(nursery)

    async def drain(self, grace: float) -> bool:
        """Stop accepting (and report unready), then wait up to `grace` seconds for connections in flight.

        True if everything finished in time."""
        self.draining = True
        if self.is_gateway and self.withdraw_delay > 0:
            # Unready first: the BGP speaker withdraws the region's prefixes, and new connections stop arriving
            # here before the listeners close. Connections already open are told to go now, not after the
            # withdraw: once the route points at another region, a request sent on a connection kept open to
            # this one would reach a region that knows no such connection, and be reset there.
            self._tell_connections_to_go()
            if self.drop_while_withdrawing and self.listeners is not None:
                # A connection accepted now could still straddle the route change: its next packets would reach
                # the other region and be reset there. Unanswered, the client sends its SYN again in ~1 s, by when
                # the route has moved.
                self.listeners.drop_new_connections()
            log.info("gateway unready: waiting %.1fs for the route to be withdrawn", self.withdraw_delay)
            await trio.sleep(self.withdraw_delay)
        if self.listeners is not None:
            self.listeners.stop_all()
        self._tell_connections_to_go()
        with trio.move_on_after(grace):
            await self._idle.wait()
        return self.in_flight == 0

    def _tell_connections_to_go(self) -> None:
        for conn in self.h2_serving:
            conn.goaway()  # HTTP/2 clients open no new streams here; those open finish
        for proxy in self.http1_serving:
            proxy.go_away()  # HTTP/1.1: the next response says Connection: close; idle connections close now

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
        if spec.direction == "gateway":
            return lambda stream: self._gateway(spec, stream)
        return lambda stream: self._outbound(spec, stream)

    async def _proxy_mode(self, stream: LeanSocketStream) -> None:
        """HTTP proxy mode: each request's Host (`<service>.mesh`, any port) names the service it goes to."""
        self.metrics.connections.labels(direction="outbound", service="*.mesh").inc()
        self._begin("outbound")
        try:
            is_h2, first = await sniff_h2(stream)
            if is_h2:
                await self._serve_h2(stream, first, self._h2_route_by_authority)
            elif first:
                await Http1Proxy(stream, self._route_by_host, initial=first,
                                 observe=self._observe("outbound", self.agent.service, None, lambda: ())).serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._end("outbound")
            await stream.aclose()

    async def _gateway(self, spec: ListenerSpec, stream: LeanSocketStream) -> None:
        """Edge traffic: TLS terminated here for https (certificate by SNI), each request routed by the MeshGateway."""
        self.metrics.connections.labels(direction="gateway", service=spec.target).inc()
        self._begin("gateway")
        downstream: trio.abc.HalfCloseableStream = stream
        try:
            alpn = None
            if spec.protocol == "https":
                context = self.gateway_tls.get((spec.address, spec.port))
                if context is None:
                    return
                tls = LeanTLSStream(stream, context, server_side=True)
                downstream = tls
                with trio.move_on_after(HANDSHAKE_TIMEOUT) as timer:
                    try:
                        await tls.do_handshake()
                    except trio.BrokenResourceError as exc:
                        self.metrics.refused.labels(reason="tls").inc()
                        log.info("gateway: TLS handshake failed: %s", exc)
                        return
                if timer.cancelled_caught:
                    self.metrics.refused.labels(reason="handshake_timeout").inc()
                    return
                alpn = tls.selected_alpn_protocol()
            first = b""
            is_h2 = alpn == "h2"
            if alpn is None:
                is_h2, first = await sniff_h2(downstream)
            # The edge says who the client is and how it came; what the client claimed about that is dropped.
            try:
                client_ip = str(stream.socket.getpeername()[0]).encode()
            except OSError:
                client_ip = b"unknown"
            forwarded = [(b"x-forwarded-for", client_ip),
                         (b"x-forwarded-proto", b"https" if spec.protocol == "https" else b"http")]
            if is_h2:
                await H2Proxy(downstream, self._gateway_route_h2, drop=FORWARDED, add=forwarded,
                              live=self.h2_serving, initial=first,
                              observe=self._observe_h2("gateway", self.agent.service, None, lambda: ())).serve()
            elif first or alpn is not None:
                await self._serve_http1(Http1Proxy(
                    downstream, self._gateway_route, initial=first, drop=FORWARDED, add=lambda request: forwarded,
                    observe=self._observe("gateway", self.agent.service, None, lambda: ())))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._end("gateway")
            await downstream.aclose()

    def _gateway_route(self, request: RequestReceived) -> Upstream | UpstreamError:
        headers = request.headers
        service = self.gateway_routes.match(
            (headers.get(b"host") or b"").decode("latin-1"), request.target.decode("latin-1"),
            request.method.decode("latin-1"), lambda name: _text(headers.get(name.encode("latin-1"))))
        if service is None:
            return UpstreamError("no_route", "no route of the gateway matches", status=404)
        return self._http_route(service, request)

    def _gateway_route_h2(self, fields: Fields) -> H2Target | UpstreamError:
        pseudo = {k: v for k, v in fields if k.startswith(b":")}
        service = self.gateway_routes.match(
            pseudo.get(b":authority", b"").decode("latin-1"), pseudo.get(b":path", b"/").decode("latin-1"),
            pseudo.get(b":method", b"GET").decode("latin-1"),
            lambda name: _text(next((v for k, v in fields if k == name.encode("latin-1")), None)))
        if service is None:
            return UpstreamError("no_route", "no route of the gateway matches", status=404)
        return self._h2_route(service, fields)  # an HTTP/1.1 service gets it as HTTP/1.1 from its own sidecar

    def _service_for_host(self, host_field: bytes | None, *, h2: bool) -> str | UpstreamError:
        """The mesh service a proxy-mode request names by its Host (`<service>.mesh`, any port)."""
        host = (host_field or b"").decode("latin-1").lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if not name.endswith(".mesh"):
            return UpstreamError("unknown_service", f"Host {host!r} is not <service>.mesh")
        service = name[: -len(".mesh")]
        upstream = self.config.upstream(service) if self.config is not None else None
        if upstream is None:
            return UpstreamError("unknown_service", f"no service {service!r} in mesh {self.mesh}")
        if upstream.protocol not in HTTP_FAMILY or (upstream.protocol != "http" and not h2):
            return UpstreamError("not_http", f"service {service!r} speaks {upstream.protocol}, not http")
        return service

    def _route_by_host(self, request: RequestReceived) -> Upstream | UpstreamError:
        service = self._service_for_host(request.headers.get(b"host"), h2=False)
        return service if isinstance(service, UpstreamError) else self._http_route(service, request)

    def _h2_route_by_authority(self, fields: Fields) -> H2Target | UpstreamError:
        authority = next((v for k, v in fields if k == b":authority"), None)
        service = self._service_for_host(authority, h2=True)
        return service if isinstance(service, UpstreamError) else self._h2_route(service, fields)

    async def _serve_h2(self, stream: trio.abc.HalfCloseableStream, first: bytes,
                        route: Callable[[Fields], H2Target | UpstreamError], service: str | None = None) -> None:
        """HTTP/2 from the app (outbound, or proxy mode when `service` is None)."""
        observe = self._observe_h2("outbound", self.agent.service, service,
                                   (lambda: self._outbound_logs(service)) if service is not None else (lambda: ()))
        idle = self._idle_timeout(service, None) if service is not None else None
        await H2Proxy(stream, route, live=self.h2_serving, initial=first, observe=observe,
                      limits=H2Limits(idle_timeout=idle) if idle is not None else None).serve()

    def _idle_timeout(self, service: str, default: float | None) -> Any:
        """MeshTimeout's idleTimeout of calls to `service`: how long the app's connection may carry nothing."""
        policy = self.policies.outbound.get(service)
        return policy.idle_timeout if policy is not None and policy.idle_timeout is not None else default

    async def _inbound(self, spec: ListenerSpec, stream: LeanSocketStream) -> None:
        self.metrics.connections.labels(direction="inbound", service=spec.target).inc()
        self._begin("inbound")
        peer: trio.abc.HalfCloseableStream = stream
        identity: PeerIdentity | None = None  # the caller's, from its certificate: known when mTLS is on
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
                identity = peer_identity(tls.ssl_object)
                if identity is None:
                    self.metrics.refused.labels(reason="no_spiffe_id").inc()
                    return
            caller = identity.spiffe_id if identity is not None else None
            alpn = peer.selected_alpn_protocol() if isinstance(peer, LeanTLSStream) else None
            guard = InboundGuard(self, spec.service, identity)
            if guard.connection_limited():
                self.metrics.refused.labels(reason="rate_limited").inc()
                return
            first = b""
            if spec.protocol in HTTP_FAMILY and alpn != ALPN_TCP:
                if alpn is None:  # plaintext (mTLS off): what the peer speaks tells
                    is_h2, first = await sniff_h2(peer)
                else:
                    is_h2 = alpn == "h2"
                if is_h2:
                    await self._inbound_h2(spec, peer, caller, first, guard)
                    return
                if spec.protocol == "http":
                    await self._inbound_http(spec, peer, caller, first, guard)
                    return
            if guard.denied:
                self.metrics.refused.labels(reason="forbidden").inc()
                log.info("inbound %s: %s may not call %s (MeshTrafficPermission)", spec.port, caller, spec.service)
                return  # opaque TCP: the connection closes before a byte reaches the app
            host, _, port = spec.target.rpartition(":")
            try:
                with trio.fail_after(self.connector.connect_timeout):
                    app = await open_lean_tcp_stream(host, int(port))
                if first:
                    await app.send_all(first)
            except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                log.warning("inbound %s: the app at %s is unreachable: %s", spec.port, spec.target, exc)
                return
            await self._splice_and_close(peer, app, "inbound", guard.idle_timeout(3600.0))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._end("inbound")
            await peer.aclose()

    async def _splice_and_close(self, near: trio.abc.HalfCloseableStream, far: trio.abc.HalfCloseableStream,
                                direction: str, idle_timeout: float = 3600.0) -> None:
        """Relay opaque bytes both ways, count them, and close the far side (the caller closes the near one)."""
        try:
            sent, received = await splice(near, far, idle_timeout=idle_timeout)
            self.metrics.bytes.labels(direction=direction).inc(sent + received)
        finally:
            await far.aclose()

    def _app_dialer(self, spec: ListenerSpec) -> tuple[tuple[str, int],
                                                         Callable[[], Awaitable[tuple[tuple[str, int],
                                                                                      trio.abc.HalfCloseableStream]]]]:
        host, _, port_text = spec.target.rpartition(":")
        app = (host, int(port_text))

        async def dial() -> tuple[tuple[str, int], trio.abc.HalfCloseableStream]:
            try:
                with trio.fail_after(self.connector.connect_timeout):
                    return app, await open_lean_tcp_stream(*app)
            except (OSError, trio.TooSlowError) as exc:
                raise UpstreamError("app_unreachable", f"{spec.target}: {exc}") from None

        return app, dial

    async def _inbound_http(self, spec: ListenerSpec, peer: trio.abc.HalfCloseableStream, caller: str | None,
                            first: bytes, guard: InboundGuard) -> None:
        app, dial = self._app_dialer(spec)
        upstream = Upstream(self.app_pool, app, dial)
        source = [(SOURCE_HEADER, caller.encode())] if caller else []
        await self._serve_http1(Http1Proxy(
            peer, lambda request: guard.admit_http(upstream), drop=frozenset({SOURCE_HEADER}),
            add=lambda request: source, initial=first, idle_timeout=guard.idle_timeout(60.0),
            observe=self._observe("inbound", guard.caller, spec.service, guard.logs)))

    async def _serve_http1(self, proxy: Http1Proxy) -> None:
        """Serve one HTTP/1.1 connection, known to the drain: told to go when it starts (idle keep-alive
        connections close at once, busy ones after their response), or at once if accepted while draining."""
        self.http1_serving.add(proxy)
        if self.draining:
            proxy.go_away()  # accepted while draining (a gateway's withdraw delay): one request, then close
        try:
            await proxy.serve()
        finally:
            self.http1_serving.discard(proxy)

    async def _inbound_h2(self, spec: ListenerSpec, peer: trio.abc.HalfCloseableStream, caller: str | None,
                          first: bytes, guard: InboundGuard) -> None:
        """HTTP/2 from a peer sidecar: each stream to the app, over pooled connections."""
        assert self.app_h2 is not None
        app, dial = self._app_dialer(spec)
        # An h2c app gets the streams over HTTP/2; an `http` (HTTP/1.1) app gets each as a pooled exchange.
        target = H2Target(self.app_h2, app, dial) if spec.protocol != "http" else Upstream(self.app_pool, app, dial)
        # The caller's identity replaces whatever the request claimed.
        source = [(SOURCE_HEADER, caller.encode())] if caller else []
        def route(fields: Fields) -> H2Target | Upstream | UpstreamError:
            return guard.admit_http(target) if isinstance(target, Upstream) else guard.admit_h2(target)

        idle = guard.idle_timeout(H2Limits.idle_timeout)
        await H2Proxy(peer, route, drop=frozenset({SOURCE_HEADER}), add=source, live=self.h2_serving,
                      initial=first, observe=self._observe_h2("inbound", guard.caller, spec.service, guard.logs),
                      limits=H2Limits(idle_timeout=idle) if idle != H2Limits.idle_timeout else None).serve()

    def _route_rule(self, service: str, policy: OutboundPolicy, request: Request | None,
                    ) -> tuple[Rule | None, str, str]:
        """The MeshHTTPRoute rule a call matches, and where it sends it: (rule, service, balancer key)."""
        if policy.routes is None or request is None:
            return None, service, service
        rule = policy.routes.match(request)
        backend = rule.pick(self.rng) if rule is not None else None
        if backend is None:
            return rule, service, service
        return rule, backend.service, balancer_key(backend)

    def _http_route(self, service: str, request: RequestReceived | None = None) -> Upstream | UpstreamError:
        """Where one HTTP/1.1 call to `service` goes, with the policies in force: the route rule it matches (which
        may send it to another service or a subset, and edit it), retries with their budget, the timeouts and,
        under a MeshCircuitBreaker's detectors, passive health from its answers."""
        policy = self.policies.outbound.get(service)
        if policy is None:
            return self._upstream_to(service, service)
        overflow = self._overflow(service, policy)
        if overflow is not None:
            return overflow
        rule, destination, key = self._route_rule(service, policy, None if request is None else Request(
            request.method.decode("latin-1"), request.target.decode("latin-1"), request.headers))
        hash_key = request.headers.get(policy.hash_header) if policy.hash_header and request is not None else None
        upstream = self._upstream_to(destination, key, hash_key=hash_key)
        if isinstance(upstream, UpstreamError):
            return upstream
        upstream.rule, upstream.timeout = rule, policy.request_timeout
        upstream.stream_idle = policy.stream_idle_timeout
        if policy.max_requests is not None:
            upstream.done = self._counted(service, upstream.done)
        if policy.retry is not None:
            upstream.retry, upstream.budget = policy.retry, policy.budget
            upstream.reroute = lambda tried: self._upstream_to(destination, key, exclude=tried)
        return upstream

    def _h2_route(self, service: str, fields: Fields | None = None) -> H2Target | UpstreamError:
        """As `_http_route`, for one HTTP/2 stream (a gRPC call takes MeshRetry's `grpc` section)."""
        policy = self.policies.outbound.get(service)
        if policy is None:
            return self._h2_target_to(service, service)
        overflow = self._overflow(service, policy)
        if overflow is not None:
            return overflow
        request = None
        if fields is not None and policy.routes is not None:
            pseudo = {k: v for k, v in fields if k.startswith(b":")}
            request = Request(pseudo.get(b":method", b"GET").decode("latin-1"),
                              pseudo.get(b":path", b"/").decode("latin-1"),
                              [(k, v) for k, v in fields if not k.startswith(b":")])
        rule, destination, key = self._route_rule(service, policy, request)
        hash_key = header(fields, policy.hash_header) if policy.hash_header and fields is not None else None
        target = self._h2_target_to(destination, key, hash_key=hash_key)
        if isinstance(target, UpstreamError):
            return target
        target.rule, target.timeout = rule, policy.request_timeout
        target.stream_idle = policy.stream_idle_timeout
        if policy.max_requests is not None:
            target.done = self._counted(service, target.done)
        grpc = fields is not None and (header(fields, b"content-type") or b"").startswith(b"application/grpc")
        retry = policy.retry_for(grpc)
        if retry is not None:
            target.retry, target.budget = retry, policy.budget
            target.reroute = lambda tried: self._h2_target_to(destination, key, exclude=tried)
        return target

    def _pick(self, service: str, key: str, exclude: set[Any] | None, hash_key: bytes | None,
              ) -> tuple[BalancerBase, Endpoint] | UpstreamError:
        """An endpoint of balancer `key` (the service's, or a subset's) for one attempt, counted as started;
        `hash_key` picks it under RingHash, `exclude` avoids the endpoints a retry already tried."""
        balancer = self.balancers.get(key)
        if balancer is None:
            return UpstreamError("no_healthy_upstream", f"service {service} has no endpoint")
        now = time.monotonic()
        endpoint = balancer.pick(hash_key, exclude=exclude or set(), now=now)
        if endpoint is None and exclude:
            endpoint = balancer.pick(exclude=set(), now=now)  # every endpoint tried: any will do
        if endpoint is None:
            return UpstreamError("no_healthy_upstream", f"service {service} has no endpoint")
        balancer.started(endpoint)  # least-request counts requests in flight
        return balancer, endpoint

    def _upstream_to(self, service: str, key: str, *, exclude: set[Any] | None = None,
                     hash_key: bytes | None = None) -> Upstream | UpstreamError:
        """One attempt of an HTTP/1.1 call to an endpoint of balancer `key`."""
        picked = self._pick(service, key, exclude, hash_key)
        if isinstance(picked, UpstreamError):
            return picked
        balancer, endpoint = picked

        async def dial() -> tuple[EndpointKey, trio.abc.HalfCloseableStream]:
            return await self._dial_endpoints(service, "http/1.1", first=endpoint, key=key)

        # Pooled by endpoint key: two services behind one ingress address are two destinations (their SNIs).
        return Upstream(self.mesh_pool, endpoint.key, dial, done=lambda: balancer.finished(endpoint),
                        service=service, observe=self._passive_health(service, balancer, endpoint))

    def _h2_target_to(self, service: str, key: str, *, exclude: set[Any] | None = None,
                      hash_key: bytes | None = None) -> H2Target | UpstreamError:
        """One attempt of an HTTP/2 call (a stream on a multiplexed connection) to an endpoint of balancer `key`."""
        if self.mesh_h2 is None:
            return UpstreamError("no_healthy_upstream", "the sidecar is starting")
        picked = self._pick(service, key, exclude, hash_key)
        if isinstance(picked, UpstreamError):
            return picked
        balancer, endpoint = picked

        async def dial() -> tuple[EndpointKey, trio.abc.HalfCloseableStream]:
            return await self._dial_endpoints(service, "h2", first=endpoint, key=key)

        return H2Target(self.mesh_h2, endpoint.key, dial, done=lambda: balancer.finished(endpoint), service=service,
                        observe=self._passive_health(service, balancer, endpoint))

    def _passive_health(self, service: str, balancer: BalancerBase, endpoint: Endpoint,
                        ) -> Callable[[int | None, str | None], None] | None:
        """The observer of a call's answers under MeshCircuitBreaker detectors, or None."""
        policy = self.policies.outbound.get(service)
        outlier = (policy.outlier if policy is not None else None) or {}
        detectors = outlier.get("detectors") or {} if not outlier.get("disabled") else {}
        return self._observer(service, balancer, endpoint, detectors) if detectors else None

    def _observer(self, service: str, balancer: BalancerBase, endpoint: Endpoint,
                  detectors: dict[str, Any]) -> Callable[[int | None, str | None], None]:
        """Passive health from answers (MeshCircuitBreaker detectors): `totalFailures` counts 5xx answers and
        resets, `gatewayFailures` 502/503/504 and connect failures; a success resets the count."""
        gateway_only = "totalFailures" not in detectors

        def observe(status: int | None, failure: str | None) -> None:
            now = time.monotonic()
            failed = (status is not None and (status in (502, 503, 504) if gateway_only else status >= 500)) or (
                failure is not None and (failure == "connect_failure" or not gateway_only))
            if not failed:
                balancer.connect_succeeded(endpoint, now=now)
            elif balancer.connect_failed(endpoint, now=now):
                if self.obs.metrics is not None:
                    self.obs.metrics.ejected(service)
                log.warning("upstream %s: %s ejected after consecutive failures", service, endpoint.key)

        return observe

    def _overflow(self, service: str, policy: OutboundPolicy) -> UpstreamError | None:
        """MeshCircuitBreaker's maxRequests: a call beyond that many in flight to `service` is refused at once."""
        if policy.max_requests is not None and self._calls_in_flight.get(service, 0) >= policy.max_requests:
            return UpstreamError("overflow", f"{policy.max_requests} calls to {service} in flight already")
        return None

    def _counted(self, service: str, done: Callable[[], None]) -> Callable[[], None]:
        """Count a call to `service` in flight until `done`."""
        self._calls_in_flight[service] = self._calls_in_flight.get(service, 0) + 1

        def finished() -> None:
            self._calls_in_flight[service] -= 1
            done()

        return finished

    def _observe_h2(self, direction: Any, source: str | None, destination: str | None,
                    logs: Callable[[], tuple[str, ...]]) -> Callable[[Fields], Exchange | None]:
        """The observation of each HTTP/2 stream of one connection."""
        obs = self.obs

        def start(fields: Fields) -> Exchange | None:
            pseudo = {k: v for k, v in fields if k.startswith(b":")}
            return obs.start(direction, "HTTP/2", pseudo.get(b":method", b""), pseudo.get(b":path", b""),
                             pseudo.get(b":authority"), fields, source=source, destination=destination,
                             logs=logs())

        return start

    def pick(self, service: str, exclude: set[str]) -> Endpoint | None:
        balancer = self.balancers.get(service)
        return balancer.pick(exclude=exclude, now=time.monotonic()) if balancer is not None else None

    async def connect_upstream(self, service: str, alpn: str) -> trio.abc.HalfCloseableStream:
        """A connection to some endpoint of `service` (or, under a MeshTCPRoute, of the backend its weights pick),
        trying up to three endpoints; raises UpstreamError."""
        policy = self.policies.outbound.get(service)
        if policy is not None and policy.tcp_backends:
            backend = pick_weighted(policy.tcp_backends, self.rng)
            if backend is not None:
                _, stream = await self._dial_endpoints(backend.service, alpn, key=balancer_key(backend))
                return stream
        _, stream = await self._dial_endpoints(service, alpn)
        return stream

    async def _dial_endpoints(self, service: str, alpn: str, first: Endpoint | None = None, key: str | None = None,
                              ) -> tuple[EndpointKey, trio.abc.HalfCloseableStream]:
        """Connect to `first` or a balancer's pick; a failed connect is reported (passive health) and retried on
        another endpoint, up to CONNECT_ATTEMPTS endpoints (MeshRetry's tcp.maxConnectAttempt), each within the
        connection timeout (MeshTimeout's connectionTimeout). Returns the key of the endpoint reached (the pool
        key) and the connection. Under a MeshCircuitBreaker's maxConnections the connection holds a slot until it
        closes, and a call finding every slot taken reuses an idle HTTP/1.1 connection or waits for one."""
        policy = self.policies.outbound.get(service)
        timeout = (policy.connect_timeout if policy is not None else None) or self.connector.connect_timeout
        limit = self._limit_for(service, policy)
        if limit is not None:
            reused = await limit.acquire(
                (lambda: self.mesh_pool.take_any(limit.keys)) if alpn == "http/1.1" else (lambda: None), timeout)
            if reused is not None:
                return reused[0], reused[1].stream  # type: ignore[return-value]
        try:
            attempts = (policy.connect_attempts if policy is not None else None) or CONNECT_ATTEMPTS
            reached, stream = await self._dial_some(service, alpn, first, key or service, timeout, attempts)
        except BaseException:
            if limit is not None:
                limit.release()
            raise
        if limit is None:
            return reached, stream
        limit.keys.add(reached)
        return reached, LimitedStream(stream, limit)

    def _limit_for(self, service: str, policy: OutboundPolicy | None) -> ConnectionLimit | None:
        """The connection limit of `service`, following its MeshCircuitBreaker (the same object while it stays, so
        connections already open keep counting)."""
        if policy is None or policy.max_connections is None:
            self._limits.pop(service, None)
            return None
        limit = self._limits.get(service)
        if limit is None:
            limit = self._limits[service] = ConnectionLimit(service, policy.max_connections, policy.max_pending)
        else:
            limit.max_connections = policy.max_connections
            limit.max_pending = policy.max_pending if policy.max_pending is not None else DEFAULT_MAX_PENDING
        return limit

    def _given_back(self, key: Any) -> None:
        """A connection went back to the pool: calls waiting under a connection limit of its service look again."""
        for limit in self._limits.values():
            if key in limit.keys:
                limit.notify()

    async def _dial_some(self, service: str, alpn: str, first: Endpoint | None, key: str, connect_timeout: float,
                         attempts: int) -> tuple[EndpointKey, trio.abc.HalfCloseableStream]:
        tried: set[str] = set()
        last: UpstreamError | None = None
        balancer = self.balancers.get(key)  # the service's or, for a route to a subset, the subset's
        for attempt in range(attempts):
            endpoint = first if attempt == 0 and first is not None else self.pick(key, tried)
            if endpoint is None or balancer is None:
                break
            tried.add(endpoint.key)
            try:
                stream = await self.connector.connect(endpoint.address, endpoint.port, service=service, alpn=alpn,
                                                      sni=endpoint.sni, connect_timeout=connect_timeout)
            except UpstreamError as exc:
                self.metrics.upstream_errors.labels(service=service, reason=exc.reason).inc()
                if balancer.connect_failed(endpoint, now=time.monotonic()):
                    if self.obs.metrics is not None:
                        self.obs.metrics.ejected(service)
                    log.warning("upstream %s: %s ejected after repeated connect failures", service, endpoint.key)
                log.info("upstream %s: %s", service, exc)
                last = exc
                continue
            balancer.connect_succeeded(endpoint, now=time.monotonic())
            self.metrics.upstream_connects.labels(service=service).inc()
            return endpoint.key, stream
        if last is None:
            raise UpstreamError("no_healthy_upstream", f"service {service} has no endpoint")
        raise last

    async def _outbound(self, spec: ListenerSpec, stream: LeanSocketStream) -> None:
        self.metrics.connections.labels(direction="outbound", service=spec.target).inc()
        self._begin("outbound")
        try:
            outbound = self.config.outbound_for(spec.target) if self.config is not None else None
            first = b""
            if outbound is not None and outbound.protocol in HTTP_FAMILY:
                is_h2, first = await sniff_h2(stream)
                if is_h2:
                    await self._serve_h2(stream, first, lambda fields: self._h2_route(spec.target, fields),
                                         spec.target)
                    return
                if outbound.protocol == "http":
                    if first:
                        observe = self._observe("outbound", self.agent.service, spec.target,
                                                lambda: self._outbound_logs(spec.target))
                        await self._serve_http1(Http1Proxy(
                            stream, lambda request: self._http_route(spec.target, request), initial=first,
                            observe=observe, idle_timeout=self._idle_timeout(spec.target, 60.0)))
                    return
            try:
                upstream = await self.connect_upstream(spec.target, ALPN_TCP)
            except UpstreamError as exc:
                log.warning("outbound %s: %s", spec.target, exc)
                return
            if first:
                await upstream.send_all(first)
            await self._splice_and_close(stream, upstream, "outbound", self._idle_timeout(spec.target, 3600.0))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._end("outbound")
            await stream.aclose()


class InboundGuard:
    """The inbound policies of one connection's calls: the caller's permission, connection and request rate limits,
    and injected faults. The caller (its service and the tags its certificate names) is fixed for the connection,
    so what applies to it is worked out once per policies in force (a policy applied later also governs connections
    already open) and each request only reads it. A denied caller's requests are answered 403 here; none reaches
    the app."""

    def __init__(self, sidecar: Sidecar, service: str, caller: PeerIdentity | None) -> None:
        self.sidecar = sidecar
        self.service = service
        self.caller = caller.service if caller is not None else None  # None: no identity (mTLS off)
        self.tags = caller.tags if caller is not None else {}
        self._seen: InboundPolicy | None = None
        self._applies: CallerPolicy | None = None

    @property
    def policy(self) -> CallerPolicy | None:
        policy = self.sidecar.policies.inbound.get(self.service)
        if policy is None:
            return None
        if policy is not self._seen:
            self._seen, self._applies = policy, policy.for_caller(self.caller, self.tags)
        return self._applies

    @property
    def denied(self) -> bool:
        policy = self.policy
        return policy is not None and not policy.allows

    def logs(self) -> tuple[str, ...]:
        """The access-log paths for this caller's calls (MeshAccessLog)."""
        policy = self.policy
        return policy.logs if policy is not None else ()

    def connection_limited(self) -> bool:
        policy = self.policy
        return policy is not None and policy.limit_connection(time.monotonic())

    def verdict(self, policy: CallerPolicy | None = None) -> UpstreamError | float:
        """For one request: the answer to give instead of forwarding it, or the delay (seconds) to inject."""
        policy = policy or self.policy
        if policy is None:
            return 0.0
        if not policy.allows:
            self.sidecar.metrics.refused.labels(reason="forbidden").inc()
            return UpstreamError("forbidden", f"{self.caller or 'an unidentified caller'} may not call this service",
                                 status=403)
        if policy.shadow_denied:
            self.sidecar.metrics.shadow_denied.labels(service=self.service).inc()
            log.info("shadow deny: %s calling %s would be refused (MeshTrafficPermission AllowWithShadowDeny)",
                     self.caller or "an unidentified caller", self.service)
        limited = policy.limit_request(time.monotonic())
        if limited is not None:
            rate_limit, wait = limited
            self.sidecar.metrics.refused.labels(reason="rate_limited").inc()
            if self.sidecar.obs.metrics is not None:
                self.sidecar.obs.metrics.rate_limited(self.service)
            retry_after = (b"retry-after", str(max(1, math.ceil(wait))).encode())
            return UpstreamError("rate_limited", "too many requests", status=rate_limit.status,
                                 headers=(retry_after, *rate_limit.headers))
        delay, abort = policy.fault(self.sidecar.rng)
        if abort is not None:
            return UpstreamError("fault_injected", "aborted by MeshFaultInjection", status=abort)
        return delay

    def admit_http(self, upstream: Upstream) -> Upstream | UpstreamError:
        return self._admit(upstream)

    def admit_h2(self, target: H2Target) -> H2Target | UpstreamError:
        return self._admit(target)

    def _admit(self, target: _Admitted) -> _Admitted | UpstreamError:
        """The request goes on to the app (with an injected delay, and the caller's MeshTimeout `from`), or the
        answer to give instead."""
        policy = self.policy
        verdict = self.verdict(policy)
        if isinstance(verdict, UpstreamError):
            return verdict
        timeouts = policy.timeouts if policy is not None else None
        if not verdict and timeouts is None:
            return target
        if timeouts is None:
            return dataclasses.replace(target, delay=verdict)
        return dataclasses.replace(target, delay=verdict, timeout=timeouts.request, stream_idle=timeouts.stream_idle)

    def idle_timeout(self, default: float) -> float:
        """How long this caller's connection may carry nothing (MeshTimeout `from` idleTimeout)."""
        policy = self.policy
        timeouts = policy.timeouts if policy is not None else None
        return timeouts.idle if timeouts is not None and timeouts.idle is not None else default


_Admitted = TypeVar("_Admitted", Upstream, H2Target)


def balancer_key(backend: Backend) -> str:
    """The balancer of a route backend: the service's own, or one per subset of its instances."""
    if not backend.tags:
        return backend.service
    return backend.service + "|" + ",".join(f"{k}={v}" for k, v in backend.tags)


def seconds_of(text: str | None, default: float) -> float:
    return parse_duration(text).total_seconds() if text else default


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None
