"""Tracer against a real OTLP/HTTP receiver on loopback: ids, parent links, sampling, status, and lazy imports."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from dataplane.observe.tracecontext import SpanContext, format_traceparent, parse_traceparent, should_sample
from dataplane.observe.tracing import Tracer, http_attributes
from tests.support.otlp import OtlpReceiver, otlp_receiver

PARENT = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True, "rojo=00f067aa0ba902b7")


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as rx:
        yield rx


def make_tracer(receiver: OtlpReceiver, sampling: float = 100.0) -> Tracer:
    return Tracer("web", receiver.endpoint, sampling=sampling, schedule_delay=0.05,
                  resource_attributes={"meshcast.zone": "zone-1", "meshcast.mesh": "default"})


def test_a_server_span_and_its_client_child_arrive_linked(receiver: OtlpReceiver) -> None:
    tracer = make_tracer(receiver)
    try:
        server = tracer.start_span("server", "GET", PARENT, http_attributes(
            method="GET", path="/items?id=7", authority="web.mesh:8080", source_service="frontend",
            destination_service="web", zone="zone-1"))
        client = tracer.start_span("client", "GET", server.context,
                                   http_attributes(method="GET", path="/items", authority="10.0.0.7:9000"))
        client.end(200)
        server.end(200)
        assert tracer.force_flush()
        spans = {s.kind: s for s in receiver.wait_for(2)}
    finally:
        tracer.shutdown()
    assert len(receiver.spans) == 2 and receiver.rejected == 0

    # our contexts are the exported spans' ids, the incoming trace id and parent are kept as they came
    assert server.context.trace_id == client.context.trace_id == PARENT.trace_id
    assert server.context.sampled and client.context.sampled
    assert server.context.tracestate == client.context.tracestate == PARENT.tracestate
    srv, cli = spans["server"], spans["client"]
    assert (srv.trace_id, srv.span_id, srv.parent_span_id) == (
        PARENT.trace_id_hex, f"{server.context.span_id:016x}", f"{PARENT.span_id:016x}")
    assert (cli.trace_id, cli.span_id, cli.parent_span_id) == (
        PARENT.trace_id_hex, f"{client.context.span_id:016x}", srv.span_id)
    assert parse_traceparent(format_traceparent(client.context)) == SpanContext(
        client.context.trace_id, client.context.span_id, True)
    assert srv.trace_state == cli.trace_state == PARENT.tracestate

    assert srv.name == cli.name == "GET"
    assert srv.service_name == cli.service_name == "web"
    assert srv.resource["meshcast.zone"] == "zone-1"
    assert srv.attributes == {
        "http.request.method": "GET", "url.path": "/items", "server.address": "web.mesh", "server.port": 8080,
        "meshcast.source_service": "frontend", "meshcast.destination_service": "web", "meshcast.zone": "zone-1",
        "http.response.status_code": 200}
    assert cli.attributes["server.address"] == "10.0.0.7" and cli.attributes["server.port"] == 9000
    assert srv.status == cli.status == "unset"


def test_sampling_is_parent_based(receiver: OtlpReceiver) -> None:
    tracer = make_tracer(receiver, sampling=0.0)
    try:
        root = tracer.start_span("server", "GET", None)  # no parent: 0% of new traces
        assert not root.context.sampled and not root.recording
        assert root.context.trace_id and root.context.span_id  # still a context to propagate, flagged 00
        root.end(200)
        honoured = tracer.start_span("server", "POST", PARENT)  # a sampled parent wins over 0%
        assert honoured.context.sampled
        honoured.end(201)
        assert tracer.force_flush()
    finally:
        tracer.shutdown()
    assert [(s.name, s.trace_id) for s in receiver.wait_for(1)] == [("POST", PARENT.trace_id_hex)]

    tracer = make_tracer(receiver, sampling=100.0)
    try:
        unsampled = SpanContext(PARENT.trace_id, PARENT.span_id, False)
        span = tracer.start_span("server", "DELETE", unsampled)  # an unsampled parent wins over 100%
        assert not span.context.sampled and not span.recording and span.context.trace_id == PARENT.trace_id
        assert span.context.span_id not in (0, PARENT.span_id)
        span.set_attribute("ignored", True)
        span.end(200)
        assert tracer.force_flush()
    finally:
        tracer.shutdown()
    assert len(receiver.spans) == 1


def test_root_sampling_agrees_with_tracecontext(receiver: OtlpReceiver) -> None:
    tracer = make_tracer(receiver, sampling=50.0)
    try:
        contexts = [tracer.start_span("client", "GET", None).context for _ in range(200)]
    finally:
        tracer.shutdown()
    assert all(c.sampled == should_sample(c.trace_id, 50.0) for c in contexts)
    assert 60 < sum(c.sampled for c in contexts) < 140


def test_failures_mark_the_span_as_an_error(receiver: OtlpReceiver) -> None:
    tracer = make_tracer(receiver)
    try:
        tracer.start_span("server", "s404", PARENT).end(404)  # a 4xx is the client's fault, not the server's
        tracer.start_span("client", "c404", PARENT).end(404)
        tracer.start_span("server", "s503", PARENT).end(503)
        tracer.start_span("client", "reset", PARENT).end(None, error="upstream_reset")
        assert tracer.force_flush()
    finally:
        tracer.shutdown()
    spans = {s.name: s for s in receiver.wait_for(4)}
    assert spans["s404"].status == "unset" and "error.type" not in spans["s404"].attributes
    assert (spans["c404"].status, spans["c404"].attributes["error.type"]) == ("error", "404")
    assert (spans["s503"].status, spans["s503"].attributes["error.type"]) == ("error", "503")
    reset = spans["reset"]
    assert (reset.status, reset.status_message, reset.attributes["error.type"]) == (
        "error", "upstream_reset", "upstream_reset")
    assert "http.response.status_code" not in reset.attributes


def test_a_dead_collector_never_slows_the_caller() -> None:
    with otlp_receiver() as gone:
        endpoint = gone.endpoint  # closed when the block ends: nothing listens there any more
    tracer = Tracer("web", endpoint, schedule_delay=0.01, export_timeout=0.5)
    try:
        started = time.perf_counter()
        for _ in range(200):
            tracer.start_span("server", "GET", PARENT).end(200)
        assert time.perf_counter() - started < 1.0
    finally:
        started = time.perf_counter()
        tracer.shutdown()  # gives up on the queued spans once the export timeout has passed
    assert time.perf_counter() - started < 3.0


def test_bad_sampling_is_refused() -> None:
    for sampling in (-1.0, 100.5):
        with pytest.raises(ValueError, match="sampling"):
            Tracer("web", "http://127.0.0.1:1/v1/traces", sampling=sampling)


def test_http_attributes_split_the_authority_and_drop_the_query() -> None:
    assert http_attributes(method="GET", path="/a?token=secret", authority="[::1]:8443") == {
        "http.request.method": "GET", "url.path": "/a", "server.address": "::1", "server.port": 8443}
    assert http_attributes(method="PUT", path="/", authority="web") == {
        "http.request.method": "PUT", "url.path": "/", "server.address": "web"}
    assert http_attributes(method="GET", path="/", authority=None, zone="z") == {
        "http.request.method": "GET", "url.path": "/", "meshcast.zone": "z"}


def test_importing_the_package_loads_no_sdk_until_a_tracer_is_made() -> None:
    code = ("import json, sys\n"
            "import dataplane.observe.tracing, dataplane.observe.tracecontext, dataplane.observe.accesslog\n"
            "before = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
            "t = dataplane.observe.tracing.Tracer('web', 'http://127.0.0.1:1/v1/traces')\n"
            "after = 'opentelemetry.sdk.trace' in sys.modules\n"
            "t.shutdown()\n"
            "print(json.dumps([before, after]))")
    before, after = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                              check=True).stdout)
    assert before == [] and after
