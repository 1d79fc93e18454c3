"""Resource model: documents, their types and validation. Importing this package registers the core types."""

from meshcast.resources import types as types
from meshcast.resources.codec import dump_documents, load_documents
from meshcast.resources.model import (
    DEFAULT_MESH,
    Resource,
    ResourceType,
    Scope,
    Spec,
    Sync,
    lookup_type,
    parse_resource,
    register,
    resource_types,
)

__all__ = [
    "DEFAULT_MESH",
    "Resource",
    "ResourceType",
    "Scope",
    "Spec",
    "Sync",
    "dump_documents",
    "load_documents",
    "lookup_type",
    "parse_resource",
    "register",
    "resource_types",
    "types",
]

# The policy types register with the same registry (imported last: they build on the core types).
import meshcast.policies  # noqa: F401
