"""Inbound and outbound listeners of a sidecar, and the set of them that follows the configuration.

Theory of operation: `ListenerSet.reconcile(config)` compares the listeners the config asks for with the running
ones, keyed by what a listener cannot change without re-binding (direction, address, port, protocol, target);
it starts the missing and stops the unwanted. Stopping a listener closes its socket only: connections already
accepted run in the sidecar's connection nursery and finish on their own, so a config change never cuts traffic;
those the kernel had completed and queued but nobody accepted yet are accepted first (closing a listening socket
resets them, though their clients have sent their requests). Endpoint changes need no listener change at all: each
new connection reads the current endpoints.

A draining gateway can also stop answering new connections while its listeners stay open (`drop_new_connections`):
their SYNs go unanswered, so clients send them again a second later, to the region the route then points at.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from dataplane.config import InboundConfig, OutboundConfig, ProxyConfig
from meshcast.wire.leanio import LeanSocketStream, close_listener, drop_new_connections, listen_tcp, serve_lean

log = logging.getLogger("meshcast.dataplane.listeners")

Handler = Callable[[LeanSocketStream], Awaitable[None]]


@dataclass(frozen=True)
class ListenerSpec:
    direction: str  # inbound | outbound | proxy (the Host header names the service) | gateway (MeshGateway)
    address: str
    port: int
    protocol: str
    target: str  # inbound: app address:port; outbound: service
    service: str = ""  # inbound: the service it serves

    @classmethod
    def of_inbound(cls, config: ProxyConfig, inbound: InboundConfig) -> ListenerSpec:
        return cls("inbound", config.address, inbound.port, inbound.protocol,
                   f"{inbound.app_address}:{inbound.target_port}", inbound.service)

    @classmethod
    def of_outbound(cls, outbound: OutboundConfig) -> ListenerSpec:
        # The protocol of an upstream is learnt from its endpoints and may change (none known yet: tcp), so it is
        # read per connection, not part of what binds the listener.
        return cls("outbound", outbound.address, outbound.port, "auto", outbound.service)


def bind(address: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listener socket; with `reuse_port` (--workers N) every worker binds the same port and the kernel spreads
    connections over them."""
    return listen_tcp(address, port, reuse_port=reuse_port)


class ListenerSet:
    def __init__(self, handler_for: Callable[[ListenerSpec], Handler], connections: trio.Nursery, *,
                 reuse_port: bool = False) -> None:
        self._reuse_port = reuse_port
        self._handler_for = handler_for
        self._connections = connections
        self._running: dict[ListenerSpec, tuple[trio.CancelScope, socket.socket, Handler]] = {}
        self.errors: dict[ListenerSpec, str] = {}
        self._reconciling = trio.Lock()

    def wanted(self, config: ProxyConfig) -> set[ListenerSpec]:
        specs = {ListenerSpec.of_inbound(config, i) for i in config.inbound}
        if config.http_proxy is not None:
            specs.add(ListenerSpec("proxy", config.http_proxy.address, config.http_proxy.port, "http", "*.mesh"))
        if config.gateway is not None:
            specs |= {ListenerSpec("gateway", listener.address, listener.port, listener.protocol, config.gateway.name)
                      for listener in config.gateway.listeners}
        return specs | {ListenerSpec.of_outbound(o) for o in config.outbound}

    async def reconcile(self, config: ProxyConfig, nursery: trio.Nursery) -> None:
        # One reconcile at a time: two interleaved ones (the start-up one and a config change) would both try to
        # bind a listener the other has just bound, and file the second attempt as an error.
        async with self._reconciling:
            await self._reconcile(config, nursery)

    async def _reconcile(self, config: ProxyConfig, nursery: trio.Nursery) -> None:
        wanted = self.wanted(config)
        for spec in [s for s in self._running if s not in wanted]:
            self.stop(spec)
        for spec in [s for s in self.errors if s not in wanted]:
            del self.errors[spec]
        for spec in sorted(wanted - set(self._running), key=lambda s: (s.direction, s.port)):
            try:
                sock = bind(spec.address, spec.port, reuse_port=self._reuse_port)
            except OSError as exc:
                self.errors[spec] = f"cannot listen on {spec.address}:{spec.port}: {exc.strerror}"
                log.error("%s", self.errors[spec])
                continue
            self.errors.pop(spec, None)
            scope = trio.CancelScope()
            handler = self._handler_for(spec)
            self._running[spec] = (scope, sock, handler)
            await nursery.start(self._serve, sock, scope, handler)
            log.info("%s listener on %s:%s (%s -> %s)", spec.direction, spec.address, spec.port, spec.protocol,
                     spec.target)

    async def _serve(self, sock: socket.socket, scope: trio.CancelScope, handler: Handler, *,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async def spawn(stream: LeanSocketStream) -> None:
            # Accepted connections live in the sidecar's connection nursery, not the listener's: stopping the
            # listener must not cut them.
            self._connections.start_soon(handler, stream)

        with scope:
            try:
                await serve_lean(sock, spawn, task_status=task_status)
            finally:
                if sock.fileno() != -1:
                    trio.lowlevel.notify_closing(sock)
                    sock.close()

    def all_bound(self, config: ProxyConfig) -> bool:
        """Every listener the configuration asks for is accepting connections."""
        return not self.errors and self.wanted(config) <= self._running.keys()

    def stop(self, spec: ListenerSpec) -> None:
        scope, sock, handler = self._running.pop(spec)
        scope.cancel()
        # Close now, not when the accept task next runs: a replacement listener may bind the same port at once.
        close_listener(sock, lambda stream: self._connections.start_soon(handler, stream))

    def drop_new_connections(self) -> None:
        """Leave new connections unanswered on every listener (see the module's docstring); they stay open."""
        for _, sock, _ in self._running.values():
            try:
                drop_new_connections(sock)
            except OSError as exc:  # not Linux: new connections are served until the listeners close
                log.warning("cannot leave new connections unanswered on %s: %s", sock.getsockname(), exc)

    def stop_all(self) -> None:
        for spec in list(self._running):
            self.stop(spec)

    @property
    def running(self) -> list[ListenerSpec]:
        return list(self._running)
