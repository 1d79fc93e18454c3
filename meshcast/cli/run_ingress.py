"""Wiring of `meshcast ingress run`: the zone ingress, which takes cross-zone connections and routes each by SNI to a
local instance of the named service, without terminating TLS (`dataplane.ingress.router`).

Theory of operation: the ingress long-polls its zone CP (`GET /v1/ingress/endpoints?after=<generation>`, with an
ingress token), which also registers its advertised address: the zone publishes it to the global keyspace, and
other zones' sidecars send it their cross-zone calls. Each answer replaces the routing table at once (connections
in flight keep their endpoint) and is saved to `<state_dir>/endpoints.json`, so an ingress restarted while its CP
is down routes with the last table. Endpoints of a service are tried in rotating order, so connections spread over
the instances. A refused token (forged, expired, another zone's) stops the ingress with a one-line error.

SIGTERM or SIGINT drains it: it stops polling, tells its zone CP it is leaving (`POST /v1/ingress/leave`: the zone
stops publishing it, and other zones' sidecars stop calling it within a second or two instead of after
INGRESS_TTL), answers 503 on /ready, and drains its server (`IngressServer.drain`) for up to --drain-timeout.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import math
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import trio

from meshcast.errors import api_error_message

if TYPE_CHECKING:  # imported when run: the CLI's other commands start without the data plane
    from dataplane.ingress.stats import Distribution, IngressStatistics

log = logging.getLogger("meshcast.ingress")

POLL_TIMEOUT = 30.0  # the CP answers within 20 s when nothing changes
LEAVE_TIMEOUT = 2.0  # for telling the zone CP the ingress is leaving; without it the zone unpublishes it after 30 s
STATE_FILE = "endpoints.json"

Table = dict[str, dict[str, list[tuple[str, int]]]]


class IngressRoutes:
    """The routing table: mesh -> service -> local endpoints, replaced whole on each update."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE
        self.table: Table = {}
        self.generation: int | None = None
        self.loaded = False  # a table came from the CP or from disk
        self.connected = False
        self.last_error: str | None = None
        self._turn = itertools.count()

    def endpoints(self, mesh: str, service: str) -> Sequence[tuple[str, int]] | None:
        found = self.table.get(mesh, {}).get(service)
        if not found:
            return None
        start = next(self._turn) % len(found)
        return found[start:] + found[:start]

    def update(self, body: dict[str, Any]) -> None:
        table: Table = {}
        for mesh, services in body["endpoints"].items():
            table[str(mesh)] = {str(service): [(str(host), int(port)) for host, port in entries]
                                for service, entries in services.items()}
        self.table, self.generation, self.loaded = table, int(body["generation"]), True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"endpoints": table}))
        os.replace(tmp, self.path)

    def load(self) -> None:
        try:
            body = json.loads(self.path.read_text())
            self.update({"endpoints": body["endpoints"], "generation": 0})
            self.generation = None  # ask the CP for everything
            log.info("routing with the saved table %s until the control plane answers", self.path)
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the saved routing table %s: %s", self.path, exc)

    def count(self) -> int:
        return sum(len(services) for services in self.table.values())


async def follow_control_plane(routes: IngressRoutes, cp: str, token: str, advertise: str,
                               ca_file: Path | None = None) -> None:
    """Long-poll the zone CP forever (verifying an https CP with `ca_file`, else the system's CAs); raise
    click.ClickException when it refuses the token."""
    import ssl

    import httpx

    backoff = 0.1
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
    async with httpx.AsyncClient(timeout=POLL_TIMEOUT, verify=verify) as client:
        while True:
            params: dict[str, Any] = {"advertise": advertise}
            if routes.generation is not None:
                params["after"] = routes.generation
            try:
                response = await client.get(f"{cp}/v1/ingress/endpoints", params=params,
                                            headers={"authorization": f"Bearer {token}"})
            except httpx.HTTPError as exc:
                routes.connected, routes.last_error = False, f"control plane unreachable: {exc!r}"
                log.warning("%s; routing with the last table, retrying in %.1fs", routes.last_error, backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if response.status_code in (401, 403):
                raise click.ClickException(f"the zone control plane refused the ingress token: "
                                           f"{api_error_message(response)} (HTTP {response.status_code})")
            if response.status_code != 200:
                problem = f"{api_error_message(response)} (HTTP {response.status_code})"
                routes.connected, routes.last_error = False, problem
                log.warning("control plane answered %s; retrying in %.1fs", routes.last_error, backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            before = routes.count()
            routes.update(response.json())
            if not routes.connected or routes.count() != before:
                log.info("routing %d service(s) (generation %s)", routes.count(), routes.generation)
            routes.connected, routes.last_error, backoff = True, None, 0.1


async def leave(cp: str, token: str, advertise: str, ca_file: Path | None = None) -> None:
    """Tell the zone CP this ingress is leaving (best effort, within LEAVE_TIMEOUT: a drain does not wait on it)."""
    import ssl

    import httpx

    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
    try:
        async with httpx.AsyncClient(timeout=LEAVE_TIMEOUT, verify=verify) as client:
            response = await client.post(f"{cp}/v1/ingress/leave", params={"advertise": advertise},
                                         headers={"authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        log.warning("could not tell the zone control plane this ingress is leaving (%r): other zones keep "
                    "calling it until it stops publishing it", exc)
        return
    if response.status_code != 200:
        log.warning("the zone control plane refused this ingress's leave: %s (HTTP %d)",
                    api_error_message(response), response.status_code)
        return
    log.info("the zone control plane no longer publishes this ingress (%s)", advertise)


def _admin_handler(routes: IngressRoutes, server: Any, registry: Any) -> Any:
    from dataplane.admin import json_response, metrics_response

    def handle(method: str, target: str) -> Any:
        path = target.split("?", 1)[0]
        if path == "/ready":
            ready = routes.loaded and server.port != 0 and not server.draining
            return json_response(200 if ready else 503, {
                "ready": ready, "draining": server.draining, "connectedToControlPlane": routes.connected,
                "services": routes.count(), "lastError": routes.last_error, "activeConnections": server.active})
        if path == "/metrics":
            return metrics_response(registry)
        if path == "/config":
            return json_response(200, {"generation": routes.generation, "endpoints": routes.table})
        return json_response(404, {"error": "not found"})

    return handle


LABELS = ["mesh", "destination_service"]


def ingress_registry(statistics: Callable[[], IngressStatistics]) -> Any:
    """A registry whose collector turns `statistics()` (`IngressServer.statistics`) into the ingress's metrics, per
    destination service (`dataplane.ingress.stats`); the labels are empty for connections no service took."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    def buckets(distribution: Distribution) -> list[tuple[str, float]]:
        return [("+Inf" if bound == math.inf else repr(bound), count) for bound, count in distribution.cumulative()]

    class Collector:
        def collect(self) -> Iterator[Any]:
            stats = statistics()
            active = GaugeMetricFamily("meshcast_ingress_active_connections", "Connections being read or spliced "
                                       "now, by the destination their SNI named (empty: none yet, or none taken)",
                                       labels=LABELS)
            connections = CounterMetricFamily(
                "meshcast_ingress_connections", "Connections by outcome, counted once decided: spliced (handed to "
                "an endpoint) or why the ingress refused it", labels=[*LABELS, "outcome"])
            received = CounterMetricFamily("meshcast_ingress_downstream_received_bytes", "Bytes received from "
                                           "callers (the ClientHello included), counted as they move", labels=LABELS)
            sent = CounterMetricFamily("meshcast_ingress_downstream_sent_bytes", "Bytes sent to callers (TLS alerts "
                                       "included), counted as they move", labels=LABELS)
            duration = HistogramMetricFamily("meshcast_ingress_connection_duration_seconds", "From accept to close, "
                                             "of closed connections", labels=LABELS)
            connect = HistogramMetricFamily("meshcast_ingress_upstream_connect_duration_seconds", "From the first "
                                            "dial to an endpoint accepting, failed attempts included", labels=LABELS)
            for (mesh, service), figures in sorted(stats.destinations.items()):
                labels = [mesh, service]
                active.add_metric(labels, figures.active)
                for outcome, count in sorted(figures.outcomes.items()):
                    connections.add_metric([*labels, outcome], count)
                received.add_metric(labels, figures.received)
                sent.add_metric(labels, figures.sent)
                duration.add_metric(labels, buckets(figures.duration), figures.duration.total)
                connect.add_metric(labels, buckets(figures.connect), figures.connect.total)
            yield from (active, connections, received, sent, duration, connect)

    registry = CollectorRegistry()
    registry.register(Collector())
    return registry


def run_ingress(*, cp: str, token_file: Path, addr: str, advertise_addr: str | None, admin_addr: str,
                state_dir: Path, ca_file: Path | None = None, drain_timeout: float = 30.0) -> None:
    from dataplane.admin import serve_http
    from dataplane.ingress.router import IngressServer, resolve_service_sni
    from meshcast.wire.leanio import listen_tcp
    from zone_cp.config import split_host_port

    token = token_file.read_text().strip()
    if not token:
        raise click.BadParameter("the file is empty", param_hint="--token-file")
    try:
        host, port = split_host_port(addr, default_port=10001)
        admin_host, admin_port = split_host_port(admin_addr, default_port=9902)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if host in ("0.0.0.0", "::") and not advertise_addr:
        raise click.UsageError("listening on every address: say which one other zones reach with --advertise-addr")
    routes = IngressRoutes(state_dir)
    routes.load()
    server = IngressServer(host, port, resolve_service_sni(routes.endpoints))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                await nursery.start(server.run)
                advertise = advertise_addr or f"{host}:{server.port}"
                admin = listen_tcp(admin_host, admin_port)
                registry = ingress_registry(server.statistics)
                await nursery.start(serve_http, _admin_handler(routes, server, registry), admin)
                following = trio.CancelScope()

                async def follow() -> None:
                    with following:
                        await follow_control_plane(routes, cp.rstrip("/"), token, advertise, ca_file)

                nursery.start_soon(follow)
                gc.freeze()
                click.echo(f"zone ingress on {host}:{server.port} (advertised as {advertise}), admin on "
                           f"{admin_host}:{admin.getsockname()[1]}", err=True)
                async for signum in signals:
                    log.info("received %s: draining (up to %.0fs, %d connection(s) open)",
                             signal.Signals(signum).name, drain_timeout, server.active)
                    following.cancel()  # a poll would publish it again
                    async with trio.open_nursery() as draining:  # the leave and the drain side by side
                        draining.start_soon(leave, cp.rstrip("/"), token, advertise, ca_file)
                        draining.start_soon(server.drain, drain_timeout)
                    log.info("drained: stopping")
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        from meshcast.cli.run_zone import first_error

        refused = first_error(group, click.ClickException)
        if refused is None:
            raise
        raise refused from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen: {exc.strerror or exc}") from None
