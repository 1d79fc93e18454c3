"""HTTP/1.1 codec cost per request, in memory: parse + re-serialize one hop, as the sidecar does.

Request: a typical ~300-byte GET head is parsed by a ServerConnection (downstream side) and re-serialized by a
ClientConnection (upstream side). Response: a 1 KiB response (head + body) is parsed by the ClientConnection and
re-serialized by the ServerConnection. Connections are kept alive across iterations, like a pooled proxy.
Prints the median over several runs of the cost per request, in microseconds.

    .venv/bin/python bench/bench_http1.py [--runs 7] [--n 20000]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import httptools

from dataplane.codec import ClientConnection, DataReceived, MessageCompleted, ServerConnection

REQUEST = (
    b"GET /api/v1/orders/12345?include=items&currency=EUR HTTP/1.1\r\n"
    b"Host: orders.shop.svc.cluster.local\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) meshcast-bench/1.0\r\n"
    b"Accept: application/json\r\n"
    b"Accept-Encoding: gzip, deflate\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
    b"X-Request-Id: 7f3c2a1e-9b4d-4e8f-a6c5-1d2e3f4a5b6c\r\n"
    b"Cookie: session=abc123\r\n"
    b"\r\n"
)
BODY = b"x" * 1024
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 1024\r\n"
    b"Date: Tue, 25 Nov 2025 19:00:00 GMT\r\n"
    b"Server: upstream\r\n"
    b"\r\n" + BODY
)


def request_hop(server: ServerConnection, client: ClientConnection) -> bytes:
    head, _ = server.receive_data(REQUEST)
    return client.send_request(head.method, head.target, head.headers, body_length=head.body_length)  # type: ignore[union-attr]


def response_hop(server: ServerConnection, client: ClientConnection) -> bytes:
    head, *rest = client.receive_data(RESPONSE)
    out = [server.send_response(head.status, head.headers, reason=head.reason, body_length=head.body_length)]  # type: ignore[union-attr]
    for event in rest:
        if isinstance(event, DataReceived):
            out.append(server.send_data(event.data))
        elif isinstance(event, MessageCompleted):
            out.append(server.send_end(event.trailers))
    return b"".join(out)


def run(n: int) -> tuple[float, float]:
    server, client = ServerConnection(), ClientConnection()
    t_req = t_resp = 0.0
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        request_hop(server, client)
        t1 = clock()
        response_hop(server, client)
        t2 = clock()
        t_req += t1 - t0
        t_resp += t2 - t1
    return t_req / n * 1e6, t_resp / n * 1e6


def raw_httptools(n: int) -> float:
    """The floor: httptools with no-op callbacks, request head only."""

    class Sink:
        def on_url(self, url: bytes) -> None: ...
        def on_header(self, name: bytes, value: bytes) -> None: ...
        def on_headers_complete(self) -> None: ...
        def on_message_complete(self) -> None: ...

    parser = httptools.HttpRequestParser(Sink())
    t0 = time.perf_counter()
    for _ in range(n):
        parser.feed_data(REQUEST)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--n", type=int, default=20000)
    args = ap.parse_args()
    assert request_hop(ServerConnection(), ClientConnection()).endswith(b"\r\n\r\n")
    run(2000)  # warm up
    results = [run(args.n) for _ in range(args.runs)]
    req = statistics.median(r[0] for r in results)
    resp = statistics.median(r[1] for r in results)
    best_req, best_resp = min(r[0] for r in results), min(r[1] for r in results)
    floor = statistics.median(raw_httptools(args.n) for _ in range(args.runs))
    print(f"python {platform.python_version()}, httptools {httptools.__version__}, {args.runs} runs x {args.n}")
    print(f"request  ({len(REQUEST)} B head) parse + re-serialize: {req:.2f} us")
    print(f"response ({len(RESPONSE)} B, 1 KiB body) parse + re-serialize: {resp:.2f} us")
    print(f"one hop (request + response): {req + resp:.2f} us (best run: {best_req:.2f} + {best_resp:.2f})")
    print(f"floor: httptools alone, no-op callbacks, request head: {floor:.2f} us")


if __name__ == "__main__":
    main()
