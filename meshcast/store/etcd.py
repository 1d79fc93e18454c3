"""etcd store: resources as JSON values under `<prefix>resources/<Type>/[<mesh>/]<name>`, versions are mod revisions.

Theory of operation.

Threads. The etcd client (`pyetcd`) is blocking gRPC. Every call runs in a worker thread through
`trio.to_thread.run_sync(..., abandon_on_cancel=True)`, so a cancelled caller returns at once while the RPC finishes
(or times out) in the background; a write cancelled that way may still land. Values are decoded in the worker
thread too, so a large list never stalls the trio loop.

Writes. create, update and delete are single etcd transactions guarded by `create_revision == 0` or
`mod_revision == version`; the failure branch reads the key so NotFound and Conflict are told apart in the same
round trip. Update reads the current value first to keep its creation time.

Failover and retries. The client holds one channel per endpoint and, on an unavailable or timed-out call, marks that
endpoint failed and moves to the next one. The store retries such a call (`retries`, default 2, after a short
pause), so killing one member of a cluster costs callers latency, not errors. A retried write is ambiguous: the
first attempt may have committed even though its answer was lost. A retry that finds exactly the bytes it meant to
write (create, update) reports success at that revision; a retried delete that finds the key gone reports success.
When every endpoint is marked failed the marks are cleared, since probing is then the only way to find one back.

Watches. Each watch owns a dedicated client (its own gRPC channels), so store calls that fail over never tear down
its stream, and closing the watch closes everything it started. The stream asks etcd to end it when its member loses
the leader (etcd's `WithRequireLeader`), so a watch on a member cut off from the majority moves instead of going
silent. pyetcd calls back on its own thread; the callback
decodes the response and hands it to trio with `TrioToken.run_sync_soon`. Each etcd watch carries a generation
number and anything from an older generation is dropped, so a broken, paused or closed watch can never deliver
late. The watch remembers `next`, the first revision it has not received; etcd never splits one revision across
responses, so after a break (stream error, member killed, etcd restarted) it is re-created from `next` after a
short capped back-off, and no change is lost or repeated. If the consumer falls `watch_buffer` events behind, the
etcd watch is cancelled and re-created from `next` once the buffer is drained. A compacted start revision raises
`WatchCompacted` after the changes already received are delivered.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc  # type: ignore[import-untyped]  # no stubs; pyetcd's overrides do not cover it
import pyetcd
import trio
from pyetcd import exceptions as etcd_errors
from pyetcd.events import DeleteEvent

from meshcast.errors import (
    AlreadyExists,
    Conflict,
    MeshcastError,
    NotFound,
    StoreUnauthorized,
    StoreUnavailable,
)
from meshcast.resources import Resource
from meshcast.resources.model import now
from meshcast.store.base import EventKind, ListResult, ResourceChanged, WatchCompacted, matches
from meshcast.store.codec import decode, encode

log = logging.getLogger(__name__)

T = TypeVar("T")
Key = tuple[str, str, str]

DEFAULT_PREFIX = "/meshcast/v1/local/"
_RETRY_PAUSES = (0.1, 0.3, 0.5)  # before the 1st, 2nd, 3rd+ retry of a failed call
_WATCH_BACKOFF_MIN, _WATCH_BACKOFF_MAX = 0.05, 1.0
_ENDPOINT_RETRY = 5.0  # seconds a failed endpoint is skipped while another one answers
_GRPC_OPTIONS = [
    # gRPC's default reconnect back-off grows to two minutes; a restarted member is found within a retry.
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
    # Notice a silently dead peer under a long-lived watch stream (etcd accepts pings every 5 s or slower).
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]
_TRANSIENT = (
    etcd_errors.ConnectionFailedError,
    etcd_errors.ConnectionTimeoutError,
    etcd_errors.InternalServerError,
    etcd_errors.NoServerAvailableError,
    etcd_errors.WatchTimedOut,
)
_CLIENT_ERRORS = (etcd_errors.Etcd3Exception, grpc.RpcError)


def parse_endpoints(endpoints: str | Sequence[str]) -> list[tuple[str, int]]:
    """`http://a:2379,http://b:2379` (or a list of them, scheme optional; https for TLS) -> [(host, port), ...]."""
    return parse_endpoint_urls(endpoints)[1]


def parse_endpoint_urls(endpoints: str | Sequence[str]) -> tuple[bool, list[tuple[str, int]]]:
    """Whether the endpoints speak TLS (all https://) and their (host, port); ValueError naming a bad one, or
    a mix of http:// and https://."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    out = []
    schemes = set()
    for raw in (e.strip() for e in items):
        if not raw:
            continue
        url = urlsplit(raw if "://" in raw else f"http://{raw}")
        if url.scheme not in ("http", "https"):
            raise ValueError(f"etcd endpoint {raw!r}: expected http:// or https://")
        if url.hostname is None or url.path not in ("", "/"):
            raise ValueError(f"etcd endpoint {raw!r}: expected http://host:port")
        try:
            port = url.port or 2379
        except ValueError:
            raise ValueError(f"etcd endpoint {raw!r}: invalid port") from None
        schemes.add(url.scheme)
        out.append((url.hostname, port))
    if not out:
        raise ValueError("no etcd endpoint given")
    if len(schemes) > 1:
        raise ValueError("etcd endpoints mix http:// and https://: use one scheme for the whole cluster")
    return schemes == {"https"}, out


@dataclass(frozen=True)
class EtcdTLS:
    """TLS to etcd (https:// endpoints): the CA that signed etcd's certificates and, when etcd asks for client
    certificates (`--client-cert-auth`), this client's certificate and key. The files are read for every new
    connection, so certificates renewed on disk take effect when the client next connects."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("an etcd client certificate and its key go together")

    def credentials(self) -> grpc.ChannelCredentials:
        """gRPC channel credentials; ValueError naming a file that cannot be read."""
        def read(path: Path | None, what: str) -> bytes | None:
            if path is None:
                return None
            try:
                return path.read_bytes()
            except OSError as exc:
                raise ValueError(f"cannot read the etcd {what} {path}: {exc.strerror or exc}") from None

        return grpc.ssl_channel_credentials(root_certificates=read(self.ca_file, "CA file"),
                                            private_key=read(self.key_file, "client key"),
                                            certificate_chain=read(self.cert_file, "client certificate"))


def check_tls(secure: bool, tls: EtcdTLS | None) -> None:
    """The endpoints' scheme and the TLS settings agree; ValueError saying what to change."""
    if secure and tls is None:
        raise ValueError("https:// etcd endpoints need the CA that signed etcd's certificates (an etcd CA file)")
    if not secure and tls is not None:
        raise ValueError("etcd TLS files were given for http:// endpoints: use https:// endpoints")


def endpoint_urls(endpoints: list[tuple[str, int]], secure: bool) -> str:
    scheme = "https" if secure else "http"
    return ",".join(f"{scheme}://{host}:{port}" for host, port in endpoints)


class EtcdStore:
    """A `ResourceStore` on etcd. Owns its etcd clients; `aclose()` ends open watches and closes them.

    Raises `StoreUnavailable` when etcd does not answer within `timeout` seconds per attempt after `retries`
    retries, besides the NotFound / AlreadyExists / Conflict of the store interface. Guarantees what
    `meshcast.store.base` states; see the module docs for what a cancelled or retried write may leave behind.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        prefix: str = DEFAULT_PREFIX,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,
        retries: int = 2,
        watch_buffer: int = 10_000,
        tls: EtcdTLS | None = None,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("etcd username and password go together")
        self._secure, self._endpoints = parse_endpoint_urls(endpoints)
        check_tls(self._secure, tls)
        if tls is not None:
            tls.credentials()  # an unreadable file is the caller's error, now, not a retried connect later
        self.tls = tls
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self._resources = self.prefix + "resources/"
        self._username, self._password = username, password
        self.timeout = timeout
        self.retries = retries
        self.watch_buffer = watch_buffer
        self._client: Any = None
        self._connecting = trio.Lock()
        self._closed = False
        self._watches: set[_Watch] = set()

    @classmethod
    async def open(
        cls,
        endpoints: str | Sequence[str],
        *,
        prefix: str = DEFAULT_PREFIX,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109 - the store's per-call etcd timeout, not a deadline for open()
        retries: int = 2,
        watch_buffer: int = 10_000,
        tls: EtcdTLS | None = None,
    ) -> EtcdStore:
        """Connect and check that etcd answers; raise StoreUnavailable (one line) if it does not."""
        store = cls(endpoints, prefix=prefix, username=username, password=password, timeout=timeout,
                    retries=retries, watch_buffer=watch_buffer, tls=tls)
        try:
            await store.connect()
        except BaseException:
            await store.aclose()
            raise
        return store

    @property
    def endpoints(self) -> str:
        return endpoint_urls(self._endpoints, self._secure)

    async def connect(self) -> None:
        """Create the client if there is none (one at a time: concurrent callers share it) and check etcd answers."""
        async with self._connecting:
            if self._client is None:
                self._client = await self._with_retries("connect", lambda _c, _r: self._new_client(), connect=True)
        await self.revision()

    def _new_client(self) -> Any:
        """A new blocking pyetcd client on every endpoint (authenticates when credentials were given)."""
        creds = self.tls.credentials() if self.tls is not None else None
        endpoints = [
            pyetcd.Endpoint(host, port, secure=creds is not None, creds=creds, time_retry=_ENDPOINT_RETRY,
                            opts=_GRPC_OPTIONS)
            for host, port in self._endpoints
        ]
        try:
            client = pyetcd.MultiEndpointEtcd3Client(
                endpoints, timeout=self.timeout, user=self._username, password=self._password, failover=True
            )
        except grpc.RpcError as exc:  # authentication is a raw call: make a dead endpoint retryable
            for endpoint in endpoints:
                endpoint.close()
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise etcd_errors.ConnectionFailedError() from exc
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise etcd_errors.ConnectionTimeoutError() from exc
            raise
        except BaseException:
            for endpoint in endpoints:
                endpoint.close()
            raise
        # pyetcd sends the auth token twice: as metadata and as call credentials, which gRPC refuses to send on a
        # plaintext channel ("insufficient security level"). The metadata alone is what etcd reads.
        client.call_credentials = None
        return client

    # --- keys ---------------------------------------------------------------------------------------------------

    def key(self, type: str, mesh: str, name: str) -> str:
        return f"{self._resources}{type}/{mesh}/{name}" if mesh else f"{self._resources}{type}/{name}"

    def scan_prefix(self, type: str | None, mesh: str | None) -> str:
        """The narrowest prefix holding every match; callers still filter with `matches` (mesh "" = global)."""
        if type is None:
            return self._resources
        return f"{self._resources}{type}/{mesh}/" if mesh else f"{self._resources}{type}/"

    def parse_key(self, key: bytes) -> Key | None:
        text = key.decode(errors="replace")
        if not text.startswith(self._resources):
            return None
        parts = text[len(self._resources):].split("/")
        if not all(parts):
            return None
        if len(parts) == 2:
            return (parts[0], "", parts[1])
        if len(parts) == 3:
            return (parts[0], parts[1], parts[2])
        return None

    def _decode(self, key: bytes, value: bytes, revision: int) -> Resource | None:
        """The resource stored at `key`, or None (logged) for a foreign key or a value that does not parse."""
        where = self.parse_key(key)
        if where is None:
            return None
        try:
            resource = decode(value, version=str(revision))
        except (MeshcastError, ValueError) as exc:
            log.error("skipping %s in etcd: not a valid resource (%s)", key.decode(errors="replace"), exc)
            return None
        if resource.key != where:
            log.error("skipping %s in etcd: it holds %s", key.decode(errors="replace"), resource.describe())
            return None
        return resource

    # --- the store interface ------------------------------------------------------------------------------------

    async def get(self, type: str, name: str, mesh: str = "") -> Resource:
        key = self.key(type, mesh, name)

        def read(client: Any, _retried: bool) -> Resource | None:
            response = client.get_response(key)
            if not response.kvs:
                return None
            kv = response.kvs[0]
            resource = decode(kv.value, version=str(kv.mod_revision))
            return resource

        found = await self._with_retries(f"get {key}", read)
        if found is None:
            raise NotFound(f"{type} {_where(mesh, name)} not found")
        return found

    async def list(self, type: str | None = None, mesh: str | None = None) -> ListResult:
        prefix = self.scan_prefix(type, mesh)

        def scan(client: Any, _retried: bool) -> ListResult:
            response = client.get_prefix_response(prefix)
            items = []
            for kv in response.kvs:
                resource = self._decode(kv.key, kv.value, kv.mod_revision)
                if resource is not None and (type is None or resource.type == type) and (
                        mesh is None or resource.mesh == mesh):
                    items.append(resource)
            items.sort(key=lambda r: r.key)  # etcd sorts bytes: "a-b/" < "a/", keys sort as tuples
            return ListResult(items=items, revision=response.header.revision)

        return await self._with_retries(f"list {prefix}", scan)

    async def create(self, resource: Resource) -> Resource:
        key = self.key(*resource.key)
        stamp = now()
        stored = resource.with_meta(version=None, created=stamp, modified=stamp)
        value = encode(stored)

        def put(client: Any, retried: bool) -> int:
            t = client.transactions
            ok, responses = client.transaction(
                compare=[t.create(key) == 0], success=[t.put(key, value)], failure=[t.get(key)]
            )
            if ok:
                return int(responses[0].response_put.header.revision)
            current = responses[0][0] if responses and responses[0] else None
            if retried and current is not None and current[0] == value:
                return int(current[1].mod_revision)  # our first attempt landed; its answer was lost
            raise AlreadyExists(f"{resource.describe()} already exists")

        revision = await self._with_retries(f"create {key}", put)
        return stored.with_meta(version=str(revision), created=stamp, modified=stamp)

    async def update(self, resource: Resource) -> Resource:
        key = self.key(*resource.key)
        modified = now()
        sent: list[tuple[bytes, Resource]] = []  # what the first attempt wrote, to recognise it on a retry

        def put(client: Any, retried: bool) -> Resource:
            response = client.get_response(key)
            if retried and sent and response.kvs and response.kvs[0].value == sent[0][0]:
                return sent[0][1].with_meta(version=str(response.kvs[0].mod_revision),
                                            created=sent[0][1].creation_time, modified=modified)
            if not response.kvs:
                raise NotFound(f"{resource.describe()} not found")
            if resource.version is None:
                raise ValueError("update needs the version the caller read")
            current = response.kvs[0]
            if str(current.mod_revision) != resource.version:
                raise self._conflict(resource.describe(), resource.version, current.mod_revision)
            created = decode(current.value, version=None).creation_time
            stored = resource.with_meta(version=None, created=created, modified=modified)
            value = encode(stored)
            sent[:] = [(value, stored)]
            t = client.transactions
            ok, responses = client.transaction(
                compare=[t.mod(key) == current.mod_revision], success=[t.put(key, value)], failure=[t.get(key)]
            )
            if ok:
                revision = responses[0].response_put.header.revision
                return stored.with_meta(version=str(revision), created=created, modified=modified)
            now_at = responses[0][0] if responses and responses[0] else None
            if now_at is None:
                raise NotFound(f"{resource.describe()} not found")
            raise self._conflict(resource.describe(), resource.version, now_at[1].mod_revision)

        return await self._with_retries(f"update {key}", put)

    async def delete(self, type: str, name: str, mesh: str = "", *, version: str | None = None) -> None:
        key = self.key(type, mesh, name)
        what = f"{type} {_where(mesh, name)}"

        def remove(client: Any, retried: bool) -> None:
            if version is None:
                response = client.delete(key, return_response=True)
                if response.deleted or retried:  # a retry finding it gone: our first attempt deleted it
                    return
                raise NotFound(f"{what} not found")
            wanted = int(version) if version.isdigit() else -1
            t = client.transactions
            ok, responses = client.transaction(
                compare=[t.mod(key) == wanted], success=[t.delete(key)], failure=[t.get(key)]
            )
            if ok:
                return
            current = responses[0][0] if responses and responses[0] else None
            if current is None:
                if retried:
                    return
                raise NotFound(f"{what} not found")
            raise self._conflict(what, version, current[1].mod_revision)

        await self._with_retries(f"delete {key}", remove)

    async def revision(self) -> int:
        def read(client: Any, _retried: bool) -> int:
            return int(client.get_response(self.prefix, count_only=True).header.revision)

        return await self._with_retries("read the revision", read)

    # --- raw keys (federation: zone inventory on leases, CA exchange) ------------------------------------------

    async def put_key(self, key: str, value: bytes, *, lease: int | None = None) -> None:
        """Put `value` at the absolute `key`, attached to `lease` (an ID from `grant_lease`) if given."""
        await self._with_retries(f"put {key}", lambda client, _r: client.put(key, value, lease=lease))

    async def get_keys(self, prefix: str) -> dict[str, bytes]:
        """Every key under the absolute `prefix`, with its value."""
        def scan(client: Any, _retried: bool) -> dict[str, bytes]:
            return {meta.key.decode(): value for value, meta in client.get_prefix(prefix)}

        return await self._with_retries(f"read {prefix}", scan)

    async def delete_key(self, key: str) -> None:
        await self._with_retries(f"delete {key}", lambda client, _r: client.delete(key))

    async def grant_lease(self, ttl: int) -> int:
        """A new lease of `ttl` seconds; keys put on it vanish when it is not refreshed in time."""
        return int(await self._with_retries("grant a lease", lambda client, _r: client.lease(ttl).id))

    async def refresh_lease(self, lease: int) -> int:
        """Keep `lease` alive; returns its remaining TTL in seconds, 0 if it has already expired."""
        def refresh(client: Any, _retried: bool) -> int:
            for response in client.refresh_lease(lease):
                return int(response.TTL)
            return 0

        return await self._with_retries("refresh a lease", refresh)

    async def revoke_lease(self, lease: int) -> None:
        await self._with_retries("revoke a lease", lambda client, _r: client.revoke_lease(lease))

    @asynccontextmanager
    async def watch(
        self, *, after_revision: int, type: str | None = None, mesh: str | None = None
    ) -> AsyncIterator[AsyncIterator[ResourceChanged]]:
        if self._closed:
            raise StoreUnavailable(f"etcd store at {self.endpoints} is closed")
        watch = _Watch(self, after_revision, type, mesh)
        self._watches.add(watch)
        try:
            yield watch
        finally:
            self._watches.discard(watch)
            await watch.aclose()

    async def aclose(self) -> None:
        self._closed = True
        with trio.CancelScope(shield=True):
            for watch in list(self._watches):
                await watch.aclose()
            client, self._client = self._client, None
            if client is not None:
                with trio.move_on_after(self.timeout):
                    await trio.to_thread.run_sync(client.close, abandon_on_cancel=True)

    # --- calls --------------------------------------------------------------------------------------------------

    @staticmethod
    def _conflict(what: str, version: str, current: int) -> Conflict:
        return Conflict(f"{what} changed since version {version} (now {current}): read it again and retry")

    async def _with_retries(
        self, what: str, call: Callable[[Any, bool], T], *, connect: bool = False
    ) -> T:
        """Run `call(client, retried)` in a thread, retrying transient failures; errors become StoreUnavailable."""
        if self._closed:
            raise StoreUnavailable(f"etcd store at {self.endpoints} is closed")
        client = self._client
        if client is None and not connect:
            raise RuntimeError("EtcdStore is not connected: use `await EtcdStore.open(...)`")
        attempt = 0
        relogged = False
        while True:
            try:
                return await trio.to_thread.run_sync(
                    functools.partial(_call_once, client, call, attempt > 0), abandon_on_cancel=True
                )
            except _TRANSIENT as exc:
                if attempt >= self.retries:
                    raise self._unavailable(what, exc, attempt + 1) from None
                log.debug("etcd: %s failed (%s), retrying", what, _reason(exc, self.timeout))
                await trio.sleep(_RETRY_PAUSES[min(attempt, len(_RETRY_PAUSES) - 1)])
                attempt += 1
            except _CLIENT_ERRORS as exc:
                problem = _auth_problem(exc)
                if problem == "invalid auth token" and self._username is not None and not relogged:
                    # etcd drops a login after --auth-token-ttl idle seconds (300 by default): log in again.
                    relogged = True
                    log.info("etcd: the login of %s expired, logging in again", self._username)
                    try:
                        fresh = await trio.to_thread.run_sync(self._new_client, abandon_on_cancel=True)
                    except (*_TRANSIENT, *_CLIENT_ERRORS) as again:
                        if _auth_problem(again) is not None:
                            raise StoreUnauthorized(f"etcd at {self.endpoints} refused the login of "
                                                    f"{self._username}: {_auth_problem(again)}") from None
                        raise self._unavailable(what, again, attempt + 1) from None
                    old, self._client = self._client, fresh
                    client = self._client
                    if old is not None:
                        await trio.to_thread.run_sync(_quietly, old.close, abandon_on_cancel=True)
                    continue
                if problem is not None:
                    raise StoreUnauthorized(f"etcd at {self.endpoints} refused {what}: {problem}"
                                            f"{f' (user {self._username})' if self._username else ''}") from None
                raise self._unavailable(what, exc, attempt + 1) from None
            except Exception as exc:
                if self._closed and not isinstance(exc, MeshcastError):  # gRPC's errors for a closed channel
                    raise StoreUnavailable(f"etcd store at {self.endpoints} was closed during {what}") from None
                raise

    def _unavailable(self, what: str, exc: BaseException, attempts: int) -> StoreUnavailable:
        tries = f" ({attempts} attempts)" if attempts > 1 else ""
        return StoreUnavailable(
            f"etcd at {self.endpoints} is unavailable: {what} failed: {_reason(exc, self.timeout)}{tries}"
        )


def _call_once(client: Any, call: Callable[[Any, bool], T], retried: bool) -> T:
    """One attempt, in a worker thread. If every endpoint is marked failed, clear the marks and try once more."""
    try:
        return call(client, retried)
    except etcd_errors.NoServerAvailableError:
        if client is None:
            raise
        # Keep the mark of the endpoint that failed last, so the client moves on to another one.
        last = client.endpoint_in_use
        for endpoint in client.endpoints.values():
            if endpoint is not last or len(client.endpoints) == 1:
                endpoint.last_failed = 0
        return call(client, retried)


def _auth_problem(exc: BaseException) -> str | None:
    """'invalid auth token', 'permission denied' or 'authentication failed' when etcd refused on those grounds."""
    for error in (exc, exc.__context__):
        if isinstance(error, grpc.RpcError):
            details = str(error.details() or "")
            for problem in ("invalid auth token", "permission denied", "authentication failed", "user name is empty"):
                if problem in details:
                    return problem
    return None


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, etcd_errors.ConnectionTimeoutError):
        return f"no answer within {timeout:g}s"
    cause = exc.__context__  # pyetcd raises its own exceptions while handling the gRPC error
    if isinstance(exc, etcd_errors.ConnectionFailedError):
        details = cause.details() if isinstance(cause, grpc.RpcError) else None
        if details and details.startswith("etcdserver:"):
            return str(details)  # etcd answered, e.g. "etcdserver: leader changed"
        return "connection failed (is etcd running?)"
    if isinstance(exc, etcd_errors.NoServerAvailableError):
        return "no endpoint available"
    if isinstance(exc, etcd_errors.WatchTimedOut):
        return f"watch not created within {timeout:g}s"
    if isinstance(exc, grpc.RpcError):
        code, details = exc.code(), exc.details()
        return f"{getattr(code, 'name', code)}: {details}"
    return str(exc) or type(exc).__name__


def _where(mesh: str, name: str) -> str:
    return f"{mesh}/{name}" if mesh else name


# --- watches --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Batch:
    """One etcd watch response, decoded on the callback thread."""

    events: list[ResourceChanged]
    last_revision: int  # 0 when the response held no event


@dataclass(frozen=True)
class _Failed:
    """A response the callback could not turn into events: a bug, raised to the consumer rather than dropped."""

    error: Exception


class _Watch:
    """One store watch: an async iterator over changes, fed by an etcd watch it re-creates when needed."""

    def __init__(self, store: EtcdStore, after_revision: int, type: str | None, mesh: str | None) -> None:
        self._store = store
        self._type, self._mesh = type, mesh
        self._prefix = store.scan_prefix(type, mesh)
        self._next = max(after_revision, 0) + 1  # the first revision not yet received from etcd
        self._buffer: collections.deque[ResourceChanged] = collections.deque()
        self._token = trio.lowlevel.current_trio_token()
        self._wakeup = trio.Event()
        self._generation = 0
        self._watch_id: int | None = None
        self._lock = threading.Lock()  # guards _client and _closed against a thread abandoned mid-connect
        self._client: Any = None
        self._closed = False
        self._compacted: int | None = None
        self._error: Exception | None = None
        self._failures = 0

    def __aiter__(self) -> _Watch:
        return self

    async def __anext__(self) -> ResourceChanged:
        while True:
            if self._buffer:
                await trio.lowlevel.checkpoint()
                if self._buffer:
                    return self._buffer.popleft()
                continue
            if self._closed:
                raise StopAsyncIteration
            if self._compacted is not None:
                raise WatchCompacted(self._next, self._compacted)
            if self._error is not None:
                raise self._error
            if self._watch_id is None:
                await self._start()
                continue
            await self._wakeup.wait()
            self._wakeup = trio.Event()

    async def _start(self) -> None:
        if self._failures:
            await trio.sleep(min(_WATCH_BACKOFF_MIN * 2 ** (self._failures - 1), _WATCH_BACKOFF_MAX))
            if self._closed:
                return
        self._generation += 1
        generation, start = self._generation, self._next
        callback = functools.partial(self._on_response, generation)
        try:
            watch_id = await trio.to_thread.run_sync(
                functools.partial(self._create, callback, start), abandon_on_cancel=True
            )
        except etcd_errors.RevisionCompactedError as exc:
            self._compacted = int(exc.compacted_revision)
            return
        except _CLIENT_ERRORS as exc:
            self._failures += 1
            level = logging.WARNING if self._failures == 1 else logging.DEBUG
            log.log(level, "etcd watch on %s: cannot start from revision %d (%s), retrying", self._prefix, start,
                    _reason(exc, self._store.timeout))
            return
        if generation == self._generation and not self._closed:
            self._watch_id = watch_id
        else:  # it broke or was paused while being created; its responses are already being dropped
            self._cancel_in_thread(watch_id)

    def _create(self, callback: Callable[[Any], None], start: int) -> int:
        with self._lock:
            client = self._client
        if client is None:
            client = self._store._new_client()
            # Ask etcd to end the stream if this member loses its leader (etcd's WithRequireLeader), so a watch
            # on a member cut off from the majority moves to another member instead of going silent.
            client.metadata = (*(client.metadata or ()), ("hasleader", "true"))
            with self._lock:
                if self._closed:
                    client.close()
                    raise etcd_errors.ConnectionFailedError()
                self._client = client
        return int(_call_once(client, lambda c, _r: c.add_watch_prefix_callback(
            self._prefix, callback, start_revision=start, prev_kv=True), False))

    def _on_response(self, generation: int, response: Any) -> None:
        """pyetcd's callback, on its watch thread: a WatchResponse, an exception, or None when the stream ended."""
        if self._closed or generation != self._generation:
            return
        item: _Batch | _Failed | BaseException | None
        try:
            item = response if response is None or isinstance(response, BaseException) else self._convert(response)
        except Exception as exc:  # pyetcd would log and drop the response: make the watch fail instead
            item = _Failed(exc)
        with suppress(trio.RunFinishedError):  # the trio run is over: nobody is listening any more
            self._token.run_sync_soon(self._deliver, generation, item)

    def _convert(self, response: Any) -> _Batch:
        events: list[ResourceChanged] = []
        last = 0
        for event in response.events:
            revision = int(event.mod_revision)
            last = max(last, revision)
            where = self._store.parse_key(event.key)
            if where is None:
                continue
            type, mesh, name = where
            resource: Resource | None
            if isinstance(event, DeleteEvent):
                kind = EventKind.DELETED
                has_prev = event.prev_mod_revision > 0
                resource = self._store._decode(event.key, event.prev_value, event.prev_mod_revision) \
                    if has_prev else None
            else:
                kind = EventKind.CREATED if event.create_revision == event.mod_revision else EventKind.UPDATED
                resource = self._store._decode(event.key, event.value, revision)
                if resource is None:
                    continue
            change = ResourceChanged(kind, revision, type, mesh, name, resource)
            if matches(change, self._type, self._mesh):
                events.append(change)
        return _Batch(events, last)

    def _deliver(self, generation: int, item: _Batch | _Failed | BaseException | None) -> None:
        """In the trio thread: take one response of the current etcd watch."""
        if self._closed or generation != self._generation:
            return
        if isinstance(item, _Failed):
            self._error = item.error
            self._stop_etcd_watch()
        elif isinstance(item, _Batch):
            self._buffer.extend(item.events)
            if item.last_revision:
                self._next = item.last_revision + 1
                if self._failures:
                    log.info("etcd watch on %s resumed at revision %d", self._prefix, item.last_revision)
                self._failures = 0
            if len(self._buffer) >= self._store.watch_buffer and self._watch_id is not None:
                # The consumer is behind: stop the etcd watch and resume from `next` once it has caught up.
                self._stop_etcd_watch()
        elif isinstance(item, etcd_errors.RevisionCompactedError):
            self._compacted = int(item.compacted_revision)
            self._generation += 1
            self._watch_id = None  # pyetcd cancels it
        else:
            self._failures += 1
            level = logging.WARNING if self._failures == 1 else logging.DEBUG
            log.log(level, "etcd watch on %s broke (%s); resuming from revision %d", self._prefix,
                    "stream ended" if item is None else _reason(item, self._store.timeout), self._next)
            self._stop_etcd_watch()
        self._wakeup.set()

    def _stop_etcd_watch(self) -> None:
        self._generation += 1
        watch_id, self._watch_id = self._watch_id, None
        if watch_id is not None:
            self._cancel_in_thread(watch_id)

    def _cancel_in_thread(self, watch_id: int) -> None:
        with self._lock:
            client = self._client
        if client is not None:
            trio.lowlevel.start_thread_soon(
                functools.partial(_quietly, client.cancel_watch, watch_id), lambda _outcome: None
            )

    async def aclose(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            client, self._client = self._client, None
        self._generation += 1
        self._buffer.clear()
        self._wakeup.set()
        watch_id, self._watch_id = self._watch_id, None
        if client is None:
            return

        def close() -> None:
            if watch_id is not None:
                _quietly(client.cancel_watch, watch_id)
            client.close()

        with trio.CancelScope(shield=True), trio.move_on_after(self._store.timeout):
            await trio.to_thread.run_sync(close, abandon_on_cancel=True)


def _quietly(fn: Callable[..., object], *args: object) -> None:
    try:
        fn(*args)
    except Exception as exc:  # best effort: the channel is being closed or the stream is already gone
        log.debug("etcd: %s failed: %r", getattr(fn, "__name__", fn), exc)


@asynccontextmanager
async def open_etcd_store(endpoints: str | Sequence[str], **options: Any) -> AsyncIterator[EtcdStore]:
    """`async with open_etcd_store("http://127.0.0.1:2379") as store:` connects, checks, and closes on exit."""
    store = await EtcdStore.open(endpoints, **options)
    try:
        yield store
    finally:
        await store.aclose()
