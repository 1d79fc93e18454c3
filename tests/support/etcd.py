"""Real etcd processes for tests: a single node or a 3-member cluster on loopback, in temporary data dirs.

Processes are started with test-only raft timers (`--heartbeat-interval 10 --election-timeout 100`) so a start, a
restart or a leader election takes well under a second. Readiness is a loop of short-timeout puts through the
member's own client URL (polling `/health` right after start can hang for seconds). Every process is tracked by
its `Popen` handle and only those are ever signalled; `stop()` is safe to call twice and after a crash.

The etcd binary is `$MESHCAST_ETCD` or `etcd` on PATH; if it is missing, `etcd_binary()` fails the test loudly
instead of skipping it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyetcd
import pytest
from pyetcd import etcdrpc

from tests.support.ports import free_port

READY_TIMEOUT = 10.0
_FAST_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.min_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 100),
]


def etcd_binary() -> str:
    path = os.environ.get("MESHCAST_ETCD") or shutil.which("etcd")
    if path is None or not os.access(path, os.X_OK):
        pytest.fail(f"etcd binary not found ({path or 'etcd not on PATH'}): install etcd-server "
                    "(apt-get install etcd-server) or point $MESHCAST_ETCD at one", pytrace=False)
    return path



def wait_writable(client_urls: list[str], timeout: float = READY_TIMEOUT,
                  procs: list[EtcdProcess] | None = None, root_password: str | None = None) -> float:
    """Put a key through every URL until each answers; returns the seconds it took. Fails if a process exits.

    With `root_password` (auth enabled), each attempt authenticates as root first.
    """
    start = time.monotonic()
    for url in client_urls:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        endpoint = pyetcd.Endpoint(host, int(port), secure=False, time_retry=0, opts=_FAST_RECONNECT)
        client = pyetcd.MultiEndpointEtcd3Client([endpoint], timeout=0.3, failover=True)
        try:
            while True:
                try:
                    if root_password is not None:
                        _login(client, "root", root_password)
                    client.put("/meshcast-test/ready", "1")
                    break
                except Exception as exc:
                    for proc in procs or []:
                        proc.check_alive()
                    if time.monotonic() - start > timeout:
                        raise RuntimeError(f"etcd at {url} not writable after {timeout:.0f}s: {exc!r}") from exc
                    time.sleep(0.01)
        finally:
            client.close()
    return time.monotonic() - start


def _login(client: pyetcd.MultiEndpointEtcd3Client, user: str, password: str) -> None:
    """Authenticate an existing client: its calls carry the token as metadata (no call credentials on plaintext)."""
    token = client.authstub.Authenticate(etcdrpc.AuthenticateRequest(name=user, password=password), 2.0).token
    client.metadata = (("token", token),)
    client.call_credentials = None


class EtcdProcess:
    """One etcd member. `data_dir` survives `kill()`/`stop()`; `restart()` brings the same member back."""

    def __init__(self, name: str, data_dir: Path, *, client_port: int | None = None,
                 peer_port: int | None = None, initial_cluster: str | None = None,
                 cluster_token: str = "meshcast-test", extra_args: Sequence[str] = ()) -> None:
        self.name = name
        self.data_dir = data_dir
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.initial_cluster = initial_cluster or f"{name}={self.peer_url}"
        self.cluster_token = cluster_token
        self.extra_args = list(extra_args)
        self.root_password: str | None = None  # set once auth is enabled: readiness checks then log in as root
        self.log_path = data_dir.with_name(data_dir.name + ".log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> None:
        """Start the process without waiting until it serves (a cluster needs a quorum before any member does)."""
        if self.running:
            raise RuntimeError(f"etcd {self.name} is already running")
        args = [
            etcd_binary(), "--name", self.name, "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster, "--initial-cluster-token", self.cluster_token,
            "--initial-cluster-state", "new",
            "--heartbeat-interval", "10", "--election-timeout", "100",
            "--logger", "zap", "--log-level", os.environ.get("MESHCAST_ETCD_LOG_LEVEL", "error"),
            *self.extra_args,
        ]
        with self.log_path.open("ab") as log:
            # etcd reads ETCD_* variables as flags (and exits if one shadows a flag): start it without them.
            env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL,
                                         env=env)

    def start(self) -> None:
        self.spawn()
        wait_writable([self.client_url], procs=[self], root_password=self.root_password)

    def wait_peer_serving(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.peer_url}/members", timeout=0.2):
                    return
            except OSError:
                self.check_alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd {self.name} does not serve peers after {timeout:.0f}s") from None
                time.sleep(0.005)

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"etcd {self.name} exited with {self.proc.returncode}: {self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, like a crashed host."""
        self._signal(signal.SIGKILL)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if not self.running:
            return
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)

    def restart(self) -> None:
        """Start again on the same ports and data dir (kill first if still running)."""
        self.kill()
        self.start()

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        self.proc.wait()


class EtcdCluster:
    """Three members on loopback. `client_urls` lists every member; kill and restart members by index."""

    def __init__(self, base_dir: Path, size: int = 3) -> None:
        names = [f"m{i}" for i in range(size)]
        peer_ports = [free_port() for _ in names]
        initial = ",".join(f"{n}=http://127.0.0.1:{p}" for n, p in zip(names, peer_ports, strict=True))
        token = f"meshcast-test-{os.getpid()}-{time.monotonic_ns()}"
        self.members = [
            EtcdProcess(n, base_dir / n, peer_port=p, initial_cluster=initial, cluster_token=token)
            for n, p in zip(names, peer_ports, strict=True)
        ]

    @property
    def client_urls(self) -> list[str]:
        return [m.client_url for m in self.members]

    def start(self) -> None:
        # A new member asks its peers whether it was bootstrapped before, waiting up to a second on a peer whose
        # listener is open but not yet serving. Starting members one after another, each once the previous one
        # serves peer traffic, avoids that wait (1-2 s otherwise, about one start in two).
        for member in self.members:
            member.spawn()
            member.wait_peer_serving()
        wait_writable(self.client_urls, procs=self.members)

    def kill(self, index: int) -> EtcdProcess:
        self.members[index].kill()
        return self.members[index]

    def restart(self, index: int) -> None:
        member = self.members[index]
        member.kill()
        member.spawn()
        wait_writable([member.client_url], procs=[member])

    def stop(self) -> None:
        for member in self.members:
            member.kill()


def make_base_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="meshcast-etcd-"))


# --- authentication -------------------------------------------------------------------------------------------

# bcrypt's cost 4 instead of etcd's 10: each password hash or check takes ~1 ms instead of ~90 ms.
AUTH_ARGS = ["--bcrypt-cost", "4"]


@dataclass(frozen=True)
class EtcdAuth:
    """A single etcd node with authentication on: user `root` (role `root`) has `root_password`."""

    node: EtcdProcess
    root_password: str

    @property
    def client_url(self) -> str:
        return self.node.client_url


def start_with_auth(data_dir: Path, *, extra_args: Sequence[str] = ()) -> EtcdAuth:
    """Start a node and turn authentication on with raw Auth API calls (independent of the code under test).

    The node is returned through `EtcdAuth` once started: the caller kills it (`node.kill()`), even on failure of
    this function, which kills it itself before raising.
    """
    node = EtcdProcess("n0", data_dir, extra_args=[*AUTH_ARGS, *extra_args])
    password = secrets.token_urlsafe(12)
    try:
        node.start()
        endpoint = pyetcd.Endpoint("127.0.0.1", node.client_port, secure=False, time_retry=0)
        client = pyetcd.MultiEndpointEtcd3Client([endpoint], timeout=5)
        try:
            auth = client.authstub
            auth.UserAdd(etcdrpc.AuthUserAddRequest(name="root", password=password), 5)
            auth.UserGrantRole(etcdrpc.AuthUserGrantRoleRequest(user="root", role="root"), 5)
            auth.AuthEnable(etcdrpc.AuthEnableRequest(), 5)
        finally:
            client.close()
        node.root_password = password
    except BaseException:
        node.kill()
        raise
    return EtcdAuth(node, password)


def auth_client(url: str, user: str, password: str, *, timeout: float = 5.0) -> pyetcd.MultiEndpointEtcd3Client:
    """A blocking pyetcd client logged in as `user` (the caller closes it)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    endpoint = pyetcd.Endpoint(host, int(port), secure=False, time_retry=0)
    client = pyetcd.MultiEndpointEtcd3Client([endpoint], timeout=timeout)
    try:
        _login(client, user, password)
    except BaseException:
        client.close()
        raise
    return client
