"""etcd over TLS, as a deployment across regions runs it: a real etcd serving https only, asking for client
certificates (`--client-cert-auth`) and with authentication on.

The store reads, writes and watches through TLS with a client certificate; a wrong CA, a missing client certificate
and a scheme that does not match the TLS settings are refused with one line. Then the whole federation over it: a
global CP administering zone users over TLS, and a zone CP that joins with a zone token and publishes its
inventory through the same TLS etcd.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from meshcast.errors import StoreUnavailable
from meshcast.resources import Resource
from meshcast.resources.types import MeshSpec
from meshcast.store.etcd import EtcdStore, EtcdTLS, parse_endpoint_urls
from meshcast.store.etcd_auth import enable_auth
from tests.integration.test_federation import mesh_names, wait_for, zone_status
from tests.support.etcd import etcd_binary
from tests.support.ports import free_port
from tests.support.process import stop_process
from tests.support.tls import make_etcd_tls
from tests.support.zone import ZoneCPProcess

pytestmark = pytest.mark.slow


class TLSEtcd:
    def __init__(self, tmp: Path) -> None:
        self.files = make_etcd_tls(tmp / "pki")
        self.url = f"https://127.0.0.1:{free_port()}"
        peer = f"http://127.0.0.1:{free_port()}"
        self.tls = EtcdTLS(self.files["ca"], self.files["client.crt"], self.files["client.key"])
        self.root_password = secrets.token_urlsafe(12)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        self.log = open(tmp / "etcd.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [etcd_binary(), "--name", "n0", "--data-dir", str(tmp / "data"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", f"n0={peer}",
             "--cert-file", str(self.files["server.crt"]), "--key-file", str(self.files["server.key"]),
             "--trusted-ca-file", str(self.files["ca"]), "--client-cert-auth",
             "--logger", "zap", "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=self.log, stdin=subprocess.DEVNULL, env=env)

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


async def open_when_up(url: str, tls: EtcdTLS, **options: object) -> EtcdStore:
    with trio.fail_after(20):
        while True:
            try:
                return await EtcdStore.open(url, tls=tls, timeout=1, retries=0, **options)  # type: ignore[arg-type]
            except StoreUnavailable:
                await trio.sleep(0.1)


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[TLSEtcd]:
    node = TLSEtcd(tmp_path)
    try:
        yield node
    finally:
        node.stop()


async def test_the_store_works_over_tls_with_a_client_certificate(etcd: TLSEtcd) -> None:
    store = await open_when_up(etcd.url, etcd.tls, prefix="/tls-test/")
    try:
        assert store.endpoints == etcd.url
        async with store.watch(after_revision=await store.revision()) as events:
            await store.create(Resource(type="Mesh", name="m1", spec=MeshSpec()))
            with trio.fail_after(5):
                event = await events.__anext__()
        assert event.name == "m1"
        assert (await store.get("Mesh", "m1")).name == "m1"
    finally:
        await store.aclose()


async def test_wrong_ca_missing_client_certificate_and_scheme_mismatch_are_refused(etcd: TLSEtcd) -> None:
    await (await open_when_up(etcd.url, etcd.tls)).aclose()  # up
    for tls in (EtcdTLS(etcd.files["other-ca"], etcd.files["client.crt"], etcd.files["client.key"]),  # wrong CA
                EtcdTLS(etcd.files["ca"])):  # no client certificate: etcd asks for one
        with pytest.raises(StoreUnavailable) as refused:
            await EtcdStore.open(etcd.url, tls=tls, timeout=1, retries=0)
        assert "\n" not in str(refused.value) and etcd.url.removeprefix("https://") in str(refused.value)
    with pytest.raises(ValueError, match="https:// etcd endpoints need the CA"):
        EtcdStore(etcd.url)
    with pytest.raises(ValueError, match="use https:// endpoints"):
        EtcdStore(etcd.url.replace("https", "http"), tls=etcd.tls)
    with pytest.raises(ValueError, match="mix http:// and https://"):
        parse_endpoint_urls(f"{etcd.url},http://127.0.0.1:1")
    with pytest.raises(ValueError, match="cannot read the etcd CA file"):
        EtcdStore(etcd.url, tls=EtcdTLS(Path("/nonexistent/ca.crt")))


def tls_flags(prefix: str, etcd: TLSEtcd) -> list[str]:
    return [f"--{prefix}-ca-file", str(etcd.files["ca"]), f"--{prefix}-cert-file", str(etcd.files["client.crt"]),
            f"--{prefix}-key-file", str(etcd.files["client.key"])]


async def test_a_zone_federates_through_a_tls_etcd_with_authentication(etcd: TLSEtcd, tmp_path: Path) -> None:
    await (await open_when_up(etcd.url, etcd.tls)).aclose()
    assert await enable_auth(etcd.url, etcd.root_password, tls=etcd.tls)
    global_cp = ZoneCPProcess(tmp_path / "global", "--etcd-endpoints", etcd.url, "--etcd-user", "root",
                              "--etcd-password", etcd.root_password, *tls_flags("etcd", etcd), component="global-cp")
    started = [global_cp]
    try:
        await trio.to_thread.run_sync(global_cp.start)
        token = global_cp.cli("generate", "zone-token", "--zone", "eu")
        assert token.returncode == 0, token.stderr
        (tmp_path / "eu-token").write_text(token.stdout.strip())
        eu = ZoneCPProcess(tmp_path / "eu", "--zone", "eu", "--global-etcd", etcd.url, *tls_flags("global-etcd", etcd),
                           "--global-cp", global_cp.url, "--zone-token-file", str(tmp_path / "eu-token"),
                           "--zone-lease-ttl", "2")
        started.append(eu)
        await trio.to_thread.run_sync(eu.start)
        await trio.to_thread.run_sync(lambda: wait_for(lambda: "default" in mesh_names(eu), "the global mesh in eu"))
        await trio.to_thread.run_sync(lambda: wait_for(lambda: zone_status(global_cp) == {"eu": "online"},
                                                       "eu online at the global CP"))
        # Without the CA the zone CP refuses to start, in one line naming the flag.
        bad = await trio.to_thread.run_sync(lambda: eu.cli("zone-cp", "run", "--zone", "us", "--global-etcd", etcd.url,
                                                           "--state-dir", str(tmp_path / "us")))
        assert bad.returncode == 2 and "https:// etcd endpoints need the CA" in bad.stderr, bad.stderr
    finally:
        for cp in reversed(started):
            cp.stop()
