"""A zone control plane's side of the federation: it mirrors the global resources and publishes its inventory.

Theory of operation. Two long-lived tasks, both indifferent to outages of the global side:

- `GlobalMirror` lists the global resources (the types that sync global-to-zones: meshes, zones, policies),
  reconciles the zone's own store to them (upsert what differs, delete what the global side no longer has), then
  follows the global watch from the listing's revision. After every change the global state is written to
  `<state_dir>/global-state.json`; at start-up that file is applied before the global side answers, so a zone CP
  restarted during a partition serves its last known global state. Local edits of these types are refused by the
  control plane (`ZoneControlPlane.check_editable`); the mirror writes through `upsert`, which does not check.
  A watch broken by an outage or a compaction ends in a fresh listing, which is a full reconcile: nothing lost, and
  upserts of unchanged content are no-ops, so nothing duplicated either.
- `ZonePublisher` keeps `zones/<zone>/info` and one key per (mesh, service) under one etcd lease, refreshed every
  third of its TTL and republished when the inventory changes (coalesced over `debounce` seconds). If the lease
  expired meanwhile (a partition longer than the TTL), a new lease is granted and everything is written again. On a
  clean shutdown the lease is revoked, so the zone goes offline at once instead of after the TTL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import trio

import meshcast
from meshcast.errors import MeshcastError, NotFound, StoreUnavailable, ValidationError
from meshcast.federation.keyspace import ZONES_PREFIX, ZoneState, info_key, parse_zones, service_key, zone_prefix
from meshcast.resources import Resource, lookup_type, parse_resource
from meshcast.resources.model import Scope, Sync
from meshcast.store import EventKind, WatchCompacted
from meshcast.store.etcd import EtcdStore
from zone_cp.config import split_host_port
from zone_cp.control_plane import ZoneControlPlane
from zone_cp.inventory import RemoteService
from zone_cp.zone_ca import ZoneCAs, csr_key, intermediate_key, parse_intermediate

log = logging.getLogger("meshcast.zone_cp.federation")

STATE_FILE = "global-state.json"
REMOTE_FILE = "remote-zones.json"
LIVENESS_INTERVAL = 1.0  # how often a following zone checks that the global etcd still answers
LIVENESS_TIMEOUT = 3.0  # a revision read slower than this counts as no answer


def synced(type_name: str) -> bool:
    """Whether resources of this type come from the global control plane."""
    try:
        return lookup_type(type_name).sync is Sync.GLOBAL_TO_ZONES
    except MeshcastError:
        return False


def _order(resources: Iterable[Resource]) -> list[Resource]:
    """Meshes and other global-scope resources before what lives inside a mesh."""
    return sorted(resources, key=lambda r: (lookup_type(r.type).scope is Scope.MESH, r.type, r.mesh, r.name))


class GlobalMirror:
    def __init__(self, cp: ZoneControlPlane, global_store: EtcdStore, state_dir: Path) -> None:
        self.cp = cp
        self.global_store = global_store
        self.path = state_dir / STATE_FILE
        self.state: dict[tuple[str, str, str], Resource] = {}
        self.revision = 0
        self.synced_once = False  # the global side answered since start
        self.live = False  # following the global state through a watch right now
        self.lost_at = time.monotonic()  # when it last stopped following (start: never followed yet)
        cp.metrics.global_sync_lag.set_function(lambda: 0.0 if self.live else time.monotonic() - self.lost_at)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        cached = self.load()
        if cached is not None:
            await self._reconcile(cached)
            log.info("applied the last known global state (%d resources) from %s", len(cached), self.path)
        task_status.started()
        backoff = 0.05
        while True:
            try:
                await self.global_store.connect()
                listing = await self.global_store.list()
                await self._reconcile([r for r in listing.items if synced(r.type)])
                self.revision = listing.revision
                self.cp.metrics.global_revision.set(self.revision)
                self.save()
                if not self.synced_once:
                    log.info("in sync with the global control plane (revision %d)", listing.revision)
                self.synced_once = True
                backoff = 0.05
                self.live = True
                async with self.global_store.watch(after_revision=listing.revision) as events, \
                        trio.open_nursery() as probing:
                    probing.start_soon(self._probe_liveness)
                    async for event in events:
                        if not synced(event.type):
                            continue
                        key = (event.type, event.mesh, event.name)
                        if event.kind is EventKind.DELETED:
                            self.state.pop(key, None)
                            await self._delete_local(event.type, event.name, event.mesh)
                        elif event.resource is not None:
                            self.state[key] = event.resource
                            await self.cp.upsert(event.resource)
                        self.revision = event.revision
                        self.cp.metrics.global_revision.set(self.revision)
                        self.save()
                    probing.cancel_scope.cancel()
            except WatchCompacted:
                log.warning("global history compacted under the watch; listing again")
                self.live, self.lost_at = False, time.monotonic()
            except StoreUnavailable as exc:
                log.warning("global store unavailable, serving the last known global state: %s", exc)
                if self.live:
                    self.live, self.lost_at = False, time.monotonic()
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _probe_liveness(self) -> None:
        """A watch stays open, silent, when etcd loses its quorum (the member it talks to is up but can serve no
        linearizable read): read the revision every LIVENESS_INTERVAL, and count the zone as not following the
        global state (sync lag growing from the last good read) while that read fails or takes too long."""
        last_ok = time.monotonic()
        while True:
            await trio.sleep(LIVENESS_INTERVAL)
            answered = False
            with trio.move_on_after(LIVENESS_TIMEOUT), contextlib.suppress(StoreUnavailable):
                await self.global_store.revision()
                answered = True
            if answered:
                last_ok = time.monotonic()
                if not self.live:
                    log.info("the global store answers again")
                    self.live = True
            elif self.live:
                log.warning("the global store does not answer: serving the last known global state")
                self.live, self.lost_at = False, last_ok

    async def _reconcile(self, resources: list[Resource]) -> None:
        """Make the zone's store hold exactly `resources` among the synced types."""
        wanted = {(r.type, r.mesh, r.name): r for r in resources}
        for resource in _order(wanted.values()):
            await self.cp.upsert(resource)
        local = await self.cp.store.list()
        stale = [r for r in local.items if synced(r.type) and (r.type, r.mesh, r.name) not in wanted]
        for resource in reversed(_order(stale)):
            await self._delete_local(resource.type, resource.name, resource.mesh)
        self.state = wanted

    async def _delete_local(self, type_name: str, name: str, mesh: str) -> None:
        with contextlib.suppress(NotFound):
            await self.cp.store.delete(type_name, name, mesh)

    def save(self) -> None:
        """Write the global state atomically (a crash leaves the previous file, never half of one)."""
        body = {"revision": self.revision, "resources": [r.to_dict() for r in _order(self.state.values())]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def load(self) -> list[Resource] | None:
        try:
            body = json.loads(self.path.read_text())
            return [parse_resource(doc) for doc in body["resources"] if synced(str(doc.get("type")))]
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            log.warning("ignoring the saved global state %s: %s", self.path, exc)
            return None


class ZonePublisher:
    def __init__(self, cp: ZoneControlPlane, global_store: EtcdStore, *, zone: str, ttl: int = 10,
                 debounce: float = 0.1) -> None:
        if ttl < 2:
            raise ValueError("the zone lease TTL must be at least 2 seconds")
        self.cp = cp
        self.store = global_store
        self.zone = zone
        self.ttl = ttl
        self.debounce = debounce
        self.lease: int | None = None
        self.published: dict[str, bytes] = {}

    def info(self) -> dict[str, Any]:
        config = self.cp.config
        host = config.api_addr.rsplit(":", 1)[0]
        ingresses = self.cp.live_ingresses()
        return {"zone": self.zone, "version": meshcast.__version__,
                "apiAddress": f"{host}:{self.cp.bound_port}", "dataplanePort": self.cp.dp_port,
                "ingressAddress": ingresses[0] if ingresses else None, "ingressAddresses": ingresses}

    def wanted(self) -> dict[str, bytes]:
        keys = {info_key(self.zone): json.dumps(self.info(), sort_keys=True).encode()}
        for (mesh, service), summary in self.cp.inventory.services().items():
            keys[service_key(self.zone, mesh, service)] = json.dumps(summary, sort_keys=True).encode()
        return keys

    async def run(self) -> None:
        backoff = 0.05
        try:
            while True:
                try:
                    await self._publish_forever()
                except StoreUnavailable as exc:
                    log.warning("cannot publish zone %s to the global store: %s", self.zone, exc)
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                else:
                    backoff = 0.05
        finally:
            await self._revoke()

    async def _publish_forever(self) -> None:
        """Returns when the lease is lost (a new one is then granted); raises StoreUnavailable."""
        await self.cp.warm.wait()  # a restarted zone CP publishes its inventory once its sidecars are back
        if self.lease is None:
            await self.store.connect()
            self.lease = await self.store.grant_lease(self.ttl)
            self.published = {}
            log.info("zone %s publishing on lease %x (TTL %ds)", self.zone, self.lease, self.ttl)
        refresh_at = trio.current_time() + self.ttl / 3
        while True:
            generation = self.cp.inventory.generation
            await self._sync_keys()
            with trio.move_on_at(refresh_at):
                await self.cp.wait_changed(generation)
                await trio.sleep(self.debounce)  # coalesce a burst of changes into one publication
            if trio.current_time() >= refresh_at:
                remaining = await self.store.refresh_lease(self.lease)
                if remaining <= 0:
                    log.warning("zone %s lease expired (partition longer than %ds): publishing again",
                                self.zone, self.ttl)
                    self.lease = None
                    return
                refresh_at = trio.current_time() + self.ttl / 3

    async def _sync_keys(self) -> None:
        assert self.lease is not None
        wanted = self.wanted()
        for key, value in wanted.items():
            if self.published.get(key) != value:
                await self.store.put_key(key, value, lease=self.lease)
                self.published[key] = value
        for key in [k for k in self.published if k not in wanted]:
            await self.store.delete_key(key)
            del self.published[key]

    async def _revoke(self) -> None:
        lease, self.lease = self.lease, None
        if lease is None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await self.store.revoke_lease(lease)
                log.info("zone %s: lease revoked, the zone is offline", self.zone)
            except StoreUnavailable:
                pass


class IntermediateExchange:
    """Gets each mesh's intermediate CA signed by the global root: publish the CSR, wait for the certificate."""

    def __init__(self, cp: ZoneControlPlane, global_store: EtcdStore, cas: ZoneCAs, *, zone: str,
                 interval: float = 0.5) -> None:
        self.cp = cp
        self.store = global_store
        self.cas = cas
        self.zone = zone
        self.interval = interval
        self._published: dict[str, bytes] = {}

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except StoreUnavailable as exc:
                log.debug("intermediate CA exchange: %s", exc)
            await trio.sleep(self.interval)

    async def step(self) -> None:
        waiting = []
        for mesh in [mesh for mesh, spec in self.cp.inventory.meshes.items() if spec.mtls_enabled]:
            if not self.cas.ready(mesh):
                waiting.append(mesh)
                continue
            self.cp.metrics.ca_expiry.labels(mesh=mesh, ca="intermediate").set(self.cas.get(mesh).not_after.timestamp())
            if self.cas.renew_due(mesh):
                waiting.append(mesh)
        if not waiting:
            return
        await self.store.connect()
        offered = await self.store.get_keys(zone_prefix(self.zone) + "ca/")
        for mesh in waiting:
            message = parse_intermediate(offered.get(intermediate_key(self.zone, mesh), b""))
            if message is not None and self.cas.install(mesh, message):
                continue
            csr = self.cas.csr(mesh)
            if self._published.get(mesh) != csr:
                await self.store.put_key(csr_key(self.zone, mesh), csr)
                self._published[mesh] = csr
                log.info("zone %s: asked the global control plane to sign its %sintermediate CA for mesh %s",
                         self.zone, "next " if self.cas.ready(mesh) else "", mesh)


class RemoteZones:
    """Follows what the other zones offer (their ingress and healthy services under `zones/`) and hands it to the
    inventory, which adds it to sidecars' endpoints. The last view is kept on disk (`remote-zones.json`), so a zone
    CP restarted while the global etcd is unreachable still sends cross-zone endpoints."""

    def __init__(self, cp: ZoneControlPlane, global_store: EtcdStore, state_dir: Path, *, zone: str,
                 interval: float = 1.0) -> None:
        self.cp = cp
        self.store = global_store
        self.zone = zone
        self.interval = interval
        self.path = state_dir / REMOTE_FILE

    async def run(self) -> None:
        saved = self.load()
        if saved is not None and self.cp.inventory.set_remote(saved):
            self.cp.changed()
        while True:
            try:
                await self.store.connect()
                remote = remote_offers(parse_zones(await self.store.get_keys(ZONES_PREFIX)), self.zone)
                if self.cp.inventory.set_remote(remote):
                    self.cp.changed()
                    self.save(remote)
            except StoreUnavailable as exc:
                log.debug("other zones' view unavailable, keeping the last one: %s", exc)
            await trio.sleep(self.interval)

    def save(self, remote: dict[tuple[str, str], list[RemoteService]]) -> None:
        body = [{"mesh": mesh, "service": service, **dataclasses.asdict(offer)}
                for (mesh, service), offers in sorted(remote.items()) for offer in offers]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=1))
        os.replace(tmp, self.path)

    def load(self) -> dict[tuple[str, str], list[RemoteService]] | None:
        try:
            body = json.loads(self.path.read_text())
            remote: dict[tuple[str, str], list[RemoteService]] = {}
            for item in body:
                offer = RemoteService(zone=str(item["zone"]), address=str(item["address"]), port=int(item["port"]),
                                      healthy=int(item["healthy"]), protocol=str(item["protocol"]))
                remote.setdefault((str(item["mesh"]), str(item["service"])), []).append(offer)
            return remote
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the saved view of other zones %s: %s", self.path, exc)
            return None


def ingress_addresses(info: dict[str, Any]) -> list[tuple[str, int]]:
    """Every ingress a zone publishes (`ingressAddresses`; a zone CP older than that list gives `ingressAddress`
    only), as (host, port); malformed entries are skipped."""
    listed = info.get("ingressAddresses")
    if not isinstance(listed, list):
        listed = [info.get("ingressAddress")]
    out = []
    for address in listed:
        if not isinstance(address, str) or not address:
            continue
        try:
            host, port = split_host_port(address, default_port=0)
        except ValueError:
            continue
        if port and (host, port) not in out:
            out.append((host, port))
    return out


def remote_offers(zones: dict[str, ZoneState], own_zone: str) -> dict[tuple[str, str], list[RemoteService]]:
    """What every other online zone with an ingress offers: services with healthy instances, by (mesh, service),
    one offer per ingress of the zone (callers spread over them and fail over between them at once, not when the
    zone stops publishing a dead one)."""
    remote: dict[tuple[str, str], list[RemoteService]] = {}
    for name in sorted(zones):
        state = zones[name]
        if name == own_zone or state.info is None:
            continue
        ingresses = ingress_addresses(state.info)
        if not ingresses:
            continue
        for (mesh, service), summary in sorted(state.services.items()):
            healthy = summary.get("healthy")
            if isinstance(healthy, int) and healthy > 0:
                remote.setdefault((mesh, service), []).extend(
                    RemoteService(zone=name, address=host, port=port, healthy=healthy,
                                  protocol=str(summary.get("protocol", "tcp"))) for host, port in ingresses)
    return remote
