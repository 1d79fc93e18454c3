"""Zone tokens and per-zone etcd users, on a real etcd with authentication on.

A zone CP joins the global CP with a zone token and gets the credentials of its own etcd user, which etcd itself
allows to write only the zone's prefix. Forged, expired and mismatched tokens stop the zone CP with a one-line
reason.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pyetcd
import pytest
from pyetcd import exceptions as etcd_errors

from meshcast.pki import TokenIssuer
from tests.integration.test_federation import mesh_names, wait_for, zone_status
from tests.support.etcd import EtcdAuth
from tests.support.zone import ZoneCPProcess


@pytest.fixture
def global_cp(etcd_auth: EtcdAuth, tmp_path: Path) -> Iterator[ZoneCPProcess]:
    cp = ZoneCPProcess(tmp_path / "global", "--etcd-endpoints", etcd_auth.client_url, "--etcd-user", "root",
                       "--etcd-password", etcd_auth.root_password, component="global-cp")
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()


def zone_cp(tmp_path: Path, name: str, global_cp: ZoneCPProcess, etcd: EtcdAuth, token: str) -> ZoneCPProcess:
    tmp_path.mkdir(parents=True, exist_ok=True)
    token_file = tmp_path / f"{name}-token"
    token_file.write_text(token)
    return ZoneCPProcess(tmp_path / name, "--zone", name, "--global-etcd", etcd.client_url, "--global-cp",
                         global_cp.url, "--zone-token-file", str(token_file), "--zone-lease-ttl", "2")


def zone_token(global_cp: ZoneCPProcess, zone: str, valid_for: str = "1h") -> str:
    result = global_cp.cli("generate", "zone-token", "--zone", zone, "--valid-for", valid_for)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def client_as(etcd: EtcdAuth, user: str, password: str) -> Any:
    endpoint = pyetcd.Endpoint("127.0.0.1", etcd.node.client_port, secure=False, time_retry=0)
    client = pyetcd.MultiEndpointEtcd3Client([endpoint], timeout=5, user=user, password=password)
    client.call_credentials = None  # as EtcdStore does: the token travels as metadata on a plaintext channel
    return client


def test_a_zone_joins_with_its_token_and_writes_only_its_own_prefix(
        global_cp: ZoneCPProcess, etcd_auth: EtcdAuth, tmp_path: Path) -> None:
    eu = zone_cp(tmp_path, "eu", global_cp, etcd_auth, zone_token(global_cp, "eu"))
    try:
        eu.start()
        wait_for(lambda: "default" in mesh_names(eu), "the global mesh in zone eu")
        wait_for(lambda: zone_status(global_cp) == {"eu": "online"}, "eu online")
        credentials = json.loads((tmp_path / "eu" / "global-credentials.json").read_text())
        assert credentials["etcdUser"] == "meshcast-zone-eu"
        assert (tmp_path / "eu" / "global-credentials.json").stat().st_mode & 0o077 == 0
        client = client_as(etcd_auth, credentials["etcdUser"], credentials["etcdPassword"])
        try:
            client.put("/meshcast/v1/zones/eu/probe", b"ok")  # its own prefix
            assert client.get("/meshcast/v1/global/resources/Mesh/default")[0] is not None  # reads global
            for key in ("/meshcast/v1/zones/us/info", "/meshcast/v1/global/resources/Mesh/evil", "/other"):
                with pytest.raises((etcd_errors.Etcd3Exception, grpc.RpcError)) as denied:
                    client.put(key, b"{}")
                assert "permission denied" in f"{denied.value!r} {denied.value.__context__!r}", key
        finally:
            client.close()
        # Restarted while the global CP is down: it starts from its saved credentials and global state.
        global_cp.stop()
        eu.stop()
        eu.start()
        assert "default" in mesh_names(eu)
    finally:
        eu.stop()


def test_forged_expired_and_mismatched_zone_tokens_are_refused(
        global_cp: ZoneCPProcess, etcd_auth: EtcdAuth, tmp_path: Path) -> None:
    forged = TokenIssuer.generate().issue_zone("eu", timedelta(hours=1))
    expired = zone_token(global_cp, "eu", valid_for="1s")
    time.sleep(1.5)
    cases = {
        "forged": (forged, "eu", "token rejected: signed by unknown key"),
        "expired": (expired, "eu", "token expired at"),
        "garbage": ("not-a-token", "eu", "malformed"),
        "mismatch": (zone_token(global_cp, "us"), "eu", "the zone token is for zone 'us', not 'eu'"),
    }
    for case, (token, zone, reason) in cases.items():
        cp = zone_cp(tmp_path / case, zone, global_cp, etcd_auth, token)
        with pytest.raises(RuntimeError) as failed:
            cp.start()
        assert reason in str(failed.value), (case, str(failed.value))
        assert "Traceback" not in str(failed.value), case
        cp.stop()
        assert not (tmp_path / case / zone / "global-credentials.json").exists(), case


def test_a_zone_that_joined_restarts_after_its_token_expired(
        global_cp: ZoneCPProcess, etcd_auth: EtcdAuth, tmp_path: Path) -> None:
    """The saved credentials carry a zone that joined once; an expired token must not stop its restarts."""
    issued = time.monotonic()
    # long enough for the first join on a loaded machine (a 3 s token once expired before the zone CP had started)
    eu = zone_cp(tmp_path, "eu", global_cp, etcd_auth, zone_token(global_cp, "eu", valid_for="10s"))
    try:
        eu.start()
        wait_for(lambda: zone_status(global_cp) == {"eu": "online"}, "eu online")
        eu.stop()
        time.sleep(max(0.0, issued + 10.5 - time.monotonic()))  # the token's lifetime: it has expired now
        eu.start()
        wait_for(lambda: zone_status(global_cp) == {"eu": "online"}, "eu online again with its saved credentials")
        assert "using the saved credentials" in eu.log() and "has expired" in eu.log()
    finally:
        eu.stop()


async def test_a_zone_renews_its_intermediate_before_it_expires(etcd_auth: EtcdAuth, tmp_path: Path) -> None:
    """With 45 s intermediates, the zone asks for its next one at 2/3 of the first's life (30 s) and switches to it:
    certificates signed before and after chain to the same root, and the old one's stay valid."""
    import httpx
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from prometheus_client.parser import text_string_to_metric_families

    from meshcast.pki import generate_workload_key, verify_chain
    from meshcast.wire.cpclient import ControlPlaneClient

    global_cp = ZoneCPProcess(tmp_path / "global", "--etcd-endpoints", etcd_auth.client_url, "--etcd-user", "root",
                              "--etcd-password", etcd_auth.root_password, "--intermediate-validity", "45s",
                              component="global-cp")
    started: list[ZoneCPProcess] = [global_cp]
    try:
        global_cp.start()
        eu = zone_cp(tmp_path, "eu", global_cp, etcd_auth, zone_token(global_cp, "eu"))
        started.append(eu)
        eu.start()
        ca_file = tmp_path / "eu" / "ca" / "default" / "ca.crt"
        wait_for(ca_file.exists, "eu's first intermediate", timeout=30)
        first = x509.load_pem_x509_certificate(ca_file.read_bytes())
        assert first.not_valid_after_utc - first.not_valid_before_utc <= timedelta(seconds=45 + 60)  # clock skew

        async def certificate() -> tuple[bytes, str]:
            client = ControlPlaneClient(eu.url, eu.token("backend"))
            await client.register({"type": "Dataplane", "mesh": "default", "name": "backend-1", "spec": {
                "address": "127.0.0.1", "inbound": [{"port": 10001, "service": "backend"}]}})
            csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
                   .sign(generate_workload_key(), hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
            issued = await client.sign_certificate("default", "backend-1", csr)
            return issued["certificate"].encode(), str(issued["trustBundle"])

        before, bundle = await certificate()
        wait_for(lambda: "intermediate CA for mesh default renewed" in eu.log(), "eu's renewal", timeout=45)
        second = x509.load_pem_x509_certificate(ca_file.read_bytes())
        assert second.serial_number != first.serial_number
        assert second.public_key() != first.public_key()  # a new key, not the old one signed again
        assert second.not_valid_after_utc > first.not_valid_after_utc
        after, bundle_after = await certificate()
        assert bundle_after == bundle  # the same root
        assert x509.load_pem_x509_certificates(after)[1].serial_number == second.serial_number
        for chain in (before, after):  # both trusted: sidecars renewed before and after still call each other
            assert verify_chain(chain, bundle.encode()) == "spiffe://default/backend"

        def expiry() -> float | None:
            text = httpx.get(f"{eu.url}/metrics", timeout=5).text
            return next((sample.value for family in text_string_to_metric_families(text)
                         for sample in family.samples if sample.name == "meshcast_cp_ca_expiry_timestamp_seconds"
                         and sample.labels == {"ca": "intermediate", "mesh": "default"}), None)

        wait_for(lambda: expiry() == second.not_valid_after_utc.timestamp(), "the renewed intermediate's expiry")
    finally:
        for cp in reversed(started):
            cp.stop()
