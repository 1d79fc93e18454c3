"""The zone control plane's HTTP API (FastAPI on hypercorn's trio worker, HTTP/1.1 and HTTP/2).

A thin layer: it authenticates, decodes, calls `ZoneControlPlane`, and maps `MeshcastError`s to statuses with a
one-line JSON body `{"error": "...", "status": N}`. The config stream is a raw ASGI response because it is full
duplex: acknowledgements arrive on the request body while snapshots leave on the response body.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import trio
from fastapi import Body, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.types import Receive, Scope, Send

import meshcast
from meshcast.errors import Forbidden, MeshcastError, ValidationError, Violation
from meshcast.pki import INGRESS, ZONE
from meshcast.resources import Resource, lookup_type, parse_resource
from meshcast.resources.model import Scope as ResourceScope
from meshcast.wire.configstream import (
    CONTENT_TYPE,
    encode_message,
)
from meshcast.wire.duration import parse_duration
from zone_cp.control_plane import ZoneControlPlane

log = logging.getLogger("meshcast.zone_cp.api")


class TokenRequest(BaseModel):
    mesh: str = "default"
    services: list[str] = Field(min_length=1)
    valid_for: str = Field(default="24h", alias="validFor")


class ZoneTokenRequest(BaseModel):
    zone: str = ""
    valid_for: str = Field(default="720h", alias="validFor")


class CertificateRequest(BaseModel):
    csr: str
    service: str | None = None


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


def build_app(cp: ZoneControlPlane) -> FastAPI:
    app = FastAPI(
        title="Meshcast zone control plane",
        version=meshcast.__version__,
        description="Resources, dataplane registration, certificates and config streams of one zone.",
    )

    @app.exception_handler(MeshcastError)
    async def _meshcast_error(request: Request, exc: MeshcastError) -> JSONResponse:
        return _error(exc.http_status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return _error(400, f"{where or 'request'}: {first.get('msg', 'invalid')}")

    def _require_admin(request: Request) -> None:
        """Token issuing is an administrative act: loopback callers only, unless the operator allowed remote."""
        if cp.config.allow_remote_admin:
            return
        host = request.client.host if request.client else ""
        try:
            if ipaddress.ip_address(host).is_loopback:
                return
        except ValueError:
            pass
        raise Forbidden("administrative endpoints are available from loopback only (see --allow-remote-admin)")

    # --- index, health, metrics ------------------------------------------------------------------------------

    @app.get("/", summary="Product, version and zone of this control plane")
    async def index() -> dict[str, Any]:
        component = "global-cp" if cp.config.role == "global" else "zone-cp"
        return {"product": "meshcast", "component": component, "version": meshcast.__version__,
                "zone": cp.config.zone, "dataplanePort": cp.dp_port}

    def _config_stream(resource: Resource) -> dict[str, Any]:
        """Where the sidecar holds its config stream: the dataplane server's port, on the host it reached us at."""
        return {"port": cp.dp_port, "path": f"/v1/dataplanes/{resource.mesh}/{resource.name}/stream"}

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: the store was loaded once and the API serves")
    async def readyz() -> JSONResponse:
        body = {"ready": cp.ready, "store": "ok" if cp.store_ok else "unreachable (serving last known state)"}
        return JSONResponse(body, status_code=200 if cp.ready else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(cp.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # --- dataplanes (token-authenticated) ---------------------------------------------------------------------

    def _valid_for(text: str) -> timedelta:
        try:
            valid_for = parse_duration(text)
        except ValueError as exc:
            raise ValidationError("token request", [Violation("validFor", str(exc))]) from None
        if valid_for < timedelta(seconds=1):
            raise ValidationError("token request", [Violation("validFor", "must be at least 1s")])
        return valid_for

    @app.post("/v1/tokens/dataplane", summary="Issue a dataplane token (loopback callers only by default)")
    async def issue_token(request: Request, body: TokenRequest) -> dict[str, str]:
        _require_admin(request)
        return {"token": cp.issue_token(body.mesh, body.services, _valid_for(body.valid_for))}

    @app.post("/v1/tokens/ingress", summary="Issue a zone-ingress token for this zone (loopback callers only)")
    async def issue_ingress_token(request: Request, body: ZoneTokenRequest) -> dict[str, str]:
        _require_admin(request)
        return {"token": cp.issue_zone_token(INGRESS, "", _valid_for(body.valid_for))}

    @app.post("/v1/tokens/zone", summary="Issue a zone token (global control plane, loopback callers only)")
    async def issue_zone_token(request: Request, body: ZoneTokenRequest) -> dict[str, str]:
        _require_admin(request)
        if cp.config.role != "global":
            raise Forbidden("zone tokens are issued by the global control plane")
        if not body.zone:
            raise ValidationError("token request", [Violation("zone", "the zone to issue a token for is required")])
        return {"token": cp.issue_zone_token(ZONE, body.zone, _valid_for(body.valid_for))}

    @app.post("/v1/zones/join", summary="A zone CP exchanges its zone token for its global etcd credentials")
    async def join_zone(authorization: str | None = Header(default=None)) -> dict[str, Any]:
        if cp.config.role != "global":
            raise Forbidden("zones join the global control plane, not a zone")
        return await cp.join_zone(cp.verify_zone_token(authorization, ZONE))

    @app.get("/v1/ingress/endpoints", summary="Local endpoints for the zone ingress (long poll with ?after=)")
    async def ingress_endpoints(
        advertise: str, after: int | None = Query(default=None, ge=0),
        authorization: str | None = Header(default=None),
    ) -> dict[str, Any]:
        claims = cp.verify_zone_token(authorization, INGRESS)
        return await cp.ingress_endpoints(claims, advertise, after)

    @app.post("/v1/ingress/leave", summary="A draining zone ingress stops being published to other zones")
    async def ingress_leave(advertise: str, authorization: str | None = Header(default=None)) -> dict[str, Any]:
        claims = cp.verify_zone_token(authorization, INGRESS)
        return {"left": cp.ingress_leaving(claims, advertise)}

    @app.post("/v1/dataplanes/register", status_code=200, summary="Register (create or update) a Dataplane")
    async def register(
        doc: dict[str, Any] = Body(...), authorization: str | None = Header(default=None)
    ) -> JSONResponse:
        claims = cp.verify_token(authorization)
        applied = await cp.register(claims, doc)
        return JSONResponse(
            {"result": applied.result, "resource": applied.resource.to_dict(),
             "heartbeatInterval": cp.config.heartbeat_interval, "configStream": _config_stream(applied.resource)},
            status_code=201 if applied.result == "created" else 200,
        )

    @app.delete("/v1/dataplanes/{mesh}/{name}/registration", status_code=204, summary="Deregister a Dataplane")
    async def deregister(mesh: str, name: str, authorization: str | None = Header(default=None)) -> Response:
        claims = cp.verify_token(authorization)
        await cp.dataplane(claims, mesh, name)
        await cp.delete("Dataplane", name, mesh)
        return Response(status_code=204)

    @app.post("/v1/dataplanes/{mesh}/{name}/certificate", summary="Sign a workload certificate from a CSR")
    async def certificate(
        mesh: str, name: str, body: CertificateRequest, authorization: str | None = Header(default=None)
    ) -> dict[str, Any]:
        claims = cp.verify_token(authorization)
        return await cp.sign_certificate(claims, mesh, name, body.csr, body.service)

    @app.get("/v1/inspect/dataplanes", summary="Dataplanes with their health and config-stream status")
    async def inspect_dataplanes(mesh: str | None = None) -> list[dict[str, Any]]:
        return cp.inspect_dataplanes(mesh)

    @app.get("/v1/inspect/dataplanes/{mesh}/{name}",
             summary="One dataplane: its status and the policies in force there, with where each came from")
    async def inspect_dataplane(mesh: str, name: str) -> dict[str, Any]:
        return cp.inspect_dataplane(mesh, name)

    @app.get("/v1/inspect/zones", summary="Zones with their status (global control plane)")
    async def inspect_zones() -> list[dict[str, Any]]:
        if cp.zones is None:
            raise ValidationError("", [Violation("zones", "zones are tracked by the global control plane: "
                                                 "ask it (meshcast --cp <global CP URL> get zones)")])
        result: list[dict[str, Any]] = cp.zones.view()
        return result

    @app.get("/v1/inspect/services", summary="Services and the zones where they are available")
    async def inspect_services() -> list[dict[str, Any]]:
        if cp.zones is not None:
            result: list[dict[str, Any]] = cp.zones.services()
            return result
        zone = cp.config.zone or "local"
        return [{"mesh": mesh, "service": service, "zones": [{"zone": zone, **summary}]}
                for (mesh, service), summary in sorted(cp.inventory.services().items())]

    # --- resources --------------------------------------------------------------------------------------------

    @app.post("/v1/apply", summary="Create or update resources; all are validated before any is stored")
    async def apply(docs: list[dict[str, Any]] | dict[str, Any] = Body(...)) -> list[dict[str, Any]]:
        items = docs if isinstance(docs, list) else [docs]
        return [{"result": a.result, "resource": a.resource.to_dict()} for a in await cp.apply(items)]

    @app.get("/v1/watch", summary="Stream of resource changes after a revision (newline-delimited JSON)")
    async def watch(
        after: int | None = Query(default=None, ge=0), type: str | None = None, mesh: str | None = None
    ) -> StreamingResponse:
        type_name = lookup_type(type).name if type else None
        after_revision = after if after is not None else await cp.store.revision()

        async def events() -> AsyncIterator[bytes]:
            async with cp.store.watch(after_revision=after_revision, type=type_name, mesh=mesh) as stream:
                yield encode_message({"type": "watching", "after": after_revision})
                async for event in stream:
                    yield encode_message(
                        {"type": event.kind.value, "revision": event.revision, "resourceType": event.type,
                         "mesh": event.mesh, "name": event.name,
                         "resource": event.resource.to_dict() if event.resource else None}
                    )

        return StreamingResponse(events(), media_type=CONTENT_TYPE)

    @app.get("/v1/meshes/{mesh}/{plural}", summary="List resources of a type in a mesh")
    async def list_in_mesh(mesh: str, plural: str) -> dict[str, Any]:
        rtype = lookup_type(plural)
        listing = await cp.store.list(rtype.name, mesh=mesh)
        return {"items": [r.to_dict() for r in listing.items], "revision": listing.revision}

    @app.get("/v1/meshes/{mesh}/{plural}/{name}", summary="Get a resource in a mesh")
    async def get_in_mesh(mesh: str, plural: str, name: str) -> dict[str, Any]:
        rtype = _mesh_scoped(plural)
        return (await cp.store.get(rtype.name, name, mesh)).to_dict()

    @app.put("/v1/meshes/{mesh}/{plural}/{name}", summary="Create or update a resource in a mesh")
    async def put_in_mesh(
        mesh: str, plural: str, name: str, doc: dict[str, Any] = Body(...),
        if_match: str | None = Header(default=None),
    ) -> JSONResponse:
        rtype = _mesh_scoped(plural)
        return await _put(rtype.name, name, mesh, doc, if_match)

    @app.delete("/v1/meshes/{mesh}/{plural}/{name}", status_code=204, summary="Delete a resource in a mesh")
    async def delete_in_mesh(mesh: str, plural: str, name: str) -> Response:
        rtype = _mesh_scoped(plural)
        await cp.delete(rtype.name, name, mesh)
        return Response(status_code=204)

    @app.get("/v1/{plural}", summary="List resources of a type (every mesh, or ?mesh=)")
    async def list_all(plural: str, mesh: str | None = None) -> dict[str, Any]:
        rtype = lookup_type(plural)
        listing = await cp.store.list(rtype.name, mesh=mesh)
        return {"items": [r.to_dict() for r in listing.items], "revision": listing.revision}

    @app.get("/v1/{plural}/{name}", summary="Get a resource that is not inside a mesh (Mesh, Zone)")
    async def get_global(plural: str, name: str) -> dict[str, Any]:
        rtype = _global_scoped(plural)
        return (await cp.store.get(rtype.name, name)).to_dict()

    @app.put("/v1/{plural}/{name}", summary="Create or update a resource that is not inside a mesh")
    async def put_global(
        plural: str, name: str, doc: dict[str, Any] = Body(...), if_match: str | None = Header(default=None)
    ) -> JSONResponse:
        rtype = _global_scoped(plural)
        return await _put(rtype.name, name, "", doc, if_match)

    @app.delete("/v1/{plural}/{name}", status_code=204, summary="Delete a resource that is not inside a mesh")
    async def delete_global(plural: str, name: str) -> Response:
        rtype = _global_scoped(plural)
        await cp.delete(rtype.name, name, "")
        return Response(status_code=204)

    async def _put(type_name: str, name: str, mesh: str, doc: dict[str, Any], if_match: str | None) -> JSONResponse:
        doc = {**doc, "type": doc.get("type", type_name), "name": doc.get("name", name)}
        if mesh:
            doc.setdefault("mesh", mesh)
        for field, expected in (("type", type_name), ("name", name), ("mesh", mesh or None)):
            if expected is not None and doc.get(field) != expected:
                raise ValidationError(f"{type_name} {name}", [
                    Violation(field, f"{doc.get(field)!r} does not match the URL ({expected!r})")])
        resource: Resource = parse_resource(doc)
        cp.check_editable(resource.rtype, resource.describe())
        await cp._check_references(resource)
        applied = await cp.upsert(resource, if_version=if_match.strip('"') if if_match else None)
        return JSONResponse(applied.resource.to_dict(), status_code=201 if applied.result == "created" else 200)

    def _mesh_scoped(plural: str) -> Any:
        rtype = lookup_type(plural)
        if rtype.scope is not ResourceScope.MESH:
            raise ValidationError("", [Violation("type", f"{rtype.name} is not inside a mesh: use /v1/{rtype.plural}")])
        return rtype

    def _global_scoped(plural: str) -> Any:
        rtype = lookup_type(plural)
        if rtype.scope is not ResourceScope.GLOBAL:
            raise ValidationError("", [Violation(
                "type", f"{rtype.name} is inside a mesh: use /v1/meshes/<mesh>/{rtype.plural}/<name>")])
        return rtype

    return app


def _contain_connection_errors() -> None:
    """One client connection must never take the API down. hypercorn's trio server runs every connection in the
    listeners' nursery, so an exception from its protocol code (seen: a KeyError in its HTTP/2 handling for an event
    on a stream it had already dropped, when a sidecar's deregistration raced its own shutdown) ended the whole zone
    CP. Wrap its per-connection task: log such an error and close that connection only."""
    from hypercorn.trio import tcp_server

    if getattr(tcp_server.TCPServer.run, "_meshcast_contained", False):
        return
    original = tcp_server.TCPServer.run

    async def run(self: Any) -> None:
        try:
            await original(self)
        except Exception as exc:  # every error of one connection, logged, the server serving on
            log.warning("API connection failed in the HTTP server, closed alone: %r", exc)

    run._meshcast_contained = True  # type: ignore[attr-defined]
    tcp_server.TCPServer.run = run  # type: ignore[method-assign]


async def serve_api(
    cp: ZoneControlPlane, sock: socket.socket, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    _contain_connection_errors()
    config = HypercornConfig()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("meshcast.zone_cp.http")
    # hypercorn 0.18's trio server keeps a connection the client has closed until this idle timeout ends (its
    # read loop does not stop the idle task on EOF): 500 sidecars registering after a restart held 500 sockets in
    # CLOSE-WAIT for 75 s. Our clients (CLI, sidecars, ingress long polls) make one call per connection or keep it
    # busy, so a short idle timeout costs nothing.
    config.keep_alive_timeout = 5
    config.h2_max_concurrent_streams = 10_000
    if cp.config.tls_cert and cp.config.tls_key:
        config.certfile = str(cp.config.tls_cert)
        config.keyfile = str(cp.config.tls_key)
    config.graceful_timeout = 2
    app = _with_metrics(build_app(cp), cp)
    await serve(app, config, task_status=task_status)  # type: ignore[arg-type]


def _with_metrics(app: FastAPI, cp: ZoneControlPlane) -> Any:
    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        code = [500]

        async def send_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                code[0] = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            cp.metrics.api_requests.labels(method=scope["method"], route=template, code=str(code[0])).inc()

    return wrapped


__all__ = ["build_app", "serve_api"]
