"""The sidecar's view of its configuration: a config-stream snapshot, validated and typed (pure, no IO).

A snapshot that does not validate is refused whole (the agent NACKs it with the one-line reason and keeps serving
the previous configuration), so the proxy only ever sees a `ProxyConfig` that passed these rules.

The models are frozen dataclasses read by a small validator of this module rather than pydantic, which with the
resource model cost the long-lived sidecar ~10 MB (docs/benchmarks.md). As with pydantic, each field is declared
once: its type (str, int, float, bool, a Literal, a model, a list or a dict of them, or optional), its default, its
name on the wire (`alias`, camelCase; the Python name is accepted too) and its bounds (`gt`, `ge`, `le` for
numbers, a compiled `pattern` for strings). Values must have their JSON type (an integral number is an int, an int
is a float); unknown fields are ignored, since a newer control plane may add some. The first broken field, in
declaration order, is reported with its path and pydantic's wording:
``outbound[0].port: Input should be less than or equal to 65535``. `model_validate` and `model_dump` keep the
names of the pydantic API the proxy used.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self, TypeVar

from meshcast.errors import format_loc

Protocol = Literal["http", "http2", "grpc", "tcp"]

_PORT = {"ge": 1, "le": 65535}
_SHARE = {"ge": 0, "le": 1}

# A DNS name as TLS's server_name carries it (RFC 6066 §3): labels of 1-63 letters, digits and '-', no trailing dot,
# at most 253 characters, and not an IP address (which SNI may not carry); or "" for no SNI.
_SNI = re.compile(r"(?=.{1,253}$)(?![0-9.]+$)[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
                  r"(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*|")


class InvalidConfig(Exception):
    """A snapshot the sidecar refuses; the message is the one-line reason sent back in the NACK."""


class _Model:
    """Base of the config models (dataclasses): `model_validate` from JSON data, `model_dump` back to it."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    @classmethod
    def model_validate(cls, data: Any) -> Self:
        """Validate JSON data (a dict); raise InvalidConfig naming the first broken field."""
        return _validate(cls, data, ())

    def model_dump(self, *, mode: Literal["python", "json"] = "python", by_alias: bool = False) -> dict[str, Any]:
        """The model as a dict of JSON values (both modes alike); keys are wire names when `by_alias`."""
        return {_wire_name(f) if by_alias else f.name: _dump(getattr(self, f.name), by_alias)
                for f in dataclasses.fields(self) if not f.metadata.get("internal")}


@dataclass(frozen=True, kw_only=True)
class EndpointConfig(_Model):
    address: str
    port: int = field(metadata=_PORT)
    protocol: Protocol = "tcp"
    tags: dict[str, str] = field(default_factory=dict)
    dataplane: str = ""
    # Locality (both optional): 0 is the sidecar's own zone, 1, 2, ... the failover order of other zones. An
    # endpoint with an `sni` is a zone ingress: the TLS server name routes the connection to the service there.
    priority: int = field(default=0, metadata={"ge": 0})
    sni: str = field(default="", metadata={"pattern": _SNI})


@dataclass(frozen=True, kw_only=True)
class OutboundConfig(_Model):
    service: str
    address: str = "127.0.0.1"
    port: int = field(metadata=_PORT)
    protocol: Protocol = "tcp"
    endpoints: list[EndpointConfig] = field(default_factory=list)
    # The usable share of a priority group below which the next group's endpoints are added (see dataplane.balance).
    failover_threshold: float = field(default=0.0, metadata={"alias": "failoverThreshold", **_SHARE})


@dataclass(frozen=True, kw_only=True)
class InboundConfig(_Model):
    port: int = field(metadata=_PORT)
    app_port: int | None = field(default=None, metadata={"alias": "appPort", **_PORT})
    app_address: str = field(default="127.0.0.1", metadata={"alias": "appAddress"})
    service: str
    protocol: Protocol = "tcp"
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def target_port(self) -> int:
        return self.app_port or self.port


@dataclass(frozen=True, kw_only=True)
class HttpProxyConfig(_Model):
    port: int = field(metadata=_PORT)
    address: str = "127.0.0.1"


@dataclass(frozen=True, kw_only=True)
class ServiceConfig(_Model):
    protocol: Protocol = "tcp"
    endpoints: list[EndpointConfig] = field(default_factory=list)
    failover_threshold: float = field(default=0.0, metadata={"alias": "failoverThreshold", **_SHARE})


@dataclass(frozen=True, kw_only=True)
class MtlsConfig(_Model):
    enabled: bool = False
    cert_ttl: str = field(default="24h", metadata={"alias": "certTTL"})


@dataclass(frozen=True, kw_only=True)
class GatewayCertificateConfig(_Model):
    hosts: list[str] = field(default_factory=list)
    cert_file: str = field(metadata={"alias": "certFile"})
    key_file: str = field(metadata={"alias": "keyFile"})


@dataclass(frozen=True, kw_only=True)
class GatewayTlsConfig(_Model):
    certificates: list[GatewayCertificateConfig] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class GatewayListenerConfig(_Model):
    port: int = field(metadata=_PORT)
    address: str = "0.0.0.0"
    protocol: Literal["http", "https"] = "http"
    tls: GatewayTlsConfig | None = None


@dataclass(frozen=True, kw_only=True)
class RouteMatchConfig(_Model):
    hosts: list[str] = field(default_factory=list)
    path_prefix: str = field(default="/", metadata={"alias": "pathPrefix"})
    methods: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class GatewayRouteConfig(_Model):
    match: RouteMatchConfig = field(default_factory=RouteMatchConfig)
    to: str


@dataclass(frozen=True, kw_only=True)
class GatewayConfig(_Model):
    name: str
    listeners: list[GatewayListenerConfig] = field(default_factory=list)
    routes: list[GatewayRouteConfig] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class ProxyConfig(_Model):
    mesh: str
    dataplane: str
    zone: str = ""
    address: str
    mtls: MtlsConfig = field(default_factory=MtlsConfig)
    inbound: list[InboundConfig] = field(default_factory=list)
    outbound: list[OutboundConfig] = field(default_factory=list)
    heartbeat_interval: float = field(default=2.0, metadata={"alias": "heartbeatInterval", "gt": 0})
    http_proxy: HttpProxyConfig | None = field(default=None, metadata={"alias": "httpProxy"})
    services: dict[str, ServiceConfig] = field(default_factory=dict)
    gateway: GatewayConfig | None = None  # an edge gateway's MeshGateway (None: not a gateway, or it is missing)
    # The policies in force, merged by the control plane (`meshcast.policies.resolve`); `compiled` is what the
    # proxy enforces (`dataplane.policy`), built by `parse_snapshot`.
    policies: dict[str, Any] = field(default_factory=dict)
    compiled: Any = field(default=None, compare=False, metadata={"internal": True})

    def upstream(self, service: str) -> ServiceConfig | None:
        """Endpoints, protocol and failover threshold of `service`, from its outbound or, in proxy mode, the mesh's
        service list."""
        outbound = self.outbound_for(service)
        if outbound is not None:
            return ServiceConfig(protocol=outbound.protocol, endpoints=outbound.endpoints,
                                 failover_threshold=outbound.failover_threshold)
        return self.services.get(service)

    def outbound_for(self, service: str) -> OutboundConfig | None:
        for outbound in self.outbound:
            if outbound.service == service:
                return outbound
        return None


def parse_snapshot(snapshot: Any, *, mesh: str, name: str) -> ProxyConfig:
    """Validate a snapshot for the dataplane `mesh/name`; raise InvalidConfig naming the first broken field."""
    config = ProxyConfig.model_validate(snapshot)
    if (config.mesh, config.dataplane) != (mesh, name):
        raise InvalidConfig(f"snapshot is for {config.mesh}/{config.dataplane}, not {mesh}/{name}")
    ports = [i.port for i in config.inbound] + [o.port for o in config.outbound]
    if config.http_proxy is not None:
        ports.append(config.http_proxy.port)
    if config.gateway is not None:
        ports += [listener.port for listener in config.gateway.listeners]
    if len(ports) != len(set(ports)):
        raise InvalidConfig("two listeners share a port")
    from dataplane.policy import compile_policies  # here: dataplane.policy imports this module

    return dataclasses.replace(config, compiled=compile_policies(config.policies))


# --- the validator --------------------------------------------------------------------------------------------

Loc = tuple[int | str, ...]
M = TypeVar("M", bound=_Model)


def _invalid(loc: Loc, message: str) -> InvalidConfig:
    return InvalidConfig(f"{format_loc(loc)}: {message}" if loc else message)


def _wire_name(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("alias", f.name))


_FIELDS: dict[type[_Model], list[tuple[dataclasses.Field[Any], Any]]] = {}


def _fields(model: type[_Model]) -> list[tuple[dataclasses.Field[Any], Any]]:
    """Each field with its type, the annotations resolved once per model."""
    found = _FIELDS.get(model)
    if found is None:
        hints = typing.get_type_hints(model)
        found = _FIELDS[model] = [(f, hints[f.name]) for f in dataclasses.fields(model)]
    return found


def _validate(model: type[M], data: Any, loc: Loc) -> M:
    if not isinstance(data, Mapping):
        raise _invalid(loc, f"Input should be a valid dictionary or instance of {model.__name__}")
    values: dict[str, Any] = {}
    for f, kind in _fields(model):
        if f.metadata.get("internal"):
            continue
        wire = _wire_name(f)
        key = wire if wire in data else f.name
        if key not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _invalid((*loc, wire), "Field required")
            continue
        values[f.name] = _check(kind, data[key], (*loc, wire), f.metadata)
    return model(**values)


def _check(kind: Any, value: Any, loc: Loc, bounds: Mapping[str, Any]) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:  # checked where it is used (the policies: `dataplane.policy.compile_policies`)
        return value
    if isinstance(kind, type) and issubclass(kind, _Model):
        return _validate(kind, value, loc)
    if origin is Literal:
        if not isinstance(value, str) or value not in args:
            words = ", ".join(repr(a) for a in args[:-1])
            raise _invalid(loc, f"Input should be {words} or {args[-1]!r}")
        return value
    if origin is types.UnionType:  # `X | None`
        if value is None:
            return None
        (inner,) = (a for a in args if a is not type(None))
        return _check(inner, value, loc, bounds)
    if origin is list:
        if not isinstance(value, list):
            raise _invalid(loc, "Input should be a valid list")
        return [_check(args[0], item, (*loc, i), {}) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _invalid(loc, "Input should be a valid dictionary")
        return {_check(str, k, (*loc, k), {}): _check(args[1], v, (*loc, k), {}) for k, v in value.items()}
    if kind is str:
        if not isinstance(value, str):
            raise _invalid(loc, "Input should be a valid string")
        pattern = bounds.get("pattern")
        if pattern is not None and not pattern.fullmatch(value):
            raise _invalid(loc, f"String should match pattern {pattern.pattern!r}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise _invalid(loc, "Input should be a valid boolean")
        return value
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _invalid(loc, "Input should be a valid integer")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _invalid(loc, "Input should be a valid number")
        value = float(value)
    else:
        raise TypeError(f"config field {format_loc(loc)}: no rule for {kind!r}")  # a mistake in the models above
    _check_bounds(value, loc, bounds)
    return value


def _check_bounds(value: float, loc: Loc, bounds: Mapping[str, Any]) -> None:
    if "gt" in bounds and not value > bounds["gt"]:
        raise _invalid(loc, f"Input should be greater than {bounds['gt']}")
    if "ge" in bounds and not value >= bounds["ge"]:
        raise _invalid(loc, f"Input should be greater than or equal to {bounds['ge']}")
    if "le" in bounds and not value <= bounds["le"]:
        raise _invalid(loc, f"Input should be less than or equal to {bounds['le']}")


def _dump(value: Any, by_alias: bool) -> Any:
    if isinstance(value, _Model):
        return value.model_dump(by_alias=by_alias)
    if isinstance(value, list):
        return [_dump(item, by_alias) for item in value]
    if isinstance(value, dict):
        return {key: _dump(item, by_alias) for key, item in value.items()}
    return value
