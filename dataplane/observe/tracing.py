"""Spans for proxied requests, exported over OTLP/HTTP (protobuf) by the OpenTelemetry SDK.

Interface:

    tracer = Tracer("web", "http://127.0.0.1:4318/v1/traces", sampling=10.0, resource_attributes={...})
    span = tracer.start_span("server", "GET", parent=extract(traceparent, tracestate),
                             attributes=http_attributes(method="GET", path=..., authority=..., ...))
    ...forward with traceparent = format_traceparent(span.context), tracestate = span.context.tracestate...
    span.end(status_code=200)             # or end(status_code=None, error="upstream_connect_failed")
    tracer.shutdown()                     # at exit: flushes what is queued (blocking: run it in a thread)

Theory of operation. The SDK is imported when a Tracer is made, not with this module, so a sidecar without
tracing never loads it (its idle RSS is a target). Each Tracer owns its own TracerProvider (the global one is never
set) with one BatchSpanProcessor: `end()` only queues the span; the processor's thread batches and exports every
`schedule_delay` seconds, so no network IO happens on the caller's thread. A full queue (`max_queue_size`) drops
spans; a collector that is down costs retries on that thread, never on the event loop.

Our propagated context and the exported spans agree: a parent `SpanContext` (the incoming traceparent) becomes the
SDK's remote parent as is, so the span has that trace id and that parent span id, and `ActiveSpan.context` is the
SDK's own context for the span (its new span id and the sampling decision) to send onward. Sampling is OTel's
`ParentBased(TraceIdRatioBased)`: with a parent, its sampled flag decides; without one, `sampling` percent of new
traces are sampled, by the same rule as `tracecontext.should_sample`. An unsampled span is not recorded (its
`end()` is nearly free) but still has a fresh span id and carries the flag 00 downstream; under an unsampled
parent the SDK is not even called (a child context is all there is to make).

The exporter sends to `endpoint` directly: proxy environment variables (HTTP_PROXY...) are not honoured, as they
are meant for the workload beside the sidecar, not for its collector. Attributes follow the OTel HTTP semantic
conventions (`http_attributes` builds them); `end()` adds `http.response.status_code`, and marks the span as an
error with `error.type` for a 5xx on a server span, a 4xx or 5xx on a client span, or an `error` reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from dataplane.observe.tracecontext import SpanContext, child

if TYPE_CHECKING:
    from opentelemetry.trace import Span

AttributeValue = str | bool | int | float
Kind = Literal["server", "client"]


class ActiveSpan:
    """One span in flight. `context` is what to propagate downstream; call `end()` exactly once."""

    __slots__ = ("_error_from", "_span", "context")

    def __init__(self, span: Span | None, context: SpanContext, error_from: int) -> None:
        self._span = span
        self._error_from = error_from  # the lowest status that marks the span as failed (server 500, client 400)
        self.context = context

    @property
    def recording(self) -> bool:
        """False for an unsampled span: attributes set on it go nowhere."""
        return self._span is not None and self._span.is_recording()

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self._span is not None:
            self._span.set_attribute(key, value)

    def end(self, status_code: int | None = None, error: str | None = None) -> None:
        """Finish the span: the response status (None: there was no response) and the reason for a failure."""
        span = self._span
        if span is None or not span.is_recording():
            return
        from opentelemetry.trace import StatusCode

        if status_code is not None:
            span.set_attribute("http.response.status_code", status_code)
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(StatusCode.ERROR, error)
        elif status_code is not None and status_code >= self._error_from:
            span.set_attribute("error.type", str(status_code))
            span.set_status(StatusCode.ERROR)
        span.end()


class Tracer:
    """Owns an OTel TracerProvider, its batch processor thread and its OTLP/HTTP exporter.

    Raises ValueError for a `sampling` outside 0..100. `force_flush()` and `shutdown()` block until the export is
    done or times out: from the event loop, call them through `trio.to_thread.run_sync`. After `shutdown()` new
    spans are not exported.
    """

    def __init__(self, service_name: str, endpoint: str, *, sampling: float = 100.0,
                 resource_attributes: Mapping[str, AttributeValue] | None = None, schedule_delay: float = 0.5,
                 export_timeout: float = 5.0, max_queue_size: int = 2048) -> None:
        if not 0.0 <= sampling <= 100.0:
            raise ValueError(f"sampling must be a percentage in 0..100, not {sampling}")
        import requests
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        session = requests.Session()
        session.trust_env = False
        exporter = OTLPSpanExporter(endpoint=endpoint, timeout=export_timeout, session=session)
        resource = Resource.create({**(resource_attributes or {}), "service.name": service_name})
        self.sampling = sampling
        self._provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(sampling / 100)), resource=resource,
                                        shutdown_on_exit=False)
        self._provider.add_span_processor(BatchSpanProcessor(
            exporter, max_queue_size=max_queue_size, schedule_delay_millis=schedule_delay * 1000,
            max_export_batch_size=min(512, max_queue_size)))
        self._tracer = self._provider.get_tracer("meshcast.dataplane")

    def start_span(self, kind: Kind, name: str, parent: SpanContext | None = None,
                   attributes: Mapping[str, AttributeValue] | None = None) -> ActiveSpan:
        """A span of `kind` under `parent` (None: a new trace), started now.

        `name` should have low cardinality: the method, or "METHOD route" (OTel HTTP conventions), never a raw URL.
        """
        if parent is not None and not parent.sampled:  # what ParentBased decides, without the SDK's ~10 us
            return ActiveSpan(None, child(parent), 0)
        from opentelemetry import trace
        from opentelemetry.context import Context

        if parent is None:
            context = Context()  # explicitly empty: never a span some other code made current
        else:
            remote = trace.SpanContext(
                parent.trace_id, parent.span_id, is_remote=True,
                trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),  # an unsampled parent returned above
                trace_state=trace.TraceState.from_header([parent.tracestate]) if parent.tracestate else None)
            context = trace.set_span_in_context(trace.NonRecordingSpan(remote))
        otel_kind = trace.SpanKind.SERVER if kind == "server" else trace.SpanKind.CLIENT
        span = self._tracer.start_span(name, context=context, kind=otel_kind, attributes=attributes)
        own = span.get_span_context()
        ctx = SpanContext(own.trace_id, own.span_id, own.trace_flags.sampled, parent.tracestate if parent else "")
        return ActiveSpan(span, ctx, 500 if kind == "server" else 400)

    def force_flush(self, timeout: float = 5.0) -> bool:
        """Export every span ended so far; False if that did not finish within `timeout` seconds."""
        return self._provider.force_flush(int(timeout * 1000))

    def shutdown(self) -> None:
        """Flush, then stop the processor's thread and the exporter."""
        self._provider.shutdown()


def http_attributes(*, method: str, path: str, authority: str | None, source_service: str | None = None,
                    destination_service: str | None = None, zone: str | None = None) -> dict[str, AttributeValue]:
    """Span attributes for a request, per the OTel HTTP conventions plus ours (`meshcast.*`).

    `path` may be a request target: its query is left out (it may carry secrets). `authority` is the Host header
    (server spans) or the upstream address (client spans), split into `server.address` and `server.port`.
    """
    attrs: dict[str, AttributeValue] = {"http.request.method": method, "url.path": path.partition("?")[0]}
    if authority:
        host, port = _split_authority(authority)
        attrs["server.address"] = host
        if port is not None:
            attrs["server.port"] = port
    for key, value in (("meshcast.source_service", source_service),
                       ("meshcast.destination_service", destination_service), ("meshcast.zone", zone)):
        if value is not None:
            attrs[key] = value
    return attrs


def _split_authority(authority: str) -> tuple[str, int | None]:
    if authority.startswith("["):  # [v6]:port
        host, _, rest = authority[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif authority.count(":") == 1:
        host, _, port = authority.partition(":")
    else:  # a bare name or a bare IPv6 address
        host, port = authority, ""
    return host, int(port) if port.isascii() and port.isdigit() else None
