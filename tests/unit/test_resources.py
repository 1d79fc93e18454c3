"""Resource model: documents round-trip through YAML and JSON, and validation only ever raises ValidationError."""

from __future__ import annotations

import contextlib
import json
from datetime import timedelta
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcast.errors import ValidationError
from meshcast.resources import dump_documents, load_documents, lookup_type, parse_resource
from meshcast.wire.duration import format_duration, parse_duration

EXAMPLE = """
type: Mesh
name: default
spec:
  mtls: {backend: builtin, certTTL: 24h}
---
type: Dataplane
mesh: default
name: backend-1
spec:
  address: 127.0.0.1
  inbound:
    - {port: 10001, appPort: 8080, service: backend, protocol: http, tags: {version: v1}}
  outbound:
    - {port: 20001, service: backend}
"""


def test_example_documents_parse() -> None:
    mesh, dp = load_documents(EXAMPLE)
    assert mesh.type == "Mesh" and mesh.mesh == "" and mesh.spec.cert_ttl == timedelta(hours=24)  # type: ignore[attr-defined]
    assert dp.mesh == "default" and dp.spec.inbound[0].target_port == 8080  # type: ignore[attr-defined]
    assert dp.spec.inbound[0].tags == {"version": "v1"}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ("type: Dataplane\nname: web-1\nspec: {address: 127.0.0.1, inbound: [{port: 70000, service: web}]}",
         "Dataplane web-1: spec.inbound[0].port: must be between 1 and 65535"),
        ("type: Dataplane\nname: web-1\nspec: {address: 127.0.0.1, inbound: [{port: 80}]}",
         "Dataplane web-1: spec.inbound[0].service: is required"),
        ("type: Dataplane\nname: web-1\nspec: {address: 127.0.0.1, inbound: [{port: '80', service: web}]}",
         "Dataplane web-1: spec.inbound[0].port: must be an integer"),
        ("type: Dataplane\nname: web-1\nspec: {address: 127.0.0.1, inbound: []}",
         "Dataplane web-1: spec.inbound: at least one inbound is needed (or spec.gateway for an edge gateway)"),
        ("type: Dataplane\nname: web-1\nspec: {address: 'not an ip!', inbound: [{port: 1, service: a}]}",
         "Dataplane web-1: spec.address: 'not an ip!' is not an IP address or a hostname"),
        ("type: Dataplane\nname: web-1\nspec: {address: 10.0.0.1, inbound: [{port: 1, service: a, protocol: udp}]}",
         "Dataplane web-1: spec.inbound[0].protocol: must be one of 'http', 'http2', 'grpc' or 'tcp'"),
        ("type: Dataplane\nname: w\nspec: {address: 10.0.0.1, inbound: [{port: 1, service: a}, {port: 1, service: b}]}",
         "Dataplane w: spec.inbound[0].port: port 1 is used by another inbound; "
         "spec.inbound[1].port: port 1 is used by another inbound"),
        ("type: Mesh\nname: m\nspec: {mtls: {certTTL: 1s}}",
         "Mesh m: spec.mtls.certTTL: must be between 10s and 8760h"),
        ("type: Mesh\nname: m\nmesh: default\nspec: {}", "Mesh m: mesh: must be empty: Mesh is not inside a mesh"),
        ("type: Mesh\nname: Web_1\nspec: {}", "Mesh Web_1: name: 'Web_1' is not a valid name"),
        ("type: Mesh\nname: m\nspec: {mtls: {backend: vault}}", "Mesh m: spec.mtls.backend: must be 'builtin'"),
        ("type: Zone\nname: z\nspec: {enabled: yes, extra: 1}", "Zone z: spec.extra: unknown field"),
        ("type: Gadget\nname: g", "type: unknown resource type 'Gadget'"),
        ("name: g", "type: is required"),
    ],
)
def test_errors_name_the_field_path(doc: str, expected: str) -> None:
    with pytest.raises(ValidationError) as info:
        load_documents(doc)
    assert str(info.value).startswith(expected)
    assert "\n" not in str(info.value)


def test_lookup_by_alias() -> None:
    assert lookup_type("dp").name == "Dataplane"
    assert lookup_type("MESHES").name == "Mesh"
    with pytest.raises(ValidationError, match="unknown resource type 'widgets'"):
        lookup_type("widgets")


# --- hypothesis ---------------------------------------------------------------------------------------------------

labels = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
ports = st.integers(1, 65535)
tag_keys = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,10}[A-Za-z0-9])?", fullmatch=True)
tag_values = st.from_regex(r"[A-Za-z0-9._:/-]{1,12}", fullmatch=True)
durations = st.integers(10_000, 365 * 24 * 3600 * 1000).map(lambda ms: format_duration(timedelta(milliseconds=ms)))
addresses = st.one_of(st.ip_addresses().map(str), st.just("backend.local"))


@st.composite
def dataplanes(draw: st.DrawFn) -> dict[str, Any]:
    in_ports = draw(st.lists(ports, min_size=1, max_size=4, unique=True))
    out_ports = draw(st.lists(ports.filter(lambda p: p not in in_ports), max_size=4, unique=True))
    inbound = [
        {"port": p, "appPort": draw(ports), "service": draw(labels),
         "protocol": draw(st.sampled_from(["http", "http2", "grpc", "tcp"])),
         "tags": draw(st.dictionaries(tag_keys, tag_values, max_size=3))}
        for p in in_ports
    ]
    outbound = [{"port": p, "service": draw(labels)} for p in out_ports]
    return {"type": "Dataplane", "mesh": draw(labels), "name": draw(labels),
            "spec": {"address": draw(addresses), "inbound": inbound, "outbound": outbound}}


meshes = st.builds(
    lambda name, mtls: {"type": "Mesh", "name": name, "spec": mtls},
    labels,
    st.one_of(st.just({}), st.builds(lambda e, ttl: {"mtls": {"enabled": e, "backend": "builtin", "certTTL": ttl}},
                                     st.booleans(), durations)),
)
zones = st.builds(lambda name, enabled: {"type": "Zone", "name": name, "spec": {"enabled": enabled}},
                  labels, st.booleans())
documents = st.one_of(dataplanes(), meshes, zones)


@given(documents, st.sampled_from(["yaml", "json"]))
def test_every_type_round_trips(doc: dict[str, Any], fmt: str) -> None:
    resource = parse_resource(doc)
    text = dump_documents([resource], fmt)
    (again,) = load_documents(text)
    assert again == resource
    assert again.to_dict() == resource.to_dict()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def _mutations(doc: dict[str, Any]) -> st.SearchStrategy[Any]:
    return st.one_of(json_values, st.just(doc))


@settings(max_examples=300)
@given(st.one_of(
    json_values,
    st.fixed_dictionaries({"type": st.sampled_from(["Mesh", "Dataplane", "Zone", "x"]), "name": json_values,
                           "mesh": json_values, "spec": json_values}),
    dataplanes().flatmap(lambda d: st.fixed_dictionaries(
        {**{k: st.just(v) for k, v in d.items() if k != "spec"},
         "spec": st.fixed_dictionaries({k: st.one_of(st.just(v), json_values) for k, v in d["spec"].items()})})),
))
def test_validation_raises_only_validation_errors(doc: Any) -> None:
    try:
        parse_resource(doc)
    except ValidationError as exc:
        assert str(exc) and "\n" not in str(exc)


@given(st.text(max_size=200))
def test_arbitrary_text_never_crashes_the_loader(text: str) -> None:
    with contextlib.suppress(ValidationError):
        load_documents(text)


@given(st.integers(0, 10**10))
def test_duration_round_trip(ms: int) -> None:
    value = timedelta(milliseconds=ms)
    assert parse_duration(format_duration(value)) == value


@given(st.text(max_size=12))
def test_duration_parser_rejects_cleanly(text: str) -> None:
    try:
        parse_duration(text)
    except ValueError as exc:
        assert "duration" in str(exc)


def test_json_and_yaml_inputs_are_equivalent() -> None:
    docs = list(yaml.safe_load_all(EXAMPLE))
    assert load_documents(json.dumps(docs)) == load_documents(EXAMPLE)
