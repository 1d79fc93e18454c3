"""Sidecar mTLS contexts (over trio memory streams) and snapshot validation."""

from __future__ import annotations

import ssl
from datetime import timedelta
from typing import Any

import pytest
import trio
import trio.testing

from dataplane.config import InvalidConfig, parse_snapshot
from dataplane.transport.tls import Identity, client_context, peer_spiffe_id, server_context
from meshcast.pki import MeshCA, build_csr, generate_workload_key


def identity(ca: MeshCA, mesh: str, service: str) -> Identity:
    key = generate_workload_key()
    chain = ca.sign_workload_csr(build_csr(key, f"spiffe://{mesh}/{service}"), service=service, mesh=mesh,
                                 ttl=timedelta(hours=1))
    return Identity.from_key(key, chain, ca.trust_bundle())


async def handshake(server_id: Identity, client_ctx: ssl.SSLContext) -> tuple[str | None, str | None]:
    """Run a TLS handshake over memory streams; return (caller ID seen by the server, ALPN)."""
    left, right = trio.testing.memory_stream_pair()
    server = trio.SSLStream(left, server_context(server_id), server_side=True)
    client = trio.SSLStream(right, client_ctx, server_hostname="backend")
    seen: list[str | None] = []

    async def serve() -> None:
        await server.do_handshake()
        seen.append(peer_spiffe_id(server._ssl_object))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            await client.do_handshake()
    return seen[0], client.selected_alpn_protocol()


async def test_mutual_tls_carries_the_callers_spiffe_id() -> None:
    ca = MeshCA.generate("default")
    caller, alpn = await handshake(identity(ca, "default", "backend"), client_context(identity(ca, "default", "web")))
    assert caller == "spiffe://default/web"
    assert alpn == "h2"


async def test_a_certificate_from_another_ca_is_refused() -> None:
    ca, other = MeshCA.generate("default"), MeshCA.generate("default")
    with pytest.raises(ExceptionGroup) as info:
        await handshake(identity(ca, "default", "backend"), client_context(identity(other, "default", "web")))
    assert info.group_contains(ssl.SSLError, depth=None) or info.group_contains(trio.BrokenResourceError, depth=None)


async def test_a_client_without_certificate_is_refused() -> None:
    ca = MeshCA.generate("default")
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.check_hostname = False
    bare.load_verify_locations(cadata=ca.trust_bundle().decode())
    with pytest.raises(ExceptionGroup) as info:
        await handshake(identity(ca, "default", "backend"), bare)
    # The server side refused the handshake: no caller identity was ever produced.
    assert info.group_contains(ssl.SSLError, depth=None) or info.group_contains(trio.BrokenResourceError, depth=None)


def snapshot(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "mesh": "default", "dataplane": "web-1", "address": "127.0.0.1", "mtls": {"enabled": True},
        "inbound": [{"port": 10010, "appPort": 8080, "service": "web", "protocol": "http"}],
        "outbound": [{"service": "backend", "port": 20000, "endpoints": [{"address": "127.0.0.1", "port": 10001}]}],
        "heartbeatInterval": 2.0, "futureField": {"ignored": True},
    }
    base.update(changes)
    return base


def test_snapshot_validation() -> None:
    config = parse_snapshot(snapshot(), mesh="default", name="web-1")
    assert config.inbound[0].target_port == 8080
    assert config.outbound_for("backend") is not None and config.outbound_for("nope") is None
    for bad, reason in [
        (snapshot(dataplane="web-2"), "snapshot is for default/web-2, not default/web-1"),
        (snapshot(outbound=[{"service": "b", "port": 70000}]), "outbound[0].port:"),
        (snapshot(outbound=[{"service": "b", "port": 10010}]), "two listeners share a port"),
        (snapshot(heartbeatInterval=0), "heartbeatInterval:"),
    ]:
        with pytest.raises(InvalidConfig) as info:
            parse_snapshot(bad, mesh="default", name="web-1")
        assert str(info.value).startswith(reason), str(info.value)


async def test_lean_tls_stream_speaks_to_trio_ssl_and_reads_the_peer_identity() -> None:
    """The lean TLS stream interoperates with a standard TLS peer over a real socket pair, both directions."""
    import socket

    from dataplane.transport.leantls import LeanTLSStream
    from meshcast.wire.leanio import LeanSocketStream

    ca = MeshCA.generate("default")
    a, b = socket.socketpair()
    server = LeanTLSStream(LeanSocketStream(a), server_context(identity(ca, "default", "backend")), server_side=True)
    client = trio.SSLStream(trio.SocketStream(trio.socket.from_stdlib_socket(b)),
                            client_context(identity(ca, "default", "web")), server_hostname="backend")
    payload = bytes(range(256)) * 1024  # 256 KiB: several TLS records and socket buffers' worth

    async def serve() -> None:
        await server.do_handshake()
        assert peer_spiffe_id(server.ssl_object) == "spiffe://default/web"
        assert server.selected_alpn_protocol() == "h2"
        received = bytearray()
        while len(received) < len(payload):
            received += await server.receive_some()
        await server.send_all(bytes(received[::-1]))
        assert await server.receive_some() == b""
        await server.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            await client.do_handshake()
            nursery.start_soon(client.send_all, payload)
            echoed = bytearray()
            while len(echoed) < len(payload):
                echoed += await client.receive_some()
            assert bytes(echoed) == payload[::-1]
            await client.aclose()


@pytest.mark.parametrize(("changes", "reason"), [
    ({"mesh": None}, "mesh: Input should be a valid string"),
    ({"address": 7}, "address: Input should be a valid string"),
    ({"mtls": None}, "mtls: Input should be a valid dictionary or instance of MtlsConfig"),
    ({"mtls": {"enabled": "yes"}}, "mtls.enabled: Input should be a valid boolean"),
    ({"inbound": {}}, "inbound: Input should be a valid list"),
    ({"inbound": [{"port": 10010}]}, "inbound[0].service: Field required"),
    ({"inbound": [{"port": 10010, "service": "web", "protocol": "udp"}]},
     "inbound[0].protocol: Input should be 'http', 'http2', 'grpc' or 'tcp'"),
    ({"inbound": [{"port": 10010, "service": "web", "appPort": 0}]},
     "inbound[0].appPort: Input should be greater than or equal to 1"),
    ({"inbound": [{"port": 10010.5, "service": "web"}]}, "inbound[0].port: Input should be a valid integer"),
    ({"inbound": [{"port": True, "service": "web"}]}, "inbound[0].port: Input should be a valid integer"),
    ({"inbound": [{"port": 10010, "service": "web", "tags": {"v": 2}}]},
     "inbound[0].tags.v: Input should be a valid string"),
    ({"outbound": [{"service": "b", "port": 20000, "endpoints": [{"address": "10.0.0.1", "port": 70000}]}]},
     "outbound[0].endpoints[0].port: Input should be less than or equal to 65535"),
    ({"heartbeatInterval": "2"}, "heartbeatInterval: Input should be a valid number"),
    ({"httpProxy": {"address": "127.0.0.1"}}, "httpProxy.port: Field required"),
    ({"services": {"a b": {"protocol": "x"}}}, "services[\"a b\"].protocol: Input should be"),
])
def test_an_invalid_snapshot_names_its_first_broken_field(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidConfig) as info:
        parse_snapshot(snapshot(**changes), mesh="default", name="web-1")
    assert str(info.value).startswith(reason), str(info.value)
    assert "\n" not in str(info.value)


def test_snapshot_fields_defaults_and_dump() -> None:
    config = parse_snapshot(snapshot(heartbeatInterval=1, httpProxy={"port": 15001}, services={
        "backend": {"protocol": "http", "endpoints": [{"address": "10.0.0.1", "port": 8080.0}]}}),
        mesh="default", name="web-1")
    assert config.heartbeat_interval == 1.0 and isinstance(config.heartbeat_interval, float)
    assert config.zone == "" and config.mtls.cert_ttl == "24h"
    assert config.inbound[0].app_address == "127.0.0.1" and config.inbound[0].tags == {}
    assert config.http_proxy is not None and config.http_proxy.address == "127.0.0.1"
    endpoint = config.services["backend"].endpoints[0]
    assert endpoint.port == 8080 and isinstance(endpoint.port, int) and endpoint.protocol == "tcp"
    assert endpoint.model_dump() == {"address": "10.0.0.1", "port": 8080, "protocol": "tcp", "tags": {},
                                     "dataplane": "", "priority": 0, "sni": ""}
    upstream = config.upstream("backend")
    assert upstream is not None and upstream.endpoints == config.outbound[0].endpoints  # its outbound first
    # Python names are accepted too, and the dump by wire names reads back to an equal config.
    by_name = snapshot(heartbeat_interval=3)
    del by_name["heartbeatInterval"]  # the wire name wins when both are there
    assert parse_snapshot(by_name, mesh="default", name="web-1").heartbeat_interval == 3
    dumped = config.model_dump(mode="json", by_alias=True)
    assert dumped["heartbeatInterval"] == 1.0 and dumped["inbound"][0]["appPort"] == 8080
    assert "futureField" not in dumped
    assert parse_snapshot(dumped, mesh="default", name="web-1") == config
