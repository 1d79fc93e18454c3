"""The data plane's observability building blocks, pure or IO-light so the proxies can call them per request.

- `tracecontext`: W3C `traceparent`/`tracestate` parsing, formatting, new root and child contexts (pure).
- `tracing`: `Tracer`, spans exported over OTLP/HTTP by the OpenTelemetry SDK, imported only when a Tracer is made.
- `accesslog`: `AccessRecord`, one JSON line per request or connection, and sinks that never block the event loop.
- `requests`: `RequestMetrics`, per-request Prometheus counters and the latency histogram.

This package imports none of them: a sidecar pays only for what it uses (its idle RSS is a target).
"""
