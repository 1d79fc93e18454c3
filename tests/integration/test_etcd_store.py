"""The etcd store against real etcd failures: a crashed and restarted node, a killed cluster member, a slow watcher."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable

import pyetcd
import pytest
import trio

from meshcast.errors import StoreUnauthorized, StoreUnavailable
from meshcast.resources import Resource
from meshcast.store import ResourceChanged, WatchCompacted
from meshcast.store import etcd as etcd_store
from meshcast.store.etcd import EtcdStore, open_etcd_store, parse_endpoints
from tests.support.etcd import EtcdCluster, EtcdProcess, free_port
from tests.support.store import assert_quiet, mesh, take

log = logging.getLogger(__name__)





class Collector:
    """Consumes a watch in a task; tests wait for what it has seen."""

    def __init__(self) -> None:
        self.events: list[ResourceChanged] = []
        self._changed = trio.Event()

    async def run(self, events: AsyncIterator[ResourceChanged]) -> None:
        async for event in events:
            self.events.append(event)
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[list[ResourceChanged]], bool], within: float = 10.0) -> None:
        with trio.fail_after(within):
            while not predicate(self.events):
                await self._changed.wait()


def history(events: list[ResourceChanged]) -> list[tuple[str, str, int]]:
    return [(e.kind.value, e.name, e.revision) for e in events]


def acknowledged(kind: str, resource: Resource) -> tuple[str, str, int]:
    return (kind, resource.name, int(resource.version or 0))


# --- without etcd -----------------------------------------------------------------------------------------------


def test_endpoints_parse_from_urls_lists_and_bare_host_ports() -> None:
    assert parse_endpoints("http://127.0.0.1:2379, http://10.0.0.2:22379") == [("127.0.0.1", 2379),
                                                                              ("10.0.0.2", 22379)]
    assert parse_endpoints(["localhost:1234", "http://etcd"]) == [("localhost", 1234), ("etcd", 2379)]
    for bad, reason in [("ftp://a:2379", "expected http:// or https://"), ("", "no etcd endpoint"),
                        ("http://a:1,https://b:2", "mix http:// and https://"), ("http://a:x", "invalid port"),
                        ("http://a:1/path", "expected http://host:port")]:
        with pytest.raises(ValueError, match=reason):
            parse_endpoints(bad)


async def test_an_unreachable_etcd_is_reported_in_one_line_quickly() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        await EtcdStore.open([url], timeout=1.0)
    message = str(info.value)
    assert "\n" not in message and url in message and "connection failed" in message, message
    assert time.monotonic() - started < 3


# --- a single node ----------------------------------------------------------------------------------------------


@pytest.mark.etcd
async def test_a_closed_store_refuses_calls(etcd: EtcdProcess) -> None:
    store = await EtcdStore.open([etcd.client_url])
    await store.aclose()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.get("Mesh", "a")


@pytest.mark.etcd
async def test_credentials_are_used_when_etcd_requires_them(etcd: EtcdProcess) -> None:
    etcdctl = shutil.which("etcdctl") or pytest.fail("etcdctl not found (Debian package etcd-client)")
    env = {"ETCDCTL_API": "3", "PATH": os.environ.get("PATH", "")}
    for args in (["user", "add", "root", "--new-user-password", "s3cret"], ["auth", "enable"]):
        done = await trio.run_process([etcdctl, "--endpoints", etcd.client_url, *args], capture_stdout=True,
                                      capture_stderr=True, env=env, check=False)
        assert done.returncode == 0, done.stderr
    with pytest.raises(StoreUnauthorized, match="authentication failed"):
        await EtcdStore.open([etcd.client_url], username="root", password="wrong")
    with pytest.raises(StoreUnauthorized, match="user name is empty"):
        await EtcdStore.open([etcd.client_url])
    async with open_etcd_store([etcd.client_url], username="root", password="s3cret") as store:
        start = await store.revision()
        created = await store.create(mesh("a"))
        assert (await store.list()).items == [created]
        async with store.watch(after_revision=start) as events:
            assert [e.resource for e in await take(events, 1)] == [created]


@pytest.mark.etcd
async def test_foreign_or_corrupt_values_are_skipped_by_list_and_watch(etcd: EtcdProcess,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    async with open_etcd_store([etcd.client_url]) as store:
        start = await store.revision()
        client = pyetcd.client("127.0.0.1", etcd.client_port, timeout=2)
        try:
            for key, value in [("resources/Mesh/broken", "{not json"), ("resources/Mesh/x/y/z", "{}"),
                               ("resources/Mesh/other", '{"type": "Mesh", "name": "not-other"}'), ("elsewhere", "1")]:
                await trio.to_thread.run_sync(client.put, store.prefix + key, value)
        finally:
            client.close()
        good = await store.create(mesh("good"))
        assert (await store.list()).items == [good]
        async with store.watch(after_revision=start) as events:
            assert [e.resource for e in await take(events, 1)] == [good]
            await assert_quiet(events)
        assert "not a valid resource" in caplog.text and "it holds Mesh not-other" in caplog.text


@pytest.mark.etcd
async def test_a_failure_inside_the_watch_callback_is_raised_not_dropped(etcd: EtcdProcess,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: object, response: object) -> None:
        raise RuntimeError("conversion bug")

    monkeypatch.setattr("meshcast.store.etcd._Watch._convert", broken)
    async with open_etcd_store([etcd.client_url]) as store:
        start = await store.revision()
        await store.create(mesh("a"))
        with pytest.raises(RuntimeError, match="conversion bug"):
            async with store.watch(after_revision=start) as events:
                await take(events, 1)


@pytest.mark.etcd
async def test_a_write_whose_answer_was_lost_is_recognised_on_retry(etcd: EtcdProcess,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The first attempt commits but its answer is lost (a timeout): the retry must report success, not a conflict."""
    real = etcd_store._call_once
    lose_next_answer = False

    def answer_lost(client: object, call: Callable[[object, bool], object], retried: bool) -> object:
        nonlocal lose_next_answer
        result = real(client, call, retried)
        if lose_next_answer and not retried:
            lose_next_answer = False
            raise pyetcd.exceptions.ConnectionTimeoutError()
        return result

    monkeypatch.setattr(etcd_store, "_call_once", answer_lost)
    async with open_etcd_store([etcd.client_url], timeout=1.0) as store:
        start = await store.revision()
        lose_next_answer = True
        created = await store.create(mesh("a", v="1"))
        assert await store.get("Mesh", "a") == created
        lose_next_answer = True
        updated = await store.update(mesh("a", v="2").with_meta(version=created.version, created=None, modified=None))
        assert await store.get("Mesh", "a") == updated and updated.creation_time == created.creation_time
        lose_next_answer = True
        await store.delete("Mesh", "a", version=updated.version)
        lose_next_answer = True
        again = await store.create(mesh("a", v="3"))
        lose_next_answer = True
        await store.delete("Mesh", "a")
        assert not lose_next_answer  # every write went through the lost-answer path
        async with store.watch(after_revision=start) as events:
            got = await take(events, 5)
            await assert_quiet(events)
        assert history(got) == [acknowledged("created", created), acknowledged("updated", updated),
                                ("deleted", "a", got[2].revision), acknowledged("created", again),
                                ("deleted", "a", got[4].revision)]


@pytest.mark.etcd
async def test_watch_resumes_across_an_etcd_crash_and_restart(etcd: EtcdProcess) -> None:
    async with open_etcd_store([etcd.client_url], timeout=1.0) as store:
        start = await store.revision()
        acked = []
        async with store.watch(after_revision=start) as events:
            for i in range(4):
                acked.append(acknowledged("created", await store.create(mesh(f"before-{i}"))))
            got = await take(events, 2)  # two delivered, two received but not yet consumed

            await trio.to_thread.run_sync(etcd.kill)
            with pytest.raises(StoreUnavailable, match=r"unavailable: get \S+ failed"):
                await store.get("Mesh", "before-0")
            await trio.sleep(0.3)  # the watch keeps retrying meanwhile
            await trio.to_thread.run_sync(etcd.start)

            updated = await store.update(await store.get("Mesh", "before-0"))
            acked.append(acknowledged("updated", updated))
            await store.delete("Mesh", "before-1")
            acked.append(("deleted", "before-1", await store.revision()))
            for i in range(3):
                acked.append(acknowledged("created", await store.create(mesh(f"after-{i}"))))
            got += await take(events, len(acked) - 2)
            await assert_quiet(events)
        assert history(got) == acked
        listing = await store.list("Mesh")
        assert [r.name for r in listing.items] == ["after-0", "after-1", "after-2", "before-0", "before-2",
                                                   "before-3"]


@pytest.mark.etcd
async def test_watch_under_concurrent_writes_across_a_crash_sees_etcd_history_exactly(etcd: EtcdProcess) -> None:
    """Writes race the crash, so some fail or are ambiguous: the resumed watch must still match etcd's history."""
    async with open_etcd_store([etcd.client_url], timeout=0.5) as store:
        start = await store.revision()
        acked: set[str] = set()
        target = 10**9  # how many acknowledged writes to stop at: set once etcd is back
        enough = trio.Event()

        async def writer() -> None:
            i = 0
            while len(acked) < target:
                try:
                    acked.add((await store.create(mesh(f"w-{i}"))).name)
                except StoreUnavailable:
                    await trio.sleep(0.05)
                i += 1
            enough.set()

        received: list[ResourceChanged] = []
        async with store.watch(after_revision=start) as events:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                received += await take(events, 10)
                await trio.to_thread.run_sync(etcd.kill)
                await trio.sleep(0.2)
                await trio.to_thread.run_sync(etcd.start)
                target = len(acked) + 10
                with trio.fail_after(15):
                    await enough.wait()
            end = await store.revision()
            while not received or received[-1].revision < end:
                received += await take(events, 1)
        # A fresh watch over the same range is etcd's own record of what happened.
        async with store.watch(after_revision=start) as replay:
            truth = await take(replay, len(received))
            await assert_quiet(replay)
        assert history(received) == history(truth)
        names = {e.name for e in received}
        assert acked <= names  # every acknowledged write is there (plus any ambiguous one that landed)
        assert {r.name for r in (await store.list("Mesh")).items} == names


@pytest.mark.etcd
async def test_a_slow_watcher_gets_every_change_once_with_a_tiny_buffer(etcd: EtcdProcess) -> None:
    async with open_etcd_store([etcd.client_url], watch_buffer=3) as store:
        start = await store.revision()
        acked = [acknowledged("created", await store.create(mesh(f"m-{i}"))) for i in range(12)]
        async with store.watch(after_revision=start) as events:
            got = []
            for _ in range(4):
                got += await take(events, 1)
                await trio.sleep(0.05)  # the etcd watch pauses while the buffer is full
            for i in range(12, 20):
                acked.append(acknowledged("created", await store.create(mesh(f"m-{i}"))))
            got += await take(events, len(acked) - 4)
            await assert_quiet(events)
        assert history(got) == acked


@pytest.mark.etcd
async def test_a_paused_watch_delivers_what_it_has_then_reports_compaction(etcd: EtcdProcess) -> None:
    async with open_etcd_store([etcd.client_url], watch_buffer=3) as store:
        start = await store.revision()
        for i in range(10):
            await store.create(mesh(f"m-{i}"))
        async with store.watch(after_revision=start) as events:
            received = await take(events, 1)
            await trio.sleep(0.2)  # the buffer filled up and the etcd watch was cancelled
            for i in range(10, 15):  # not received by the paused watch
                await store.create(mesh(f"m-{i}"))
            compacted_at = await store.revision()
            client = pyetcd.client("127.0.0.1", etcd.client_port, timeout=2)
            try:
                await trio.to_thread.run_sync(lambda: client.compact(compacted_at, physical=True))
            finally:
                client.close()
            with pytest.raises(WatchCompacted) as info:
                while True:
                    received += await take(events, 1)
        # What had been received came first, in order, then the error naming where to resume.
        assert 3 <= len(received) < 15
        assert [e.name for e in received] == [f"m-{i}" for i in range(len(received))]
        assert info.value.requested == received[-1].revision + 1 and info.value.oldest == compacted_at


# --- a cluster --------------------------------------------------------------------------------------------------


@pytest.mark.etcd
async def test_killing_any_one_member_costs_no_failed_call_and_the_watch_goes_on(
    etcd_cluster: EtcdCluster,
) -> None:
    async with open_etcd_store(etcd_cluster.client_urls, timeout=0.5) as store:
        start = await store.revision()
        acked = []
        got = Collector()
        async with store.watch(after_revision=start) as events, trio.open_nursery() as nursery:
            nursery.start_soon(got.run, events)
            # Each member in turn, so the leader, the store's member and the watch's member all die once.
            for index in range(3):
                marker = await store.create(mesh(f"marker-{index}"))
                acked.append(acknowledged("created", marker))
                await got.wait_for(lambda seen: len(seen) >= len(acked))  # the watch runs before the kill
                await trio.to_thread.run_sync(etcd_cluster.kill, index)
                started = time.monotonic()
                for i in range(4):
                    created = await store.create(mesh(f"k{index}-{i}"))
                    acked.append(acknowledged("created", created))
                updated = await store.update(created)
                acked.append(acknowledged("updated", updated))
                await store.delete("Mesh", f"k{index}-0", version=(await store.get("Mesh", f"k{index}-0")).version)
                acked.append(("deleted", f"k{index}-0", await store.revision()))
                log.info("member %d killed: 6 writes took %.2fs", index, time.monotonic() - started)
                await trio.to_thread.run_sync(etcd_cluster.restart, index)
            await got.wait_for(lambda seen: len(seen) >= len(acked))
            await trio.sleep(0.3)  # nothing more arrives
            nursery.cancel_scope.cancel()
        assert history(got.events) == acked
