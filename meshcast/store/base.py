"""The store interface every backend implements (memory, etcd), and the events a watch delivers.

Theory of operation: a store holds resources keyed by (type, mesh, name) and numbers every change with a
store-wide, strictly increasing revision. A resource's `version` is the revision of its last change, as a string;
`update` and `delete` may demand the version the caller read (optimistic concurrency) and raise `Conflict` when the
resource moved on. `watch(after_revision=R)` delivers every change with a revision greater than R, in revision order,
exactly once; a backend that no longer holds the history back to R raises `WatchCompacted`, and the watcher must
list again and watch from the list's revision.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from meshcast.errors import MeshcastError
from meshcast.resources import Resource


class EventKind(enum.StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"


@dataclass(frozen=True)
class ResourceChanged:
    """One change. `resource` is the new state, or the last known state for a deletion (None if unknown)."""

    kind: EventKind
    revision: int
    type: str
    mesh: str
    name: str
    resource: Resource | None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.type, self.mesh, self.name)


@dataclass(frozen=True)
class ListResult:
    """Resources as of `revision`: watching from `revision` misses nothing that happened after the list."""

    items: list[Resource]
    revision: int


class WatchCompacted(MeshcastError):
    """The store no longer has the history the watch asked for: list again, then watch from the new revision."""

    http_status = 410

    def __init__(self, requested: int, oldest: int) -> None:
        self.requested = requested
        self.oldest = oldest
        super().__init__(f"revision {requested} is compacted; the oldest available is {oldest}")


@runtime_checkable
class ResourceStore(Protocol):
    """Async resource store. Every method is safe to call from trio tasks; none blocks the event loop."""

    async def get(self, type: str, name: str, mesh: str = "") -> Resource:
        """Return the resource or raise NotFound."""
        ...

    async def list(self, type: str | None = None, mesh: str | None = None) -> ListResult:
        """Every resource of `type` (all types when None), in `mesh` when given, sorted by key."""
        ...

    async def create(self, resource: Resource) -> Resource:
        """Store a new resource; raise AlreadyExists. Returns it with version and timestamps set."""
        ...

    async def update(self, resource: Resource) -> Resource:
        """Replace a resource whose current version is `resource.version`; raise NotFound or Conflict."""
        ...

    async def delete(self, type: str, name: str, mesh: str = "", *, version: str | None = None) -> None:
        """Delete a resource (only at `version` when given); raise NotFound or Conflict."""
        ...

    async def revision(self) -> int:
        """The store's current revision."""
        ...

    def watch(
        self, *, after_revision: int, type: str | None = None, mesh: str | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[ResourceChanged]]:
        """Open a watch delivering every change after `after_revision` (see module docs)."""
        ...

    async def aclose(self) -> None: ...


def matches(event: ResourceChanged, type: str | None, mesh: str | None) -> bool:
    return (type is None or event.type == type) and (mesh is None or event.mesh == mesh)
