"""One proxied request, observed: its metrics, its access-log line and its span, recorded once when it ends.

The proxy asks `Observability.start(...)` when a request head arrives and gets an `Exchange` (or None when nothing
observes this request's traffic: no metrics registry yet). It forwards the request with `exchange.headers` (the
`traceparent`/`tracestate` of the span made for this hop, replacing what the request carried), tells the exchange
where the request went (`destination`, `upstream`) and, once the response is over however it ended, calls
`finish(...)` with the status sent downstream, the body bytes each way, the retries and the proxy's failure reason.

Tracing (MeshTrace): a sidecar makes a *server* span for a request it receives from another sidecar (inbound) and a
*client* span for a request its app or an edge client sends (outbound, gateway), the parent being the request's
`traceparent` when it has a valid one, so a call crossing two sidecars is one trace: the caller's client span is
the parent of the callee's server span. A request without a traceparent starts a trace, sampled at the configured
rate; one with a parent follows the parent's sampled flag. Apps propagate the headers from their inbound requests
to their outbound calls, as with every mesh.

Access logs (MeshAccessLog): the sinks named by the policies in force for the request's destination (outbound) or
caller (inbound) each get one JSON line (`dataplane.observe.accesslog`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from dataplane.observe.accesslog import AccessRecord, Direction, Protocol, format_record
from dataplane.observe.requests import RequestMetrics
from dataplane.observe.tracecontext import SpanContext, extract, format_traceparent
from dataplane.observe.tracing import ActiveSpan, Tracer, http_attributes

TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})
Headers = Iterable[tuple[bytes, bytes]]


class Observability:
    """What observes one proxy's requests: its request metrics, its tracer, its access-log sinks by path."""

    def __init__(self, *, mesh: str, dataplane: str, service: str) -> None:
        self.mesh, self.dataplane, self.service = mesh, dataplane, service
        self.zone = ""
        self.metrics: RequestMetrics | None = None
        self.tracer: Tracer | None = None
        self.tracer_endpoint: str | None = None
        self.sinks: dict[str, Any] = {}  # path -> sink

    def start(self, direction: Direction, protocol: Protocol, method: bytes, path: bytes, authority: bytes | None,
              headers: Headers, *, source: str | None, destination: str | None,
              logs: Iterable[str] = ()) -> Exchange | None:
        if self.metrics is None:
            return None
        fields = {k.lower(): v for k, v in headers if k.lower() in _WANTED}
        span: ActiveSpan | None = None
        if self.tracer is not None:
            parent = extract(fields.get(b"traceparent"), fields.get(b"tracestate"))
            attributes = http_attributes(method=method.decode("latin-1"), path=path.decode("latin-1"),
                                         authority=authority.decode("latin-1") if authority else None,
                                         source_service=source, destination_service=destination, zone=self.zone)
            span = self.tracer.start_span("server" if direction == "inbound" else "client",
                                          method.decode("latin-1"), parent, attributes)
        sinks = [self.sinks[p] for p in logs if p in self.sinks]
        return Exchange(self, direction, protocol, method, path, authority, fields, source, destination, span, sinks)


_WANTED = frozenset({b"traceparent", b"tracestate", b"user-agent", b"x-request-id"})


class Exchange:
    __slots__ = ("authority", "destination", "direction", "fields", "method", "obs", "path", "protocol", "sinks",
                 "source", "span", "started", "started_unix", "upstream")

    def __init__(self, obs: Observability, direction: Direction, protocol: Protocol, method: bytes, path: bytes,
                 authority: bytes | None, fields: Mapping[bytes, bytes], source: str | None, destination: str | None,
                 span: ActiveSpan | None, sinks: list[Any]) -> None:
        self.obs, self.direction, self.protocol = obs, direction, protocol
        self.method, self.path, self.authority, self.fields = method, path, authority, fields
        self.source, self.destination, self.span, self.sinks = source, destination, span, sinks
        self.started, self.started_unix = time.monotonic(), time.time()
        self.upstream: str | None = None

    @property
    def context(self) -> SpanContext | None:
        return self.span.context if self.span is not None else None

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The trace headers the forwarded request carries (none when not tracing: the request's own pass)."""
        context = self.context
        if context is None:
            return []
        out = [(b"traceparent", format_traceparent(context).encode())]
        if context.tracestate:
            out.append((b"tracestate", context.tracestate.encode()))
        return out

    def finish(self, *, status: int | None, bytes_received: int = 0, bytes_sent: int = 0, retries: int = 0,
               flags: str | None = None) -> None:
        duration = time.monotonic() - self.started
        obs = self.obs
        if obs.metrics is not None:
            obs.metrics.record(self.direction, self.source, self.destination, status=status, duration=duration,
                               request_bytes=bytes_received, response_bytes=bytes_sent, retries=retries)
        if self.span is not None:
            self.span.end(status, flags)
        if self.sinks:
            context = self.context
            line = format_record(AccessRecord(
                start_time=self.started_unix, duration_ms=duration * 1000, direction=self.direction,
                protocol=self.protocol, method=self.method.decode("latin-1"), path=self.path.decode("latin-1"),
                authority=self.authority.decode("latin-1") if self.authority else None, status=status,
                bytes_received=bytes_received, bytes_sent=bytes_sent, source_service=self.source,
                destination_service=self.destination, upstream_address=self.upstream, zone=obs.zone, mesh=obs.mesh,
                dataplane=obs.dataplane, trace_id=context.trace_id_hex if context is not None else None,
                response_flags=flags, retries=retries, user_agent=_text(self.fields.get(b"user-agent")),
                request_id=_text(self.fields.get(b"x-request-id"))))
            for sink in self.sinks:
                sink.write(line)


def _text(value: bytes | None) -> str | None:
    return value.decode("latin-1") if value is not None else None


def otlp_endpoint(endpoint: str) -> str:
    """A MeshTrace endpoint as the OTLP/HTTP exporter wants it: `http://host:4318` gets `/v1/traces`."""
    rest = endpoint.partition("://")[2]
    return endpoint if "/" in rest else f"{endpoint.rstrip('/')}/v1/traces"
