"""How a resource is stored as bytes (JSON) by backends that need bytes (etcd, the on-disk cache)."""

from __future__ import annotations

import json

from meshcast.resources import Resource, parse_resource


def encode(resource: Resource) -> bytes:
    doc = resource.to_dict(meta=True)
    doc.pop("version", None)  # the version is the store's revision, never part of the value
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def decode(data: bytes, *, version: str | None) -> Resource:
    doc = json.loads(data)
    resource = parse_resource(doc, keep_meta=True)
    return resource.with_meta(
        version=version, created=resource.creation_time, modified=resource.modification_time
    )
