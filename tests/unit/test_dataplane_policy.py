"""The sidecar's policy decisions, alone (dataplane.policy: pure, time and randomness passed in)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.config import InvalidConfig, parse_snapshot
from dataplane.policy import (
    Backend,
    Request,
    RetryBudget,
    RetryPolicy,
    TokenBucket,
    compile_inbound,
    compile_outbound,
    compile_rule,
)


def test_token_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(10, 1.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(10)] == [0.0] * 10
    assert bucket.take(0.0) == pytest.approx(0.1)
    assert bucket.take(0.25) == 0.0 and bucket.take(0.25) == 0.0 and bucket.take(0.25) > 0


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 50), st.floats(0.1, 5), st.lists(st.floats(0, 0.2), min_size=1, max_size=300))
def test_token_bucket_never_admits_more_than_burst_plus_rate(num: int, interval: float, gaps: list[float]) -> None:
    bucket, now, admitted = TokenBucket(num, interval, 0.0), 0.0, 0
    for gap in gaps:
        now += gap
        admitted += bucket.take(now) == 0.0
    assert admitted <= num + now * num / interval + 1e-9


def test_permissions_most_specific_caller_then_any() -> None:
    policy = compile_inbound({"MeshTrafficPermission": {"*": {"action": "Deny"}, "web": {"action": "Allow"}}})
    assert policy.allows("web") and not policy.allows("other") and not policy.allows(None)
    assert compile_inbound({}).allows("anyone")
    trial = compile_inbound({"MeshTrafficPermission": {"*": {"action": "AllowWithShadowDeny"}}})
    assert trial.allows("other") and trial.shadow_denied("other") and not policy.shadow_denied("other")


def test_rate_limit_per_caller_settings() -> None:
    policy = compile_inbound({"MeshRateLimit": {
        "*": {"local": {"http": {"requestRate": {"num": 1, "interval": "1s"}, "onRateLimit": {"status": 503}}}},
        "web": {"local": {"http": {"disabled": True}}}}})
    assert policy.limit_request("other", 0.0) is None
    limited = policy.limit_request("other", 0.0)
    assert limited is not None and limited[0].status == 503 and limited[1] == pytest.approx(1.0)
    assert all(policy.limit_request("web", 0.0) is None for _ in range(100))


def test_fault_shares_follow_the_percentages() -> None:
    policy = compile_inbound({"MeshFaultInjection": {"*": {"http": [
        {"abort": {"httpStatus": 503, "percentage": 25}}, {"delay": {"value": "50ms", "percentage": 50}}]}}})
    rng = random.Random(1)
    results = [policy.fault("web", rng) for _ in range(10_000)]
    aborted = sum(abort == 503 for _, abort in results) / 100
    delayed = sum(delay == pytest.approx(0.05) for delay, _ in results) / 100
    assert 23 <= aborted <= 27 and 48 <= delayed <= 52


def rule(match: dict[str, Any], **default: Any) -> Any:
    return compile_rule({"match": match, **default})


@pytest.mark.parametrize(("match", "request_", "expected"), [
    ({"path": {"type": "PathPrefix", "value": "/api"}}, ("GET", "/api", []), True),
    ({"path": {"type": "PathPrefix", "value": "/api"}}, ("GET", "/api/v1?x=1", []), True),
    ({"path": {"type": "PathPrefix", "value": "/api"}}, ("GET", "/apix", []), False),
    ({"path": {"type": "PathPrefix", "value": "/"}}, ("GET", "/anything", []), True),
    ({"path": {"type": "Exact", "value": "/a"}}, ("GET", "/a?q", []), True),
    ({"path": {"type": "Exact", "value": "/a"}}, ("GET", "/a/b", []), False),
    ({"path": {"type": "RegularExpression", "value": "/u/[0-9]+"}}, ("GET", "/u/42", []), True),
    ({"path": {"type": "RegularExpression", "value": "/u/[0-9]+"}}, ("GET", "/u/42x", []), False),
    ({"method": "POST"}, ("GET", "/", []), False),
    ({"headers": [{"name": "x-env", "value": "canary"}]}, ("GET", "/", [(b"X-Env", b"canary")]), True),
    ({"headers": [{"type": "Prefix", "name": "x-env", "value": "can"}]}, ("GET", "/", [(b"x-env", b"canary")]), True),
    ({"headers": [{"type": "Absent", "name": "x-env"}]}, ("GET", "/", [(b"x-env", b"a")]), False),
    ({"headers": [{"type": "Present", "name": "x-env"}]}, ("GET", "/", [(b"x-env", b"")]), True),
    ({"queryParams": [{"name": "v", "value": "2"}]}, ("GET", "/p?a=1&v=2", []), True),
    ({"queryParams": [{"type": "RegularExpression", "name": "v", "value": "[3-9]"}]}, ("GET", "/p?v=2", []), False),
])
def test_matches(match: dict[str, Any], request_: tuple[str, str, list[tuple[bytes, bytes]]], expected: bool) -> None:
    assert rule(match).match(Request(*request_)) is expected


def test_weighted_pick_and_edits() -> None:
    split = rule({"path": {"value": "/api"}}, backendRefs=[
        {"kind": "MeshServiceSubset", "name": "b", "tags": {"version": "v1"}, "weight": 90},
        {"kind": "MeshServiceSubset", "name": "b", "tags": {"version": "v2"}, "weight": 10},
        {"name": "never", "weight": 0}],
        filters=[{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch",
                                                                 "replacePrefixMatch": "/v2"}, "hostname": "b.io"}},
                 {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                     "set": [{"name": "x-a", "value": "1"}], "remove": ["x-drop"]}},
                 {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                     "add": [{"name": "x-served-by", "value": "mesh"}]}}])
    rng = random.Random(3)
    picks = [split.pick(rng) for _ in range(10_000)]
    assert Backend("never", (), 0) not in picks
    share = sum(p is not None and p.tags == (("version", "v2"),) for p in picks) / 100
    assert 9 <= share <= 11
    target, headers = split.edit_request(b"/api/items?x=1", [(b"host", b"a"), (b"x-a", b"0"), (b"x-drop", b"1")])
    assert target == b"/v2/items?x=1" and headers == [(b"x-a", b"1"), (b"host", b"b.io")]
    assert split.edit_response([(b"a", b"b")]) == [(b"a", b"b"), (b"x-served-by", b"mesh")]


def test_retry_conditions_and_backoff() -> None:
    policy = RetryPolicy(on=frozenset({"GatewayError"}))
    assert policy.should_retry(status=503) and not policy.should_retry(status=500)
    assert policy.should_retry(failure="connect_failure") and not policy.should_retry(failure="reset")
    assert RetryPolicy(on=frozenset({"5xx"})).should_retry(status=500)
    assert RetryPolicy(on=frozenset({"503"})).should_retry(status=503)
    assert not RetryPolicy(on=frozenset({"503"})).should_retry(status=502)
    rng = random.Random(0)
    assert all(0 <= policy.backoff(n, rng) <= min(0.25, 0.025 * 2 ** (n - 1)) for n in range(1, 10) for _ in range(50))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 0.5), st.booleans()), max_size=400), st.floats(0, 100), st.integers(0, 20))
def test_retry_budget_caps_retries(events: list[tuple[float, bool]], percent: float, per_second: int) -> None:
    budget, now, requests, retries = RetryBudget(percent, per_second, 10.0), 0.0, 0, 0
    for gap, is_retry in events:
        now += gap
        if is_retry:
            retries += budget.try_retry(now)
        else:
            budget.request(now)
            requests += 1
        # never more retries than the budget allows over the whole run (a bound on every window)
        assert retries <= requests * percent / 100 + per_second * 10 * (1 + now / 10) + 1e-9


def test_outbound_defaults_and_bad_values_are_refused_by_the_sidecar() -> None:
    outbound = compile_outbound({"MeshRetry": {"http": {}}, "MeshTimeout": {"http": {"requestTimeout": "2s"}}})
    assert outbound.retry is not None and outbound.retry.num_retries == 5 and outbound.request_timeout == 2.0
    assert outbound.budget is not None and outbound.budget.percent == 20
    snapshot = {"mesh": "m", "dataplane": "d", "address": "127.0.0.1",
                "policies": {"outbound": {"b": {"MeshHTTPRoute": [{"match": {"path": {"type": "Nope"}}}]}}}}
    with pytest.raises(InvalidConfig, match=r"^policies: "):
        parse_snapshot(snapshot, mesh="m", name="d")


def test_grpc_retries_timeouts_and_connection_limits_compile() -> None:
    outbound = compile_outbound({
        "MeshRetry": {"grpc": {"numRetries": 2, "retryOn": ["Unavailable", "Internal"]}},
        "MeshTimeout": {"connectionTimeout": "250ms", "idleTimeout": "30s",
                        "http": {"requestTimeout": "10s", "maxStreamDuration": "3s", "streamIdleTimeout": "1s"}},
        "MeshCircuitBreaker": {"connectionLimits": {"maxConnections": 4, "maxPendingRequests": 8}}})
    assert outbound.retry_for(grpc=False) is None  # no `http` section: plain HTTP calls are not retried
    grpc = outbound.retry_for(grpc=True)
    assert grpc is not None and grpc.num_retries == 2
    assert grpc.should_retry(grpc_status=14) and grpc.should_retry(grpc_status=13)
    assert not grpc.should_retry(grpc_status=4) and not grpc.should_retry(grpc_status=0)
    assert outbound.budget is not None  # the budget covers gRPC retries too
    assert (outbound.connect_timeout, outbound.idle_timeout) == (0.25, 30.0)
    assert (outbound.request_timeout, outbound.stream_idle_timeout) == (3.0, 1.0)  # the lower bound of the two
    assert (outbound.max_connections, outbound.max_pending) == (4, 8)
    default = compile_outbound({"MeshRetry": {"grpc": {}}}).retry_for(grpc=True)
    assert default is not None and default.should_retry(grpc_status=4) and not default.should_retry(grpc_status=13)
    assert RetryPolicy(on=frozenset({"RefusedStream"})).should_retry(failure="refused_stream")
    assert compile_outbound({"MeshRetry": {"tcp": {"maxConnectAttempt": 1}}}).connect_attempts == 1


def test_timeouts_from_callers() -> None:
    from dataplane.policy import InboundTimeouts, compile_inbound

    inbound = compile_inbound({"MeshTimeout": {
        "*": {"http": {"requestTimeout": "2s"}},
        "web": {"idleTimeout": "10s", "http": {"requestTimeout": "5s", "maxStreamDuration": "1s",
                                               "streamIdleTimeout": "200ms"}}}})
    assert inbound.for_caller("web").timeouts == InboundTimeouts(request=1.0, stream_idle=0.2, idle=10.0)
    assert inbound.for_caller("other").timeouts == InboundTimeouts(request=2.0)
    assert compile_inbound({}).for_caller("web").timeouts is None


def test_route_edits_on_an_http2_head() -> None:
    from dataplane.h2.proxy import edit_fields

    rewrite = rule({"path": {"value": "/api"}}, filters=[
        {"type": "URLRewrite", "urlRewrite": {"hostname": "internal", "path": {
            "type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}},
        {"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "x-a", "value": "1"}]}}])
    fields = [(b":method", b"GET"), (b":path", b"/api/users?id=1"), (b":authority", b"web"), (b"accept", b"*/*")]
    assert edit_fields(rewrite, fields) == [
        (b":method", b"GET"), (b":path", b"/users?id=1"), (b":authority", b"internal"), (b"accept", b"*/*"),
        (b"x-a", b"1")]
