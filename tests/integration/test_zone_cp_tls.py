"""The zone control plane over TLS: the API (hypercorn) and the dataplane server (ALPN h2) with one certificate."""

from __future__ import annotations

import ssl
from pathlib import Path

import trio

from meshcast.testing.simdp import SimDataplane
from meshcast.wire.cpclient import ControlPlaneClient
from tests.integration.test_zone_cp import dataplane
from tests.support.tls import make_server_cert
from tests.support.zone import ZoneCPProcess


async def test_sidecars_and_operators_over_tls(tmp_path: Path) -> None:
    ca, cert, key = make_server_cert(tmp_path / "tls")
    cp = ZoneCPProcess(tmp_path / "state", "--tls-cert", str(cert), "--tls-key", str(key), ca_file=ca)
    cp.start()
    try:
        assert cp.url.startswith("https://")
        got = await cp.acli("get", "meshes")
        assert got.returncode == 0 and "default" in got.stdout
        # Without our CA the CLI refuses the server's certificate, in one line.
        untrusted = await trio.to_thread.run_sync(lambda: cp.cli("--ca-file", "/etc/ssl/certs/ca-certificates.crt",
                                                                 "get", "meshes"))
        assert untrusted.returncode != 0 and "certificate" in untrusted.stderr.lower()

        context = ssl.create_default_context(cafile=str(ca))
        web = SimDataplane(cp.url, cp.token("web"), dataplane("web-1", "web", 10010, ["backend"]),
                           ssl_context=context, want_certificate=True)
        backend = SimDataplane(cp.url, cp.token("backend"), dataplane("backend-1", "backend", 10001),
                               ssl_context=context)
        async with trio.open_nursery() as nursery:
            await nursery.start(web.run)
            await nursery.start(backend.run)
            snap = await web.wait_for(lambda s: len(s["outbound"][0]["endpoints"]) == 1)
            assert snap["outbound"][0]["endpoints"][0]["dataplane"] == "backend-1"
            assert web.certificate is not None and web.certificate["spiffeId"] == "spiffe://default/web"
            nursery.cancel_scope.cancel()

        # A plaintext client cannot hold a config stream on the TLS dataplane server.
        plain = ControlPlaneClient(cp.url.replace("https", "http"), cp.token("web"))
        plain.stream_url = web.client.stream_url.replace("https", "http") if web.client.stream_url else None
        failed = False
        with trio.move_on_after(5):
            try:
                async with plain.config_stream("default", "web-1") as stream:
                    async for _ in stream.snapshots():
                        break
            except Exception:
                failed = True
        assert failed
    finally:
        cp.stop()
