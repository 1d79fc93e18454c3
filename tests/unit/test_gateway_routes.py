"""The edge gateway's routing rules and the MeshGateway resource's validation (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dataplane.config import GatewayRouteConfig, parse_snapshot
from dataplane.gateway import GatewayRoutes, host_matches, host_of, path_matches
from meshcast.errors import ValidationError
from meshcast.resources import parse_resource

LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)


def routes(*specs: dict[str, Any]) -> GatewayRoutes:
    return GatewayRoutes.of(GatewayRouteConfig.model_validate(s) for s in specs)


def no_headers(name: str) -> str | None:
    return None


def test_first_matching_route_wins_in_order() -> None:
    table = routes({"match": {"headers": {"x-env": "canary"}}, "to": "canary"},
                   {"match": {"hosts": ["shop.example.com"], "pathPrefix": "/api"}, "to": "backend"},
                   {"match": {"methods": ["GET"]}, "to": "web"})
    assert table.match("shop.example.com:8080", "/api/x", "GET", no_headers) == "backend"
    assert table.match("shop.example.com", "/api", "POST", lambda n: "canary" if n == "x-env" else None) == "canary"
    assert table.match("other.example.com", "/api", "GET", no_headers) == "web"
    assert table.match("other.example.com", "/api", "POST", no_headers) is None


@given(LABEL, st.lists(LABEL, min_size=1, max_size=3))
def test_a_wildcard_covers_one_or_more_labels_under_its_domain_only(first: str, domain: list[str]) -> None:
    name = ".".join(domain)
    assert host_matches(f"*.{name}", f"{first}.{name}")
    assert not host_matches(f"*.{name}", name)
    assert not host_matches(f"*.{name}", f"{first}{name}")  # no label boundary
    assert host_matches("*", name) and host_matches(name, name)


@given(st.lists(LABEL, min_size=1, max_size=3), LABEL, st.text(alphabet="abc=&", max_size=5))
def test_path_prefixes_match_whole_segments(segments: list[str], extra: str, query: str) -> None:
    prefix = "/" + "/".join(segments)
    assert path_matches(prefix, prefix) and path_matches(prefix, f"{prefix}/{extra}")
    assert path_matches(prefix, f"{prefix}?{query}") and path_matches("/", f"/{extra}")
    assert not path_matches(prefix, f"{prefix}{extra}")


def test_host_of_drops_the_port_and_case() -> None:
    assert host_of("Shop.Example.COM:443") == "shop.example.com"
    assert host_of("[::1]:8080") == "[::1]" and host_of("example.com") == "example.com"


def gateway(spec: dict[str, Any]) -> Any:
    return parse_resource({"type": "MeshGateway", "mesh": "default", "name": "edge", "spec": spec})


@pytest.mark.parametrize(("spec", "error"), [
    ({"listeners": [{"port": 443, "protocol": "https"}], "routes": [{"to": "web"}]},
     "spec.listeners[0].tls: an https listener needs tls.certificates"),
    ({"listeners": [{"port": 80}, {"port": 80}], "routes": [{"to": "web"}]},
     "spec.listeners[1].port: port 80 is used by another listener"),
    ({"listeners": [{"port": 80}], "routes": [{"match": {"pathPrefix": "api"}, "to": "web"}]},
     "spec.routes[0].match.pathPrefix"),
    ({"listeners": [{"port": 80}], "routes": [{"match": {"hosts": ["Shop.example.com"]}, "to": "web"}]},
     "spec.routes[0].match.hosts[0]"),
    ({"listeners": [{"port": 80}], "routes": []}, "spec.routes"),
])
def test_bad_gateways_are_refused_naming_the_field(spec: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error.replace("[", r"\[").replace("]", r"\]")):
        gateway(spec)


def test_a_gateway_snapshot_parses_and_its_listener_ports_count_as_taken() -> None:
    snapshot = {"mesh": "default", "dataplane": "edge-1", "address": "127.0.0.1",
                "gateway": {"name": "edge", "listeners": [{"port": 8080}], "routes": [{"to": "web"}]}}
    config = parse_snapshot(snapshot, mesh="default", name="edge-1")
    assert config.gateway is not None and config.gateway.listeners[0].address == "0.0.0.0"
    snapshot["outbound"] = [{"service": "web", "port": 8080}]
    with pytest.raises(Exception, match="two listeners share a port"):
        parse_snapshot(snapshot, mesh="default", name="edge-1")
