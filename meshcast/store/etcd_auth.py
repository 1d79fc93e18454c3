"""etcd RBAC administration over etcd's Auth API: turn authentication on, keep users and their roles as declared.

Theory of operation.

Users. Each managed user `<name>` has exactly one role, also named `<name>`, whose permissions are exactly READ on
each read prefix and READWRITE on each write prefix (a prefix is the key range `[prefix, prefix with its last byte
+1)`). `ensure_user` converges whatever it finds to that: it creates what is missing, revokes stale permissions
and roles, and changes the password only when the given one does not authenticate, because etcd invalidates every
token of a user whose password changes (a running store then logs in again, but with the old password). A zone
control plane's user (`ensure_zone_user`) reads all of `/meshcast/v1/` and writes only `/meshcast/v1/zones/<zone>/`.
Nothing here reads or writes keys: etcd itself enforces these permissions on every request.

Calls. Every public function is async and runs one short blocking session in a worker thread
(`trio.to_thread.run_sync(..., abandon_on_cancel=True)`, as the store does): a cancelled caller returns at once
while the session finishes or times out in the background, so a cancelled change may still land. A session holds a
plain pyetcd client per endpoint and calls the raw `authstub`; an endpoint that is unavailable or does not answer
within `rpc_timeout` seconds makes it move to the next one and retry (`retries`, default 2). Every step is
idempotent, so a retry or a re-run after a lost answer converges to the same state. An expired token (etcd drops
it after `--auth-token-ttl` idle seconds, 300 by default) is renewed once per call.

Errors. Wrong admin credentials, a user without the root role, or a request without a token on an etcd that
requires one raise `StoreUnauthorized`; etcd not answering raises `StoreUnavailable`; both one line. Invalid
arguments (a zone name that is not a DNS label, a password longer than bcrypt's 72 bytes) raise ValueError.
Anything else etcd refuses (not expected: every refusal the steps anticipate is handled) is StoreUnavailable.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import grpc  # type: ignore[import-untyped]  # no stubs; pyetcd's overrides do not cover it
import pyetcd
import trio
from pyetcd import etcdrpc

from meshcast.errors import MeshcastError, StoreUnauthorized, StoreUnavailable
from meshcast.federation.keyspace import ROOT, zone_prefix
from meshcast.store.etcd import EtcdTLS, check_tls, endpoint_urls, parse_endpoint_urls

log = logging.getLogger(__name__)

T = TypeVar("T")

ROOT_USER = "root"  # etcd's superuser; its role `root` is built in and cannot be listed, edited or deleted
ZONE_USER_PREFIX = "meshcast-zone-"
MAX_PASSWORD_BYTES = 72  # bcrypt ignores whatever follows: a longer password would authenticate by its first 72

_RETRY_PAUSES = (0.1, 0.3, 0.5)
_GRPC_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
]
_TRANSIENT_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_READ, _READWRITE = etcdrpc.Permission.READ, etcdrpc.Permission.READWRITE

# etcd's error texts (api/v3rpc/rpctypes, identical in 3.4 and 3.5): the status codes alone do not tell them apart.
_AUTH_NOT_ENABLED = "etcdserver: authentication is not enabled"
_AUTH_FAILED = "etcdserver: authentication failed, invalid user ID or password"
_OLD_REVISION = "etcdserver: revision of auth store is old"  # an auth change raced the request: retry it
_NO_USER_NAME = "etcdserver: user name is empty"  # auth is on and the request carried no token
_USER_EXISTS = "etcdserver: user name already exists"
_USER_NOT_FOUND = "etcdserver: user name not found"
_ROLE_EXISTS = "etcdserver: role name already exists"
_ROLE_NOT_FOUND = "etcdserver: role name not found"
_PERMISSION_NOT_GRANTED = "etcdserver: permission is not granted to the role"
_ROLE_NOT_GRANTED = "etcdserver: role is not granted to the user"

_ZONE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


# --- names, passwords and key ranges (pure) -------------------------------------------------------------------

def check_zone_name(zone: str) -> str:
    """Return `zone` if it is a DNS label (1-63 of a-z, 0-9, '-', not starting or ending with '-').

    Otherwise raise ValueError with one line naming what is wrong.
    """
    if not isinstance(zone, str):
        raise ValueError(f"zone name must be a string, not {type(zone).__name__}")
    if not zone:
        raise ValueError("zone name is empty")
    shown = repr(zone)
    if len(shown) > 64:  # keep the message one short line whatever the input
        shown = shown[:60] + "...'"
    if len(zone) > 63:
        raise ValueError(f"zone name {shown} is {len(zone)} characters long: at most 63")
    bad = next((c for c in zone if c not in _ZONE_CHARS), None)
    if bad is not None:
        raise ValueError(f"zone name {shown} contains {bad!r}: use lowercase letters a-z, digits and '-'")
    if zone.startswith("-"):
        raise ValueError(f"zone name {shown} starts with '-'")
    if zone.endswith("-"):
        raise ValueError(f"zone name {shown} ends with '-'")
    return zone


def zone_user(zone: str) -> str:
    """The etcd user (and role) of a zone's control plane: `meshcast-zone-<zone>`."""
    return ZONE_USER_PREFIX + check_zone_name(zone)


def prefix_range_end(prefix: bytes) -> bytes:
    """The end of the key range holding exactly the keys that start with `prefix` (etcd's `WithPrefix`).

    The last byte below 0xff is incremented and what follows it dropped; a prefix of only 0xff bytes (or none)
    gives b"\\x00", which etcd reads as "every key from `prefix` on".
    """
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\x00"
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _check_prefix(prefix: str) -> bytes:
    # The Auth API of pyetcd's generated code carries keys as proto strings: keeping prefixes printable ASCII
    # keeps their range ends valid UTF-8 too.
    if not isinstance(prefix, str) or not prefix or not all(" " <= c <= "~" for c in prefix):
        raise ValueError(f"etcd key prefix {prefix!r}: use a non-empty string of printable ASCII")
    return prefix.encode()


def _check_user_name(name: str) -> str:
    if not isinstance(name, str) or not _USER_NAME.fullmatch(name):
        raise ValueError(f"etcd user name {name!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a "
                         "letter or digit")
    if name == ROOT_USER:
        raise ValueError("the etcd user 'root' is managed by enable_auth only")
    return name


def _check_password(password: str, what: str) -> str:
    if not isinstance(password, str) or not password:
        raise ValueError(f"{what} is empty")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise ValueError(f"{what} is {len(password.encode())} bytes long: etcd's bcrypt uses only the first "
                         f"{MAX_PASSWORD_BYTES}")
    return password


def _permissions(read_prefixes: Iterable[str], write_prefixes: Iterable[str]) -> dict[tuple[bytes, bytes], int]:
    """(key, range_end) -> permission type; a prefix both read and written is READWRITE."""
    wanted: dict[tuple[bytes, bytes], int] = {}
    for prefixes, perm in ((read_prefixes, _READ), (write_prefixes, _READWRITE)):
        if isinstance(prefixes, str):
            raise ValueError(f"expected a list of key prefixes, got the string {prefixes!r}")
        for prefix in prefixes:
            key = _check_prefix(prefix)
            wanted[(key, prefix_range_end(key))] = perm
    return wanted


# --- the public API -------------------------------------------------------------------------------------------

async def enable_auth(endpoints: str | Sequence[str], root_password: str, *, rpc_timeout: float = 5.0,
                      retries: int = 2, tls: EtcdTLS | None = None) -> bool:
    """Turn etcd authentication on, with user `root` (role `root`) authenticating with `root_password`.

    Returns True if it enabled authentication, False if it was already on and `root_password` is root's. While
    authentication is off anyone may manage users, so an existing root gets `root_password`. Raises
    StoreUnauthorized if authentication is on and refuses `root_password`.
    """
    _check_password(root_password, "root password")
    work = functools.partial(_enable_auth, root_password=root_password)
    return await _in_thread(endpoints, rpc_timeout, retries, work, tls)


async def ensure_user(endpoints: str | Sequence[str], admin_user: str, admin_password: str, name: str,
                      password: str, *, read_prefixes: Iterable[str], write_prefixes: Iterable[str],
                      rpc_timeout: float = 5.0, retries: int = 2, tls: EtcdTLS | None = None) -> bool:
    """Create or update user `name` with `password` and its role `name`, allowed exactly READ on `read_prefixes`
    and READWRITE on `write_prefixes`; other permissions of the role and other roles of the user are revoked.

    Acts as `admin_user` (a user with the root role); if authentication is still off, no credential is needed and
    the admin's are not checked. Returns whether anything changed. The password is changed only when `password`
    does not authenticate, which ends every session of the user that used the old one.
    """
    _check_user_name(name)
    if name == admin_user:
        raise ValueError(f"user {name!r} cannot manage itself: ensure_user would revoke its admin role")
    _check_password(password, f"password of {name!r}")
    wanted = _permissions(read_prefixes, write_prefixes)
    return await _in_thread(endpoints, rpc_timeout, retries, functools.partial(
        _ensure_user, admin=(admin_user, admin_password), name=name, password=password, wanted=wanted), tls)


async def ensure_zone_user(endpoints: str | Sequence[str], admin_user: str, admin_password: str, zone: str,
                           password: str, *, rpc_timeout: float = 5.0, retries: int = 2,
                           tls: EtcdTLS | None = None) -> bool:
    """`ensure_user` for a zone's control plane: `zone_user(zone)` reads `/meshcast/v1/` and writes only
    `/meshcast/v1/zones/<zone>/` (its info, its services on its lease, its CA exchange). Returns whether anything
    changed."""
    return await ensure_user(endpoints, admin_user, admin_password, zone_user(zone), password,
                             read_prefixes=[ROOT], write_prefixes=[zone_prefix(zone)], rpc_timeout=rpc_timeout,
                             retries=retries, tls=tls)


async def remove_user(endpoints: str | Sequence[str], admin_user: str, admin_password: str, name: str, *,
                      rpc_timeout: float = 5.0, retries: int = 2, tls: EtcdTLS | None = None) -> bool:
    """Delete user `name` and its role `name`; either being missing is fine. Returns whether anything was deleted.

    etcd drops the user's tokens with it, so its open sessions fail from the next request on.
    """
    _check_user_name(name)
    return await _in_thread(endpoints, rpc_timeout, retries, functools.partial(
        _remove_user, admin=(admin_user, admin_password), name=name), tls)


async def _in_thread(endpoints: str | Sequence[str], rpc_timeout: float, retries: int,
                     work: Callable[[_Session], T], tls: EtcdTLS | None = None) -> T:
    session = _Session(endpoints, rpc_timeout, retries, tls)  # parses the endpoints here: a ValueError is the caller's

    def run() -> T:
        try:
            return work(session)
        except _Refused as refused:
            raise refused.error(session.shown) from None
        finally:
            session.close()

    return await trio.to_thread.run_sync(run, abandon_on_cancel=True)


# --- the steps, in a worker thread ----------------------------------------------------------------------------

def _enable_auth(session: _Session, root_password: str) -> bool:
    if session.login(ROOT_USER, root_password):
        return False  # already on, and root's password is the one given
    try:
        session.call("UserAdd", etcdrpc.AuthUserAddRequest(name=ROOT_USER, password=root_password),
                     "add user 'root'")
    except _Refused as refused:
        if refused.details != _USER_EXISTS:
            raise
        session.call("UserChangePassword",
                     etcdrpc.AuthUserChangePasswordRequest(name=ROOT_USER, password=root_password),
                     "set the password of user 'root'")
    # etcd refuses to enable authentication unless root holds the root role; granting it twice is a no-op.
    session.call("UserGrantRole", etcdrpc.AuthUserGrantRoleRequest(user=ROOT_USER, role=ROOT_USER),
                 "grant role 'root' to user 'root'")
    session.call("AuthEnable", etcdrpc.AuthEnableRequest(), "enable authentication")
    log.info("etcd at %s: authentication enabled", session.shown)
    return True


def _ensure_user(session: _Session, admin: tuple[str, str], name: str, password: str,
                 wanted: dict[tuple[bytes, bytes], int]) -> bool:
    auth_on = session.login(*admin)
    changed = _ensure_role(session, name, wanted)
    try:
        session.call("UserAdd", etcdrpc.AuthUserAddRequest(name=name, password=password), f"add user {name!r}")
        log.info("etcd at %s: added user %s", session.shown, name)
        changed = True
    except _Refused as refused:
        if refused.details != _USER_EXISTS:
            raise
        # Change the password only if it differs: etcd ends the user's sessions when it changes. With
        # authentication off there is no way to check it, and no session to end either.
        if not auth_on or not session.authenticates(name, password):
            session.call("UserChangePassword", etcdrpc.AuthUserChangePasswordRequest(name=name, password=password),
                         f"change the password of user {name!r}")
            log.info("etcd at %s: changed the password of user %s", session.shown, name)
            changed = True
    user = session.call("UserGet", etcdrpc.AuthUserGetRequest(name=name), f"read user {name!r}")
    for role in user.roles:
        if role != name:
            session.call("UserRevokeRole", etcdrpc.AuthUserRevokeRoleRequest(name=name, role=role),
                         f"revoke role {role!r} from user {name!r}", tolerate=_ROLE_NOT_GRANTED)
            log.info("etcd at %s: revoked role %s from user %s", session.shown, role, name)
            changed = True
    if name not in user.roles:
        session.call("UserGrantRole", etcdrpc.AuthUserGrantRoleRequest(user=name, role=name),
                     f"grant role {name!r} to user {name!r}")
        changed = True
    return changed


def _ensure_role(session: _Session, name: str, wanted: dict[tuple[bytes, bytes], int]) -> bool:
    """Role `name` with exactly the `wanted` permissions; stale ones are revoked before new ones are granted."""
    changed = False
    try:
        session.call("RoleAdd", etcdrpc.AuthRoleAddRequest(name=name), f"add role {name!r}")
        changed = True
    except _Refused as refused:
        if refused.details != _ROLE_EXISTS:
            raise
    role = session.call("RoleGet", etcdrpc.AuthRoleGetRequest(role=name), f"read role {name!r}")
    current = {(bytes(p.key), bytes(p.range_end)): int(p.permType) for p in role.perm}
    for key, end in current.keys() - wanted.keys():
        try:
            shown_key, shown_end = key.decode(), end.decode()
        except UnicodeDecodeError:
            raise MeshcastError(f"role {name!r} holds a permission on the non-UTF-8 range {key!r}..{end!r}, which "
                                "this client cannot revoke: revoke it with etcdctl") from None
        session.call("RoleRevokePermission",
                     etcdrpc.AuthRoleRevokePermissionRequest(role=name, key=shown_key, range_end=shown_end),
                     f"revoke a permission of role {name!r}", tolerate=_PERMISSION_NOT_GRANTED)
        log.info("etcd at %s: role %s may no longer access %s..%s", session.shown, name, shown_key, shown_end)
        changed = True
    for (key, end), perm in sorted(wanted.items()):
        if current.get((key, end)) != perm:  # granting a range the role already has replaces its type
            permission = etcdrpc.Permission(permType=perm, key=key, range_end=end)
            session.call("RoleGrantPermission", etcdrpc.AuthRoleGrantPermissionRequest(name=name, perm=permission),
                         f"grant a permission to role {name!r}")
            log.info("etcd at %s: role %s may %s %s..%s", session.shown, name,
                     "read and write" if perm == _READWRITE else "read", key.decode(), end.decode())
            changed = True
    return changed


def _remove_user(session: _Session, admin: tuple[str, str], name: str) -> bool:
    session.login(*admin)
    removed = False
    for method, request, what, missing in (
        ("UserDelete", etcdrpc.AuthUserDeleteRequest(name=name), f"delete user {name!r}", _USER_NOT_FOUND),
        ("RoleDelete", etcdrpc.AuthRoleDeleteRequest(role=name), f"delete role {name!r}", _ROLE_NOT_FOUND),
    ):
        if session.call(method, request, what, tolerate=missing) is not None:
            log.info("etcd at %s: %s: done", session.shown, what)
            removed = True
    return removed


# --- one session ----------------------------------------------------------------------------------------------

class _Refused(Exception):
    """etcd answered a call with an error (not a transient one): caught by steps that expect it, else reported."""

    def __init__(self, what: str, user: str | None, code: Any, details: str) -> None:
        super().__init__(details)
        self.what, self.user, self.code, self.details = what, user, code, details

    def error(self, shown: str) -> MeshcastError:
        if self.details == _AUTH_FAILED:
            return StoreUnauthorized(f"etcd at {shown} refused user {self.user!r}: wrong user name or password")
        if self.code == grpc.StatusCode.PERMISSION_DENIED:
            return StoreUnauthorized(f"etcd at {shown}: user {self.user!r} may not {self.what} (permission "
                                     "denied): administration needs a user with the root role")
        if self.details == _NO_USER_NAME:
            return StoreUnauthorized(f"etcd at {shown} requires authentication to {self.what}")
        if self.code == grpc.StatusCode.UNAUTHENTICATED:
            return StoreUnauthorized(f"etcd at {shown} refused the token of user {self.user!r} to {self.what}: "
                                     f"{self.details}")
        return StoreUnavailable(f"etcd at {shown} refused to {self.what}: {self.details}")


class _Session:
    """Blocking Auth API calls against one etcd cluster, used by one thread at a time. Owns a client per endpoint."""

    def __init__(self, endpoints: str | Sequence[str], timeout: float, retries: int,
                 tls: EtcdTLS | None = None) -> None:
        secure, self._endpoints = parse_endpoint_urls(endpoints)
        check_tls(secure, tls)
        self._creds = tls.credentials() if tls is not None else None
        self.shown = endpoint_urls(self._endpoints, secure)
        self._timeout, self._retries = timeout, retries
        self._clients: dict[int, Any] = {}
        self._index = 0
        self._credentials: tuple[str, str] | None = None
        self._metadata: tuple[tuple[str, str], ...] | None = None

    def close(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            client.close()

    def login(self, user: str, password: str) -> bool:
        """Authenticate as `user` for the next calls. False if etcd's authentication is off (no token needed)."""
        try:
            response = self.call("Authenticate", etcdrpc.AuthenticateRequest(name=user, password=password),
                                 f"authenticate user {user!r}", anonymous=True, user=user)
        except _Refused as refused:
            if refused.details == _AUTH_NOT_ENABLED:
                return False
            raise
        self._credentials = (user, password)
        self._metadata = (("token", response.token),)
        return True

    def authenticates(self, user: str, password: str) -> bool:
        """Whether `password` is the password of `user` (authentication must be on)."""
        request = etcdrpc.AuthenticateRequest(name=user, password=password)
        found = self.call("Authenticate", request, f"authenticate user {user!r}", anonymous=True, user=user,
                          tolerate=_AUTH_FAILED)
        return found is not None

    def call(self, method: str, request: Any, what: str, *, tolerate: str | None = None, anonymous: bool = False,
             user: str | None = None) -> Any:
        """`authstub.<method>(request)`: retried on another endpoint when one does not answer (StoreUnavailable when
        none does), once more with a fresh token when etcd dropped ours. Returns None if etcd answers with the
        error text `tolerate`; raises `_Refused` for any other error."""
        attempt = 0
        renewed = False
        while True:
            metadata = None if anonymous else self._metadata
            try:
                return getattr(self._client().authstub, method)(request, self._timeout, metadata=metadata)
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details() or ""
            if code in _TRANSIENT_CODES or details == _OLD_REVISION:
                if attempt >= self._retries:
                    raise StoreUnavailable(self._unavailable(what, code, details, attempt + 1)) from None
                moving = code in _TRANSIENT_CODES and attempt + 1 < len(self._endpoints)
                if code in _TRANSIENT_CODES:
                    self._index = (self._index + 1) % len(self._endpoints)
                if not moving:  # no pause before a first try of another endpoint
                    time.sleep(_RETRY_PAUSES[min(attempt, len(_RETRY_PAUSES) - 1)])
                attempt += 1
                continue
            if code == grpc.StatusCode.UNAUTHENTICATED and self._credentials is not None and not renewed:
                renewed = True
                self.login(*self._credentials)
                continue
            if tolerate is not None and details == tolerate:
                return None
            shown_user = user if anonymous else (self._credentials[0] if self._credentials else None)
            raise _Refused(what, shown_user, code, details)

    def _client(self) -> Any:
        client = self._clients.get(self._index)
        if client is None:
            host, port = self._endpoints[self._index]
            endpoint = pyetcd.Endpoint(host, port, secure=self._creds is not None, creds=self._creds, time_retry=0,
                                       opts=_GRPC_OPTIONS)
            client = self._clients[self._index] = pyetcd.MultiEndpointEtcd3Client([endpoint], timeout=self._timeout)
        return client

    def _unavailable(self, what: str, code: Any, details: str, attempts: int) -> str:
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            reason = f"no answer within {self._timeout:g}s"
        elif details.startswith("etcdserver:"):
            reason = details  # etcd answered, e.g. "etcdserver: leader changed"
        else:
            reason = "connection failed (is etcd running?)"
        tries = f" ({attempts} attempts)" if attempts > 1 else ""
        return f"etcd at {self.shown} is unavailable: {what} failed: {reason}{tries}"
