"""The core resource types: Mesh, Dataplane, Zone. Policies live in `meshcast.policies.<kind>`."""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Iterable
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer

from meshcast.errors import Violation
from meshcast.resources.duration import format_duration, parse_duration
from meshcast.resources.model import DNS_LABEL, Resource, ResourceType, Scope, Spec, Sync, register

_HOSTNAME = re.compile(r"(?=.{1,253}$)([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*")
_TAG_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?")
_TAG_VALUE = re.compile(r"[A-Za-z0-9._:/-]{1,253}")


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError("must be between 1 and 65535")
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


Port = Annotated[int, AfterValidator(_port)]
Name = Annotated[str, AfterValidator(_label)]
Address = Annotated[str, AfterValidator(_address)]
Tags = Annotated[dict[str, str], AfterValidator(_tags)]
Duration = Annotated[timedelta, BeforeValidator(_duration), PlainSerializer(format_duration, return_type=str)]
AppProtocol = Literal["http", "http2", "grpc", "tcp"]


def _bounded(lo: timedelta, hi: timedelta) -> AfterValidator:
    def check(value: timedelta) -> timedelta:
        if not lo <= value <= hi:
            raise ValueError(f"must be between {format_duration(lo)} and {format_duration(hi)}")
        return value

    return AfterValidator(check)


# --- Mesh -----------------------------------------------------------------------------------------------------


class Mtls(Spec):
    """Mutual TLS between the mesh's sidecars. Present means on unless `enabled: false`."""

    enabled: bool = True
    backend: Literal["builtin"] = "builtin"
    cert_ttl: Annotated[Duration, _bounded(timedelta(seconds=10), timedelta(days=365))] = Field(
        default=timedelta(hours=24), alias="certTTL"
    )


class MeshSpec(Spec):
    mtls: Mtls | None = None

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

    port: Port
    app_port: Port | None = None
    app_address: Address = "127.0.0.1"
    service: Name
    protocol: AppProtocol = "tcp"
    tags: Tags = Field(default_factory=dict)

    @property
    def target_port(self) -> int:
        return self.app_port if self.app_port is not None else self.port


class Outbound(Spec):
    """An upstream service the app calls through a local port of its sidecar."""

    port: Port
    service: Name
    address: Address = "127.0.0.1"


class HttpProxy(Spec):
    """An HTTP proxy listener for the app: `Host: <service>.mesh` selects the upstream service."""

    port: Port
    address: Address = "127.0.0.1"


class DataplaneSpec(Spec):
    address: Address
    inbound: list[Inbound] = Field(default_factory=list)
    outbound: list[Outbound] = Field(default_factory=list)
    http_proxy: HttpProxy | None = None
    gateway: Name | None = None  # this dataplane is the edge gateway serving the MeshGateway of that name

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
    enabled: bool = True


ZONE = register(
    ResourceType(
        name="Zone", plural="zones", spec=ZoneSpec, scope=Scope.GLOBAL, sync=Sync.GLOBAL_TO_ZONES,
        summary="a region with its own zone control plane",
    )
)


# --- MeshLoadBalancingStrategy --------------------------------------------------------------------------------


def _service_ref(value: str) -> str:
    if value != "*" and not DNS_LABEL.fullmatch(value):
        raise ValueError(f"{value!r} is neither a service name (1-63 lowercase letters, digits or '-') nor '*'")
    return value


ServiceRef = Annotated[str, AfterValidator(_service_ref)]


class CrossZone(Spec):
    """Where calls go when the local zone cannot take them."""

    failover: list[Name] | None = None  # other zones in the order to try; absent: every other zone, equally
    failover_threshold: Annotated[int, Field(ge=0, le=100)] = 0  # % of local endpoints usable below which to spill


class LocalityAwareness(Spec):
    disabled: bool = False  # true: every zone's endpoints are equal (calls spread across zones)
    cross_zone: CrossZone = Field(default_factory=CrossZone)


class MeshLoadBalancingStrategySpec(Spec):
    to: ServiceRef  # the upstream service this applies to, or "*" for every service of the mesh
    locality_awareness: LocalityAwareness = Field(default_factory=LocalityAwareness)


def _check_failover(resource: Resource) -> Iterable[Violation]:
    spec = resource.spec
    assert isinstance(spec, MeshLoadBalancingStrategySpec)
    zones = spec.locality_awareness.cross_zone.failover or []
    for index, zone in enumerate(zones):
        if zone in zones[:index]:
            yield Violation(f"spec.localityAwareness.crossZone.failover[{index}]", f"zone {zone!r} is listed twice")


MESH_LOAD_BALANCING_STRATEGY = register(
    ResourceType(
        name="MeshLoadBalancingStrategy", plural="meshloadbalancingstrategies", spec=MeshLoadBalancingStrategySpec,
        scope=Scope.MESH, sync=Sync.GLOBAL_TO_ZONES, aliases=("mlbs",), check=_check_failover,
        summary="how sidecars spread calls to a service over zones: locality first, failover order, threshold",
    )
)


# --- MeshGateway ----------------------------------------------------------------------------------------------

_HOST_PATTERN = re.compile(r"(\*\.)?" + _HOSTNAME.pattern[len("(?=.{1,253}$)"):])


def _host_pattern(value: str) -> str:
    if value != "*" and not _HOST_PATTERN.fullmatch(value):
        raise ValueError(f"{value!r} is not a host name, '*.<domain>' or '*' (lowercase)")
    return value


HostPattern = Annotated[str, AfterValidator(_host_pattern)]


def _path_prefix(value: str) -> str:
    if not value.startswith("/") or any(c in value for c in " ?#\t\r\n"):
        raise ValueError(f"{value!r} is not a path prefix: it starts with '/' and has no space, '?' or '#'")
    return value


class GatewayCertificate(Spec):
    """A certificate chain and its key, from files on the gateway's host, served to clients naming one of `hosts`."""

    hosts: Annotated[list[HostPattern], Field(min_length=1)]
    cert_file: str
    key_file: str


class GatewayTls(Spec):
    certificates: Annotated[list[GatewayCertificate], Field(min_length=1)]


class GatewayListener(Spec):
    port: Port
    address: Address = "0.0.0.0"  # the region's anycast address, or every address
    protocol: Literal["http", "https"] = "http"
    tls: GatewayTls | None = None


class RouteMatch(Spec):
    hosts: list[HostPattern] = Field(default_factory=list)  # none: any host
    path_prefix: Annotated[str, AfterValidator(_path_prefix)] = "/"
    methods: list[Literal["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]] = Field(default_factory=list)
    headers: Annotated[dict[str, str], AfterValidator(_tags)] = Field(default_factory=dict)  # exact values


class GatewayRoute(Spec):
    match: RouteMatch = Field(default_factory=RouteMatch)
    to: Name  # the mesh service


class MeshGatewaySpec(Spec):
    listeners: Annotated[list[GatewayListener], Field(min_length=1)]
    routes: Annotated[list[GatewayRoute], Field(min_length=1)]


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
