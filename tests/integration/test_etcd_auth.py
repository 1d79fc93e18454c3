"""etcd RBAC against a real etcd: what a zone's user may read and write, credentials, idempotence, token expiry."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import pyetcd
import pytest
import trio
from pyetcd import etcdrpc

from meshcast.errors import MeshcastError, StoreUnauthorized, StoreUnavailable
from meshcast.federation.keyspace import GLOBAL_PREFIX, ROOT, info_key, zone_prefix
from meshcast.store.etcd import EtcdStore, open_etcd_store
from meshcast.store.etcd_auth import (
    _Session,
    enable_auth,
    ensure_user,
    ensure_zone_user,
    remove_user,
    zone_user,
)
from tests.support.etcd import EtcdAuth, EtcdCluster, EtcdProcess, auth_client
from tests.support.ports import free_port
from tests.support.store import mesh, take

T = TypeVar("T")
pytestmark = pytest.mark.etcd

EU, EU_PASSWORD = zone_user("eu"), "eu-secret"


async def blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A blocking pyetcd call, in a worker thread."""
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


async def client_as(url: str, user: str, password: str) -> Any:
    return await blocking(auth_client, url, user, password)


async def assert_denied(fn: Callable[..., object], *args: Any, **kwargs: Any) -> None:
    with pytest.raises(grpc.RpcError) as info:
        await blocking(fn, *args, **kwargs)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value.details()


async def seed(etcd_auth: EtcdAuth) -> None:
    root = await client_as(etcd_auth.client_url, "root", etcd_auth.root_password)
    try:
        for key in (GLOBAL_PREFIX + "resources/Mesh/default", info_key("us"), "/elsewhere/x"):
            await blocking(root.put, key, b"{}")
    finally:
        root.close()


async def test_a_zone_user_reads_the_keyspace_and_writes_only_its_zone(etcd_auth: EtcdAuth) -> None:
    await seed(etcd_auth)
    assert await ensure_zone_user(etcd_auth.client_url, "root", etcd_auth.root_password, "eu", EU_PASSWORD)
    eu = await client_as(etcd_auth.client_url, EU, EU_PASSWORD)
    try:
        own = zone_prefix("eu") + "services/default/web"
        await blocking(eu.put, own, b"1")
        assert (await blocking(eu.get, own))[0] == b"1"
        assert await blocking(eu.delete, own)
        assert (await blocking(eu.get, GLOBAL_PREFIX + "resources/Mesh/default"))[0] == b"{}"
        assert (await blocking(eu.get, info_key("us")))[0] == b"{}"
        assert len(list(await blocking(eu.get_prefix, ROOT))) == 2

        for key in (zone_prefix("us") + "x", GLOBAL_PREFIX + "x", ROOT + "x", ROOT + "zones/eu-west/x",
                    ROOT + "zones/eu", "/elsewhere/x"):
            await assert_denied(eu.put, key, b"1")
        await assert_denied(eu.delete, info_key("us"))
        await assert_denied(eu.get, "/elsewhere/x")

        # The zone's keys live on its lease: grant, attach, keep alive, read back, revoke.
        lease = await blocking(eu.lease, 30)
        await blocking(eu.put, info_key("eu"), b"{}", lease=lease)
        assert [r.TTL for r in await blocking(lease.refresh)] == [30]
        assert list(await blocking(lambda: lease.keys)) == [info_key("eu").encode()]
        await assert_denied(eu.put, info_key("us"), b"{}", lease=lease)
        await blocking(lease.revoke)
        assert (await blocking(eu.get, info_key("eu")))[0] is None
    finally:
        eu.close()


async def test_a_zone_user_runs_an_etcd_store_under_its_prefix(etcd_auth: EtcdAuth) -> None:
    await ensure_zone_user(etcd_auth.client_url, "root", etcd_auth.root_password, "eu", EU_PASSWORD)
    async with open_etcd_store([etcd_auth.client_url], prefix=zone_prefix("eu") + "store/", username=EU,
                               password=EU_PASSWORD) as store:
        start = await store.revision()
        created = await store.create(mesh("a"))
        assert (await store.list()).items == [created]
        async with store.watch(after_revision=start) as events:
            assert [e.resource for e in await take(events, 1)] == [created]
    # The global keyspace opens (reading is allowed) but refuses writes.
    async with open_etcd_store([etcd_auth.client_url], prefix=GLOBAL_PREFIX, username=EU,
                               password=EU_PASSWORD) as store:
        assert (await store.list()).items == []
        with pytest.raises(MeshcastError, match="permission denied"):
            await store.create(mesh("b"))


async def test_wrong_credentials_are_refused_in_one_line(etcd_auth: EtcdAuth) -> None:
    url = etcd_auth.client_url
    with pytest.raises(StoreUnauthorized) as info:
        await ensure_zone_user(url, "root", "wrong", "eu", EU_PASSWORD)
    assert str(info.value) == f"etcd at {url} refused user 'root': wrong user name or password"
    with pytest.raises(StoreUnauthorized, match="refused user 'root': wrong user name or password"):
        await enable_auth(url, "wrong")

    await ensure_zone_user(url, "root", etcd_auth.root_password, "eu", EU_PASSWORD)
    with pytest.raises(StoreUnauthorized) as info:  # a user without the root role may not administer
        await ensure_zone_user(url, EU, EU_PASSWORD, "us", "us-secret")
    assert str(info.value) == (f"etcd at {url}: user {EU!r} may not add role 'meshcast-zone-us' (permission "
                               "denied): administration needs a user with the root role")
    with pytest.raises(StoreUnauthorized, match=f"refused connect: authentication failed \\(user {EU}\\)"):
        await EtcdStore.open([url], username=EU, password="wrong")


async def test_ensure_zone_user_is_idempotent_and_rotates_the_password(etcd_auth: EtcdAuth) -> None:
    url, admin = etcd_auth.client_url, ("root", etcd_auth.root_password)
    assert await ensure_zone_user(url, *admin, "eu", EU_PASSWORD)
    session = await client_as(url, EU, EU_PASSWORD)
    root = await client_as(url, *admin)
    try:
        assert not await ensure_zone_user(url, *admin, "eu", EU_PASSWORD)
        await blocking(session.put, info_key("eu"), b"{}")  # an unchanged password keeps sessions alive

        # Drift: an extra permission on the role and an extra role on the user are revoked.
        permission = etcdrpc.Permission(permType=etcdrpc.Permission.READWRITE, key=GLOBAL_PREFIX.encode(),
                                        range_end=GLOBAL_PREFIX[:-1].encode() + b"0")
        await blocking(root.authstub.RoleGrantPermission,
                       etcdrpc.AuthRoleGrantPermissionRequest(name=EU, perm=permission), 5, metadata=root.metadata)
        await blocking(root.authstub.RoleAdd, etcdrpc.AuthRoleAddRequest(name="extra"), 5, metadata=root.metadata)
        await blocking(root.authstub.UserGrantRole, etcdrpc.AuthUserGrantRoleRequest(user=EU, role="extra"), 5,
                       metadata=root.metadata)
        await blocking(session.put, GLOBAL_PREFIX + "x", b"1")
        assert await ensure_zone_user(url, *admin, "eu", EU_PASSWORD)
        await assert_denied(session.put, GLOBAL_PREFIX + "y", b"1")
        user = await blocking(root.authstub.UserGet, etcdrpc.AuthUserGetRequest(name=EU), 5, metadata=root.metadata)
        assert list(user.roles) == [EU]
        role = await blocking(root.authstub.RoleGet, etcdrpc.AuthRoleGetRequest(role=EU), 5, metadata=root.metadata)
        assert sorted((p.permType, p.key, p.range_end) for p in role.perm) == [
            (etcdrpc.Permission.READ, b"/meshcast/v1/", b"/meshcast/v10"),
            (etcdrpc.Permission.READWRITE, b"/meshcast/v1/zones/eu/", b"/meshcast/v1/zones/eu0"),
        ]

        # A new password: the old one and every session opened with it stop working.
        assert await ensure_zone_user(url, *admin, "eu", "eu-rotated")
        with pytest.raises(grpc.RpcError, match="invalid user ID or password"):
            await client_as(url, EU, EU_PASSWORD)
        with pytest.raises(grpc.RpcError, match="invalid auth token"):
            await blocking(session.get, info_key("eu"))
        fresh = await client_as(url, EU, "eu-rotated")
        await blocking(fresh.put, info_key("eu"), b"{}")
        fresh.close()
    finally:
        session.close()
        root.close()


async def test_enable_auth_is_idempotent(etcd: EtcdProcess) -> None:
    url = etcd.client_url
    # Users can be provisioned before authentication is on (no admin credential is checked then).
    assert await ensure_zone_user(url, "root", "not-checked-yet", "eu", EU_PASSWORD)
    assert await enable_auth(url, "root-secret")
    assert not await enable_auth(url, "root-secret")
    with pytest.raises(StoreUnauthorized, match="wrong user name or password"):
        await enable_auth(url, "other")
    with pytest.raises(StoreUnauthorized, match="user name is empty"):
        await EtcdStore.open([url])
    eu = await client_as(url, EU, EU_PASSWORD)
    await blocking(eu.put, info_key("eu"), b"{}")
    eu.close()
    assert not await ensure_zone_user(url, "root", "root-secret", "eu", EU_PASSWORD)


async def test_enable_auth_sets_the_password_of_an_existing_root(etcd: EtcdProcess) -> None:
    raw = pyetcd.client("127.0.0.1", etcd.client_port, timeout=5)
    try:
        await blocking(raw.authstub.UserAdd, etcdrpc.AuthUserAddRequest(name="root", password="forgotten"), 5)
    finally:
        raw.close()
    assert await enable_auth(etcd.client_url, "root-secret")
    (await client_as(etcd.client_url, "root", "root-secret")).close()


async def test_an_already_enabled_cluster_needs_no_change(etcd_auth: EtcdAuth) -> None:
    assert not await enable_auth(etcd_auth.client_url, etcd_auth.root_password)
    await trio.to_thread.run_sync(etcd_auth.node.restart)  # users, roles and the auth switch are persistent
    assert not await enable_auth(etcd_auth.client_url, etcd_auth.root_password)


async def test_remove_user_deletes_the_user_and_its_role(etcd_auth: EtcdAuth) -> None:
    url, admin = etcd_auth.client_url, ("root", etcd_auth.root_password)
    await ensure_zone_user(url, *admin, "eu", EU_PASSWORD)
    session = await client_as(url, EU, EU_PASSWORD)
    try:
        assert await remove_user(url, *admin, EU)
        assert not await remove_user(url, *admin, EU)
        with pytest.raises(grpc.RpcError, match="invalid user ID or password"):
            await client_as(url, EU, EU_PASSWORD)
        with pytest.raises(grpc.RpcError):
            await blocking(session.get, info_key("eu"))
    finally:
        session.close()
    # A user re-created under the same name starts from an empty role.
    assert await ensure_user(url, *admin, EU, EU_PASSWORD, read_prefixes=[ROOT], write_prefixes=[])


async def test_unreachable_etcd_is_store_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        await enable_auth(url, "root-secret", rpc_timeout=1.0, retries=1)
    assert str(info.value) == (f"etcd at {url} is unavailable: authenticate user 'root' failed: connection failed "
                               "(is etcd running?) (2 attempts)")
    assert time.monotonic() - started < 3


async def test_a_dead_member_is_skipped(etcd_cluster: EtcdCluster) -> None:
    etcd_cluster.kill(0)  # the first endpoint: every session starts there
    assert await ensure_zone_user(etcd_cluster.client_urls, "root", "not-checked-yet", "eu", EU_PASSWORD)
    assert await enable_auth(etcd_cluster.client_urls, "root-secret")
    assert not await ensure_zone_user(etcd_cluster.client_urls, "root", "root-secret", "eu", EU_PASSWORD)


@pytest.mark.parametrize("etcd_auth", [["--auth-token-ttl", "1"]], indirect=True)
async def test_an_admin_session_renews_an_expired_token(etcd_auth: EtcdAuth) -> None:
    def idle_then_call() -> Any:
        session = _Session(etcd_auth.client_url, 5.0, 0)
        try:
            assert session.login("root", etcd_auth.root_password)
            time.sleep(2.5)  # etcd drops a simple token after --auth-token-ttl idle seconds
            return session.call("RoleAdd", etcdrpc.AuthRoleAddRequest(name="late"), "add role 'late'")
        finally:
            session.close()

    assert await trio.to_thread.run_sync(idle_then_call) is not None


@pytest.mark.parametrize("etcd_auth", [["--auth-token-ttl", "1"]], indirect=True)
async def test_an_idle_store_keeps_working_after_its_token_expires(etcd_auth: EtcdAuth) -> None:
    await ensure_zone_user(etcd_auth.client_url, "root", etcd_auth.root_password, "eu", EU_PASSWORD)
    async with open_etcd_store([etcd_auth.client_url], prefix=zone_prefix("eu"), username=EU,
                               password=EU_PASSWORD) as store:
        await trio.sleep(2.5)  # etcd drops a simple token after --auth-token-ttl idle seconds (300 by default)
        assert await store.revision() > 0  # the store logged in again
