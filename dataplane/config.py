"""The sidecar's view of its configuration: a config-stream snapshot, validated and typed (pure, no IO).

A snapshot that does not validate is refused whole (the agent NACKs it with the one-line reason and keeps serving
the previous configuration), so the proxy only ever sees a `ProxyConfig` that passed these rules.
"""

from __future__ import annotations

from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from meshcast.resources.model import format_loc

Protocol = Literal["http", "http2", "grpc", "tcp"]


class _Model(BaseModel):
    # Unknown fields are allowed: a newer control plane may add some that this sidecar does not use yet.
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class EndpointConfig(_Model):
    address: str
    port: int = Field(ge=1, le=65535)
    protocol: Protocol = "tcp"
    tags: dict[str, str] = Field(default_factory=dict)
    dataplane: str = ""


class OutboundConfig(_Model):
    service: str
    address: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    protocol: Protocol = "tcp"
    endpoints: list[EndpointConfig] = Field(default_factory=list)


class InboundConfig(_Model):
    port: int = Field(ge=1, le=65535)
    app_port: int | None = Field(default=None, alias="appPort", ge=1, le=65535)
    app_address: str = Field(default="127.0.0.1", alias="appAddress")
    service: str
    protocol: Protocol = "tcp"
    tags: dict[str, str] = Field(default_factory=dict)

    @property
    def target_port(self) -> int:
        return self.app_port or self.port


class HttpProxyConfig(_Model):
    port: int = Field(ge=1, le=65535)
    address: str = "127.0.0.1"


class ServiceConfig(_Model):
    protocol: Protocol = "tcp"
    endpoints: list[EndpointConfig] = Field(default_factory=list)


class MtlsConfig(_Model):
    enabled: bool = False
    cert_ttl: str = Field(default="24h", alias="certTTL")


class ProxyConfig(_Model):
    mesh: str
    dataplane: str
    zone: str = ""
    address: str
    mtls: MtlsConfig = Field(default_factory=MtlsConfig)
    inbound: list[InboundConfig] = Field(default_factory=list)
    outbound: list[OutboundConfig] = Field(default_factory=list)
    heartbeat_interval: float = Field(default=2.0, alias="heartbeatInterval", gt=0)
    http_proxy: HttpProxyConfig | None = Field(default=None, alias="httpProxy")
    services: dict[str, ServiceConfig] = Field(default_factory=dict)

    def upstream(self, service: str) -> ServiceConfig | None:
        """Endpoints and protocol of `service`, from its outbound or, in proxy mode, the mesh's service list."""
        outbound = self.outbound_for(service)
        if outbound is not None:
            return ServiceConfig(protocol=outbound.protocol, endpoints=outbound.endpoints)
        return self.services.get(service)

    def outbound_for(self, service: str) -> OutboundConfig | None:
        for outbound in self.outbound:
            if outbound.service == service:
                return outbound
        return None


class InvalidConfig(Exception):
    """A snapshot the sidecar refuses; the message is the one-line reason sent back in the NACK."""


def parse_snapshot(snapshot: Any, *, mesh: str, name: str) -> ProxyConfig:
    """Validate a snapshot for the dataplane `mesh/name`; raise InvalidConfig naming the first broken field."""
    try:
        config = ProxyConfig.model_validate(snapshot)
    except pydantic.ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        raise InvalidConfig(f"{format_loc(err['loc'])}: {err['msg']}") from None
    if (config.mesh, config.dataplane) != (mesh, name):
        raise InvalidConfig(f"snapshot is for {config.mesh}/{config.dataplane}, not {mesh}/{name}")
    ports = [i.port for i in config.inbound] + [o.port for o in config.outbound]
    if config.http_proxy is not None:
        ports.append(config.http_proxy.port)
    if len(ports) != len(set(ports)):
        raise InvalidConfig("two listeners share a port")
    return config
