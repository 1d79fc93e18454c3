"""The resource and policy reference (docs/reference.md), generated from the schemas so that it cannot drift.

Everything it prints comes from the code: the registry gives the types (name, aliases, scope, summary), pydantic's
`model_fields` give every field with its alias, type, default, bounds and `Field(description=...)`, and the module
docstrings of `meshcast.policies.kinds`, `.targetref` and `.resolve` give the shape of a policy, the targetRef
kinds and the merge rule. The examples below are validated by the tests. `meshcast docs reference` prints the
result; tests/unit/test_reference.py fails when docs/reference.md differs from it.

Fields are read from `model_fields` rather than the JSON schema: it keeps defaults as Python values, and the
`Shown` metadata (`meshcast.resources.types`) that words the types whose rule lives in a validator function.
"""

from __future__ import annotations

import importlib
import inspect
import types
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

import meshcast.policies.kinds as kinds_module
import meshcast.policies.targetref as targetref_module
from meshcast.policies.kinds import PolicySpec
from meshcast.resources.model import ResourceType, Scope, Spec, Sync, resource_types
from meshcast.resources.types import Shown
from meshcast.wire.duration import format_duration

# Not `import ... as`: the package's `resolve` attribute is the function of that name, not the module.
resolve_module = importlib.import_module("meshcast.policies.resolve")
REGENERATE = "meshcast docs reference > docs/reference.md"

# One short example per policy kind, shown under its table; the tests parse every one with `parse_resource`.
EXAMPLES: dict[str, str] = {
    "MeshTrafficPermission": """\
type: MeshTrafficPermission
mesh: default
name: backend-callers
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
    - targetRef: {kind: Mesh}
      default: {action: Deny}
    - targetRef: {kind: MeshService, name: web}
      default: {action: Allow}
""",
    "MeshTimeout": """\
type: MeshTimeout
mesh: default
name: backend-timeouts
spec:
  to:
    - targetRef: {kind: MeshService, name: backend}
      default:
        connectionTimeout: 2s
        idleTimeout: 5m
        http: {requestTimeout: 10s, streamIdleTimeout: 30s}
  from:
    - targetRef: {kind: Mesh}
      default: {idleTimeout: 1h}
""",
    "MeshRetry": """\
type: MeshRetry
mesh: default
name: backend-retries
spec:
  to:
    - targetRef: {kind: MeshService, name: backend}
      default:
        http:
          numRetries: 3
          perTryTimeout: 2s
          backOff: {baseInterval: 50ms, maxInterval: 1s}
          retryOn: [5xx, Reset, ConnectFailure]
        budget: {percent: 20, minRetriesPerSecond: 10, ttl: 10s}
""",
    "MeshCircuitBreaker": """\
type: MeshCircuitBreaker
mesh: default
name: backend-breaker
spec:
  to:
    - targetRef: {kind: MeshService, name: backend}
      default:
        connectionLimits: {maxConnections: 100, maxPendingRequests: 50, maxRequests: 200}
        outlierDetection:
          baseEjectionTime: 30s
          maxEjectionPercent: 50
          detectors:
            gatewayFailures: {consecutive: 5}
""",
    "MeshHealthCheck": """\
type: MeshHealthCheck
mesh: default
name: backend-health
spec:
  to:
    - targetRef: {kind: MeshService, name: backend}
      default:
        interval: 10s
        timeout: 2s
        unhealthyThreshold: 3
        http: {path: /healthz, expectedStatuses: [200, 204]}
""",
    "MeshRateLimit": """\
type: MeshRateLimit
mesh: default
name: backend-rate
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
    - targetRef: {kind: Mesh}
      default:
        local:
          http:
            requestRate: {num: 100, interval: 1s}
            onRateLimit: {status: 429, headers: {x-rate-limited: "true"}}
""",
    "MeshFaultInjection": """\
type: MeshFaultInjection
mesh: default
name: backend-chaos
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
    - targetRef: {kind: MeshService, name: web}
      default:
        http:
          - abort: {httpStatus: 503, percentage: 5}
          - delay: {value: 2s, percentage: 10}
""",
    "MeshHTTPRoute": """\
type: MeshHTTPRoute
mesh: default
name: backend-canary
spec:
  to:
    - targetRef: {kind: MeshService, name: backend}
      rules:
        - matches:
            - path: {type: PathPrefix, value: /api}
              headers: [{name: x-canary, value: "1"}]
          default:
            filters:
              - type: RequestHeaderModifier
                requestHeaderModifier: {set: [{name: x-route, value: canary}]}
            backendRefs: [{kind: MeshServiceSubset, name: backend, tags: {version: v2}}]
        - matches: [{path: {value: /}}]
          default:
            backendRefs:
              - {name: backend, weight: 90}
              - {kind: MeshServiceSubset, name: backend, tags: {version: v2}, weight: 10}
""",
    "MeshTCPRoute": """\
type: MeshTCPRoute
mesh: default
name: db-migration
spec:
  to:
    - targetRef: {kind: MeshService, name: db}
      rules:
        - default:
            backendRefs:
              - {name: db, weight: 90}
              - {name: db-next, weight: 10}
""",
    "MeshLoadBalancingStrategy": """\
type: MeshLoadBalancingStrategy
mesh: default
name: backend-balancing
spec:
  to:
    - targetRef: {kind: MeshService, name: backend}
      default:
        localityAwareness:
          crossZone: {failover: [us, ap], failoverThreshold: 50}
        loadBalancer: {type: RingHash, hashHeader: x-user-id}
""",
    "MeshTrace": """\
type: MeshTrace
mesh: default
name: tracing
spec:
  default:
    backends:
      - type: OpenTelemetry
        openTelemetry: {endpoint: "http://otel-collector:4318"}
    sampling: {overall: 10}
    tags: {team: payments}
""",
    "MeshAccessLog": """\
type: MeshAccessLog
mesh: default
name: access-logs
spec:
  to:
    - targetRef: {kind: Mesh}
      default:
        backends: [{file: {path: /dev/stdout}}]
""",
}

_SCALARS: dict[object, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    timedelta: "duration (e.g. `30s`)",
}
_SCOPES = {Scope.GLOBAL: "global (not inside a mesh)", Scope.MESH: "inside a mesh"}
_SYNCS = {
    Sync.GLOBAL_TO_ZONES: "written at the global control plane (or a standalone zone), read-only in zones",
    Sync.ZONE_TO_GLOBAL: "written in a zone and published to the global control plane",
    Sync.LOCAL: "kept by the control plane of its zone",
}


@dataclass(frozen=True)
class Row:
    """One line of a type's table: a field path relative to `spec`, its type in words, `required`, `optional`
    or the default, its bounds and its description."""

    path: str
    type: str
    presence: str
    bounds: str
    description: str


@dataclass(frozen=True)
class _Shape:
    words: str
    bounds: tuple[str, ...] = ()
    model: type[BaseModel] | None = None
    step: str = ""  # what a path adds to reach the fields of `model`: "" (an object) or "[]" (a list of them)


def _unit(count: int, unit: str) -> str:
    return f"{count} {unit if count != 1 else unit.removesuffix('s')}"


def _bounds(metadata: Sequence[object], unit: str) -> tuple[str, ...]:
    """The constraints in `metadata` in words; `unit` names what a length counts (items, characters)."""
    values: list[str] = []
    lengths: list[str] = []
    shortest: int | None = None
    longest: int | None = None
    for meta in metadata:
        if isinstance(meta, FieldInfo):  # Field(...) inside Annotated, as in `Annotated[int, Field(ge=0)] | None`
            values += _bounds(meta.metadata, unit)
        elif isinstance(meta, annotated_types.Ge):
            values.append(f"min {meta.ge}")
        elif isinstance(meta, annotated_types.Gt):
            values.append(f"above {meta.gt}")
        elif isinstance(meta, annotated_types.Le):
            values.append(f"max {meta.le}")
        elif isinstance(meta, annotated_types.Lt):
            values.append(f"below {meta.lt}")
        elif isinstance(meta, annotated_types.MinLen):
            shortest = meta.min_length
        elif isinstance(meta, annotated_types.MaxLen):
            longest = meta.max_length
        elif isinstance(meta, Shown) and meta.bounds:
            values.append(meta.bounds)
        elif isinstance(pattern := getattr(meta, "pattern", None), str):  # Field(pattern=...)
            values.append(f"matches `{pattern}`")
    if shortest is not None and shortest == longest:
        lengths.append(f"exactly {_unit(shortest, unit)}")
    else:
        lengths += [f"at least {_unit(shortest, unit)}"] if shortest is not None else []
        lengths += [f"at most {_unit(longest, unit)}"] if longest is not None else []
    return (*values, *lengths)


def _shape(annotation: Any, metadata: Sequence[object] = ()) -> _Shape:
    """The type in words, its bounds and the model it nests, unwrapping Annotated and Optional."""
    meta = list(metadata)
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation, *more = get_args(annotation)
            meta += more
        elif origin in (Union, types.UnionType):
            arms = [arm for arm in get_args(annotation) if arm is not type(None)]
            if len(arms) > 1:
                return _Shape(" or ".join(_shape(arm).words for arm in arms))
            annotation = arms[0]
        else:
            break
    args = get_args(annotation)
    words = next((m.words for m in reversed(meta) if isinstance(m, Shown) and m.words), "")
    if origin is Literal:
        values = ", ".join(f"`{value}`" for value in args)
        return _Shape(words or (f"one of {values}" if len(args) > 1 else values), _bounds(meta, "characters"))
    if origin is list:
        item = _shape(args[0])
        noun = "objects" if item.model is not None else f"({item.words})" if " of " in item.words else item.words
        each = (f"each: {', '.join(item.bounds)}",) if item.bounds else ()
        return _Shape(words or f"list of {noun}", (*_bounds(meta, "items"), *each), item.model, "[]" + item.step)
    if origin is dict:
        key, value = _shape(args[0]), _shape(args[1])
        each = (f"each value: {', '.join(value.bounds)}",) if value.bounds else ()
        return _Shape(words or f"map of {key.words} to {value.words}", (*_bounds(meta, "entries"), *each))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _Shape(words or "object", _bounds(meta, "fields"), annotation)
    unit = "characters" if annotation is str else "items"
    return _Shape(words or _SCALARS.get(annotation, getattr(annotation, "__name__", str(annotation))),
                  _bounds(meta, unit))


def _flow(value: Any) -> str:
    """A default as one would write it in YAML flow style."""
    if isinstance(value, BaseModel):
        return _flow(value.model_dump(mode="json", by_alias=True, exclude_defaults=True))
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_flow(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(item) for item in value) + "]"
    return str(value) if value != "" else '""'


def _presence(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    default = info.get_default(call_default_factory=True, validated_data={})
    return "optional" if default is None else f"`{_flow(default)}`"


def _doc(model: type[BaseModel]) -> str:
    """The first paragraph of the model's own docstring, or of the nearest base's (not `Spec`'s), on one line."""
    for cls in model.__mro__:
        if cls in (Spec, BaseModel):
            break
        doc = cls.__dict__.get("__doc__")
        if doc:
            return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())
    return ""


def field_rows(model: type[BaseModel], prefix: str = "",
               parents: tuple[tuple[type[BaseModel], str], ...] = ()) -> list[Row]:
    """Every field path of `model` and of the models it nests, depth first, in declaration order. A model nested in
    itself is flattened once: the inner field refers to the outer one."""
    parents = parents or ((model, ""),)
    rows: list[Row] = []
    for name, info in model.model_fields.items():
        path = prefix + (info.alias or name)
        shape = _shape(info.annotation, info.metadata)
        description = info.description or (_doc(shape.model) if shape.model is not None else "")
        outer = next((where for cls, where in parents if cls is shape.model), None)
        if outer is not None:
            where = f"`{outer}`" if outer else "the top level"
            description = f"{description} (recursive: the fields of {where})".lstrip()
        rows.append(Row(path, shape.words, _presence(info), ", ".join(shape.bounds), description))
        if shape.model is not None and outer is None:
            rows += field_rows(shape.model, f"{path}{shape.step}.", (*parents, (shape.model, path)))
    return rows


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def _table(rows: list[Row]) -> list[str]:
    if not rows:
        return ["The spec takes no fields."]
    lines = ["| field | type | required / default | bounds | description |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        cells = [f"`{row.path}`", row.type, row.presence, row.bounds, row.description]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return lines


def _ticks(names: Sequence[str]) -> str:
    return ", ".join(f"`{name}`" for name in names)


def sections(spec: type[BaseModel]) -> dict[str, list[str]]:
    """The top-level sections of a policy and, for a list (`to`, `from`), the keys of its items (`targetRef`,
    `default` or `rules`)."""
    out: dict[str, list[str]] = {}
    for name, info in spec.model_fields.items():
        shape = _shape(info.annotation, info.metadata)
        items = shape.model.model_fields if shape.model is not None and shape.step == "[]" else {}
        out[info.alias or name] = [item.alias or field for field, item in items.items()]
    return out


def _body(module: types.ModuleType) -> str:
    """A module's docstring without its summary line: the part written for readers of the reference too."""
    return inspect.cleandoc(module.__doc__ or "").split("\n\n", 1)[1]


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _type_section(rtype: ResourceType) -> list[str]:
    names = [rtype.name, rtype.plural, *rtype.aliases]
    lines = [f"### {rtype.name}", "", _sentence(rtype.summary), "",
             f"- Scope: {_SCOPES[rtype.scope]}; {_SYNCS[rtype.sync]}.",
             f"- Names on the CLI (any case): {_ticks(names)}, e.g. `meshcast get {rtype.plural}`."]
    if issubclass(rtype.spec, PolicySpec):
        parts = [f"`{key}`" + (f" (a list of items with {_ticks(inner)})" if inner else "")
                 for key, inner in sections(rtype.spec).items()]
        lines.append("- Sections: " + ", ".join(parts) + ".")
    lines += ["", *_table(field_rows(rtype.spec))]
    example = EXAMPLES.get(rtype.name)
    if example is not None:
        lines += ["", "Example:", "", "```yaml", example.rstrip("\n"), "```"]
    return [*lines, ""]


def render_reference() -> str:
    """The Markdown of docs/reference.md: the core types, then the policies, in the registry's order."""
    everything = resource_types()
    core = [rtype for rtype in everything if not issubclass(rtype.spec, PolicySpec)]
    policies = [rtype for rtype in everything if issubclass(rtype.spec, PolicySpec)]
    lines = [
        "# Resource and policy reference",
        "",
        "<!-- Generated from the schemas by meshcast/resources/reference.py: do not edit. "
        f"Regenerate with `{REGENERATE}`. -->",
        "",
        "This file is generated from the schemas of the resource types (the pydantic models registered in "
        "`meshcast.resources`, their `Field(description=...)` and the docstrings of `meshcast.policies`), so it "
        "cannot drift from the code. Do not edit it: change the schema and run "
        f"`{REGENERATE}`; `tests/unit/test_reference.py` fails until it matches.",
        "",
        "Every resource is a document with `type`, `name`, `mesh` (for the types inside a mesh; `default` when "
        "left out), optional `labels`, and `spec`. The paths in the tables are relative to `spec`; `[]` marks "
        "the items of a list. Fields are camelCase; unknown fields are errors and types are strict (`port: \"80\"` "
        "is refused). *optional* means the field may be left out: in a policy it is then inherited from a less "
        "specific policy, or the data plane's default applies (given in the description). Durations are a number "
        "and a unit (`ms`, `s`, `m`, `h`): `500ms`, `30s`, `1h30m`. A name (DNS label) is 1-63 lowercase "
        "letters, digits or `-`, starting and ending with a letter or digit.",
        "",
        "- Core types: " + ", ".join(f"[{t.name}](#{t.name.lower()})" for t in core) + ".",
        "- Policies: " + ", ".join(f"[{t.name}](#{t.name.lower()})" for t in policies) + ".",
        "",
        "## Core resources",
        "",
    ]
    for rtype in core:
        lines += _type_section(rtype)
    lines += ["## Policies", "", _body(kinds_module), "",
              "### targetRef", "", _body(targetref_module), "",
              "### How policies combine", "", _body(resolve_module), ""]
    for rtype in policies:
        lines += _type_section(rtype)
    return "\n".join(lines).rstrip("\n") + "\n"
