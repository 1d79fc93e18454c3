"""The traffic and observability policies: their schemas, registered as resource types.

Every policy has a top-level `targetRef` (the proxies it configures, default `Mesh`) and, by kind, a list of `to`
items (traffic those proxies send, by destination service), of `from` items (traffic they receive, by caller), or a
single `default` (the proxy as a whole). Each item carries its settings in `default`; a field left out there is
inherited from a less specific policy or takes the data plane's default (see `meshcast.policies.resolve` for the
rule that merges several). Routes carry `rules` instead of a `default`. Durations are written `500ms`, `30s`, `5m`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, Field, model_validator

from meshcast.errors import Violation
from meshcast.policies.targetref import MESH, TargetRef
from meshcast.resources.model import Resource, ResourceType, Scope, Spec, Sync, Validator, register
from meshcast.resources.types import Duration, Name, Shown, Tags

Percent = Annotated[float, Field(ge=0, le=100)]
Count = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]


def _positive_duration(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than 0s")
    return value


PositiveDuration = Annotated[Duration, AfterValidator(_positive_duration), Shown(bounds="above 0s")]


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from None
    return value


Regex = Annotated[str, AfterValidator(_regex), Shown(words="regular expression")]
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")


def _header_name(value: str) -> str:
    if not _HEADER_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a header name (lowercase letters, digits and - . _ etc.)")
    return value


HeaderName = Annotated[str, AfterValidator(_header_name), Shown(words="header name (lowercase)")]


def _header_value(value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise ValueError("a header value cannot contain CR, LF or NUL")
    return value


HeaderText = Annotated[str, AfterValidator(_header_value), Shown(words="string (no CR, LF or NUL)")]


def _path(value: str) -> str:
    if not value.startswith("/") or any(c in value for c in " #\t\r\n"):
        raise ValueError(f"{value!r} is not a path: it starts with '/' and has no space or '#'")
    return value


Path = Annotated[str, AfterValidator(_path), Shown(words="path (starts with `/`)")]


class To(Spec):
    """Traffic to a destination: `Mesh` (every service) or `MeshService`."""

    target_ref: TargetRef = Field(description="the destination: `Mesh` (every service) or `MeshService`")

    @model_validator(mode="after")
    def _destination(self) -> Self:
        if self.target_ref.kind not in ("Mesh", "MeshService"):
            raise ValueError(f"to[].targetRef.kind must be Mesh or MeshService, not {self.target_ref.kind}")
        return self


class From(Spec):
    """Traffic from callers, known by their certificate: its SPIFFE ID names their service, its tag SANs the tags
    of their instance (set by the control plane from their registered Dataplane)."""

    target_ref: TargetRef = Field(
        description="the callers: `Mesh` (any caller), `MeshSubset` (callers with all `tags`), `MeshService` "
        "(callers of that service) or `MeshServiceSubset` (callers of that service with all `tags`)"
    )

    @model_validator(mode="after")
    def _caller(self) -> Self:
        if self.target_ref.kind not in FROM_KINDS:
            raise ValueError(f"from[].targetRef.kind must be Mesh, MeshSubset, MeshService or MeshServiceSubset, not "
                             f"{self.target_ref.kind} (a gateway calls as the service named after its MeshGateway)")
        return self


FROM_KINDS = ("Mesh", "MeshSubset", "MeshService", "MeshServiceSubset")


class PolicySpec(Spec):
    target_ref: TargetRef = Field(default=MESH, description="the proxies this policy configures")


def _register(name: str, plural: str, spec: type[Spec], summary: str, aliases: tuple[str, ...] = (),
              check: Validator | None = None) -> ResourceType:
    return register(ResourceType(name=name, plural=plural, spec=spec, scope=Scope.MESH, sync=Sync.GLOBAL_TO_ZONES,
                                 aliases=aliases, check=check, summary=summary))


# --- MeshTrafficPermission ------------------------------------------------------------------------------------


class PermissionConf(Spec):
    action: Literal["Allow", "Deny", "AllowWithShadowDeny"] = Field(
        description="`Deny` refuses the calls; `Allow` and `AllowWithShadowDeny` let them through"
    )


class PermissionFrom(From):
    default: PermissionConf = Field(description="what happens to calls from these callers")


class MeshTrafficPermissionSpec(PolicySpec):
    from_: Annotated[list[PermissionFrom], Field(min_length=1, alias="from")] = Field(
        description="callers and their action; a caller no item covers is allowed"
    )


MESH_TRAFFIC_PERMISSION = _register(
    "MeshTrafficPermission", "meshtrafficpermissions", MeshTrafficPermissionSpec, aliases=("mtp",),
    summary="who may call the selected services: Allow or Deny by the caller's service and tags (its certificate)")


# --- MeshTimeout ----------------------------------------------------------------------------------------------


class HttpTimeouts(Spec):
    request_timeout: PositiveDuration | None = Field(
        default=None, description="the whole exchange, all retries included; 15s by default"
    )
    stream_idle_timeout: PositiveDuration | None = Field(
        default=None, description="no byte either way on an exchange in flight"
    )
    max_stream_duration: PositiveDuration | None = Field(
        default=None, description="the longest an exchange may last, however busy"
    )


class TimeoutConf(Spec):
    connection_timeout: PositiveDuration | None = Field(
        default=None, description="establishing a connection (TCP + TLS); 5s by default"
    )
    idle_timeout: PositiveDuration | None = Field(default=None, description="a connection with nothing in flight")
    http: HttpTimeouts | None = Field(default=None, description="timeouts of HTTP exchanges")


class TimeoutTo(To):
    default: TimeoutConf = Field(description="the timeouts of calls to this destination")


class TimeoutFrom(From):
    default: TimeoutConf = Field(description="the timeouts of calls from these callers")


class MeshTimeoutSpec(PolicySpec):
    to: list[TimeoutTo] = Field(
        default_factory=list, description="calls the proxies send, by destination (`to` and `from`: one item at least)"
    )
    from_: list[TimeoutFrom] = Field(
        default_factory=list, alias="from", description="calls the proxies receive, by caller"
    )


def _to_or_from(resource: Resource) -> Iterable[Violation]:
    spec = resource.spec
    if not getattr(spec, "to", None) and not getattr(spec, "from_", None):
        yield Violation("spec", "needs at least one `to` or `from` item")


MESH_TIMEOUT = _register("MeshTimeout", "meshtimeouts", MeshTimeoutSpec, aliases=("mt",), check=_to_or_from,
                         summary="connect, request, idle and stream timeouts for calls to and from services")


# --- MeshRetry ------------------------------------------------------------------------------------------------


class BackOff(Spec):
    base_interval: PositiveDuration | None = Field(
        default=None, description="25ms by default; before retry n a random wait up to base x 2^(n-1)"
    )
    max_interval: PositiveDuration | None = Field(
        default=None, description="the cap of that wait; 10 x `baseInterval` by default (250ms)"
    )


HttpRetryOn = Literal["5xx", "GatewayError", "Reset", "ConnectFailure", "Retriable4xx", "RefusedStream",
                      "500", "502", "503", "504"]
GrpcRetryOn = Literal["Cancelled", "DeadlineExceeded", "Internal", "ResourceExhausted", "Unavailable"]


class HttpRetry(Spec):
    num_retries: Annotated[int, Field(ge=0, le=10)] | None = Field(
        default=None, description="retries after the first attempt; 5 by default"
    )
    per_try_timeout: PositiveDuration | None = Field(
        default=None, description="the timeout of each attempt; absent: only the request timeout applies"
    )
    back_off: BackOff | None = Field(default=None, description="the wait before each retry")
    retry_on: Annotated[list[HttpRetryOn], Field(min_length=1)] | None = Field(
        default=None,
        description="the failures retried (`5xx`, `GatewayError`, `Reset` and `ConnectFailure` by default): `5xx` "
        "any 5xx or a reset, `GatewayError` 502, 503, 504 or a connect failure, `Retriable4xx` 409, a number "
        "that status",
    )


class GrpcRetry(Spec):
    num_retries: Annotated[int, Field(ge=0, le=10)] | None = Field(
        default=None, description="retries after the first attempt; 5 by default"
    )
    per_try_timeout: PositiveDuration | None = Field(default=None, description="the timeout of each attempt")
    back_off: BackOff | None = Field(default=None, description="the wait before each retry")
    retry_on: Annotated[list[GrpcRetryOn], Field(min_length=1)] | None = Field(
        default=None, description="the gRPC statuses retried, as a trailers-only answer carries them (`Cancelled`, "
        "`DeadlineExceeded`, `ResourceExhausted` and `Unavailable` by default)"
    )


class TcpRetry(Spec):
    max_connect_attempt: Annotated[int, Field(ge=1, le=10)] | None = Field(
        default=None, description="connection attempts in all, the first included"
    )


class RetryBudget(Spec):
    """Linkerd's retry budget: retries may add at most `percent` of the requests of the last `ttl`, plus
    `minRetriesPerSecond`, so retries cannot multiply the load on a failing service."""

    percent: Percent | None = Field(
        default=None, description="retries as a percentage of the requests of the last `ttl`; 20 by default"
    )
    min_retries_per_second: Count | None = Field(
        default=None, description="retries per second allowed on top of `percent`; 10 by default"
    )
    ttl: PositiveDuration | None = Field(default=None, description="the window the budget counts; 10s by default")


class RetryConf(Spec):
    http: HttpRetry | None = Field(default=None, description="retries of HTTP calls; absent: none")
    grpc: GrpcRetry | None = Field(default=None, description="retries of gRPC calls")
    tcp: TcpRetry | None = Field(default=None, description="retries of TCP connection attempts")
    budget: RetryBudget | None = Field(default=None, description="the budget of HTTP retries (defaults apply)")


class RetryTo(To):
    default: RetryConf = Field(description="the retries of calls to this destination")


class MeshRetrySpec(PolicySpec):
    to: Annotated[list[RetryTo], Field(min_length=1)] = Field(description="destinations and their retries")


MESH_RETRY = _register("MeshRetry", "meshretries", MeshRetrySpec, aliases=("mr",),
                       summary="retries of failed calls: conditions, per-try timeout, back-off, a retry budget")


# --- MeshCircuitBreaker ---------------------------------------------------------------------------------------


class ConnectionLimits(Spec):
    max_connections: Positive | None = Field(default=None, description="connections open to the service at once")
    max_pending_requests: Positive | None = Field(default=None, description="requests waiting for a connection")
    max_requests: Positive | None = Field(default=None, description="requests in flight to the service at once")


class ConsecutiveFailures(Spec):
    consecutive: Positive = Field(description="failures in a row that eject an instance")


class Detectors(Spec):
    total_failures: ConsecutiveFailures | None = Field(default=None, description="5xx answers and resets")
    gateway_failures: ConsecutiveFailures | None = Field(
        default=None, description="502, 503, 504 and connect failures"
    )


class OutlierDetection(Spec):
    disabled: bool | None = Field(default=None, description="`true` turns outlier detection off")
    base_ejection_time: PositiveDuration | None = Field(
        default=None, description="30s by default; doubles with each ejection in a row"
    )
    max_ejection_percent: Percent | None = Field(
        default=None, description="the most of the service's instances ejected at once, in percent; 50 by default"
    )
    detectors: Detectors | None = Field(
        default=None,
        description="what counts as a failure besides connect failures (which always do); 5 in a row by default",
    )


class CircuitBreakerConf(Spec):
    connection_limits: ConnectionLimits | None = Field(
        default=None, description="limits on the connections and requests to the service"
    )
    outlier_detection: OutlierDetection | None = Field(
        default=None, description="ejection of instances that keep failing (passive health checking)"
    )


class CircuitBreakerTo(To):
    default: CircuitBreakerConf = Field(description="the limits and outlier detection of calls to this destination")


class MeshCircuitBreakerSpec(PolicySpec):
    to: Annotated[list[CircuitBreakerTo], Field(min_length=1)] = Field(
        description="destinations and their circuit breakers"
    )


MESH_CIRCUIT_BREAKER = _register(
    "MeshCircuitBreaker", "meshcircuitbreakers", MeshCircuitBreakerSpec, aliases=("mcb",),
    summary="connection and request limits, and outlier detection that ejects failing instances")


# --- MeshHealthCheck ------------------------------------------------------------------------------------------


class HttpHealthCheck(Spec):
    path: Path = Field(default="/", description="the path requested")
    expected_statuses: list[Annotated[int, Field(ge=100, le=599)]] | None = Field(
        default=None, description="the statuses of a healthy instance; 2xx by default"
    )


class GrpcHealthCheck(Spec):
    service_name: str = Field(default="", description="the service asked about; empty: the server as a whole")


class TcpHealthCheck(Spec):
    pass


class HealthCheckConf(Spec):
    interval: PositiveDuration | None = Field(default=None, description="between two checks; 10s by default")
    timeout: PositiveDuration | None = Field(
        default=None, description="a check not answered in time fails; 2s by default"
    )
    unhealthy_threshold: Positive | None = Field(
        default=None, description="failed checks in a row that mark an instance unhealthy; 3 by default"
    )
    healthy_threshold: Positive | None = Field(
        default=None, description="passed checks in a row that mark it healthy again; 1 by default"
    )
    http: HttpHealthCheck | None = Field(default=None, description="check with HTTP requests")
    grpc: GrpcHealthCheck | None = Field(default=None, description="check with the gRPC health-checking protocol")
    tcp: TcpHealthCheck | None = Field(default=None, description="check by opening a connection")


class HealthCheckTo(To):
    default: HealthCheckConf = Field(description="the checks of this destination's instances")


class MeshHealthCheckSpec(PolicySpec):
    to: Annotated[list[HealthCheckTo], Field(min_length=1)] = Field(description="destinations and their checks")


MESH_HEALTH_CHECK = _register(
    "MeshHealthCheck", "meshhealthchecks", MeshHealthCheckSpec, aliases=("mhc",),
    summary="active HTTP, gRPC or TCP checks of a service's instances by their callers")


# --- MeshRateLimit --------------------------------------------------------------------------------------------


class Rate(Spec):
    num: Positive = Field(description="tokens added per `interval`, also the most saved up (the burst)")
    interval: PositiveDuration = Field(description="the period `num` tokens are added over")


class OnRateLimit(Spec):
    status: Annotated[int, Field(ge=400, le=599)] | None = Field(
        default=None, description="the status of a refused request; 429 by default"
    )
    headers: dict[HeaderName, HeaderText] | None = Field(default=None, description="headers added to that answer")


class HttpRateLimit(Spec):
    disabled: bool | None = Field(default=None, description="`true`: no limit, whatever a less specific policy sets")
    request_rate: Rate | None = Field(default=None, description="the requests allowed; absent: no limit")
    on_rate_limit: OnRateLimit | None = Field(default=None, description="the answer to a refused request")


class TcpRateLimit(Spec):
    disabled: bool | None = Field(default=None, description="`true`: no limit, whatever a less specific policy sets")
    connection_rate: Rate | None = Field(default=None, description="the new connections allowed; absent: no limit")


class LocalRateLimit(Spec):
    http: HttpRateLimit | None = Field(default=None, description="a limit on HTTP requests")
    tcp: TcpRateLimit | None = Field(default=None, description="a limit on TCP connections")


class RateLimitConf(Spec):
    local: LocalRateLimit = Field(description="a token bucket in each proxy, not shared with the others")


class RateLimitFrom(From):
    default: RateLimitConf = Field(description="the limits of calls from these callers")


class MeshRateLimitSpec(PolicySpec):
    from_: Annotated[list[RateLimitFrom], Field(min_length=1, alias="from")] = Field(
        description="callers and their limits"
    )


MESH_RATE_LIMIT = _register(
    "MeshRateLimit", "meshratelimits", MeshRateLimitSpec, aliases=("mrl",),
    summary="a local token bucket per inbound: HTTP requests (429 with retry-after) or TCP connections")


# --- MeshFaultInjection ---------------------------------------------------------------------------------------


class Abort(Spec):
    http_status: Annotated[int, Field(ge=200, le=599)] = Field(description="the status answered instead")
    percentage: Percent = Field(description="the share of the requests aborted, in percent")


class Delay(Spec):
    value: PositiveDuration = Field(description="how long a delayed request waits")
    percentage: Percent = Field(description="the share of the requests delayed, in percent")


class Fault(Spec):
    abort: Abort | None = Field(default=None, description="answer without calling the service")
    delay: Delay | None = Field(default=None, description="wait before calling the service")

    @model_validator(mode="after")
    def _something(self) -> Self:
        if self.abort is None and self.delay is None:
            raise ValueError("a fault needs an abort or a delay")
        return self


class FaultConf(Spec):
    http: list[Fault] | None = Field(
        default=None,
        description="faults drawn independently for each request (an abort, a delay or both): delays add up, the "
        "first abort drawn applies",
    )


class FaultFrom(From):
    default: FaultConf = Field(description="the faults injected into calls from these callers")


class MeshFaultInjectionSpec(PolicySpec):
    from_: Annotated[list[FaultFrom], Field(min_length=1, alias="from")] = Field(
        description="callers and their faults"
    )


MESH_FAULT_INJECTION = _register(
    "MeshFaultInjection", "meshfaultinjections", MeshFaultInjectionSpec, aliases=("mfi",),
    summary="chaos testing: delay or abort a share of the requests a service receives")


# --- MeshHTTPRoute and MeshTCPRoute ---------------------------------------------------------------------------


class PathMatch(Spec):
    type: Literal["PathPrefix", "Exact", "RegularExpression"] = Field(
        default="PathPrefix",
        description="`PathPrefix`: whole segments (`/api` matches `/api/x`, not `/apix`); `Exact`; "
        "`RegularExpression`: the whole path; the query is never part of the path",
    )
    value: str = Field(description="a path starting with `/`, or a regular expression")

    @model_validator(mode="after")
    def _valid(self) -> Self:
        if self.type == "RegularExpression":
            _regex(self.value)
        else:
            _path(self.value)
        return self


class HeaderMatch(Spec):
    type: Literal["Exact", "Present", "RegularExpression", "Prefix", "Absent"] = Field(
        default="Exact", description="how a value of the header is compared (`RegularExpression`: the whole value)"
    )
    name: HeaderName = Field(description="the header")
    value: str | None = Field(default=None, description="required, except with `Present` and `Absent`, which refuse it")

    @model_validator(mode="after")
    def _valid(self) -> Self:
        if self.type in ("Present", "Absent"):
            if self.value is not None:
                raise ValueError(f"a {self.type} match takes no value")
        elif self.value is None:
            raise ValueError(f"a {self.type} match needs a value")
        elif self.type == "RegularExpression":
            _regex(self.value)
        return self


class QueryMatch(Spec):
    type: Literal["Exact", "RegularExpression"] = Field(
        default="Exact", description="how a value of the parameter is compared (`RegularExpression`: the whole value)"
    )
    name: str = Field(description="the query parameter")
    value: str = Field(description="the value, or a regular expression")

    @model_validator(mode="after")
    def _valid(self) -> Self:
        if self.type == "RegularExpression":
            _regex(self.value)
        return self


class HttpMatch(Spec):
    path: PathMatch | None = Field(default=None, description="absent: any path")
    method: Literal["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"] | None = Field(
        default=None, description="absent: any method"
    )
    headers: list[HeaderMatch] = Field(default_factory=list, description="every one must match")
    query_params: list[QueryMatch] = Field(default_factory=list, description="every one must match")


class HeaderValue(Spec):
    name: HeaderName = Field(description="the header")
    value: HeaderText = Field(description="its value")


class HeaderModifier(Spec):
    set: list[HeaderValue] = Field(default_factory=list, description="headers replaced (or added if absent)")
    add: list[HeaderValue] = Field(default_factory=list, description="headers added, keeping those already there")
    remove: list[HeaderName] = Field(default_factory=list, description="headers removed")


class PathRewrite(Spec):
    type: Literal["ReplacePrefixMatch", "ReplaceFullPath"] = Field(
        description="replace the prefix the rule matched, or the whole path"
    )
    replace_prefix_match: Path | None = Field(default=None, description="required with `ReplacePrefixMatch`")
    replace_full_path: Path | None = Field(default=None, description="required with `ReplaceFullPath`")

    @model_validator(mode="after")
    def _valid(self) -> Self:
        prefix = self.type == "ReplacePrefixMatch"
        if (self.replace_prefix_match if prefix else self.replace_full_path) is None:
            raise ValueError(f"type {self.type} needs {'replacePrefixMatch' if prefix else 'replaceFullPath'}")
        return self


class UrlRewrite(Spec):
    hostname: str | None = Field(default=None, description="the Host sent to the backend")
    path: PathRewrite | None = Field(default=None, description="the path sent to the backend")


class HttpFilter(Spec):
    type: Literal["RequestHeaderModifier", "ResponseHeaderModifier", "URLRewrite"] = Field(
        description="the filter; its settings go in the field of the same name"
    )
    request_header_modifier: HeaderModifier | None = Field(
        default=None, description="headers of the request; required with `RequestHeaderModifier`"
    )
    response_header_modifier: HeaderModifier | None = Field(
        default=None, description="headers of the response; required with `ResponseHeaderModifier`"
    )
    url_rewrite: UrlRewrite | None = Field(default=None, description="required with `URLRewrite`")

    @model_validator(mode="after")
    def _valid(self) -> Self:
        field, camel = {"RequestHeaderModifier": ("request_header_modifier", "requestHeaderModifier"),
                        "ResponseHeaderModifier": ("response_header_modifier", "responseHeaderModifier"),
                        "URLRewrite": ("url_rewrite", "urlRewrite")}[self.type]
        if getattr(self, field) is None:
            raise ValueError(f"a {self.type} filter needs its {camel} settings")
        return self


class BackendRef(Spec):
    kind: Literal["MeshService", "MeshServiceSubset"] = Field(
        default="MeshService", description="the service, or the subset of its instances with `tags`"
    )
    name: Name = Field(description="the service")
    tags: Tags = Field(default_factory=dict, description="required with `MeshServiceSubset`, refused otherwise")
    weight: Annotated[int, Field(ge=0, le=1_000_000)] = Field(
        default=1, description="the share of the calls, relative to the other backends' weights"
    )

    @model_validator(mode="after")
    def _valid(self) -> Self:
        if self.kind == "MeshServiceSubset" and not self.tags:
            raise ValueError("a MeshServiceSubset backend needs tags")
        if self.kind == "MeshService" and self.tags:
            raise ValueError("a MeshService backend takes no tags (use kind MeshServiceSubset)")
        return self


class HttpRouteConf(Spec):
    filters: list[HttpFilter] = Field(default_factory=list, description="changes to the request and its response")
    backend_refs: list[BackendRef] | None = Field(
        default=None,
        description="where the calls go, by weight (one above 0 at least); absent: the `to` service itself",
    )


class HttpRule(Spec):
    matches: Annotated[list[HttpMatch], Field(min_length=1)] = Field(
        description="a request matching any of them takes this rule"
    )
    default: HttpRouteConf = Field(default_factory=HttpRouteConf, description="what the rule does")


class HttpRouteTo(Spec):
    target_ref: TargetRef = Field(description="the destination, a `MeshService`")
    rules: Annotated[list[HttpRule], Field(min_length=1)] = Field(
        description="a request takes the most specific rule that matches (see the merge rule above)"
    )

    @model_validator(mode="after")
    def _destination(self) -> Self:
        if self.target_ref.kind != "MeshService":
            raise ValueError(f"to[].targetRef.kind of a route must be MeshService, not {self.target_ref.kind}")
        return self


class MeshHTTPRouteSpec(PolicySpec):
    to: Annotated[list[HttpRouteTo], Field(min_length=1)] = Field(description="destinations and their rules")


def _weights(resource: Resource) -> Iterable[Violation]:
    spec = resource.spec
    assert isinstance(spec, MeshHTTPRouteSpec | MeshTCPRouteSpec)
    for i, item in enumerate(spec.to):
        for j, rule in enumerate(item.rules):
            refs = rule.default.backend_refs
            if refs is not None and (not refs or not any(ref.weight for ref in refs)):
                yield Violation(f"spec.to[{i}].rules[{j}].default.backendRefs", "needs a backend with a weight above 0")


MESH_HTTP_ROUTE = _register(
    "MeshHTTPRoute", "meshhttproutes", MeshHTTPRouteSpec, aliases=("mhr",), check=_weights,
    summary="HTTP routing of calls to a service: matches, rewrites, header changes, weighted backends (splits)")


class TcpRouteConf(Spec):
    backend_refs: Annotated[list[BackendRef], Field(min_length=1)] = Field(
        description="where the connections go, by weight (one above 0 at least)"
    )


class TcpRule(Spec):
    default: TcpRouteConf = Field(description="what the rule does")


class TcpRouteTo(HttpRouteTo):
    rules: Annotated[list[TcpRule], Field(min_length=1, max_length=1)] = Field(  # type: ignore[assignment]
        description="the one rule for every connection"
    )


class MeshTCPRouteSpec(PolicySpec):
    to: Annotated[list[TcpRouteTo], Field(min_length=1)] = Field(description="destinations and their rule")


MESH_TCP_ROUTE = _register(
    "MeshTCPRoute", "meshtcproutes", MeshTCPRouteSpec, aliases=("mtr",), check=_weights,
    summary="TCP connections to a service split over weighted backends")


# --- MeshLoadBalancingStrategy --------------------------------------------------------------------------------


class CrossZone(Spec):
    """Where calls go when the local zone cannot take them."""

    failover: list[Name] | None = Field(
        default=None, description="other zones in the order to try; absent: every other zone, equally"
    )
    failover_threshold: Annotated[int, Field(ge=0, le=100)] | None = Field(
        default=None,
        description="% of local endpoints usable below which calls spill to the next zones (0 by default: only "
        "when none is usable)",
    )


class LocalityAwareness(Spec):
    disabled: bool | None = Field(
        default=None, description="`true`: every zone's endpoints are equal (calls spread across zones)"
    )
    cross_zone: CrossZone | None = Field(
        default=None, description="where calls go when the local zone cannot take them"
    )


class LoadBalancer(Spec):
    type: Literal["RoundRobin", "LeastRequest", "Random", "RingHash"] = Field(description="the algorithm")
    hash_header: HeaderName | None = Field(
        default=None, description="`RingHash`: the request header whose value picks the instance"
    )


class LoadBalancingConf(Spec):
    locality_awareness: LocalityAwareness | None = Field(
        default=None, description="absent: the local zone first, then every other zone equally"
    )
    load_balancer: LoadBalancer | None = Field(
        default=None, description="how an instance is picked; absent: least request of two picked at random"
    )


class LoadBalancingTo(To):
    default: LoadBalancingConf = Field(description="how calls to this destination are spread")


class MeshLoadBalancingStrategySpec(PolicySpec):
    to: Annotated[list[LoadBalancingTo], Field(min_length=1)] = Field(
        description="destinations and how calls to them are spread"
    )


def _failover(resource: Resource) -> Iterable[Violation]:
    spec = resource.spec
    assert isinstance(spec, MeshLoadBalancingStrategySpec)
    for i, item in enumerate(spec.to):
        locality = item.default.locality_awareness
        zones = (locality.cross_zone.failover if locality and locality.cross_zone else None) or []
        for index, zone in enumerate(zones):
            if zone in zones[:index]:
                yield Violation(f"spec.to[{i}].default.localityAwareness.crossZone.failover[{index}]",
                                f"zone {zone!r} is listed twice")


MESH_LOAD_BALANCING_STRATEGY = _register(
    "MeshLoadBalancingStrategy", "meshloadbalancingstrategies", MeshLoadBalancingStrategySpec, aliases=("mlbs",),
    check=_failover,
    summary="how calls to a service are spread: the algorithm, locality first, failover order and threshold")


# --- MeshTrace and MeshAccessLog ------------------------------------------------------------------------------


class OpenTelemetryBackend(Spec):
    endpoint: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$")] = Field(
        description="the collector's OTLP/HTTP URL, e.g. `http://otel:4318`"
    )


class TraceBackend(Spec):
    type: Literal["OpenTelemetry"] = Field(default="OpenTelemetry", description="the only kind of backend")
    open_telemetry: OpenTelemetryBackend = Field(description="an OpenTelemetry collector")


class Sampling(Spec):
    overall: Percent | None = Field(
        default=None,
        description="a new trace is sampled with this probability, in percent (100 by default); a request that "
        "carries a trace keeps its caller's decision",
    )


class TraceConf(Spec):
    backends: Annotated[list[TraceBackend], Field(min_length=1, max_length=1)] | None = Field(
        default=None, description="where spans are exported"
    )
    sampling: Sampling | None = Field(default=None, description="which traces are recorded")
    tags: dict[str, str] | None = Field(default=None, description="extra span attributes")


class MeshTraceSpec(PolicySpec):
    default: TraceConf = Field(description="the tracing of the selected proxies")


MESH_TRACE = _register("MeshTrace", "meshtraces", MeshTraceSpec, aliases=("mtrace",),
                       summary="tracing: the OTLP collector the proxies export spans to, and the sampling rate")


class FileBackend(Spec):
    path: Annotated[str, Field(min_length=1)] = Field(
        description="the file the JSON lines are appended to; `/dev/stdout`: the proxy's standard output"
    )


class AccessLogBackend(Spec):
    type: Literal["File"] = Field(default="File", description="the only kind of backend")
    file: FileBackend = Field(description="a file on the proxy's host")


class AccessLogConf(Spec):
    backends: Annotated[list[AccessLogBackend], Field(min_length=1)] = Field(description="where the lines go")


class AccessLogTo(To):
    default: AccessLogConf = Field(description="the log of calls to this destination")


class AccessLogFrom(From):
    default: AccessLogConf = Field(description="the log of calls from these callers")


class MeshAccessLogSpec(PolicySpec):
    to: list[AccessLogTo] = Field(
        default_factory=list, description="calls the proxies send, by destination (`to` and `from`: one item at least)"
    )
    from_: list[AccessLogFrom] = Field(
        default_factory=list, alias="from", description="calls the proxies receive, by caller"
    )


MESH_ACCESS_LOG = _register("MeshAccessLog", "meshaccesslogs", MeshAccessLogSpec, aliases=("mal",),
                            check=_to_or_from,
                            summary="access logs as JSON lines, to a file or standard output")
