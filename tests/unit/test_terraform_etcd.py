"""The rendered deployment runs: etcd members, the loopback gRPC proxies, the bootstrap and both kinds of control
plane, each started exactly as its rendered systemd unit starts it (ExecStart, EnvironmentFile), from the files of
the local example with TLS (tests/support/tftemplate.py).

This is what the design rests on: Meshcast's etcd client has no TLS, so every Meshcast process reaches the TLS-only
global etcd through etcd's own gRPC proxy on loopback, logging in with its own user; the bootstrap turns
authentication on and gives each zone exactly Meshcast's zone rights.
"""

from __future__ import annotations

import os
import shlex
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyetcd
import pytest
from pyetcd import etcdrpc

from tests.support import tftemplate
from tests.support.etcd import etcd_binary, wait_writable
from tests.support.ports import free_port
from tests.support.process import stop_process
from tests.unit.test_terraform import systemd_environment

pytestmark = pytest.mark.etcd


class Node:
    """The files of one node, and the processes started from its units."""

    def __init__(self, rendered: tftemplate.Rendered, name: str, logs: Path) -> None:
        self.rendered, self.name, self.logs = rendered, name, logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def file(self, suffix: str) -> str:
        (path,) = [p for p in {**self.rendered.files[self.name], **self.rendered.secret_files[self.name]}
                   if p.endswith(suffix)]
        return path

    def unit(self, name: str) -> tuple[list[str], dict[str, str]]:
        """The command line and environment of unit `name`, as systemd would run it."""
        text = self.rendered.files[self.name][self.file(f"/etc/systemd/system/{name}")]
        settings = [line.partition("=") for line in text.splitlines() if "=" in line and not line.startswith("#")]
        (command,) = [v for k, _, v in settings if k == "ExecStart"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        for key, _, value in settings:
            if key == "EnvironmentFile":
                env.update(systemd_environment(Path(value).read_text()))
        return shlex.split(command), env

    def start(self, unit: str) -> subprocess.Popen[bytes]:
        command, env = self.unit(unit)
        assert command[0] in (etcd_binary(), "/usr/bin/etcd", f"{sys.prefix}/bin/meshcast"), command
        with (self.logs / f"{self.name}-{unit}.log").open("ab") as log:
            proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.procs.append(proc)
        return proc

    def run(self, unit: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command, env = self.unit(unit)
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc, grace=10)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[dict[str, tftemplate.Rendered]]:
    tls = tftemplate.make_local_tls(tmp_path / "tls")
    ports = {key: free_port() for key in tftemplate.LOCAL_PORTS}
    global_vars, regions = tftemplate.local_example_vars(tmp_path / "nodes", ports, tls_dir=tls,
                                                         meshcast_venv=sys.prefix)
    global_vars["etcd_timers"] = {"heartbeat_ms": 10, "election_ms": 100}  # loopback: fast elections
    rendered = {"global": tftemplate.render_global(global_vars)}
    endpoints = rendered["global"].extra["etcd_endpoints"]
    rendered["eu"] = tftemplate.render_region({**regions["eu"], "global_etcd_endpoints": endpoints})
    for r in rendered.values():
        tftemplate.write_files(r.all_files(), [p for f in r.secret_files.values() for p in f])
    yield rendered


def wait_ready(url: str, procs: list[subprocess.Popen[bytes]], timeout: float = 30, cafile: str | None = None) -> None:
    context = ssl.create_default_context(cafile=cafile) if cafile else None
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        for proc in procs:
            assert proc.poll() is None, f"{proc.args!r} exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{url} not ready after {timeout}s"
        time.sleep(0.1)


def client(url: str) -> pyetcd.MultiEndpointEtcd3Client:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return pyetcd.MultiEndpointEtcd3Client([pyetcd.Endpoint(host, int(port), secure=False)], timeout=5)


def login(etcd: pyetcd.MultiEndpointEtcd3Client, user: str, password: str) -> None:
    token = etcd.authstub.Authenticate(etcdrpc.AuthenticateRequest(name=user, password=password), 5).token
    etcd.metadata = (("token", token),)


def test_the_rendered_global_etcd_bootstrap_and_control_planes_run(deployment: dict[str, tftemplate.Rendered],
                                                                   tmp_path: Path) -> None:
    g, eu = deployment["global"], deployment["eu"]
    logs = tmp_path / "logs"
    logs.mkdir()
    nodes = [Node(g, f"etcd-{n}", logs) for n in (1, 2, 3)]
    cp, zone = Node(g, "global-cp", logs), Node(eu, "eu-cp", logs)
    try:
        for member in nodes:
            member.start("meshcast-etcd.service")
        proxy = cp.start("meshcast-etcd-proxy.service")
        bootstrap = cp.unit("meshcast-etcd-bootstrap.service")[0]
        proxy_url = bootstrap[bootstrap.index("--endpoints") + 1]
        assert proxy_url.startswith("http://127.0.0.1:")  # Meshcast's side of the proxy is plaintext loopback
        wait_writable([proxy_url], procs=[])
        assert proxy.poll() is None

        for attempt in range(2):  # the bootstrap is idempotent
            done = cp.run("meshcast-etcd-bootstrap.service")
            assert done.returncode == 0, (attempt, done.stdout, done.stderr)

        passwords = tftemplate.LocalPasswords()
        etcd = client(proxy_url)
        try:
            with pytest.raises(Exception, match=r"user name is empty|permission denied"):
                etcd.put("/meshcast/v1/zones/eu/x", "anonymous")
            login(etcd, "meshcast-zone-eu", passwords.zones["eu"])
            etcd.put("/meshcast/v1/zones/eu/x", "mine")
            with pytest.raises(Exception, match="permission denied"):
                etcd.put("/meshcast/v1/zones/us/x", "not mine")
            with pytest.raises(Exception, match="permission denied"):
                etcd.put("/meshcast/v1/global/resources/Mesh/x", "not mine")
        finally:
            etcd.close()

        global_cp = cp.start("meshcast-global-cp.service")
        wait_ready(f"{g.extra['global_cp_url']}/readyz", [global_cp])

        zone.start("meshcast-etcd.service")
        assert zone.run("meshcast-etcd-bootstrap.service").returncode == 0
        zone.start("meshcast-etcd-proxy.service")
        zone_cp = zone.start("meshcast-zone-cp.service")
        # Its API over TLS, verified with the CA every client of the zone gets.
        wait_ready(f"{eu.extra['cp_url']}/readyz", [zone_cp], timeout=40,
                   cafile=zone.file("/etc/meshcast/cp/ca.crt"))

        # The zone published itself in the global etcd, as its own user, through its own proxy and TLS.
        root = client(proxy_url)
        try:
            login(root, "root", passwords.etcd_root)
            deadline = time.monotonic() + 20
            while root.get("/meshcast/v1/zones/eu/info")[0] is None:
                assert time.monotonic() < deadline, "zone eu never published its info"
                time.sleep(0.1)
        finally:
            root.close()
    finally:
        for node in (zone, cp, *nodes):
            node.stop()

