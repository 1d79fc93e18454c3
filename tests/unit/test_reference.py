"""The generated reference (docs/reference.md): up to date, complete, with examples that parse and rows that say
what the schemas enforce."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import Field

from meshcast.cli.main import cli
from meshcast.policies.kinds import PolicySpec
from meshcast.resources import ResourceType, Spec, load_documents, parse_resource, resource_types
from meshcast.resources.reference import EXAMPLES, REGENERATE, Row, field_rows, render_reference, sections

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference.md"
POLICIES = [rtype for rtype in resource_types() if issubclass(rtype.spec, PolicySpec)]


def test_docs_reference_is_up_to_date() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == render_reference(), (
        f"docs/reference.md is out of date with the schemas: run `{REGENERATE}`")


def test_cli_prints_the_reference() -> None:
    result = CliRunner().invoke(cli, ["docs", "reference"])
    assert result.exit_code == 0, result.output
    assert result.output == render_reference()


def test_every_registered_type_has_a_section_in_registry_order() -> None:
    text = render_reference()
    policies = {rtype.name for rtype in POLICIES}
    core = [rtype.name for rtype in resource_types() if rtype.name not in policies]
    headings = [line.removeprefix("### ") for line in text.splitlines() if line.startswith("### ")]
    names = [name for name in headings if name in policies or name in core]
    assert names == core + [rtype.name for rtype in POLICIES]
    assert headings.index("targetRef") < headings.index(POLICIES[0].name)


def test_policy_part_quotes_the_targetref_kinds_and_the_merge_rule() -> None:
    text = render_reference()
    assert "| `MeshServiceSubset` | `name`, `tags` |" in text
    assert "**The rule.**" in text


@pytest.mark.parametrize("rtype", POLICIES, ids=lambda rtype: rtype.name)
def test_every_policy_kind_has_an_example_that_parses(rtype: ResourceType) -> None:
    name = rtype.name
    assert name in EXAMPLES, f"add an example of {name} to EXAMPLES in meshcast/resources/reference.py"
    [resource] = load_documents(EXAMPLES[name], source=f"example {name}")
    assert resource.type == name


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_examples_are_valid_documents(name: str) -> None:
    import yaml

    resource = parse_resource(yaml.safe_load(EXAMPLES[name]))
    assert resource.type == name
    assert f"```yaml\n{EXAMPLES[name].rstrip()}\n```" in render_reference()


def _row(type_name: str, path: str) -> Row:
    [rtype] = [rtype for rtype in resource_types() if rtype.name == type_name]
    rows = {row.path: row for row in field_rows(rtype.spec)}
    assert path in rows, f"{path} not in {sorted(rows)}"
    return rows[path]


@pytest.mark.parametrize(("type_name", "path", "type_words", "presence", "bounds", "described"), [
    ("MeshRetry", "to[].default.http.numRetries", "integer", "optional", "min 0, max 10", "5 by default"),
    ("MeshRetry", "to", "list of objects", "required", "at least 1 item", "destinations"),
    ("MeshRetry", "to[].default.http.backOff.baseInterval", "duration (e.g. `30s`)", "optional", "above 0s",
     "25ms by default"),
    ("MeshRetry", "to[].default.http.retryOn", "list of (one of `5xx`, `GatewayError`", "optional",
     "at least 1 item", "ConnectFailure"),
    ("MeshTrafficPermission", "from[].targetRef.kind", "one of `Mesh`, `MeshSubset`", "required", "", "kinds"),
    ("MeshTrafficPermission", "targetRef", "object", "`{kind: Mesh}`", "", "proxies"),
    ("MeshTCPRoute", "to[].rules", "list of objects", "required", "exactly 1 item", "rule"),
    ("MeshHealthCheck", "to[].default.http.expectedStatuses", "list of integer", "optional",
     "each: min 100, max 599", "2xx"),
    ("MeshRateLimit", "from[].default.local.http.onRateLimit.headers", "map of header name (lowercase) to string",
     "optional", "", "headers"),
    ("MeshTrace", "default.backends[].openTelemetry.endpoint", "string", "required", "matches `^https?://", "OTLP"),
    ("Mesh", "mtls.certTTL", "duration (e.g. `30s`)", "`24h`", "min 10s, max 8760h", "two thirds"),
    ("Dataplane", "inbound[].port", "integer", "required", "min 1, max 65535", "sidecar"),
    ("Dataplane", "inbound[].tags", "map of string to string", "`{}`", "", "version"),
    ("MeshGateway", "listeners[].tls.certificates[].hosts", "list of host pattern", "required", "at least 1 item",
     "SNI"),
])
def test_spot_rows(type_name: str, path: str, type_words: str, presence: str, bounds: str, described: str) -> None:
    row = _row(type_name, path)
    assert row.type.startswith(type_words)
    assert row.presence == presence
    assert row.bounds.startswith(bounds) if bounds else row.bounds == ""
    assert described in row.description


def test_rows_are_camel_case_and_from_is_aliased() -> None:
    paths = [row.path for rtype in resource_types() for row in field_rows(rtype.spec)]
    assert not [path for path in paths if "_" in path]
    assert "from[].default.action" in [row.path for row in field_rows(POLICIES[0].spec)]


def test_sections_name_the_item_keys() -> None:
    by_name = {rtype.name: rtype for rtype in POLICIES}
    assert sections(by_name["MeshTimeout"].spec) == {"targetRef": [], "to": ["targetRef", "default"],
                                                     "from": ["targetRef", "default"]}
    assert sections(by_name["MeshHTTPRoute"].spec)["to"] == ["targetRef", "rules"]
    assert sections(by_name["MeshTrace"].spec) == {"targetRef": [], "default": []}


def test_every_field_is_described() -> None:
    missing = [f"{rtype.name} {row.path}" for rtype in resource_types() for row in field_rows(rtype.spec)
               if not row.description]
    assert missing == []


class _Node(Spec):
    """A tree: recursive models are flattened once, then referred to."""

    label: str
    children: list[_Node] = Field(default_factory=list)


def test_recursive_models_are_flattened_once() -> None:
    _Node.model_rebuild()
    rows = field_rows(_Node)
    assert [row.path for row in rows] == ["label", "children"]
    assert "recursive" in rows[1].description
