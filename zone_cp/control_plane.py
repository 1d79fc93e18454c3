"""The zone control plane: its domain operations and the long-lived tasks behind them.

Theory of operation: `ZoneControlPlane.run` loads the store into the `Inventory` (list, then watch from the list's
revision; on `WatchCompacted` or a store outage it lists again, while the inventory keeps the last known state so
sidecars keep their config), sweeps heartbeats, and serves the HTTP API. Every config stream waits on
`wait_changed`, a broadcast of inventory generations, then recomputes its sidecar's snapshot and sends it only if its
digest changed. The API layer (`zone_cp.api`) is a thin translation of HTTP onto the methods here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import trio
from cryptography import x509
from prometheus_client import CollectorRegistry

from meshcast.errors import (
    AlreadyExists,
    Conflict,
    Forbidden,
    MeshcastError,
    NotFound,
    StoreUnavailable,
    ValidationError,
    Violation,
)
from meshcast.pki import INGRESS, MeshCA, TokenClaims, TokenIssuer
from meshcast.pki.spiffe import workload_tags
from meshcast.pki.tokens import KEY_FILE as TOKEN_KEY_FILE
from meshcast.policies.resolve import describe_caller
from meshcast.resources import Resource, Scope, lookup_type, parse_resource
from meshcast.resources.model import DEFAULT_MESH, ResourceType, Sync
from meshcast.resources.types import DataplaneSpec, MeshSpec, Mtls, ZoneSpec
from meshcast.store import MemoryStore, ResourceStore, WatchCompacted
from meshcast.wire.leanio import listen_tcp
from zone_cp.config import ZoneCPConfig, split_host_port
from zone_cp.health import HealthTracker
from zone_cp.inventory import DPKey, Inventory
from zone_cp.metrics import ZoneMetrics

log = logging.getLogger("meshcast.zone_cp")

RUN_MARKER = "control-plane.started"  # in the state directory: a start finding it is a restart
RESTART_WARMUP_INTERVALS = 2  # heartbeat intervals a restart on the memory store waits before pushing configs
INGRESS_TTL = 30.0  # an ingress that has not polled for this long is no longer published (it polls every <= 20 s)


@dataclass(frozen=True)
class Applied:
    resource: Resource
    result: str  # created | updated | unchanged


@dataclass
class StreamStatus:
    """What the control plane knows of one dataplane's config stream, for `inspect dataplanes`."""

    connected: int = 0
    sent_version: str | None = None
    acked_version: str | None = None
    last_error: str | None = None
    certificate_expiry: str | None = None


class CertificateAuthorities:
    """One builtin CA per mesh, kept in `<state_dir>/ca/<mesh>/` (key file 0600), created when first needed."""

    def __init__(self, state_dir: Path) -> None:
        self._dir = state_dir / "ca"
        self._cas: dict[str, MeshCA] = {}

    def get(self, mesh: str) -> MeshCA:
        ca = self._cas.get(mesh)
        if ca is None:
            path = self._dir / mesh
            if (path / "ca.key").exists():
                ca = MeshCA.load(path)
            else:
                ca = MeshCA.generate(mesh)
                ca.save(path)
                log.info("created the builtin CA of mesh %s", mesh)
            self._cas[mesh] = ca
        return ca


class ZoneControlPlane:
    """Owns the inventory, the health tracker, the CAs and the token issuer of one zone; serves its API."""

    def __init__(
        self, config: ZoneCPConfig, store: ResourceStore, *, registry: CollectorRegistry | None = None
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = ZoneMetrics(registry or CollectorRegistry())
        self.inventory = Inventory(zone=config.zone, heartbeat_interval=config.heartbeat_interval,
                                   policy_origin="global" if config.role == "zone" else "local")
        self.health = HealthTracker(timeout=config.heartbeat_timeout)
        self.cas: Any = CertificateAuthorities(config.state_dir)
        if config.role == "zone":  # intermediates signed by the mesh root at the global CP
            from zone_cp.zone_ca import ZoneCAs

            self.cas = ZoneCAs(config.state_dir, config.zone)
        self.tokens = _token_issuer(config.state_dir / "tokens")
        self.streams: dict[DPKey, StreamStatus] = {}
        self.ready = False
        self.store_ok = True
        self.bound_port: int | None = None
        self.dp_port: int | None = None
        self._changed = trio.Event()
        self._health_changed = trio.Event()
        self.ingresses: dict[str, float] = {}  # zone ingresses: advertised address -> when it last polled
        self.global_store: Any = None  # the federation's store (role zone or global)
        self.mirror: Any = None  # GlobalMirror (role zone)
        self.zones: Any = None  # ZoneTracker (role global)
        # Set once this process knows its zone's dataplanes: configs are pushed and the inventory published only
        # then (see `_warm_up`).
        self.warm = trio.Event()

    # --- lifetime ---------------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        from zone_cp.api import serve_api

        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        role = self.config.role
        if self.config.create_default_mesh and role != "zone":  # a federated zone gets its meshes from global
            await self._ensure_default_mesh()
        from zone_cp.dpserver import DataplaneServer

        sock = _bind(self.config.api_addr, default_port=5681)
        self.bound_port = sock.getsockname()[1]
        dp_sock = None
        if role != "global":
            dp_sock = _bind(self.config.dp_addr, default_port=5678)
            self.dp_port = dp_sock.getsockname()[1]
        restarted = self._note_start()
        async with contextlib.AsyncExitStack() as stack:
            self.global_store = await stack.enter_async_context(self._open_global_store())
            nursery = await stack.enter_async_context(trio.open_nursery())
            await nursery.start(self._sync_store)
            nursery.start_soon(self._warm_up, restarted)
            if dp_sock is not None:
                nursery.start_soon(self._sweep_health)
                await nursery.start(DataplaneServer(self, dp_sock, ssl_context=self._server_ssl_context()).run)
            await nursery.start(self._federate)
            await nursery.start(serve_api, self, sock)
            self.ready = True
            log.info("%s control plane serving on port %s", "global" if role == "global" else "zone",
                     self.bound_port)
            task_status.started(self.bound_port)

    def _note_start(self) -> bool:
        """Whether this state directory served a control plane before (then this start is a restart)."""
        marker = self.config.state_dir / RUN_MARKER
        restarted = marker.exists()
        marker.touch()
        return restarted

    async def _warm_up(self, restarted: bool) -> None:
        """A control plane restarted on the memory store knows none of its zone's dataplanes until each
        reconnects. Pushing configs (or publishing the zone's inventory) at once would hand the first sidecars to
        reconnect endpoint lists without the others: calls would fail over to other zones, or fail, for a moment.
        So, restarted on the memory store, it waits RESTART_WARMUP_INTERVALS heartbeat intervals (at most half the
        heartbeat timeout) before its first push; sidecars keep serving their last config meanwhile. On etcd
        the registrations survive the restart; on a first start there is nothing to wait for."""
        if restarted and isinstance(self.store, MemoryStore) and self.config.role != "global":
            wait = min(self.config.heartbeat_timeout / 2, RESTART_WARMUP_INTERVALS * self.config.heartbeat_interval)
            log.info("restarted on the memory store: waiting %.1fs for dataplanes to reconnect before pushing "
                     "configs", wait)
            await trio.sleep(wait)
        self.warm.set()

    @contextlib.asynccontextmanager
    async def _open_global_store(self) -> AsyncIterator[Any]:
        """The global keyspace: a zone's connection to it, or the global CP's own store (it is one)."""
        from meshcast.federation.keyspace import GLOBAL_PREFIX

        if self.config.role == "global":
            yield self.store
            return
        if self.config.role != "zone":
            yield None
            return
        from meshcast.store.etcd import EtcdStore

        user, password = self.config.global_etcd_user, self.config.global_etcd_password
        if self.config.zone_token and user is None:
            from zone_cp.join import join_global

            user, password = await join_global(self.config)
        # Not `open`: the zone starts (from its saved global state) even when the global side does not answer.
        store = EtcdStore(self.config.global_etcd, prefix=GLOBAL_PREFIX, username=user, password=password,
                          tls=self.config.global_etcd_tls)
        try:
            yield store
        finally:
            await store.aclose()

    async def _federate(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            if self.config.role == "zone":
                from zone_cp.federation import GlobalMirror, IntermediateExchange, RemoteZones, ZonePublisher

                self.mirror = GlobalMirror(self, self.global_store, self.config.state_dir)
                await nursery.start(self.mirror.run)
                nursery.start_soon(ZonePublisher(self, self.global_store, zone=self.config.zone,
                                                 ttl=self.config.zone_lease_ttl).run)
                nursery.start_soon(IntermediateExchange(self, self.global_store, self.cas,
                                                        zone=self.config.zone).run)
                nursery.start_soon(RemoteZones(self, self.global_store, self.config.state_dir,
                                               zone=self.config.zone).run)
            elif self.config.role == "global":
                from global_cp.zones import ZoneTracker

                self.zones = ZoneTracker(self)
                nursery.start_soon(self.zones.run)
            task_status.started()

    def check_editable(self, rtype: ResourceType, what: str) -> None:
        """Refuse edits that belong to the other side of the federation (as Kuma does)."""
        if self.config.role == "zone" and rtype.sync is Sync.GLOBAL_TO_ZONES:
            raise Forbidden(f"{what} is managed by the global control plane: apply it there "
                            f"(this zone, {self.config.zone}, receives it from there)")
        if self.config.role == "global" and rtype.sync is Sync.LOCAL:
            raise Forbidden(f"{what} belongs to a zone: register dataplanes with their zone control plane")

    def _server_ssl_context(self) -> ssl.SSLContext | None:
        if not (self.config.tls_cert and self.config.tls_key):
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.config.tls_cert, self.config.tls_key)
        return context

    def stream_status(self, key: DPKey) -> StreamStatus:
        return self.streams.setdefault(key, StreamStatus())

    async def _ensure_default_mesh(self) -> None:
        spec = MeshSpec(mtls=Mtls(enabled=True, backend="builtin"))
        for attempt in range(50):
            try:
                await self.store.create(Resource(type="Mesh", name=DEFAULT_MESH, spec=spec))
                log.info("created mesh %s with builtin mTLS", DEFAULT_MESH)
                return
            except AlreadyExists:
                return
            except StoreUnavailable:
                await trio.sleep(min(0.1 * 2**attempt, 2.0))
        raise StoreUnavailable("could not create the default mesh: the store stayed unreachable")

    async def _sync_store(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Mirror the store into the inventory forever; keep the last state while the store is unreachable."""
        started = False
        backoff = 0.05
        while True:
            try:
                listing = await self.store.list()
                self.inventory.reset(listing.items)
                self._sync_health_with_inventory()
                self._notify()
                self.store_ok = True
                if not started:
                    started = True
                    task_status.started()
                backoff = 0.05
                async with self.store.watch(after_revision=listing.revision) as events:
                    async for event in events:
                        if self.inventory.apply(event):
                            self._sync_health_with_inventory()
                            self._notify()
            except WatchCompacted:
                log.warning("store history compacted under the watch; listing again")
            except StoreUnavailable as exc:
                self.store_ok = False
                self.metrics.store_errors.inc()
                log.warning("store unavailable, serving the last known state: %s", exc)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _sync_health_with_inventory(self) -> None:
        now = trio.current_time()
        for key in self.inventory.dataplanes:
            if key not in self.health.last_seen:
                # A dataplane the store knows but this process has not heard from (e.g. after a restart of the
                # control plane) gets one full timeout to reconnect before it leaves the endpoint lists.
                self.health.seen(key, now)
                self.inventory.set_healthy(key, True)
        for key in list(self.health.last_seen):
            if key not in self.inventory.dataplanes:
                self.health.forget(key)
                self.inventory.set_healthy(key, False)
        self.metrics.healthy.set(len(self.health.alive))

    async def _sweep_health(self) -> None:
        while True:
            deadline = self.health.next_deadline()
            with trio.move_on_at(deadline + 0.01 if deadline is not None else math.inf):
                await self._health_changed.wait()
            expired = self.health.sweep(trio.current_time())
            for key in expired:
                log.info("dataplane %s/%s silent for %.0fs: removed from endpoints", *key, self.health.timeout)
                self.inventory.set_healthy(key, False)
            if expired:
                self.metrics.healthy.set(len(self.health.alive))
                self._notify()

    def heard_from(self, key: DPKey) -> None:
        if self.health.seen(key, trio.current_time()):
            self.inventory.set_healthy(key, True)
            self.metrics.healthy.set(len(self.health.alive))
            self._health_changed.set()
            self._health_changed = trio.Event()
            self._notify()

    # --- zone ingress -----------------------------------------------------------------------------------------

    def live_ingresses(self) -> list[str]:
        """Addresses of the ingresses that polled within INGRESS_TTL (what the zone publishes to other zones)."""
        now = trio.current_time()
        return sorted(address for address, seen in self.ingresses.items() if now - seen < INGRESS_TTL)

    def ingress_polled(self, address: str) -> None:
        fresh = address not in self.live_ingresses()
        self.ingresses[address] = trio.current_time()
        if fresh:
            log.info("zone ingress %s is serving", address)
            self.inventory.touch()
            self._notify()

    async def ingress_endpoints(self, claims: TokenClaims, address: str, after: int | None,
                                wait: float = 20.0) -> dict[str, Any]:
        """The local endpoints an ingress routes to; long-polls up to `wait` seconds for a generation other than
        `after`. Raises Forbidden for an ingress token of another zone."""
        if claims.zone != self.config.zone:
            raise Forbidden(f"the ingress token is for zone {claims.zone!r}, this is zone {self.config.zone!r}")
        try:
            split_host_port(address, default_port=0)
        except ValueError as exc:
            raise ValidationError("ingress", [Violation("advertise", str(exc))]) from None
        self.ingress_polled(address)
        if after is not None and after == self.inventory.generation:
            with trio.move_on_after(wait):
                await self.wait_changed(after)
        if address in self.ingresses:  # not if it said it is leaving meanwhile
            self.ingresses[address] = trio.current_time()
        return {"generation": self.inventory.generation, "zone": self.config.zone,
                "endpoints": self.inventory.local_endpoints()}

    def ingress_leaving(self, claims: TokenClaims, address: str) -> bool:
        """A draining ingress: no longer published to other zones (their sidecars stop calling it within a second
        or two) rather than INGRESS_TTL after its last poll. False if it was not published."""
        if claims.zone != self.config.zone:
            raise Forbidden(f"the ingress token is for zone {claims.zone!r}, this is zone {self.config.zone!r}")
        if self.ingresses.pop(address, None) is None:
            return False
        log.info("zone ingress %s is leaving: no longer published", address)
        self.inventory.touch()
        self._notify()
        return True

    def changed(self) -> None:
        """The inventory changed outside the store (federation): sidecars recompute their snapshots."""
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self, seen_generation: int) -> None:
        while self.inventory.generation == seen_generation:
            await self._changed.wait()

    # --- resources ----------------------------------------------------------------------------------------------

    async def apply(self, docs: list[Any]) -> list[Applied]:
        """Validate every document first (all or nothing), then create or update each."""
        resources = []
        for index, doc in enumerate(docs):
            try:
                resources.append(parse_resource(doc))
            except ValidationError as exc:
                subject = exc.subject or f"document {index + 1}"
                raise ValidationError(subject, exc.violations) from None
        for resource in resources:
            self.check_editable(resource.rtype, resource.describe())
            await self._check_references(resource)
        return [await self.upsert(resource) for resource in resources]

    async def upsert(self, resource: Resource, *, if_version: str | None = None) -> Applied:
        for _ in range(10):
            try:
                current = await self.store.get(resource.type, resource.name, resource.mesh)
            except NotFound:
                if if_version is not None:
                    raise
                try:
                    return Applied(await self.store.create(resource), "created")
                except AlreadyExists:
                    continue
            if if_version is not None and current.version != if_version:
                raise Conflict(f"{resource.describe()} is at version {current.version}, not {if_version}")
            if current.same_content(resource):
                return Applied(current, "unchanged")
            try:
                updated = Resource(
                    type=resource.type, name=resource.name, mesh=resource.mesh, spec=resource.spec,
                    labels=resource.labels, version=current.version,
                )
                return Applied(await self.store.update(updated), "updated")
            except Conflict:
                if if_version is not None:
                    raise
                continue
        raise Conflict(f"{resource.describe()} keeps changing; try again")

    async def _check_references(self, resource: Resource) -> None:
        if resource.rtype.scope is Scope.MESH:
            try:
                await self.store.get("Mesh", resource.mesh)
            except NotFound:
                raise NotFound(f"{resource.describe()}: mesh {resource.mesh!r} does not exist") from None

    async def delete(self, type_name: str, name: str, mesh: str) -> None:
        rtype = lookup_type(type_name)
        self.check_editable(rtype, f"{rtype.name} {name}")
        if rtype.name == "Mesh":
            for other in _mesh_scoped_types():
                listing = await self.store.list(other, mesh=name)
                if listing.items:
                    raise Conflict(
                        f"mesh {name} still has {len(listing.items)} {other} resource(s): delete them first"
                    )
        await self.store.delete(rtype.name, name, mesh if rtype.scope is Scope.MESH else "")

    # --- dataplanes -------------------------------------------------------------------------------------------

    def verify_token(self, authorization: str | None) -> TokenClaims:
        from meshcast.errors import Unauthorized

        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized("missing dataplane token: send 'Authorization: Bearer <token>'")
        return self.tokens.verify(authorization[7:].strip())

    async def register(self, claims: TokenClaims, doc: Mapping[str, Any]) -> Applied:
        resource = parse_resource(doc)
        if resource.type != "Dataplane":
            raise ValidationError(resource.describe(), [Violation("type", "only a Dataplane can register")])
        self._authorize(claims, resource)
        await self._check_references(resource)
        try:
            existing = await self.store.get("Dataplane", resource.name, resource.mesh)
        except NotFound:
            existing = None
        if existing is not None:
            # A token may not take over the name of another service's dataplane.
            self._authorize(claims, existing)
        applied = await self.upsert(resource)
        self.metrics.registrations.labels(result=applied.result).inc()
        self.heard_from((resource.mesh, resource.name))
        return applied

    @staticmethod
    def _authorize(claims: TokenClaims, resource: Resource) -> None:
        spec = resource.spec
        assert isinstance(spec, DataplaneSpec)
        if claims.mesh != resource.mesh:
            raise Forbidden(f"the token is for mesh {claims.mesh!r}, not {resource.mesh!r}")
        for service in spec.services:
            if not claims.allows(resource.mesh, service):
                allowed = ", ".join(claims.services)
                raise Forbidden(f"the token does not allow service {service!r} (it allows: {allowed})")

    async def dataplane(self, claims: TokenClaims, mesh: str, name: str) -> Resource:
        try:
            resource = await self.store.get("Dataplane", name, mesh)
        except NotFound:
            raise NotFound(f"dataplane {mesh}/{name} is not registered") from None
        self._authorize(claims, resource)
        return resource

    async def sign_certificate(
        self, claims: TokenClaims, mesh: str, name: str, csr_pem: str, service: str | None
    ) -> dict[str, Any]:
        resource = await self.dataplane(claims, mesh, name)
        spec = resource.spec
        assert isinstance(spec, DataplaneSpec)
        service = service or spec.services[0]
        if service not in spec.services:
            raise Forbidden(f"dataplane {mesh}/{name} does not serve {service!r}")
        mesh_spec = self.inventory.meshes.get(mesh)
        if mesh_spec is None:
            mesh_resource = await self.store.get("Mesh", mesh)
            assert isinstance(mesh_resource.spec, MeshSpec)
            mesh_spec = mesh_resource.spec
        if not mesh_spec.mtls_enabled:
            raise Conflict(f"mesh {mesh} has mTLS disabled: no certificate to issue")
        ca = self.cas.get(mesh)
        # The caller's tags, as receiving sidecars will select it by (`from` MeshSubset): from the stored Dataplane
        # only, never from the CSR, whose names are ignored.
        tags = workload_tags((i.tags for i in spec.inbound if i.service == service), self.config.zone)
        chain = ca.sign_workload_csr(csr_pem.encode(), service=service, mesh=mesh, ttl=mesh_spec.cert_ttl,
                                     tags=tags)
        self.metrics.certificates.labels(mesh=mesh).inc()
        self.heard_from((mesh, name))
        status = self.streams.setdefault((mesh, name), StreamStatus())
        leaf = x509.load_pem_x509_certificate(chain)
        status.certificate_expiry = leaf.not_valid_after_utc.isoformat().replace("+00:00", "Z")
        return {
            "certificate": chain.decode(),
            "trustBundle": ca.trust_bundle().decode(),
            "spiffeId": f"spiffe://{mesh}/{service}",
            "tags": tags,
            "expiresAt": status.certificate_expiry,
        }

    def issue_token(self, mesh: str, services: list[str], valid_for: timedelta) -> str:
        return self.tokens.issue(mesh=mesh, services=services, valid_for=valid_for)

    def issue_zone_token(self, kind: str, zone: str, valid_for: timedelta) -> str:
        """An ingress token for this zone (zone CP), or a zone token for `zone` (global CP)."""
        if kind == INGRESS and not self.config.zone:
            raise Conflict("this control plane has no zone name (--zone): it cannot have a zone ingress")
        return self.tokens.issue_zone(zone or self.config.zone, valid_for, kind)

    async def join_zone(self, claims: TokenClaims) -> dict[str, Any]:
        """A zone CP joins with its zone token: the etcd credentials of its own user in the global etcd, created
        (or converged) here, allowed to write only its zone's prefix. None when the global etcd runs without auth."""
        from meshcast.store.etcd_auth import ensure_zone_user, zone_user

        try:
            zone = await self.store.get("Zone", claims.zone)
            if isinstance(zone.spec, ZoneSpec) and not zone.spec.enabled:
                raise Forbidden(f"zone {claims.zone} is disabled")
        except NotFound:
            pass
        if self.config.etcd_user is None or self.config.etcd_password is None:
            log.info("zone %s joined (the global etcd has no authentication: no credentials)", claims.zone)
            return {"zone": claims.zone, "etcdUser": None, "etcdPassword": None}
        password = self._zone_password(claims.zone)
        await ensure_zone_user(self.config.etcd_endpoints, self.config.etcd_user, self.config.etcd_password,
                               claims.zone, password, tls=self.config.etcd_tls)
        log.info("zone %s joined with etcd user %s", claims.zone, zone_user(claims.zone))
        return {"zone": claims.zone, "etcdUser": zone_user(claims.zone), "etcdPassword": password}

    def _zone_password(self, zone: str) -> str:
        """A zone's etcd password: derived from a secret of the global CP, so joining again changes nothing."""
        import base64
        import hashlib
        import hmac
        import secrets

        from meshcast.pki import _files

        path = self.config.state_dir / "zone-credentials.key"
        if not path.exists():
            _files.ensure_dir(path.parent)
            _files.write_private(path, secrets.token_bytes(32))
        digest = hmac.new(path.read_bytes(), f"meshcast zone {zone}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def verify_zone_token(self, authorization: str | None, kind: str) -> TokenClaims:
        from meshcast.errors import Unauthorized

        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized(f"missing {kind} token: send 'Authorization: Bearer <token>'")
        return self.tokens.verify(authorization[7:].strip(), kind=kind)

    def inspect_dataplanes(self, mesh: str | None = None) -> list[dict[str, Any]]:
        now = trio.current_time()
        out = []
        for (dp_mesh, name), resource in sorted(self.inventory.dataplanes.items()):
            if mesh is not None and dp_mesh != mesh:
                continue
            spec = resource.spec
            assert isinstance(spec, DataplaneSpec)
            status = self.streams.get((dp_mesh, name), StreamStatus())
            seen = self.health.last_seen.get((dp_mesh, name))
            out.append(
                {
                    "mesh": dp_mesh,
                    "name": name,
                    "address": spec.address,
                    "services": spec.services,
                    "status": "online" if (dp_mesh, name) in self.health.alive else "offline",
                    "lastSeenSecondsAgo": None if seen is None else round(now - seen, 1),
                    "connected": status.connected > 0,
                    "sentVersion": status.sent_version,
                    "ackedVersion": status.acked_version,
                    "lastError": status.last_error,
                    "certificateExpiry": status.certificate_expiry,
                }
            )
        return out

    def inspect_dataplane(self, mesh: str, name: str) -> dict[str, Any]:
        """One dataplane: its status and the policies in force there, each with the policies it came from."""
        effective = self.inventory.effective(mesh, name)
        found = [dp for dp in self.inspect_dataplanes(mesh) if dp["name"] == name]
        if effective is None or not found:
            raise NotFound(f"dataplane {mesh}/{name} is not registered")
        rows = []
        for where, confs in [*(("outbound " + s, c) for s, c in sorted(effective.outbound.items())),
                             *(("inbound " + s, c) for s, c in sorted(effective.inbound.items()))]:
            for kind, conf in confs.items():
                if where.startswith("inbound") and isinstance(conf, list):  # from items with subsets: not merged
                    sources = effective.sources.get(f"{where} {kind}", [])
                    for item, source in zip(conf, sources, strict=True):
                        rows.append({"where": f"{where} from {describe_caller(item['from'])}", "kind": kind,
                                     "settings": item["default"], "from": [source]})
                elif where.startswith("inbound"):
                    for caller, settings in conf.items():
                        rows.append({"where": f"{where} from {caller}", "kind": kind, "settings": settings,
                                     "from": effective.sources.get(f"{where} {kind} from {caller}", [])})
                else:
                    rows.append({"where": where, "kind": kind, "settings": conf,
                                 "from": effective.sources.get(f"{where} {kind}", [])})
        for kind, conf in effective.proxy.items():
            rows.append({"where": "proxy", "kind": kind, "settings": conf,
                         "from": effective.sources.get(f"proxy {kind}", [])})
        return {**found[0], "policies": rows}


def _token_issuer(directory: Path) -> TokenIssuer:
    """The zone's dataplane-token signing key, created (0600) on first start and kept across restarts."""
    if (directory / TOKEN_KEY_FILE).exists():
        return TokenIssuer.load(directory)
    issuer = TokenIssuer.generate()
    issuer.save(directory)
    return issuer


def _mesh_scoped_types() -> list[str]:
    from meshcast.resources import resource_types

    return [t.name for t in resource_types() if t.scope is Scope.MESH]


def _bind(addr: str, *, default_port: int) -> socket.socket:
    host, port = split_host_port(addr, default_port=default_port)
    try:
        sock = listen_tcp(host, port)
    except OSError as exc:
        raise MeshcastError(f"cannot listen on {addr}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock
