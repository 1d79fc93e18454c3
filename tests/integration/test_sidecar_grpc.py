"""gRPC (HTTP/2 with prior knowledge) through two real sidecars, with a real grpcio client and server.

Each call is its own HTTP/2 stream between the sidecars (pooled mTLS `h2` connections): streaming both ways,
trailers and metadata cross; the server sees the caller's SPIFFE ID in `x-meshcast-source`.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import httpx

from tests.integration.test_sidecar_tcp import wait_for
from tests.support.sidecar import SidecarProcess
from tests.support.zone import ZoneCPProcess, free_port


def grpc_dataplane(name: str, service: str, port: int, app_port: int, outbound: dict[str, int]) -> dict[str, Any]:
    return {"type": "Dataplane", "mesh": "default", "name": name, "spec": {
        "address": "127.0.0.1",
        "inbound": [{"port": port, "appPort": app_port, "service": service, "protocol": "grpc"}],
        "outbound": [{"port": p, "service": s} for s, p in outbound.items()]}}


def _chat(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    for request in requests:
        yield b"echo:" + request
    context.set_trailing_metadata((("x-count", "done"),))


def _hello(request: bytes, context: grpc.ServicerContext) -> bytes:
    return b"hello " + request


def _whoami(request: bytes, context: grpc.ServicerContext) -> bytes:
    return dict(context.invocation_metadata()).get("x-meshcast-source", "").encode()


def test_grpc_unary_and_bidirectional_streaming_through_the_mesh(tmp_path: Path) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("demo.Echo", {
        "Hello": grpc.unary_unary_rpc_method_handler(_hello),
        "WhoAmI": grpc.unary_unary_rpc_method_handler(_whoami),
        "Chat": grpc.stream_stream_rpc_method_handler(_chat),
    }),))
    app_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    cp = ZoneCPProcess(tmp_path / "cp")
    out_port = free_port()
    started: list[SidecarProcess] = []
    try:
        cp.start()
        for name, service, outbound in (("echo-1", "echo", {}), ("client-1", "client", {"echo": out_port})):
            sidecar = SidecarProcess(tmp_path / name, cp.url, cp.token(service),
                                     grpc_dataplane(name, service, free_port(), app_port, outbound))
            started.append(sidecar)
            sidecar.start()

        def endpoint_known() -> bool:
            config = httpx.get(started[1].admin + "/config").json()["config"]
            return any(o["service"] == "echo" and o["endpoints"] for o in config["outbound"])

        wait_for(endpoint_known)
        with grpc.insecure_channel(f"127.0.0.1:{out_port}") as channel:
            hello = channel.unary_unary("/demo.Echo/Hello")
            assert hello(b"mesh", timeout=10) == b"hello mesh"
            chat = channel.stream_stream("/demo.Echo/Chat")
            call = chat(iter([b"a", b"b" * 100_000, b"c"]), timeout=10)
            assert list(call) == [b"echo:a", b"echo:" + b"b" * 100_000, b"echo:c"]
            assert dict(call.trailing_metadata() or ())["x-count"] == "done"
            whoami = channel.unary_unary("/demo.Echo/WhoAmI")
            forged = (("x-meshcast-source", "spiffe://default/forged"),)
            assert whoami(b"", timeout=10, metadata=forged) == b"spiffe://default/client"
    finally:
        for sidecar in started:
            sidecar.stop()
        cp.stop()
        server.stop(0)


def test_curl_http2_prior_knowledge_through_the_mesh(tmp_path: Path) -> None:
    """curl --http2-prior-knowledge to the client's sidecar reaches an h2c app (hypercorn) behind the other one."""
    import subprocess
    import threading

    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = f"{scope['http_version']} {scope['path']}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    app_port = free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{app_port}"]
    stop = trio.Event()
    token: list[trio.lowlevel.TrioToken] = []

    async def run_app() -> None:
        token.append(trio.lowlevel.current_trio_token())
        await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    thread = threading.Thread(target=trio.run, args=(run_app,), daemon=True)
    thread.start()
    cp = ZoneCPProcess(tmp_path / "cp")
    out_port = free_port()
    started: list[SidecarProcess] = []
    try:
        cp.start()
        for name, service, outbound in (("h2app-1", "h2app", {}), ("client-1", "client", {"h2app": out_port})):
            doc = grpc_dataplane(name, service, free_port(), app_port, outbound)
            doc["spec"]["inbound"][0]["protocol"] = "http2"
            sidecar = SidecarProcess(tmp_path / name, cp.url, cp.token(service), doc)
            started.append(sidecar)
            sidecar.start()
        wait_for(lambda: subprocess.run(
            ["curl", "-s", "--http2-prior-knowledge", f"http://127.0.0.1:{out_port}/probe"],
            capture_output=True, text=True, timeout=10).stdout == "2 /probe")
        result = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-w", " %{http_version}",
                                 f"http://127.0.0.1:{out_port}/h2/path"], capture_output=True, text=True, timeout=10)
        assert result.stdout == "2 /h2/path 2"
    finally:
        for sidecar in started:
            sidecar.stop()
        cp.stop()
        if token:
            token[0].run_sync_soon(stop.set)
        thread.join(timeout=10)
