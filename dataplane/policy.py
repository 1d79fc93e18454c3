"""The policies a sidecar enforces, compiled from the `policies` section of its snapshot (pure, no IO).

The zone control plane has already decided which policies apply and merged them (`meshcast.policies.resolve`); what
arrives here is, per outbound service, the merged settings of each kind (`MeshRetry`, `MeshTimeout`, ...) and the
ordered rules of its routes, and per inbound service the settings of each kind by caller (`*` for any caller
without settings of its own) or, when some `from` item selects callers by tags, the ordered items, which are merged
here for each caller (its service and the tags its certificate names) the first time it connects. This module turns
them into small objects the proxy asks on each connection or request: what applies to this caller
(`InboundPolicy.for_caller`, kept by the connection), may it call (`CallerPolicy.allows`), is there a token
(`TokenBucket.take`), which fault to inject (`CallerPolicy.fault`), which rule and backend take this request
(`RouteTable.match`, `Rule.pick`), may this failure be retried (`RetryPolicy.should_retry`, `RetryBudget`).
Randomness and time are passed in, so every decision can be tested alone.

Defaults where a policy leaves a field out (as Kuma's): retries 5 on 5xx, gateway errors, resets and connect
failures for HTTP, 25 ms back-off base and 250 ms cap, retry budget 20 % plus 10 retries/s over 10 s; request
timeout 15 s; connect timeout 5 s; rate-limit status 429.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl

from dataplane.config import InvalidConfig
from dataplane.healthcheck import HealthCheckSpec
from meshcast.wire.duration import parse_duration

ANY_CALLER = "*"
Headers = list[tuple[bytes, bytes]]


def seconds(text: str) -> float:
    return parse_duration(text).total_seconds()


# --- inbound: permissions, rate limits, faults ----------------------------------------------------------------


class TokenBucket:
    """A local token bucket: `num` tokens per `interval`, at most `num` saved up."""

    def __init__(self, num: int, interval: float, now: float) -> None:
        self.capacity = float(num)
        self.rate = num / interval  # tokens per second
        self.tokens = self.capacity
        self.stamp = now

    def take(self, now: float) -> float:
        """0 if a token was taken; otherwise the seconds until one will be available."""
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


@dataclass(frozen=True)
class RateLimit:
    num: int
    interval: float
    status: int = 429
    headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(frozen=True)
class Fault:
    abort_status: int | None = None
    abort_percent: float = 0.0
    delay: float = 0.0
    delay_percent: float = 0.0


# A `from` item's targetRef as the snapshot carries it (`meshcast.policies.targetref.TargetRef.wire`).
CALLER_KINDS = frozenset({"Mesh", "MeshSubset", "MeshService", "MeshServiceSubset"})
_NAMED, _TAGGED = frozenset({"MeshService", "MeshServiceSubset"}), frozenset({"MeshSubset", "MeshServiceSubset"})
T = TypeVar("T")
_MAX_CALLERS = 4096  # callers remembered per inbound; more (a mesh of that many distinct identities) start over


def deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over`'s fields onto `base` (in place): objects merge recursively, anything else is replaced. The merge of
    `meshcast.policies.resolve`, which the sidecar does not import (it pulls in the resource model)."""
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


@dataclass(frozen=True)
class CallerSelector:
    """Which callers a `from` item covers: by the service their SPIFFE ID names and the tags their certificate
    names (`service` among them, implied). A caller without identity (mTLS off) is covered by `Mesh` only."""

    kind: str
    name: str | None = None
    tags: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, wire: Mapping[str, Any]) -> CallerSelector:
        """From the snapshot; ValueError when it is not one (the sidecar NACKs)."""
        kind, name, tags = wire["kind"], wire.get("name"), wire.get("tags") or {}
        if kind not in CALLER_KINDS:
            raise ValueError(f"from targetRef kind {kind!r} is not one of {sorted(CALLER_KINDS)}")
        if (kind in _NAMED) != isinstance(name, str) or (kind in _TAGGED) != bool(tags):
            raise ValueError(f"from targetRef {dict(wire)!r}: wrong fields for its kind")
        if not isinstance(tags, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in tags.items()):
            raise ValueError(f"from targetRef tags {tags!r} are not strings")
        return cls(kind, name, tuple(sorted(tags.items())))

    def covers(self, service: str | None, tags: Mapping[str, str]) -> bool:
        if self.kind == "Mesh":
            return True
        if service is None or (self.name is not None and self.name != service):
            return False
        return all((service if key == "service" else tags.get(key)) == value for key, value in self.tags)


class CallerTable(Generic[T]):
    """The settings of one policy kind at one inbound, by caller, compiled by `build` (which raises on nonsense).

    Two forms arrive (`meshcast.policies.resolve`): a mapping from caller service (`*`: any other caller) to its
    merged settings, or the ordered `from` items when some target a subset of callers by tags, which are merged
    here for each caller. `lookup` returns the compiled settings (None: no item covers the caller) and a key that
    callers with the same settings share (their rate-limit bucket)."""

    def __init__(self, wire: Mapping[str, Any] | list[Any], build: Callable[[Mapping[str, Any]], T]) -> None:
        self._build = build
        self._by_caller: dict[str, T] | None = None
        self._items: list[tuple[CallerSelector, Mapping[str, Any]]] = []
        self._compiled: list[T] = []
        if isinstance(wire, Mapping):
            self._by_caller = {str(caller): build(conf) for caller, conf in wire.items()}
        elif isinstance(wire, list):
            self._items = [(CallerSelector.of(item["from"]), item["default"]) for item in wire]
            self._compiled = [build(conf) for _, conf in self._items]  # each item alone: refuse nonsense now
        else:
            raise TypeError(f"callers' settings must be a mapping or a list, not {type(wire).__name__}")

    def lookup(self, service: str | None, tags: Mapping[str, str]) -> tuple[object, T | None]:
        if self._by_caller is not None:
            key = service if service is not None and service in self._by_caller else ANY_CALLER
            return key, self._by_caller.get(key)
        covering = tuple(i for i, (selector, _) in enumerate(self._items) if selector.covers(service, tags))
        if not covering:
            return covering, None
        if len(covering) == 1:
            return covering, self._compiled[covering[0]]
        merged: dict[str, Any] = {}
        for i in covering:  # least specific first: the zone CP ordered them
            deep_merge(merged, self._items[i][1])
        return covering, self._build(merged)

    def values(self) -> list[T]:
        """Every setting some caller may get (each item alone, for the list form)."""
        return list(self._by_caller.values()) if self._by_caller is not None else list(self._compiled)


@dataclass
class CallerPolicy:
    """What applies to one caller's calls at one inbound, worked out once per caller (`InboundPolicy.for_caller`)
    and kept by its connections. Its rate-limit buckets are the inbound's, shared by callers with the same
    settings (every caller no item names shares the inbound's)."""

    action: str | None = None
    http_limit: RateLimit | None = None
    tcp_limit: RateLimit | None = None
    faults: tuple[Fault, ...] = ()
    logs: tuple[str, ...] = ()
    timeouts: InboundTimeouts | None = None  # MeshTimeout `from`: the app's answer to this caller's calls
    buckets: dict[tuple[str, object], TokenBucket] = field(default_factory=dict, repr=False)
    bucket_key: object = None

    @property
    def allows(self) -> bool:
        """The most specific permission's action is not `Deny` (no permission covers the caller: allowed)."""
        return self.action != "Deny"

    @property
    def shadow_denied(self) -> bool:
        """Allowed, but a `Deny` is being tried out: the proxy logs and counts the call as if it were denied."""
        return self.action == "AllowWithShadowDeny"

    def _limited(self, limit: RateLimit | None, kind: str, now: float) -> tuple[RateLimit, float] | None:
        if limit is None:
            return None
        bucket = self.buckets.get((kind, self.bucket_key))
        if bucket is None:
            bucket = self.buckets[(kind, self.bucket_key)] = TokenBucket(limit.num, limit.interval, now)
        wait = bucket.take(now)
        return (limit, wait) if wait > 0 else None

    def limit_request(self, now: float) -> tuple[RateLimit, float] | None:
        """None when the request may go on; else the limit that refused it and the seconds until a token."""
        return self._limited(self.http_limit, "http", now)

    def limit_connection(self, now: float) -> bool:
        """True when a new TCP connection must be refused."""
        return self._limited(self.tcp_limit, "tcp", now) is not None

    def fault(self, rng: random.Random) -> tuple[float, int | None]:
        """The delay (seconds) and the abort status (or None) to inject into one request."""
        delay, abort = 0.0, None
        for fault in self.faults:
            if fault.delay and rng.random() * 100 < fault.delay_percent:
                delay += fault.delay
            if abort is None and fault.abort_status is not None and rng.random() * 100 < fault.abort_percent:
                abort = fault.abort_status
        return delay, abort


RateLimits = tuple[RateLimit | None, RateLimit | None]  # HTTP requests, TCP connections


@dataclass(frozen=True)
class InboundTimeouts:
    """MeshTimeout `from`: how long the app may take over calls received (the whole exchange; the longest wait
    for its next bytes), and how long a caller's connection may idle."""

    request: float | None = None
    stream_idle: float | None = None
    idle: float | None = None


def _timeouts(conf: Mapping[str, Any]) -> InboundTimeouts:
    http = conf.get("http") or {}
    bounds = [seconds(http[k]) for k in ("requestTimeout", "maxStreamDuration") if k in http]
    return InboundTimeouts(request=min(bounds) if bounds else None,
                           stream_idle=seconds(http["streamIdleTimeout"]) if "streamIdleTimeout" in http else None,
                           idle=seconds(conf["idleTimeout"]) if "idleTimeout" in conf else None)


class InboundPolicy:
    """What applies to calls received by one inbound, by caller: its service (None when mTLS is off) and the tags
    its certificate names. `for_caller` works out one caller's `CallerPolicy` and remembers it, so a connection
    asks once and its requests only read the answer; the methods taking a caller are shorthands for tests."""

    def __init__(self, *, actions: CallerTable[str] | None = None, rate_limits: CallerTable[RateLimits] | None = None,
                 faults: CallerTable[tuple[Fault, ...]] | None = None,
                 access_logs: CallerTable[tuple[str, ...]] | None = None,
                 timeouts: CallerTable[InboundTimeouts] | None = None) -> None:
        self.actions = actions or CallerTable({}, _action)
        self.timeouts = timeouts or CallerTable({}, _timeouts)
        self.rate_limits = rate_limits or CallerTable({}, _rate_limits)
        self.faults = faults or CallerTable({}, _faults)
        self.access_logs = access_logs or CallerTable({}, _log_paths)
        self._buckets: dict[tuple[str, object], TokenBucket] = {}
        self._callers: dict[tuple[str | None, frozenset[tuple[str, str]]], CallerPolicy] = {}

    def for_caller(self, service: str | None, tags: Mapping[str, str] | None = None) -> CallerPolicy:
        tags = tags or {}
        key = (service, frozenset(tags.items()))
        found = self._callers.get(key)
        if found is not None:
            return found
        _, action = self.actions.lookup(service, tags)
        bucket_key, limits = self.rate_limits.lookup(service, tags)
        http_limit, tcp_limit = limits or (None, None)
        found = CallerPolicy(action=action, http_limit=http_limit, tcp_limit=tcp_limit,
                             faults=self.faults.lookup(service, tags)[1] or (),
                             logs=self.access_logs.lookup(service, tags)[1] or (),
                             timeouts=self.timeouts.lookup(service, tags)[1],
                             buckets=self._buckets, bucket_key=bucket_key)
        if len(self._callers) >= _MAX_CALLERS:
            self._callers.clear()
        self._callers[key] = found
        return found

    def allows(self, caller: str | None, tags: Mapping[str, str] | None = None) -> bool:
        return self.for_caller(caller, tags).allows

    def shadow_denied(self, caller: str | None, tags: Mapping[str, str] | None = None) -> bool:
        return self.for_caller(caller, tags).shadow_denied

    def limit_request(self, caller: str | None, now: float,
                      tags: Mapping[str, str] | None = None) -> tuple[RateLimit, float] | None:
        return self.for_caller(caller, tags).limit_request(now)

    def limit_connection(self, caller: str | None, now: float, tags: Mapping[str, str] | None = None) -> bool:
        return self.for_caller(caller, tags).limit_connection(now)

    def fault(self, caller: str | None, rng: random.Random,
              tags: Mapping[str, str] | None = None) -> tuple[float, int | None]:
        return self.for_caller(caller, tags).fault(rng)

    def logs(self, caller: str | None, tags: Mapping[str, str] | None = None) -> tuple[str, ...]:
        return self.for_caller(caller, tags).logs


def _action(conf: Mapping[str, Any]) -> str:
    return str(conf["action"])


def _rate_limit(conf: Mapping[str, Any], kind: str) -> RateLimit | None:
    local = (conf.get("local") or {}).get(kind) or {}
    rate = local.get("requestRate" if kind == "http" else "connectionRate")
    if local.get("disabled") or rate is None:
        return None
    on_limit = local.get("onRateLimit") or {}
    headers = tuple((k.encode(), str(v).encode()) for k, v in (on_limit.get("headers") or {}).items())
    return RateLimit(int(rate["num"]), seconds(rate["interval"]), int(on_limit.get("status", 429)), headers)


def _rate_limits(conf: Mapping[str, Any]) -> RateLimits:
    return _rate_limit(conf, "http"), _rate_limit(conf, "tcp")


def _faults(conf: Mapping[str, Any]) -> tuple[Fault, ...]:
    return tuple(Fault(
        abort_status=(f.get("abort") or {}).get("httpStatus"),
        abort_percent=float((f.get("abort") or {}).get("percentage", 0)),
        delay=seconds(f["delay"]["value"]) if f.get("delay") else 0.0,
        delay_percent=float((f.get("delay") or {}).get("percentage", 0)),
    ) for f in conf.get("http") or [])


def compile_inbound(confs: Mapping[str, Any]) -> InboundPolicy:
    """One inbound's `policies.inbound.<service>`: each kind by caller, or as ordered `from` items."""
    return InboundPolicy(
        actions=CallerTable(confs.get("MeshTrafficPermission", {}), _action),
        rate_limits=CallerTable(confs.get("MeshRateLimit", {}), _rate_limits),
        faults=CallerTable(confs.get("MeshFaultInjection", {}), _faults),
        access_logs=CallerTable(confs.get("MeshAccessLog", {}), _log_paths),
        timeouts=CallerTable(confs.get("MeshTimeout", {}), _timeouts),
    )


def _log_paths(conf: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(backend["file"]["path"] for backend in conf.get("backends") or [])


# --- outbound: routes -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    service: str
    tags: tuple[tuple[str, str], ...] = ()  # a subset of the service's instances
    weight: int = 1


def pick_weighted(backends: list[Backend], rng: random.Random) -> Backend | None:
    """A backend chosen with probability proportional to its weight; None when there is none."""
    if not backends:
        return None
    point = rng.random() * sum(b.weight for b in backends)
    for backend in backends:
        point -= backend.weight
        if point < 0 and backend.weight:
            return backend
    return next(b for b in reversed(backends) if b.weight)


@dataclass(frozen=True)
class Request:
    """What a route matches on, and what its filters change."""

    method: str
    path: str  # the request target: path and query
    headers: Headers


def _path_only(target: str) -> str:
    return target.split("?", 1)[0]


@dataclass
class Rule:
    match: Callable[[Request], bool]
    backends: list[Backend]  # empty: the `to` service itself
    request_set: Headers = field(default_factory=list)
    request_add: Headers = field(default_factory=list)
    request_remove: frozenset[bytes] = frozenset()
    response_set: Headers = field(default_factory=list)
    response_add: Headers = field(default_factory=list)
    response_remove: frozenset[bytes] = frozenset()
    rewrite_host: bytes | None = None
    rewrite_path: Callable[[str], str] | None = None

    def pick(self, rng: random.Random) -> Backend | None:
        """A backend by weight (None: the `to` service itself)."""
        return pick_weighted(self.backends, rng)

    @property
    def edits_request(self) -> bool:
        return bool(self.request_set or self.request_add or self.request_remove or self.rewrite_host
                    or self.rewrite_path)

    @property
    def edits_response(self) -> bool:
        return bool(self.response_set or self.response_add or self.response_remove)

    def edit_request(self, target: bytes, headers: Headers) -> tuple[bytes, Headers]:
        if self.rewrite_path is not None:
            text = target.decode("latin-1")
            path, sep, query = text.partition("?")
            target = (self.rewrite_path(path) + sep + query).encode("latin-1")
        headers = edit_headers(headers, self.request_set, self.request_add, self.request_remove)
        if self.rewrite_host is not None:
            headers = [(k, v) for k, v in headers if k.lower() != b"host"] + [(b"host", self.rewrite_host)]
        return target, headers

    def edit_response(self, headers: Headers) -> Headers:
        return edit_headers(headers, self.response_set, self.response_add, self.response_remove)


def edit_headers(headers: Iterable[tuple[bytes, bytes]], set_: Headers, add: Headers,
                 remove: frozenset[bytes]) -> Headers:
    replaced = remove | {name for name, _ in set_}
    return [(k, v) for k, v in headers if k.lower() not in replaced] + set_ + add


def _path_matcher(spec: Mapping[str, Any]) -> Callable[[str], bool]:
    kind, value = spec.get("type", "PathPrefix"), spec["value"]
    if kind == "Exact":
        return lambda path: path == value
    if kind == "RegularExpression":
        pattern = re.compile(value)
        return lambda path: pattern.fullmatch(path) is not None
    prefix = value.rstrip("/")  # element-wise: /api matches /api and /api/x, not /apix
    return lambda path: not prefix or path == prefix or path.startswith(prefix + "/")


def _header_matcher(spec: Mapping[str, Any]) -> Callable[[Headers], bool]:
    name, kind, value = spec["name"].encode(), spec.get("type", "Exact"), str(spec.get("value") or "")

    def values(headers: Headers) -> list[str]:
        return [v.decode("latin-1") for k, v in headers if k.lower() == name]

    if kind == "Present":
        return lambda headers: bool(values(headers))
    if kind == "Absent":
        return lambda headers: not values(headers)
    if kind == "Prefix":
        return lambda headers: any(v.startswith(value) for v in values(headers))
    if kind == "RegularExpression":
        pattern = re.compile(value or "")
        return lambda headers: any(pattern.fullmatch(v) for v in values(headers))
    return lambda headers: value in values(headers)


def _query_matcher(spec: Mapping[str, Any]) -> Callable[[str], bool]:
    name, kind, value = spec["name"], spec.get("type", "Exact"), spec["value"]
    pattern = re.compile(value) if kind == "RegularExpression" else None

    def matches(target: str) -> bool:
        query = target.partition("?")[2]
        found = [v for k, v in parse_qsl(query, keep_blank_values=True) if k == name]
        return any(pattern.fullmatch(v) if pattern else v == value for v in found)

    return matches


def _matcher(spec: Mapping[str, Any]) -> Callable[[Request], bool]:
    path = _path_matcher(spec["path"]) if spec.get("path") else None
    method = spec.get("method")
    headers = [_header_matcher(h) for h in spec.get("headers", [])]
    queries = [_query_matcher(q) for q in spec.get("queryParams", [])]

    def match(request: Request) -> bool:
        return ((path is None or path(_path_only(request.path))) and (method is None or request.method == method)
                and all(h(request.headers) for h in headers) and all(q(request.path) for q in queries))

    return match


def _modifier(spec: Mapping[str, Any] | None) -> tuple[Headers, Headers, frozenset[bytes]]:
    spec = spec or {}
    return ([(h["name"].encode(), h["value"].encode()) for h in spec.get("set", [])],
            [(h["name"].encode(), h["value"].encode()) for h in spec.get("add", [])],
            frozenset(name.encode() for name in spec.get("remove", [])))


def _rewrite(spec: Mapping[str, Any], match: Mapping[str, Any]) -> Callable[[str], str]:
    if spec["type"] == "ReplaceFullPath":
        full = spec["replaceFullPath"]
        return lambda path: full
    replacement = spec["replacePrefixMatch"].rstrip("/")
    prefix = ((match.get("path") or {}).get("value") or "/").rstrip("/")
    return lambda path: (replacement + path[len(prefix):]) or "/"


def compile_rule(conf: Mapping[str, Any]) -> Rule:
    match = conf.get("match") or {}
    rule = Rule(match=_matcher(match), backends=[
        Backend(ref["name"], tuple(sorted((ref.get("tags") or {}).items())), int(ref.get("weight", 1)))
        for ref in conf.get("backendRefs") or []])
    for flt in conf.get("filters", []):
        if flt["type"] == "RequestHeaderModifier":
            rule.request_set, rule.request_add, rule.request_remove = _modifier(flt.get("requestHeaderModifier"))
        elif flt["type"] == "ResponseHeaderModifier":
            rule.response_set, rule.response_add, rule.response_remove = _modifier(
                flt.get("responseHeaderModifier"))
        elif flt["type"] == "URLRewrite":
            rewrite = flt.get("urlRewrite") or {}
            if rewrite.get("hostname"):
                rule.rewrite_host = rewrite["hostname"].encode()
            if rewrite.get("path"):
                rule.rewrite_path = _rewrite(rewrite["path"], match)
    return rule


@dataclass
class RouteTable:
    rules: list[Rule]

    def match(self, request: Request) -> Rule | None:
        for rule in self.rules:
            if rule.match(request):
                return rule
        return None


# --- outbound: retries and timeouts ---------------------------------------------------------------------------

GATEWAY_ERRORS = frozenset({502, 503, 504})
# The gRPC statuses MeshRetry's `grpc.retryOn` names, by code.
GRPC_STATUS_NAMES = {1: "Cancelled", 4: "DeadlineExceeded", 8: "ResourceExhausted", 13: "Internal", 14: "Unavailable"}


@dataclass(frozen=True)
class RetryPolicy:
    num_retries: int = 5
    per_try_timeout: float | None = None
    base_interval: float = 0.025
    max_interval: float = 0.25
    on: frozenset[str] = frozenset({"5xx", "GatewayError", "Reset", "ConnectFailure"})

    def should_retry(self, *, status: int | None = None, failure: str | None = None,
                     grpc_status: int | None = None) -> bool:
        """Whether a response `status`, or a `failure` before any response (reset, connect_failure), is retried;
        for a gRPC retry policy, the `grpc_status` of a trailers-only answer (how gRPC servers fail a call)."""
        if grpc_status is not None:
            return GRPC_STATUS_NAMES.get(grpc_status) in self.on
        if failure == "refused_stream":
            return bool({"RefusedStream", "Reset", "5xx"} & self.on)
        if status is not None:
            return ((status >= 500 and "5xx" in self.on) or (status in GATEWAY_ERRORS and "GatewayError" in self.on)
                    or (status == 409 and "Retriable4xx" in self.on) or str(status) in self.on)
        if failure == "reset":
            return "Reset" in self.on or "5xx" in self.on
        if failure == "connect_failure":
            return bool({"ConnectFailure", "GatewayError", "5xx"} & self.on)
        return False

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Full jitter: a random wait up to base x 2^(retry-1), capped at the max interval."""
        return float(rng.random() * min(self.max_interval, self.base_interval * (2 ** (retry - 1))))


class RetryBudget:
    """Retries allowed: `percent` of the requests seen in the last `ttl` seconds plus `min_per_second` x `ttl`
    (Linkerd's budget), counted in one-second slots."""

    def __init__(self, percent: float = 20.0, min_per_second: float = 10.0, ttl: float = 10.0) -> None:
        self.percent, self.min_per_second, self.ttl = percent, min_per_second, ttl
        self._slots: dict[int, list[int]] = {}  # second -> [requests, retries]

    def _window(self, now: float) -> tuple[int, int]:
        oldest = int(now - self.ttl)
        for second in [s for s in self._slots if s <= oldest]:
            del self._slots[second]
        return sum(s[0] for s in self._slots.values()), sum(s[1] for s in self._slots.values())

    def request(self, now: float) -> None:
        self._slots.setdefault(int(now), [0, 0])[0] += 1

    def try_retry(self, now: float) -> bool:
        """Spend one retry if the budget allows it."""
        requests, retries = self._window(now)
        if retries + 1 > requests * self.percent / 100 + self.min_per_second * self.ttl:
            return False
        self._slots.setdefault(int(now), [0, 0])[1] += 1
        return True


@dataclass
class OutboundPolicy:
    """What applies to calls to one service."""

    routes: RouteTable | None = None
    retry: RetryPolicy | None = None
    budget: RetryBudget | None = None
    request_timeout: float | None = None  # MeshTimeout http.requestTimeout, capped by http.maxStreamDuration
    stream_idle_timeout: float | None = None  # http.streamIdleTimeout: nothing from the upstream for this long
    connect_timeout: float | None = None
    idle_timeout: float | None = None
    grpc_retry: RetryPolicy | None = None  # MeshRetry grpc: gRPC calls (content-type application/grpc)
    connect_attempts: int | None = None  # MeshRetry tcp.maxConnectAttempt: endpoints tried per connection
    tcp_backends: list[Backend] = field(default_factory=list)
    load_balancer: str | None = None
    hash_header: bytes | None = None
    outlier: Mapping[str, Any] | None = None
    access_logs: tuple[str, ...] = ()  # MeshAccessLog file paths
    health: HealthCheckSpec | None = None  # MeshHealthCheck
    max_requests: int | None = None  # MeshCircuitBreaker connectionLimits.maxRequests: calls in flight at most
    max_connections: int | None = None  # connectionLimits.maxConnections: connections open at once
    max_pending: int | None = None  # connectionLimits.maxPendingRequests: calls waiting for a connection

    def retry_for(self, grpc: bool) -> RetryPolicy | None:
        """The retry policy of a call: MeshRetry's `grpc` section for gRPC calls, its `http` one otherwise."""
        return self.grpc_retry if grpc else self.retry


GRPC_RETRY_ON = frozenset({"Cancelled", "DeadlineExceeded", "ResourceExhausted", "Unavailable"})  # Envoy's default


def _retry_policy(conf: Mapping[str, Any], default_on: frozenset[str]) -> RetryPolicy:
    back_off = conf.get("backOff") or {}
    base = seconds(back_off["baseInterval"]) if "baseInterval" in back_off else 0.025
    return RetryPolicy(
        num_retries=int(conf.get("numRetries", 5)),
        per_try_timeout=seconds(conf["perTryTimeout"]) if "perTryTimeout" in conf else None,
        base_interval=base,
        max_interval=seconds(back_off["maxInterval"]) if "maxInterval" in back_off else 10 * base,
        on=frozenset(conf.get("retryOn") or default_on))


def compile_outbound(confs: Mapping[str, Any]) -> OutboundPolicy:
    policy = OutboundPolicy()
    rules = confs.get("MeshHTTPRoute")
    if rules:
        policy.routes = RouteTable([compile_rule(rule) for rule in rules])
    retry = confs.get("MeshRetry")
    if retry is not None and (retry.get("http") is not None or retry.get("grpc") is not None):
        if retry.get("http") is not None:
            policy.retry = _retry_policy(retry["http"], RetryPolicy.on)
        if retry.get("grpc") is not None:
            policy.grpc_retry = _retry_policy(retry["grpc"], GRPC_RETRY_ON)
        budget = retry.get("budget") or {}
        policy.budget = RetryBudget(float(budget.get("percent", 20)), float(budget.get("minRetriesPerSecond", 10)),
                                    seconds(budget["ttl"]) if "ttl" in budget else 10.0)
    tcp_retry = (retry or {}).get("tcp") or {}
    if "maxConnectAttempt" in tcp_retry:
        policy.connect_attempts = int(tcp_retry["maxConnectAttempt"])
    timeout = confs.get("MeshTimeout") or {}
    http_timeouts = timeout.get("http") or {}
    bounds = [seconds(http_timeouts[k]) for k in ("requestTimeout", "maxStreamDuration") if k in http_timeouts]
    policy.request_timeout = min(bounds) if bounds else None
    if "streamIdleTimeout" in http_timeouts:
        policy.stream_idle_timeout = seconds(http_timeouts["streamIdleTimeout"])
    if "connectionTimeout" in timeout:
        policy.connect_timeout = seconds(timeout["connectionTimeout"])
    if "idleTimeout" in timeout:
        policy.idle_timeout = seconds(timeout["idleTimeout"])
    tcp = confs.get("MeshTCPRoute")
    if tcp is not None:
        policy.tcp_backends = [Backend(ref["name"], tuple(sorted((ref.get("tags") or {}).items())),
                                       int(ref.get("weight", 1))) for ref in tcp["backendRefs"]]
    balancing = (confs.get("MeshLoadBalancingStrategy") or {}).get("loadBalancer") or {}
    if balancing:
        policy.load_balancer = balancing["type"]
        policy.hash_header = balancing["hashHeader"].encode() if balancing.get("hashHeader") else None
    breaker = confs.get("MeshCircuitBreaker") or {}
    policy.outlier = breaker.get("outlierDetection")
    limits = breaker.get("connectionLimits") or {}
    policy.max_requests = int(limits["maxRequests"]) if "maxRequests" in limits else None
    policy.max_connections = int(limits["maxConnections"]) if "maxConnections" in limits else None
    policy.max_pending = int(limits["maxPendingRequests"]) if "maxPendingRequests" in limits else None
    policy.access_logs = _log_paths(confs.get("MeshAccessLog") or {})
    if confs.get("MeshHealthCheck") is not None:
        policy.health = HealthCheckSpec.of(confs["MeshHealthCheck"])
    return policy


@dataclass
class Policies:
    inbound: dict[str, InboundPolicy] = field(default_factory=dict)
    outbound: dict[str, OutboundPolicy] = field(default_factory=dict)
    proxy: Mapping[str, Any] = field(default_factory=dict)

    @property
    def trace(self) -> tuple[str, float] | None:
        """MeshTrace: the OTLP/HTTP endpoint and the sampling percentage, or None when not tracing."""
        conf = self.proxy.get("MeshTrace") or {}
        backends = conf.get("backends") or []
        if not backends:
            return None
        return backends[0]["openTelemetry"]["endpoint"], float((conf.get("sampling") or {}).get("overall", 100))

    @property
    def log_paths(self) -> set[str]:
        """Every access-log path some policy in force names."""
        found = {path for outbound in self.outbound.values() for path in outbound.access_logs}
        return found | {path for inbound in self.inbound.values() for paths in inbound.access_logs.values()
                        for path in paths}


def compile_policies(wire: Mapping[str, Any]) -> Policies:
    """Compile a snapshot's `policies`; raise InvalidConfig (the sidecar NACKs) if they do not make sense."""
    try:
        policies = Policies(
            inbound={svc: compile_inbound(confs) for svc, confs in (wire.get("inbound") or {}).items()},
            outbound={svc: compile_outbound(confs) for svc, confs in (wire.get("outbound") or {}).items()},
            proxy=wire.get("proxy") or {},
        )
        policies.trace  # noqa: B018 - reads the MeshTrace settings: malformed ones refuse the snapshot
        return policies
    except (KeyError, TypeError, ValueError, AttributeError, re.error) as exc:
        raise InvalidConfig(f"policies: {type(exc).__name__}: {exc}") from None
