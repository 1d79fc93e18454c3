"""The resource model: typed documents (`type`, `name`, `mesh`, `spec`) and the registry of their types.

Theory of operation: every resource type registers a `ResourceType` descriptor naming its spec schema (a pydantic
model), its scope (global, like `Mesh`, or inside a mesh, like `Dataplane`) and the way it syncs between the global
and zone control planes. Stores, the API and the CLI only ever go through the registry, so a new policy type plugs in
by declaring its schema and registering it. `parse_resource` validates a whole document and collects every violation
with its field path; it raises only `meshcast.errors.ValidationError`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from meshcast.errors import ValidationError, Violation, format_loc

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
DEFAULT_MESH = "default"


class Scope(enum.StrEnum):
    GLOBAL = "global"  # no mesh: Mesh, Zone
    MESH = "mesh"  # lives inside a mesh: Dataplane and every policy


class Sync(enum.StrEnum):
    GLOBAL_TO_ZONES = "global-to-zones"  # written at the global CP, read-only in zones (meshes, policies)
    ZONE_TO_GLOBAL = "zone-to-global"  # written in a zone, published upwards (inventory)
    LOCAL = "local"  # never leaves the control plane that stores it (dataplanes)


class Spec(BaseModel):
    """Base of every spec schema: unknown fields are errors, types are strict, fields are camelCase on the wire."""

    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, alias_generator=to_camel, populate_by_name=True
    )


Validator = Callable[["Resource"], Iterable[Violation]]


@dataclass(frozen=True)
class ResourceType:
    """What the registry knows of one type. `check` adds rules that span fields (uniqueness, references)."""

    name: str
    plural: str
    spec: type[Spec]
    scope: Scope
    sync: Sync
    aliases: tuple[str, ...] = ()
    check: Validator | None = None
    summary: str = ""


_REGISTRY: dict[str, ResourceType] = {}
_LOOKUP: dict[str, ResourceType] = {}


def register(rtype: ResourceType) -> ResourceType:
    if rtype.name in _REGISTRY:
        raise RuntimeError(f"resource type {rtype.name} registered twice")
    _REGISTRY[rtype.name] = rtype
    for alias in (rtype.name, rtype.name.lower(), rtype.plural, *rtype.aliases):
        _LOOKUP[alias.lower()] = rtype
    return rtype


def resource_types() -> list[ResourceType]:
    return list(_REGISTRY.values())


def lookup_type(name: str) -> ResourceType:
    """Find a type by its name, plural or alias, case-insensitively (`Dataplane`, `dataplanes`, `dp`)."""
    try:
        return _LOOKUP[name.lower()]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ValidationError("", [Violation("type", f"unknown resource type {name!r} (known: {known})")]) from None


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class Resource:
    """One stored document. `version` is the store's opaque version string, None before it is stored."""

    type: str
    name: str
    spec: Spec
    mesh: str = ""
    version: str | None = None
    creation_time: datetime | None = None
    modification_time: datetime | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def rtype(self) -> ResourceType:
        return _REGISTRY[self.type]

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.type, self.mesh, self.name)

    def describe(self) -> str:
        return f"{self.type} {self.mesh + '/' if self.mesh else ''}{self.name}"

    def with_meta(self, *, version: str | None, created: datetime | None, modified: datetime | None) -> Resource:
        return replace(self, version=version, creation_time=created, modification_time=modified)

    def to_dict(self, *, meta: bool = True) -> dict[str, Any]:
        """The document as users write it (camelCase spec), with read-only metadata when `meta`."""
        out: dict[str, Any] = {"type": self.type}
        if self.mesh:
            out["mesh"] = self.mesh
        out["name"] = self.name
        if self.labels:
            out["labels"] = dict(self.labels)
        out["spec"] = self.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
        if meta:
            if self.version is not None:
                out["version"] = self.version
            if self.creation_time is not None:
                out["creationTime"] = self.creation_time.isoformat().replace("+00:00", "Z")
            if self.modification_time is not None:
                out["modificationTime"] = self.modification_time.isoformat().replace("+00:00", "Z")
        return out

    def same_content(self, other: Resource) -> bool:
        return self.key == other.key and self.spec == other.spec and dict(self.labels) == dict(other.labels)


_META_FIELDS = {"version", "creationTime", "modificationTime"}
_ENVELOPE_FIELDS = {"type", "name", "mesh", "spec", "labels"} | _META_FIELDS


def _check_label(value: object, path: str, what: str) -> list[Violation]:
    if not isinstance(value, str) or not value:
        return [Violation(path, f"{what} is required and must be a string")]
    if not DNS_LABEL.fullmatch(value):
        return [
            Violation(path, f"{value!r} is not a valid {what}: use 1-63 lowercase letters, digits or '-', "
                      "starting and ending with a letter or digit")
        ]
    return []


def parse_resource(doc: object, *, default_mesh: str = DEFAULT_MESH, keep_meta: bool = False) -> Resource:
    """Validate a decoded document (a mapping) and build its Resource, or raise ValidationError naming every fault."""
    if not isinstance(doc, Mapping):
        raise ValidationError("", [Violation("", "a resource must be a mapping with type, name and spec")])
    type_name = doc.get("type")
    if not isinstance(type_name, str) or not type_name:
        raise ValidationError("", [Violation("type", "is required (e.g. Mesh, Dataplane)")])
    rtype = _REGISTRY.get(type_name)
    if rtype is None:
        known = ", ".join(sorted(_REGISTRY))
        raise ValidationError("", [Violation("type", f"unknown resource type {type_name!r} (known: {known})")])
    raw_name = doc.get("name")
    printable = isinstance(raw_name, str) and raw_name.isprintable() and 0 < len(raw_name) <= 253
    subject = f"{type_name} {raw_name}" if printable else type_name
    violations: list[Violation] = []
    for key in doc:
        if key not in _ENVELOPE_FIELDS:
            violations.append(
                Violation(format_loc([str(key)]), "unknown field (expected type, name, mesh, labels, spec)")
            )
    violations += _check_label(raw_name, "name", "name")
    mesh = doc.get("mesh")
    if rtype.scope is Scope.GLOBAL:
        if mesh not in (None, ""):
            violations.append(Violation("mesh", f"must be empty: {type_name} is not inside a mesh"))
        mesh = ""
    else:
        mesh = default_mesh if mesh is None else mesh
        violations += _check_label(mesh, "mesh", "mesh name")
    labels = doc.get("labels") or {}
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        violations.append(Violation("labels", "must be a mapping of strings to strings"))
        labels = {}
    spec_doc = doc.get("spec", {})
    if spec_doc is None:
        spec_doc = {}
    spec: Spec | None = None
    try:
        spec = rtype.spec.model_validate(spec_doc)
    except pydantic.ValidationError as exc:
        violations += violations_from_pydantic(exc, prefix="spec")
    if violations or spec is None:
        raise ValidationError(subject, violations)
    resource = Resource(type=type_name, name=str(raw_name), mesh=str(mesh), spec=spec, labels=dict(labels))
    if rtype.check is not None:
        extra = list(rtype.check(resource))
        if extra:
            raise ValidationError(subject, extra)
    if keep_meta:
        resource = resource.with_meta(
            version=_opt_str(doc.get("version")),
            created=_opt_time(doc.get("creationTime")),
            modified=_opt_time(doc.get("modificationTime")),
        )
    return resource


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _opt_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


_TYPE_WORDS = {
    "int": "an integer",
    "bool": "true or false",
    "string": "a string",
    "dict": "a mapping",
    "list": "a list",
    "float": "a number",
    "model": "a mapping",
}


def _message(err: Mapping[str, Any]) -> str:
    kind: str = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind == "literal_error":
        expected = str(ctx.get("expected"))
        return f"must be one of {expected}" if " or " in expected else f"must be {expected}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return str(err["msg"]).replace("Input should be", "must be")
    if kind in ("too_short", "too_long", "string_too_short", "string_too_long"):
        return str(err["msg"]).replace("Value should", "must").replace("String should", "must").replace(
            "List should", "must")
    for word, phrase in _TYPE_WORDS.items():
        if kind.startswith(word) and (kind.endswith("_type") or kind.endswith("_parsing")):
            return f"must be {phrase}"
    return str(err["msg"]).replace("Input should be", "must be")


def violations_from_pydantic(exc: pydantic.ValidationError, prefix: str = "") -> list[Violation]:
    out: list[Violation] = []
    for err in exc.errors(include_url=False):
        # Tagged unions and the like add a type name to the loc; drop those non-field parts.
        loc = [p for p in err["loc"] if isinstance(p, int) or not p[:1].isupper()]
        out.append(Violation(format_loc(loc, prefix), _message(err)))
    return out
