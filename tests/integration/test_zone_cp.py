"""The zone control plane as a real process, driven by the real CLI and simulated dataplanes, on both stores."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from meshcast.pki import TokenIssuer, generate_workload_key, spiffe_id_of, verify_chain
from meshcast.pki.certinfo import read_pem
from meshcast.testing.simdp import SimDataplane
from meshcast.wire.cpclient import ControlPlaneClient, ControlPlaneError
from tests.support.zone import ZoneCPProcess

MESH_YAML = """\
type: Mesh
name: payments
spec:
  mtls: {backend: builtin, certTTL: 12h}
"""


def dataplane(name: str, service: str, port: int, outbound: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    return {
        "type": "Dataplane", "mesh": "default", "name": name,
        "spec": {
            "address": "127.0.0.1",
            "inbound": [{"port": port, "appPort": port + 1000, "service": service, "protocol": "http"}],
            "outbound": [{"port": 20000 + i, "service": s} for i, s in enumerate(outbound)],
        },
    }


@pytest.fixture(params=["memory", pytest.param("etcd", marks=pytest.mark.etcd)])
def zone_cp(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ZoneCPProcess]:
    extra = ["--heartbeat-timeout", "1.5", "--heartbeat-interval", "0.3"]
    if request.param == "etcd":
        etcd = request.getfixturevalue("etcd")
        extra += ["--store", "etcd", "--etcd-endpoints", etcd.client_url]
    cp = ZoneCPProcess(tmp_path / "state", *extra)
    try:
        cp.start()
        yield cp
    finally:
        cp.stop()


def test_apply_then_get_returns_the_resource(zone_cp: ZoneCPProcess, tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(MESH_YAML)
    applied = zone_cp.cli("apply", "-f", str(path))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip() == "Mesh payments created"
    got = zone_cp.cli("get", "meshes", "-o", "yaml")
    docs = {d["name"]: d for d in yaml.safe_load_all(got.stdout)}
    assert docs["payments"]["spec"]["mtls"] == {"enabled": True, "backend": "builtin", "certTTL": "12h"}
    # The zone CP created the mesh 'default' with builtin mTLS on its first start.
    assert docs["default"]["spec"]["mtls"]["enabled"] is True
    again = zone_cp.cli("apply", "-f", str(path))
    assert again.stdout.strip() == "Mesh payments unchanged"


def test_invalid_file_is_refused_whole_and_nothing_is_stored(zone_cp: ZoneCPProcess, tmp_path: Path) -> None:
    before = zone_cp.cli("get", "meshes", "-o", "json").stdout
    path = tmp_path / "bad.yaml"
    path.write_text(MESH_YAML.replace("payments", "first") + "---\n" + """\
type: Dataplane
mesh: default
name: web-1
spec:
  address: 127.0.0.1
  inbound:
    - {port: 70000, service: web}
""")
    result = zone_cp.cli("apply", "-f", str(path))
    assert result.returncode != 0
    assert result.stderr.strip() == "Error: Dataplane web-1: spec.inbound[0].port: must be between 1 and 65535"
    assert "Traceback" not in result.stderr
    assert zone_cp.cli("get", "meshes", "-o", "json").stdout == before
    # The API refuses the same batch itself, for clients that skip the CLI's check.
    docs = list(yaml.safe_load_all(path.read_text()))
    response = httpx.post(zone_cp.url + "/v1/apply", json=docs)
    assert response.status_code == 400
    assert response.json()["error"] == "Dataplane web-1: spec.inbound[0].port: must be between 1 and 65535"
    assert zone_cp.cli("get", "meshes", "-o", "json").stdout == before


def test_cli_errors_are_one_line(zone_cp: ZoneCPProcess) -> None:
    for args, message in [
        (("get", "widgets"), "Error: type: unknown resource type 'widgets'"),
        (("get", "mesh", "nope"), "Error: Mesh nope not found (HTTP 404)"),
        (("delete", "dataplane", "ghost"), "Error: Dataplane default/ghost not found (HTTP 404)"),
        (("generate", "dataplane-token", "--service", "Bad_Name"), "Error: token: services[0]"),
    ]:
        result = zone_cp.cli(*args)
        assert result.returncode != 0, args
        assert result.stderr.startswith(message), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


async def test_registered_dataplane_gets_a_spiffe_certificate(zone_cp: ZoneCPProcess) -> None:
    client = ControlPlaneClient(zone_cp.url, zone_cp.token("backend"))
    doc = dataplane("backend-1", "backend", 10001)
    doc["spec"]["inbound"][0]["tags"] = {"version": "v2", "service": "admin"}
    await client.register(doc)
    key = generate_workload_key()
    # The CSR asks for another identity and other tags; the CA ignores them and signs the registered service's
    # SPIFFE ID with the registered Dataplane's tags (`service` is the SPIFFE ID's, never a tag).
    claims = [x509.UniformResourceIdentifier(u) for u in ("spiffe://default/admin", "meshcast://tag/version/v9")]
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName(claims), critical=False)
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    issued = await client.sign_certificate("default", "backend-1", csr)
    chain = issued["certificate"].encode()
    leaf = x509.load_pem_x509_certificate(chain)
    assert spiffe_id_of(leaf) == "spiffe://default/backend"
    assert read_pem(chain).tags == issued["tags"] == {"version": "v2"}  # this zone CP has no zone name
    assert verify_chain(chain, issued["trustBundle"].encode()) == "spiffe://default/backend"
    lifetime = leaf.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(hours=23) < lifetime <= timedelta(hours=24)
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]


async def test_bad_tokens_are_refused(zone_cp: ZoneCPProcess) -> None:
    doc = dataplane("backend-1", "backend", 10001)
    wrong_service = ControlPlaneClient(zone_cp.url, zone_cp.token("web"))
    with pytest.raises(ControlPlaneError) as info:
        await wrong_service.register(doc)
    assert info.value.http_status == 403
    assert "does not allow service 'backend'" in str(info.value)

    issuer = TokenIssuer.load(zone_cp.state_dir / "tokens")
    expired = issuer.issue("default", ["backend"], timedelta(hours=1), now=datetime.now(UTC) - timedelta(hours=2))
    with pytest.raises(ControlPlaneError) as info:
        await ControlPlaneClient(zone_cp.url, expired).register(doc)
    assert info.value.http_status == 401 and "expired" in str(info.value)

    good = zone_cp.token("backend")
    head, claims, signature = good.split(".")
    forged_claims = claims[:-4] + ("AAAA" if claims[-4:] != "AAAA" else "BBBB")
    for tampered in (f"{head}.{forged_claims}.{signature}", good[:-2] + ("xx" if good[-2:] != "xx" else "yy")):
        with pytest.raises(ControlPlaneError) as info:
            await ControlPlaneClient(zone_cp.url, tampered).register(doc)
        assert info.value.http_status == 401

    other_key = TokenIssuer.generate().issue("default", ["backend"], timedelta(hours=1))
    with pytest.raises(ControlPlaneError) as info:
        await ControlPlaneClient(zone_cp.url, other_key).register(doc)
    assert info.value.http_status == 401
    # Nothing was registered by any refused call.
    listing = (await zone_cp.aget("/v1/dataplanes")).json()
    assert listing["items"] == []


async def test_config_stream_pushes_endpoints_and_drops_silent_dataplanes(zone_cp: ZoneCPProcess) -> None:
    url = zone_cp.url
    web = SimDataplane(url, zone_cp.token("web"), dataplane("web-1", "web", 10010, ["backend"]),
                       heartbeat_interval=0.3)
    b1 = SimDataplane(url, zone_cp.token("backend"), dataplane("backend-1", "backend", 10001),
                      heartbeat_interval=0.3)
    b2 = SimDataplane(url, zone_cp.token("backend"), dataplane("backend-2", "backend", 10002),
                      heartbeat_interval=0.3)
    async with trio.open_nursery() as nursery:
        await nursery.start(web.run)
        assert web.endpoints("backend") == []
        await nursery.start(b1.run)
        await nursery.start(b2.run)
        snap = await web.wait_for(lambda s: len(s["outbound"][0]["endpoints"]) == 2)
        assert {e["port"] for e in snap["outbound"][0]["endpoints"]} == {10001, 10002}
        assert snap["outbound"][0]["protocol"] == "http"
        # backend-2 falls silent: after the heartbeat timeout it leaves web's endpoint list.
        b2.heartbeats = False
        snap = await web.wait_for(lambda s: len(s["outbound"][0]["endpoints"]) == 1, within=10)
        assert snap["outbound"][0]["endpoints"][0]["dataplane"] == "backend-1"
        inspect = json.loads((await zone_cp.acli("inspect", "dataplanes", "-o", "json")).stdout)
        status = {d["name"]: d for d in inspect}
        assert status["backend-2"]["status"] == "offline"
        assert status["web-1"]["status"] == "online" and status["web-1"]["ackedVersion"] == web.version
        # It speaks again and comes back.
        b2.heartbeats = True
        await web.wait_for(lambda s: len(s["outbound"][0]["endpoints"]) == 2, within=10)
        nursery.cancel_scope.cancel()
    metrics = (await zone_cp.aget("/metrics")).text
    assert 'meshcast_cp_config_pushes_total{result="acked"}' in metrics


async def test_stream_needs_a_registered_dataplane_and_a_valid_token(zone_cp: ZoneCPProcess) -> None:
    client = ControlPlaneClient(zone_cp.url, zone_cp.token("web"))
    with pytest.raises(ControlPlaneError) as info:
        async with client.config_stream("default", "nobody"):
            pass
    assert info.value.http_status == 404
    with pytest.raises(ControlPlaneError) as info:
        async with ControlPlaneClient(zone_cp.url, "not-a-token").config_stream("default", "nobody"):
            pass
    assert info.value.http_status == 401


def test_api_speaks_http2_and_publishes_openapi(zone_cp: ZoneCPProcess) -> None:
    result = subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
         zone_cp.url + "/v1/meshes"], capture_output=True, text=True, timeout=30)
    assert result.stdout == "2 200", result.stderr
    spec = httpx.get(zone_cp.url + "/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    for path in ("/v1/apply", "/v1/watch", "/v1/dataplanes/register", "/v1/meshes/{mesh}/{plural}/{name}"):
        assert path in spec["paths"], path
    assert httpx.get(zone_cp.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(zone_cp.url + "/readyz").json()["ready"] is True
    version = zone_cp.cli("version")
    assert version.returncode == 0 and "zone-cp 0.1.0" in version.stdout


async def test_watch_streams_every_change_in_order(zone_cp: ZoneCPProcess, tmp_path: Path) -> None:
    start = (await zone_cp.aget("/v1/meshes")).json()["revision"]
    events: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient(base_url=zone_cp.url, timeout=30) as client,
        client.stream("GET", f"/v1/watch?after={start}&type=meshes") as response,
    ):
        lines = response.aiter_lines()
        assert json.loads(await anext(lines))["type"] == "watching"
        path = tmp_path / "mesh.yaml"
        path.write_text(MESH_YAML)
        assert (await zone_cp.acli("apply", "-f", str(path))).returncode == 0
        path.write_text(MESH_YAML.replace("12h", "6h"))
        assert (await zone_cp.acli("apply", "-f", str(path))).returncode == 0
        deleted = await zone_cp.acli("delete", "mesh", "payments")
        assert deleted.returncode == 0 and deleted.stdout.strip() == "Mesh payments deleted"
        with trio.fail_after(10):
            while len(events) < 3:
                events.append(json.loads(await anext(lines)))
    assert [(e["type"], e["name"]) for e in events] == [
        ("created", "payments"), ("updated", "payments"), ("deleted", "payments")]
    assert events[1]["resource"]["spec"]["mtls"]["certTTL"] == "6h"
    revisions = [e["revision"] for e in events]
    assert revisions == sorted(revisions) and revisions[0] > start


def test_a_mesh_in_use_cannot_be_deleted(zone_cp: ZoneCPProcess, tmp_path: Path) -> None:
    path = tmp_path / "dp.yaml"
    path.write_text(yaml.safe_dump(dataplane("web-1", "web", 10010)))
    assert zone_cp.cli("apply", "-f", str(path)).returncode == 0
    refused = zone_cp.cli("delete", "mesh", "default")
    assert refused.returncode != 0
    assert "mesh default still has 1 Dataplane resource(s): delete them first" in refused.stderr
    assert zone_cp.cli("delete", "dataplane", "web-1").returncode == 0
    assert zone_cp.cli("delete", "mesh", "default").returncode == 0


@pytest.fixture
def named_zone_cp(tmp_path: Path) -> Iterator[ZoneCPProcess]:
    cp = ZoneCPProcess(tmp_path / "eu", "--zone", "eu")  # a zone ingress needs a zone name
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()


def test_an_ingress_leaves_with_its_own_token_only(named_zone_cp: ZoneCPProcess) -> None:
    zone_cp = named_zone_cp
    token = zone_cp.cli("generate", "ingress-token")
    assert token.returncode == 0, token.stderr
    ingress = {"authorization": f"Bearer {token.stdout.strip()}"}
    where = {"advertise": "127.0.0.1:10001"}
    polled = httpx.get(f"{zone_cp.url}/v1/ingress/endpoints", params=where, headers=ingress, timeout=5)
    assert polled.status_code == 200, polled.text
    sidecar = {"authorization": f"Bearer {zone_cp.token('backend')}"}
    refused = httpx.post(f"{zone_cp.url}/v1/ingress/leave", params=where, headers=sidecar, timeout=5)
    assert refused.status_code in (401, 403), refused.text
    left = httpx.post(f"{zone_cp.url}/v1/ingress/leave", params=where, headers=ingress, timeout=5)
    assert (left.status_code, left.json()) == (200, {"left": True})
    again = httpx.post(f"{zone_cp.url}/v1/ingress/leave", params=where, headers=ingress, timeout=5)
    assert (again.status_code, again.json()) == (200, {"left": False})  # no longer published: nothing to do
