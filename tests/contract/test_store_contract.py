"""One conformance suite for every `ResourceStore` backend (memory, etcd): the semantics of meshcast.store.base."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

import pyetcd
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshcast.errors import AlreadyExists, Conflict, NotFound
from meshcast.resources import Resource, parse_resource
from meshcast.store import EventKind, MemoryStore, ResourceChanged, ResourceStore, WatchCompacted
from meshcast.store.etcd import EtcdStore
from tests.support.store import assert_quiet, mesh, take

MEMORY_HISTORY = 32


class Backend(Protocol):
    name: str

    async def open(self) -> ResourceStore: ...

    async def compact(self, store: ResourceStore) -> None:
        """Make every revision up to the store's current one unavailable to watches."""


class MemoryBackend:
    name = "memory"

    async def open(self) -> ResourceStore:
        return MemoryStore(history=MEMORY_HISTORY)

    async def compact(self, store: ResourceStore) -> None:
        # The memory store forgets all but its last MEMORY_HISTORY changes.
        filler = await store.create(zone("filler"))
        for _ in range(MEMORY_HISTORY):
            filler = await store.update(filler)


class EtcdBackend:
    name = "etcd"

    def __init__(self, url: str) -> None:
        self.url = url

    async def open(self) -> ResourceStore:
        # A fresh prefix per store, so hypothesis examples sharing one etcd never see each other.
        return await EtcdStore.open([self.url], prefix=f"/meshcast-test/{uuid.uuid4().hex}/", timeout=2.0)

    async def compact(self, store: ResourceStore) -> None:
        revision = await store.revision()
        host, port = self.url.removeprefix("http://").rsplit(":", 1)

        def compact() -> None:
            client = pyetcd.client(host, int(port), timeout=2)
            try:
                client.compact(revision, physical=True)
            finally:
                client.close()

        await trio.to_thread.run_sync(compact)


@pytest.fixture(params=["memory", pytest.param("etcd", marks=pytest.mark.etcd)])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        yield MemoryBackend()
    else:
        yield EtcdBackend(request.getfixturevalue("etcd").client_url)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[ResourceStore]:
    opened = await backend.open()
    try:
        yield opened
    finally:
        await opened.aclose()


# --- documents --------------------------------------------------------------------------------------------------



def zone(name: str, **labels: str) -> Resource:
    return parse_resource({"type": "Zone", "name": name, "labels": labels})


def dataplane(name: str, mesh: str = "default", port: int = 10001, **labels: str) -> Resource:
    return parse_resource({
        "type": "Dataplane", "mesh": mesh, "name": name, "labels": labels,
        "spec": {"address": "127.0.0.1", "inbound": [{"port": port, "service": "web"}]},
    })




def summary(events: list[ResourceChanged]) -> list[tuple[str, str, str, str]]:
    return [(e.kind.value, e.type, e.mesh, e.name) for e in events]


# --- CRUD -------------------------------------------------------------------------------------------------------


async def test_get_missing_raises_not_found(store: ResourceStore) -> None:
    with pytest.raises(NotFound, match="Mesh nope not found"):
        await store.get("Mesh", "nope")
    with pytest.raises(NotFound, match="Dataplane default/nope not found"):
        await store.get("Dataplane", "nope", mesh="default")


async def test_create_sets_version_and_times_and_get_returns_it(store: ResourceStore) -> None:
    created = await store.create(dataplane("web-1", app="web"))
    assert created.version is not None and int(created.version) > 0
    assert created.creation_time is not None and created.creation_time == created.modification_time
    assert created.creation_time.tzinfo is not None
    fetched = await store.get("Dataplane", "web-1", mesh="default")
    assert fetched == created
    assert fetched.same_content(dataplane("web-1", app="web"))


async def test_create_twice_raises_already_exists_and_keeps_the_first(store: ResourceStore) -> None:
    first = await store.create(mesh("payments", v="1"))
    with pytest.raises(AlreadyExists, match="Mesh payments already exists"):
        await store.create(mesh("payments", v="2"))
    assert await store.get("Mesh", "payments") == first


async def test_same_name_in_different_meshes_and_scopes_are_different_resources(store: ResourceStore) -> None:
    await store.create(dataplane("x", mesh="a"))
    await store.create(dataplane("x", mesh="b"))
    await store.create(mesh("x"))
    with pytest.raises(NotFound):
        await store.get("Dataplane", "x")  # no global Dataplane x
    assert (await store.get("Dataplane", "x", mesh="b")).mesh == "b"


async def test_list_filters_by_type_and_mesh_and_sorts_by_key(store: ResourceStore) -> None:
    # "a-b" sorts after "a" as a tuple but before it as bytes ("a-b/" < "a/"): the store must sort by key.
    for item in [dataplane("z", mesh="a-b"), dataplane("b", mesh="a"), dataplane("a", mesh="a", port=10002),
                 mesh("a-b"), mesh("a"), zone("east")]:
        await store.create(item)
    everything = await store.list()
    assert [r.key for r in everything.items] == [
        ("Dataplane", "a", "a"), ("Dataplane", "a", "b"), ("Dataplane", "a-b", "z"),
        ("Mesh", "", "a"), ("Mesh", "", "a-b"), ("Zone", "", "east"),
    ]
    assert everything.revision == await store.revision()
    assert [r.name for r in (await store.list("Dataplane")).items] == ["a", "b", "z"]
    assert [r.name for r in (await store.list("Dataplane", mesh="a")).items] == ["a", "b"]
    assert [r.name for r in (await store.list("Dataplane", mesh="a-b")).items] == ["z"]
    assert (await store.list("Dataplane", mesh="c")).items == []
    assert (await store.list("Mesh", mesh="a")).items == []  # a global type is in no mesh
    assert [r.key for r in (await store.list(mesh="")).items] == [
        ("Mesh", "", "a"), ("Mesh", "", "a-b"), ("Zone", "", "east")]
    assert [r.key for r in (await store.list(mesh="a")).items] == [("Dataplane", "a", "a"), ("Dataplane", "a", "b")]
    assert (await store.list("Zone")).items == [await store.get("Zone", "east")]


async def test_update_with_current_version_replaces_and_keeps_creation_time(store: ResourceStore) -> None:
    created = await store.create(dataplane("web-1", port=10001))
    updated = await store.update(dataplane("web-1", port=10005).with_meta(
        version=created.version, created=None, modified=None))
    assert updated.version is not None and created.version is not None
    assert int(updated.version) > int(created.version)
    assert updated.creation_time == created.creation_time
    assert updated.modification_time is not None and created.modification_time is not None
    assert updated.modification_time >= created.modification_time
    assert updated.spec.inbound[0].port == 10005  # type: ignore[attr-defined]
    assert await store.get("Dataplane", "web-1", mesh="default") == updated


async def test_update_with_a_stale_version_conflicts(store: ResourceStore) -> None:
    created = await store.create(mesh("m", v="1"))
    current = await store.update(created)
    with pytest.raises(Conflict, match=f"changed since version {created.version}"):
        await store.update(mesh("m", v="2").with_meta(version=created.version, created=None, modified=None))
    assert await store.get("Mesh", "m") == current


async def test_update_missing_raises_not_found_and_needs_a_version(store: ResourceStore) -> None:
    with pytest.raises(NotFound):
        await store.update(mesh("ghost").with_meta(version="1", created=None, modified=None))
    await store.create(mesh("m"))
    with pytest.raises(ValueError, match="version"):
        await store.update(mesh("m"))


async def test_delete_without_and_with_version(store: ResourceStore) -> None:
    await store.create(mesh("a"))
    b = await store.create(mesh("b"))
    await store.delete("Mesh", "a")
    with pytest.raises(NotFound):
        await store.get("Mesh", "a")
    with pytest.raises(NotFound):
        await store.delete("Mesh", "a")
    b2 = await store.update(b)
    with pytest.raises(Conflict):
        await store.delete("Mesh", "b", version=b.version)
    assert await store.get("Mesh", "b") == b2
    await store.delete("Mesh", "b", version=b2.version)
    with pytest.raises(NotFound):
        await store.delete("Mesh", "b", version=b2.version)
    await store.create(dataplane("d", mesh="x"))
    with pytest.raises(NotFound):
        await store.delete("Dataplane", "d", mesh="y")
    await store.delete("Dataplane", "d", mesh="x")
    assert (await store.list()).items == []


async def test_every_change_gets_a_higher_version_and_revision(store: ResourceStore) -> None:
    start = await store.revision()
    seen = [start]
    a = await store.create(mesh("a"))
    seen.append(int(a.version or 0))
    for _ in range(3):
        a = await store.update(a)
        seen.append(int(a.version or 0))
    b = await store.create(dataplane("b"))
    seen.append(int(b.version or 0))
    await store.delete("Mesh", "a")
    after_delete = await store.revision()
    seen.append(after_delete)
    assert seen == sorted(set(seen)), seen
    assert (await store.list()).revision == after_delete


# --- watches ----------------------------------------------------------------------------------------------------


async def test_watch_delivers_changes_before_and_after_it_opened_in_order_once(store: ResourceStore) -> None:
    start = await store.revision()
    a = await store.create(mesh("a"))
    a = await store.update(a)
    async with store.watch(after_revision=start) as events:
        first = await take(events, 2)
        b = await store.create(dataplane("b"))
        await store.delete("Mesh", "a")
        await store.create(mesh("a", again="yes"))
        rest = await take(events, 3)
        await assert_quiet(events)
    got = first + rest
    assert summary(got) == [
        ("created", "Mesh", "", "a"), ("updated", "Mesh", "", "a"), ("created", "Dataplane", "default", "b"),
        ("deleted", "Mesh", "", "a"), ("created", "Mesh", "", "a"),
    ]
    revisions = [e.revision for e in got]
    assert revisions == sorted(set(revisions)) and revisions[0] > start
    assert got[1].resource == a and got[2].resource == b
    assert got[3].resource is not None and got[3].resource.version == a.version  # the last known state
    assert got[4].resource is not None and got[4].resource.labels == {"again": "yes"}
    assert all(e.resource is None or e.resource.version == str(e.revision) for e in got if e.kind != "deleted")


async def test_watch_from_a_list_revision_misses_nothing_after_the_list(store: ResourceStore) -> None:
    await store.create(mesh("before"))
    listing = await store.list()
    await store.create(mesh("after-1"))
    async with store.watch(after_revision=listing.revision) as events:
        await store.create(mesh("after-2"))
        got = await take(events, 2)
        await assert_quiet(events)
    assert [e.name for e in got] == ["after-1", "after-2"]


async def test_watch_filters_by_type_and_mesh(store: ResourceStore) -> None:
    start = await store.revision()
    for item in [mesh("a"), dataplane("d1", mesh="a"), dataplane("d2", mesh="b"), zone("z"),
                 dataplane("d3", mesh="a")]:
        await store.create(item)
    await store.delete("Dataplane", "d1", mesh="a")

    async def names(count: int, **filters: Any) -> list[tuple[str, str]]:
        async with store.watch(after_revision=start, **filters) as events:
            got = await take(events, count)
            await assert_quiet(events, 0.2)
        return [(e.kind.value, e.name) for e in got]

    assert await names(4, type="Dataplane") == [("created", "d1"), ("created", "d2"), ("created", "d3"),
                                                ("deleted", "d1")]
    assert await names(3, type="Dataplane", mesh="a") == [("created", "d1"), ("created", "d3"), ("deleted", "d1")]
    assert await names(1, mesh="b") == [("created", "d2")]
    assert await names(1, type="Mesh") == [("created", "a")]
    assert await names(0, type="Mesh", mesh="a") == []
    assert await names(2, mesh="") == [("created", "a"), ("created", "z")]


async def test_watch_from_a_compacted_revision_raises_watch_compacted(store: ResourceStore,
                                                                      backend: Backend) -> None:
    start = await store.revision()
    a = await store.create(mesh("a"))
    await store.update(a)
    await backend.compact(store)
    with pytest.raises(WatchCompacted) as info:
        async with store.watch(after_revision=start) as events:
            await take(events, 1)
    assert info.value.requested == start + 1 and info.value.oldest > start + 1
    # Listing again and watching from the list's revision works.
    listing = await store.list("Mesh")
    async with store.watch(after_revision=listing.revision, type="Mesh") as events:
        await store.create(mesh("b"))
        assert [e.name for e in await take(events, 1)] == ["b"]


async def test_closing_the_store_ends_open_watches(backend: Backend) -> None:
    store = await backend.open()
    ended = trio.Event()

    async def consume() -> None:
        async with store.watch(after_revision=await store.revision()) as events:
            async for _ in events:
                pass
        ended.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        await store.create(mesh("a"))
        await trio.sleep(0.1)
        await store.aclose()
        with trio.fail_after(5):
            await ended.wait()


# --- a dict model ------------------------------------------------------------------------------------------------

# Few keys, so operations often meet an existing resource; same names across types, scopes and meshes.
KEYS: list[tuple[str, str, str]] = [("Mesh", "", "a"), ("Zone", "", "a"), ("Dataplane", "m1", "a"),
                                    ("Dataplane", "m2", "a")]
key_index = st.integers(0, len(KEYS) - 1)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("create"), key_index, st.integers(0, 3)),
        st.tuples(st.just("update"), key_index, st.integers(0, 3),
                  st.sampled_from(["current", "current", "stale", "none"])),
        st.tuples(st.just("delete"), key_index, st.sampled_from(["any", "current", "stale"])),
        st.tuples(st.just("get"), key_index),
        st.tuples(st.just("list"), st.sampled_from([None, "Mesh", "Dataplane"]),
                  st.sampled_from([None, "", "m1", "m2"])),
    ),
    max_size=25,
)


def document(key: tuple[str, str, str], variant: int) -> Resource:
    type, mesh_name, name = key
    if type == "Dataplane":
        return dataplane(name, mesh=mesh_name, port=10000 + variant, v=str(variant))
    return parse_resource({"type": type, "name": name, "labels": {"v": str(variant)}})


async def run_against_model(store: ResourceStore, ops: list[tuple[Any, ...]]) -> None:
    model: dict[tuple[str, str, str], Resource] = {}
    start = last = await store.revision()
    writes = 0
    for op in ops:
        kind = op[0]
        key = KEYS[op[1]] if kind != "list" else KEYS[0]
        current = model.get(key)
        if kind == "create":
            if current is not None:
                with pytest.raises(AlreadyExists):
                    await store.create(document(key, op[2]))
                continue
            created = await store.create(document(key, op[2]))
            assert int(created.version or 0) > last and created.creation_time == created.modification_time
            last, model[key], writes = int(created.version or 0), created, writes + 1
        elif kind == "update":
            choice = op[3]
            version = None if choice == "none" else (
                str(int(current.version or 0) - 1) if current is not None and choice == "stale"
                else (current.version if current is not None else "1"))
            doc = document(key, op[2]).with_meta(version=version, created=None, modified=None)
            if current is None:
                with pytest.raises(NotFound):
                    await store.update(doc)
            elif choice == "none":
                with pytest.raises(ValueError, match="version"):
                    await store.update(doc)
            elif choice == "stale":
                with pytest.raises(Conflict):
                    await store.update(doc)
            else:
                updated = await store.update(doc)
                assert int(updated.version or 0) > last and updated.creation_time == current.creation_time
                assert updated.same_content(doc)
                last, model[key], writes = int(updated.version or 0), updated, writes + 1
        elif kind == "delete":
            type, mesh_name, name = key
            choice = op[2]
            version = None if choice == "any" or current is None else (
                current.version if choice == "current" else str(int(current.version or 0) - 1))
            if current is None:
                with pytest.raises(NotFound):
                    await store.delete(type, name, mesh=mesh_name, version=version)
            elif choice == "stale":
                with pytest.raises(Conflict):
                    await store.delete(type, name, mesh=mesh_name, version=version)
            else:
                await store.delete(type, name, mesh=mesh_name, version=version)
                del model[key]
                writes += 1
        elif kind == "get":
            type, mesh_name, name = key
            if current is None:
                with pytest.raises(NotFound):
                    await store.get(type, name, mesh=mesh_name)
            else:
                assert await store.get(type, name, mesh=mesh_name) == current
        else:
            _, type_filter, mesh_filter = op
            listing = await store.list(type_filter, mesh=mesh_filter)
            expected = [r for k, r in sorted(model.items()) if (type_filter is None or k[0] == type_filter)
                        and (mesh_filter is None or k[1] == mesh_filter)]
            assert listing.items == expected
            assert listing.revision >= last
    # Replaying the watch from the start rebuilds the model: every change, in order, exactly once.
    replay: dict[tuple[str, str, str], Resource] = {}
    if writes:
        async with store.watch(after_revision=start) as events:
            changes = await take(events, writes)
        revisions = [c.revision for c in changes]
        assert revisions == sorted(set(revisions))
        for change in changes:
            if change.kind == EventKind.DELETED:
                assert change.key in replay
                del replay[change.key]
            else:
                assert (change.kind == EventKind.CREATED) == (change.key not in replay)
                assert change.resource is not None
                replay[change.key] = change.resource
    assert replay == model


def _check_model(backend: Backend, ops: list[tuple[Any, ...]]) -> None:
    async def main() -> None:
        store = await backend.open()
        try:
            await run_against_model(store, ops)
        finally:
            await store.aclose()

    trio.run(main)


_MODEL_SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture]}


@settings(max_examples=100, **_MODEL_SETTINGS)  # type: ignore[arg-type]
@given(ops=OPS)
def test_memory_store_matches_a_dict_model(ops: list[tuple[Any, ...]]) -> None:
    _check_model(MemoryBackend(), ops)


@pytest.mark.etcd
@settings(max_examples=25, **_MODEL_SETTINGS)  # type: ignore[arg-type]
@given(ops=OPS)
def test_etcd_store_matches_a_dict_model(etcd: Any, ops: list[tuple[Any, ...]]) -> None:
    _check_model(EtcdBackend(etcd.client_url), ops)


async def test_a_cancelled_wait_leaves_the_watch_usable(store: Any) -> None:
    """A consumer that waits with a timeout must neither lose nor repeat events."""
    revision = await store.revision()
    async with store.watch(after_revision=revision) as events:
        with trio.move_on_after(0.05):
            await events.__anext__()
        created = await store.create(mesh("after-timeout"))
        with trio.fail_after(5):
            event = await events.__anext__()
        assert event.name == "after-timeout" and event.revision == int(created.version)
