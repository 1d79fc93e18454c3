"""The core resource types: Mesh, Dataplane, Zone, MeshGateway. Policies live in `meshcast.policies`."""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer

from meshcast.errors import Violation
from meshcast.resources.model import DNS_LABEL, Resource, ResourceType, Scope, Spec, Sync, register
from meshcast.wire.duration import format_duration, parse_duration

_HOSTNAME = re.compile(r"(?=.{1,253}$)([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*")
_TAG_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?")
_TAG_VALUE = re.compile(r"[A-Za-z0-9._:/-]{1,253}")
_PORT_MIN, _PORT_MAX = 1, 65535


@dataclass(frozen=True)
class Shown:
    """How the reference (`meshcast.resources.reference`) words a type whose rule lives in a validator function,
    which no schema shows: `words` replaces the type's name, `bounds` is added to the field's bounds. Pydantic ignores
    this metadata: it only documents; the validator beside it checks (both read the same constants)."""

    words: str = ""
    bounds: str = ""


def _port(value: int) -> int:
    if not _PORT_MIN <= value <= _PORT_MAX:
        raise ValueError(f"must be between {_PORT_MIN} and {_PORT_MAX}")
    return value


def _label(value: str) -> str:
    if not DNS_LABEL.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid name: use 1-63 lowercase letters, digits or '-'")
    return value


def _address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(value):
        raise ValueError(f"{value!r} is not an IP address or a hostname")
    return value


def _tags(value: dict[str, str]) -> dict[str, str]:
    for key, tag in value.items():
        if not _TAG_KEY.fullmatch(key):
            raise ValueError(f"tag key {key!r} is invalid: letters, digits and . _ / - (at most 63)")
        if not _TAG_VALUE.fullmatch(tag):
            raise ValueError(f"tag {key!r} has invalid value {tag!r}: letters, digits and . _ : / - (1-253)")
    return value


def _duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a duration string such as 30s, 5m or 24h")
    return parse_duration(value)


Port = Annotated[int, AfterValidator(_port), Shown(bounds=f"min {_PORT_MIN}, max {_PORT_MAX}")]
Name = Annotated[str, AfterValidator(_label), Shown(words="name (DNS label)")]
Address = Annotated[str, AfterValidator(_address), Shown(words="IP address or hostname")]
Tags = Annotated[dict[str, str], AfterValidator(_tags)]
Duration = Annotated[timedelta, BeforeValidator(_duration), PlainSerializer(format_duration, return_type=str)]
AppProtocol = Literal["http", "http2", "grpc", "tcp"]


def _bounded(lo: timedelta, hi: timedelta) -> AfterValidator:
    def check(value: timedelta) -> timedelta:
        if not lo <= value <= hi:
            raise ValueError(f"must be between {format_duration(lo)} and {format_duration(hi)}")
        return value

    return AfterValidator(check)


_CERT_TTL_MIN, _CERT_TTL_MAX = timedelta(seconds=10), timedelta(days=365)


# --- Mesh -----------------------------------------------------------------------------------------------------


class Mtls(Spec):
    """Mutual TLS between the mesh's sidecars. Present means on unless `enabled: false`."""

    enabled: bool = Field(default=True, description="`false` turns mTLS off without deleting the settings")
    backend: Literal["builtin"] = Field(
        default="builtin",
        description="the certificate authority: a CA per mesh (ECDSA P-256) kept by the control plane",
    )
    cert_ttl: Annotated[
        Duration,
        _bounded(_CERT_TTL_MIN, _CERT_TTL_MAX),
        Shown(bounds=f"min {format_duration(_CERT_TTL_MIN)}, max {format_duration(_CERT_TTL_MAX)}"),
    ] = Field(
        default=timedelta(hours=24), alias="certTTL",
        description="lifetime of the workload certificates; sidecars renew theirs at two thirds of it",
    )


class MeshSpec(Spec):
    mtls: Mtls | None = Field(default=None, description="mutual TLS between the mesh's sidecars; absent: mTLS off")

    @property
    def mtls_enabled(self) -> bool:
        return self.mtls is not None and self.mtls.enabled

    @property
    def cert_ttl(self) -> timedelta:
        return self.mtls.cert_ttl if self.mtls is not None else timedelta(hours=24)


MESH = register(
    ResourceType(
        name="Mesh", plural="meshes", spec=MeshSpec, scope=Scope.GLOBAL, sync=Sync.GLOBAL_TO_ZONES,
        summary="a mesh: its mTLS settings and certificate authority",
    )
)


# --- Dataplane ------------------------------------------------------------------------------------------------


class Inbound(Spec):
    """A service instance behind the sidecar: the sidecar listens on `port` and forwards to `appPort`."""

    port: Port = Field(description="the sidecar's port for this inbound (mTLS); unique per dataplane")
    app_port: Port | None = Field(default=None, description="the application's port on `appAddress`; absent: `port`")
    app_address: Address = Field(default="127.0.0.1", description="where the application listens")
    service: Name = Field(description="the service name; its SPIFFE ID is `spiffe://<mesh>/<service>`")
    protocol: AppProtocol = Field(default="tcp", description="the application protocol")
    tags: Tags = Field(
        default_factory=dict,
        description="e.g. `version: v2`; keys: letters, digits and `._/-` (at most 63), values: letters, digits and "
        "`._:/-` (1-253); the control plane adds `service` (and `zone`)",
    )

    @property
    def target_port(self) -> int:
        return self.app_port if self.app_port is not None else self.port


class Outbound(Spec):
    """An upstream service the app calls through a local port of its sidecar."""

    port: Port = Field(description="the sidecar's local port for this upstream; unique per dataplane")
    service: Name = Field(description="the upstream service")
    address: Address = Field(default="127.0.0.1", description="the local address of that listener")


class HttpProxy(Spec):
    """An HTTP proxy listener for the app: `Host: <service>.mesh` selects the upstream service."""

    port: Port = Field(description="the local port of the proxy listener")
    address: Address = Field(default="127.0.0.1", description="the local address of the proxy listener")


class DataplaneSpec(Spec):
    address: Address = Field(description="where other sidecars reach this one")
    inbound: list[Inbound] = Field(
        default_factory=list, description="the service instances behind the sidecar; at least one unless `gateway`"
    )
    outbound: list[Outbound] = Field(
        default_factory=list, description="upstream services the application calls through local ports"
    )
    http_proxy: HttpProxy | None = Field(
        default=None,
        description="an HTTP proxy listener for the app: `Host: <service>.mesh` selects the upstream service; "
        "absent: none",
    )
    gateway: Name | None = Field(
        default=None, description="this dataplane is the edge gateway serving the MeshGateway of that name"
    )

    @property
    def services(self) -> list[str]:
        """The identities this dataplane serves: its inbounds' services, and a gateway's own name."""
        return sorted({i.service for i in self.inbound} | ({self.gateway} if self.gateway else set()))


def _check_dataplane(resource: Resource) -> Iterable[Violation]:
    spec = resource.spec
    assert isinstance(spec, DataplaneSpec)
    if not spec.inbound and spec.gateway is None:
        yield Violation("spec.inbound", "at least one inbound is needed (or spec.gateway for an edge gateway)")
    seen = Counter((spec.address, i.port) for i in spec.inbound)
    for idx, inbound in enumerate(spec.inbound):
        if seen[(spec.address, inbound.port)] > 1:
            yield Violation(f"spec.inbound[{idx}].port", f"port {inbound.port} is used by another inbound")
    out_ports = Counter((o.address, o.port) for o in spec.outbound)
    in_ports = {i.port for i in spec.inbound}
    for idx, outbound in enumerate(spec.outbound):
        if out_ports[(outbound.address, outbound.port)] > 1:
            yield Violation(f"spec.outbound[{idx}].port", f"port {outbound.port} is used by another outbound")
        elif outbound.port in in_ports and outbound.address == spec.address:
            yield Violation(f"spec.outbound[{idx}].port", f"port {outbound.port} is already an inbound port")
    proxy = spec.http_proxy
    if proxy is not None and ((proxy.address, proxy.port) in out_ports or
                              (proxy.address == spec.address and proxy.port in in_ports)):
        yield Violation("spec.httpProxy.port", f"port {proxy.port} is already used by an inbound or outbound")


DATAPLANE = register(
    ResourceType(
        name="Dataplane", plural="dataplanes", spec=DataplaneSpec, scope=Scope.MESH, sync=Sync.LOCAL,
        aliases=("dp", "dps"), check=_check_dataplane,
        summary="a sidecar and the service instances behind it",
    )
)


# --- Zone -----------------------------------------------------------------------------------------------------


class ZoneSpec(Spec):
    enabled: bool = Field(
        default=True, description="a disabled zone cannot join (its zone token is refused) and gets no intermediate CA"
    )


ZONE = register(
    ResourceType(
        name="Zone", plural="zones", spec=ZoneSpec, scope=Scope.GLOBAL, sync=Sync.GLOBAL_TO_ZONES,
        summary="a region with its own zone control plane",
    )
)


# --- MeshGateway ----------------------------------------------------------------------------------------------

_HOST_PATTERN = re.compile(r"(\*\.)?" + _HOSTNAME.pattern[len("(?=.{1,253}$)"):])


def _host_pattern(value: str) -> str:
    if value != "*" and not _HOST_PATTERN.fullmatch(value):
        raise ValueError(f"{value!r} is not a host name, '*.<domain>' or '*' (lowercase)")
    return value


HostPattern = Annotated[str, AfterValidator(_host_pattern), Shown(words="host pattern (`a.example`, `*.example`, `*`)")]


def _path_prefix(value: str) -> str:
    if not value.startswith("/") or any(c in value for c in " ?#\t\r\n"):
        raise ValueError(f"{value!r} is not a path prefix: it starts with '/' and has no space, '?' or '#'")
    return value


class GatewayCertificate(Spec):
    """A certificate chain and its key, from files on the gateway's host, served to clients naming one of `hosts`."""

    hosts: Annotated[list[HostPattern], Field(min_length=1)] = Field(
        description="the names (SNI) this certificate serves"
    )
    cert_file: str = Field(description="path of the PEM certificate chain (leaf first) on the gateway's host")
    key_file: str = Field(description="path of the PEM private key on the gateway's host")


class GatewayTls(Spec):
    certificates: Annotated[list[GatewayCertificate], Field(min_length=1)] = Field(
        description="the first whose `hosts` match the client's SNI is served; no match or no SNI: the first"
    )


class GatewayListener(Spec):
    port: Port = Field(description="one listener per address and port")
    address: Address = Field(default="0.0.0.0", description="the region's anycast address, or every address")
    protocol: Literal["http", "https"] = Field(
        default="http", description="`https` terminates TLS here (HTTP/1.1 and HTTP/2 by ALPN)"
    )
    tls: GatewayTls | None = Field(default=None, description="required with `https`, refused with `http`")


class RouteMatch(Spec):
    hosts: list[HostPattern] = Field(
        default_factory=list,
        description="the request's host (without port) against exact names, `*.domain` (one or more labels under "
        "it) or `*`; empty: any host",
    )
    path_prefix: Annotated[str, AfterValidator(_path_prefix), Shown(words="path prefix (starts with `/`)")] = Field(
        default="/",
        description="whole segments: `/api` matches `/api` and `/api/x`, not `/apix`; the query is ignored",
    )
    methods: list[Literal["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]] = Field(
        default_factory=list, description="empty: any method"
    )
    headers: Annotated[dict[str, str], AfterValidator(_tags)] = Field(
        default_factory=dict, description="exact values by lowercase header name; every one listed must be present"
    )


class GatewayRoute(Spec):
    match: RouteMatch = Field(default_factory=RouteMatch, description="empty: every request")
    to: Name = Field(description="the mesh service; own zone first, other zones' ingresses on failover")


class MeshGatewaySpec(Spec):
    listeners: Annotated[list[GatewayListener], Field(min_length=1)] = Field(
        description="where the gateway accepts connections"
    )
    routes: Annotated[list[GatewayRoute], Field(min_length=1)] = Field(
        description="tried in order, the first that matches wins; no match: 404 with `x-meshcast-error: no_route`"
    )


def _check_gateway(resource: Resource) -> Iterable[Violation]:
    spec = resource.spec
    assert isinstance(spec, MeshGatewaySpec)
    seen: set[tuple[str, int]] = set()
    for index, listener in enumerate(spec.listeners):
        where = f"spec.listeners[{index}]"
        if (listener.address, listener.port) in seen:
            yield Violation(f"{where}.port", f"port {listener.port} is used by another listener")
        seen.add((listener.address, listener.port))
        if listener.protocol == "https" and listener.tls is None:
            yield Violation(f"{where}.tls", "an https listener needs tls.certificates")
        if listener.protocol == "http" and listener.tls is not None:
            yield Violation(f"{where}.tls", "an http listener takes no tls (use protocol: https)")
    for index, route in enumerate(spec.routes):
        for name in route.match.headers:
            if name != name.lower():
                yield Violation(f"spec.routes[{index}].match.headers.{name}", "header names are lowercase")


MESH_GATEWAY = register(
    ResourceType(
        name="MeshGateway", plural="meshgateways", spec=MeshGatewaySpec, scope=Scope.MESH,
        sync=Sync.GLOBAL_TO_ZONES, aliases=("gateway", "gateways", "mgw"), check=_check_gateway,
        summary="an edge gateway: listeners (HTTP, HTTPS by SNI), routes by host, path, method and header to services",
    )
)
