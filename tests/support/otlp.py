"""A real OTLP/HTTP trace receiver for tests: what a collector sees of the spans we export.

    with otlp_receiver() as receiver:
        tracer = Tracer("web", receiver.endpoint)        # http://127.0.0.1:<port>/v1/traces
        ...
        spans = receiver.wait_for(2)                      # list[ReceivedSpan], in arrival order

It serves `POST /v1/traces` with `application/x-protobuf` bodies (gzip accepted), decodes them as
`ExportTraceServiceRequest` and answers 200 with an empty `ExportTraceServiceResponse`, like a collector. Anything
else gets 404, 415 or 400 and is counted in `rejected`. The server runs on a thread of the test process, on loopback.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeAlias

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

Value: TypeAlias = "str | bool | int | float | bytes | list[Value] | dict[str, Value] | None"


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str  # lowercase hex, as in a traceparent
    span_id: str
    parent_span_id: str  # "" for a root span
    name: str
    kind: str  # "server", "client", "internal", "producer", "consumer", "unspecified"
    service_name: str | None  # the resource's service.name
    attributes: dict[str, Value]
    status: str = "unset"  # "unset", "ok" or "error"
    status_message: str = ""
    trace_state: str = ""
    resource: dict[str, Value] = field(default_factory=dict)


def _value(value: AnyValue) -> Value:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    result: Value = getattr(value, which)
    return result


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Value]:
    return {kv.key: _value(kv.value) for kv in pairs}


def decode(body: bytes) -> list[ReceivedSpan]:
    """The spans in an ExportTraceServiceRequest body, as simple records. Raises DecodeError on garbage."""
    request = ExportTraceServiceRequest.FromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        service = resource.get("service.name")
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(ReceivedSpan(
                    trace_id=span.trace_id.hex(), span_id=span.span_id.hex(), parent_span_id=span.parent_span_id.hex(),
                    name=span.name, kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_").lower(),
                    service_name=service if isinstance(service, str) else None,
                    attributes=_attributes(span.attributes),
                    status=Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_").lower(),
                    status_message=span.status.message, trace_state=span.trace_state, resource=resource))
    return spans


class OtlpReceiver:
    """Owns the HTTP server and what it received; thread-safe. Use `otlp_receiver()` to start and stop one."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0  # accepted export requests
        self.rejected = 0
        self._changed = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/v1/traces":
                    return self._answer(404)
                if self.headers.get_content_type() != "application/x-protobuf":
                    return self._answer(415)
                try:
                    if self.headers.get("Content-Encoding") == "gzip":
                        body = gzip.decompress(body)
                    spans = decode(body)
                except (DecodeError, OSError, EOFError):
                    return self._answer(400)
                with receiver._changed:
                    receiver.spans.extend(spans)
                    receiver.requests += 1
                    receiver._changed.notify_all()
                self._answer(200, ExportTraceServiceResponse().SerializeToString())

            def _answer(self, status: int, body: bytes = b"") -> None:
                if status != 200:
                    with receiver._changed:
                        receiver.rejected += 1
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler

    def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedSpan]:
        """The spans received once there are at least `count` (all of them); raises TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.spans) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.spans)} spans received, waited for {count}")
                self._changed.wait(left)
            return list(self.spans)

    def serve(self) -> threading.Thread:
        thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                  name="otlp-receiver", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """A receiver listening on a free loopback port for the duration of the block."""
    receiver = OtlpReceiver()
    thread = receiver.serve()
    try:
        yield receiver
    finally:
        receiver.close()
        thread.join(timeout=5)
