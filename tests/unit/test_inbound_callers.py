"""Inbound policies by caller: the caller's tags from its certificate (`peer_identity`), and `from` items that select
callers by tags, matched and merged in the sidecar once per caller (`dataplane.policy.InboundPolicy.for_caller`)."""

from __future__ import annotations

import random
import ssl
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from dataplane.agent import IDENTITY_DIR, ControlPlaneAgent
from dataplane.config import InvalidConfig
from dataplane.policy import CallerPolicy, compile_inbound, compile_policies
from dataplane.transport.tls import Identity, PeerIdentity, client_context, peer_identity, server_context
from meshcast.pki import MeshCA, build_csr, generate_workload_key

V1 = {"kind": "MeshSubset", "tags": {"version": "v1"}}
API_V2 = {"kind": "MeshServiceSubset", "name": "api", "tags": {"version": "v2"}}


def item(ref: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
    return {"from": ref, "default": default}


def test_the_most_specific_covering_item_decides_and_fields_merge() -> None:
    policy = compile_inbound({
        "MeshTrafficPermission": [item({"kind": "Mesh"}, {"action": "Deny"}), item(V1, {"action": "Allow"}),
                                  item({"kind": "MeshService", "name": "api"}, {"action": "Deny"}),
                                  item(API_V2, {"action": "Allow"})],
        "MeshFaultInjection": [item({"kind": "Mesh"}, {"http": [{"abort": {"httpStatus": 503, "percentage": 100}}]}),
                               item(V1, {"http": []})],
        "MeshRateLimit": [item({"kind": "Mesh"}, {"local": {"http": {"requestRate": {"num": 1, "interval": "1s"},
                                                                     "onRateLimit": {"status": 503}}}}),
                          item(V1, {"local": {"http": {"requestRate": {"num": 2, "interval": "1s"}}}})],
    })
    assert not policy.allows(None)  # no identity: only Mesh-wide items cover it
    assert policy.allows("web", {"version": "v1"}) and not policy.allows("web", {"version": "v2"})
    assert not policy.allows("api", {"version": "v1"})  # MeshService (rank 2) beats MeshSubset (rank 1)
    assert policy.allows("api", {"version": "v2", "zone": "eu"})  # MeshServiceSubset beats MeshService
    assert policy.fault("web", random.Random(1), {"version": "v1"}) == (0.0, None)  # v1: no fault list
    assert policy.fault("web", random.Random(1), {"version": "v2"}) == (0.0, 503)
    v1 = policy.for_caller("web", {"version": "v1"})
    assert v1.http_limit is not None and (v1.http_limit.num, v1.http_limit.status) == (2, 503)  # merged by field


def test_a_caller_is_worked_out_once_and_callers_with_the_same_settings_share_a_bucket() -> None:
    policy = compile_inbound({"MeshRateLimit": [
        item({"kind": "Mesh"}, {"local": {"http": {"requestRate": {"num": 1, "interval": "10s"}}}}),
        item(V1, {"local": {"http": {"requestRate": {"num": 1, "interval": "10s"}}}})]})
    web_v1 = policy.for_caller("web", {"version": "v1"})
    assert policy.for_caller("web", {"version": "v1"}) is web_v1  # a connection asks once; the next ones reuse it
    assert isinstance(web_v1, CallerPolicy) and web_v1.limit_request(0.0) is None
    assert policy.for_caller("api", {"version": "v1", "zone": "eu"}).limit_request(0.0) is not None  # the v1 bucket
    assert policy.for_caller("api", {"version": "v2"}).limit_request(0.0) is None  # every other caller's bucket
    assert policy.for_caller(None).limit_request(0.0) is not None


def test_the_mapping_by_caller_still_compiles() -> None:
    """The form without subsets (and of earlier zone CPs): the caller's own settings, else `*`'s."""
    policy = compile_inbound({"MeshTrafficPermission": {"*": {"action": "Deny"}, "web": {"action": "Allow"}}})
    assert policy.allows("web", {"version": "v1"}) and not policy.allows("api") and not policy.allows(None)


@pytest.mark.parametrize(("conf", "reason"), [
    ([item({"kind": "MeshGateway", "name": "edge"}, {"action": "Deny"})], "kind 'MeshGateway'"),
    ([item({"kind": "MeshSubset"}, {"action": "Deny"})], "wrong fields for its kind"),
    ([item({"kind": "MeshService", "tags": {"a": "b"}}, {"action": "Deny"})], "wrong fields for its kind"),
    ([item({"kind": "MeshSubset", "tags": {"version": 1}}, {"action": "Deny"})], "are not strings"),
    ([item(V1, {})], "KeyError: 'action'"),
    ([{"from": V1}], "KeyError: 'default'"),
    ("Deny", "TypeError"),
])
def test_nonsense_is_refused_when_the_snapshot_arrives(conf: Any, reason: str) -> None:
    with pytest.raises(InvalidConfig, match=r"^policies: ") as info:
        compile_policies({"inbound": {"web": {"MeshTrafficPermission": conf}}})
    assert reason in str(info.value)


def test_each_item_is_compiled_when_the_snapshot_arrives_not_at_the_first_call() -> None:
    with pytest.raises(InvalidConfig, match="invalid duration"):
        compile_policies({"inbound": {"web": {"MeshRateLimit": [
            item({"kind": "Mesh"}, {}), item(V1, {"local": {"http": {"requestRate": {"num": 1, "interval": "x"}}}})]}}})


def identity(ca: MeshCA, service: str, tags: dict[str, str]) -> Identity:
    key = generate_workload_key()
    chain = ca.sign_workload_csr(build_csr(key, f"spiffe://default/{service}"), service=service, mesh="default",
                                 ttl=timedelta(hours=1), tags=tags)
    return Identity.from_key(key, chain, ca.trust_bundle())


async def seen_by_server(server_id: Identity, client_ctx: ssl.SSLContext) -> PeerIdentity | None:
    left, right = trio.testing.memory_stream_pair()
    server = trio.SSLStream(left, server_context(server_id), server_side=True)
    client = trio.SSLStream(right, client_ctx, server_hostname="backend")
    seen: list[PeerIdentity | None] = []

    async def serve() -> None:
        await server.do_handshake()
        seen.append(peer_identity(server._ssl_object))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            await client.do_handshake()
    return seen[0]


async def test_the_server_reads_the_callers_service_and_tags_from_its_certificate() -> None:
    ca = MeshCA.generate("default")
    tags = {"version": "v1", "zone": "eu-west", "team/owner": "a:b"}
    caller = await seen_by_server(identity(ca, "backend", {}), client_context(identity(ca, "web", tags)))
    assert caller == PeerIdentity("spiffe://default/web", "web", tags)
    bare = await seen_by_server(identity(ca, "backend", {}), client_context(identity(ca, "web", {})))
    assert bare is not None and bare.tags == {}


def test_a_saved_certificate_with_other_tags_than_the_dataplanes_is_not_served(tmp_path: Path) -> None:
    """After a restart with changed tags the agent gets a new certificate rather than serve the old tags (the zone
    CP's `zone` aside: the agent does not know it)."""
    ca = MeshCA.generate("default")
    saved = identity(ca, "web", {"version": "v1", "zone": "eu"})
    directory = tmp_path / IDENTITY_DIR
    directory.mkdir()
    for name, data in (("key.pem", saved.key_pem), ("chain.pem", saved.chain_pem), ("bundle.pem", saved.bundle_pem)):
        (directory / name).write_bytes(data)

    def restarted(tags: dict[str, str], service: str = "web") -> Identity | None:
        doc = {"type": "Dataplane", "mesh": "default", "name": "web-1", "spec": {
            "address": "127.0.0.1", "inbound": [{"port": 10001, "service": service, "tags": tags}]}}
        agent = ControlPlaneAgent(cp_url="http://127.0.0.1:1", token="t", dataplane=doc, state_dir=tmp_path)
        agent.load_saved()
        return agent.identity

    assert restarted({"version": "v1"}) is not None
    assert restarted({"version": "v2"}) is None
    assert restarted({"version": "v1", "team": "a"}) is None
    assert restarted({"version": "v1"}, service="api") is None
