"""Reading and writing resource documents as YAML (one or more documents) or JSON (an object or a list)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import yaml

from meshcast.errors import ValidationError, Violation
from meshcast.resources.model import Resource, parse_resource


def decode_text(text: str, *, source: str = "input") -> list[Any]:
    """Decode YAML or JSON text into a list of documents; syntax errors name the line."""
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(source, [Violation("", f"invalid JSON at line {exc.lineno}: {exc.msg}")]) from None
        return data if isinstance(data, list) else [data]
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ValidationError(source, [Violation("", f"invalid YAML{where}: {problem}")]) from None
    return docs


def load_documents(text: str, *, source: str = "input") -> list[Resource]:
    """Parse every document in `text`; if any is invalid, raise for the first one and return nothing."""
    docs = decode_text(text, source=source)
    if not docs:
        raise ValidationError(source, [Violation("", "no resource documents found")])
    resources = []
    for index, doc in enumerate(docs):
        try:
            resources.append(parse_resource(doc))
        except ValidationError as exc:
            if not exc.subject and len(docs) > 1:
                raise ValidationError(f"{source} document {index + 1}", exc.violations) from None
            raise
    return resources


def dump_documents(resources: Iterable[Resource], fmt: str = "yaml", *, meta: bool = True) -> str:
    items = [r.to_dict(meta=meta) for r in resources]
    if fmt == "json":
        return json.dumps(items[0] if len(items) == 1 else items, indent=2) + "\n"
    return yaml.safe_dump_all(items, sort_keys=False, default_flow_style=False)
