"""In-memory store: the default for a standalone zone, and the model the etcd store is tested against.

It keeps a bounded history of changes (default 10,000) so watches can start from a recent revision; a watch asking
for older history gets `WatchCompacted`, exactly as etcd answers after a compaction. All state changes happen
synchronously inside one trio task step, so no lock is needed: trio only switches tasks at checkpoints.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime

import trio

from meshcast.errors import AlreadyExists, Conflict, NotFound
from meshcast.resources import Resource
from meshcast.resources.model import now
from meshcast.store.base import EventKind, ListResult, ResourceChanged, WatchCompacted, matches

Key = tuple[str, str, str]


class MemoryStore:
    def __init__(self, *, history: int = 10_000) -> None:
        self._items: dict[Key, Resource] = {}
        self._revision = 0
        self._log: collections.deque[ResourceChanged] = collections.deque(maxlen=history)
        self._changed = trio.Event()
        self._closed = False

    async def get(self, type: str, name: str, mesh: str = "") -> Resource:
        await trio.lowlevel.checkpoint()
        try:
            return self._items[(type, mesh, name)]
        except KeyError:
            raise NotFound(f"{type} {_where(mesh, name)} not found") from None

    async def list(self, type: str | None = None, mesh: str | None = None) -> ListResult:
        await trio.lowlevel.checkpoint()
        items = [r for k, r in sorted(self._items.items()) if (type is None or k[0] == type)
                 and (mesh is None or k[1] == mesh)]
        return ListResult(items=items, revision=self._revision)

    async def create(self, resource: Resource) -> Resource:
        await trio.lowlevel.checkpoint()
        if resource.key in self._items:
            raise AlreadyExists(f"{resource.describe()} already exists")
        stamp = now()
        return self._commit(EventKind.CREATED, resource, created=stamp, modified=stamp)

    async def update(self, resource: Resource) -> Resource:
        await trio.lowlevel.checkpoint()
        current = self._items.get(resource.key)
        if current is None:
            raise NotFound(f"{resource.describe()} not found")
        if resource.version is None:
            raise ValueError("update needs the version the caller read")
        if resource.version != current.version:
            raise Conflict(
                f"{resource.describe()} changed since version {resource.version} (now {current.version}): "
                "read it again and retry"
            )
        return self._commit(EventKind.UPDATED, resource, created=current.creation_time, modified=now())

    async def delete(self, type: str, name: str, mesh: str = "", *, version: str | None = None) -> None:
        await trio.lowlevel.checkpoint()
        key = (type, mesh, name)
        current = self._items.get(key)
        if current is None:
            raise NotFound(f"{type} {_where(mesh, name)} not found")
        if version is not None and version != current.version:
            raise Conflict(f"{current.describe()} changed since version {version} (now {current.version})")
        del self._items[key]
        self._revision += 1
        self._publish(ResourceChanged(EventKind.DELETED, self._revision, type, mesh, name, current))

    async def revision(self) -> int:
        await trio.lowlevel.checkpoint()
        return self._revision

    def _commit(
        self, kind: EventKind, resource: Resource, *, created: datetime | None, modified: datetime | None
    ) -> Resource:
        self._revision += 1
        stored = replace(resource, version=str(self._revision), creation_time=created, modification_time=modified)
        self._items[stored.key] = stored
        self._publish(ResourceChanged(kind, self._revision, stored.type, stored.mesh, stored.name, stored))
        return stored

    def _publish(self, event: ResourceChanged) -> None:
        self._log.append(event)
        self._changed.set()
        self._changed = trio.Event()

    @asynccontextmanager
    async def watch(
        self, *, after_revision: int, type: str | None = None, mesh: str | None = None
    ) -> AsyncIterator[AsyncIterator[ResourceChanged]]:
        yield _Follower(self, after_revision, type, mesh)

    async def aclose(self) -> None:
        self._closed = True
        self._changed.set()


class _Follower:
    """Iterates the store's history from a revision. A class rather than an async generator, so that cancelling
    one `__anext__` (say, under `move_on_after`) leaves the watch usable, as the etcd watch is."""

    def __init__(self, store: MemoryStore, after: int, type: str | None, mesh: str | None) -> None:
        self._store = store
        self._position = after
        self._type = type
        self._mesh = mesh

    def __aiter__(self) -> _Follower:
        return self

    async def __anext__(self) -> ResourceChanged:
        store = self._store
        # The only awaits are here and the wait below, before or without any change of position: a cancelled
        # call loses no event.
        await trio.lowlevel.checkpoint()
        while True:
            if store._closed:
                raise StopAsyncIteration
            oldest = store._log[0].revision if store._log else store._revision + 1
            if self._position + 1 < oldest and self._position < store._revision:
                raise WatchCompacted(self._position + 1, oldest)
            # Revisions in the log are contiguous, so the next event sits at a computable index.
            while self._position < store._revision:
                event = store._log[self._position + 1 - oldest]
                self._position = event.revision
                if matches(event, self._type, self._mesh):
                    return event
            await store._changed.wait()


def _where(mesh: str, name: str) -> str:
    return f"{mesh}/{name}" if mesh else name
