"""The local example's rendered files start a working two-zone mesh on one machine: the same files an operator
would deploy (tests/support/tftemplate.py renders them as terraform/examples/local does, with TLS).

Every process is started exactly as its rendered systemd unit starts it (`ExecStart`, with the variables of its
`EnvironmentFile`): the global etcd's three members, the bootstrap (twice: it is idempotent), the global control
plane and `meshcast-apply` (the regions' MeshGateways), then per region the zone's etcd and its bootstrap, the zone
control plane, the ingress, the edge gateway and a sidecar per service instance. Tokens are delivered out of band as
the docs tell operators: `meshcast --cp <zone CP> --ca-file <its CA> generate ...` against each running zone control
plane, written where the region module's `tokens` output says. Behind each sidecar runs an app on the port its
Dataplane names, answering its name and the `x-meshcast-source` header it got.

Not started: `meshcast-anycast.service` (root, to put 127.0.0.100/32 on lo: already there, 127.0.0.0/8 is on lo)
and no BGP speaker (the local example has none). The control planes reach the TLS-only global etcd directly, each
with the client certificate (no common name) its --config names, and log in as their own etcd user.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import grpc
import pyetcd
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from pyetcd import etcdrpc

from tests.integration.test_federation import wait_for
from tests.integration.test_sidecar_http import EchoHandler
from tests.support import tftemplate
from tests.support.etcd import etcd_binary
from tests.support.ports import free_port
from tests.support.process import stop_process
from tests.unit.test_terraform import systemd_environment

pytestmark = [pytest.mark.etcd, pytest.mark.slow]

MESHCAST = f"{sys.prefix}/bin/meshcast"


class Node:
    """The files of one node, and the processes started from its units (all in `procs`, stopped by PID)."""

    def __init__(self, rendered: tftemplate.Rendered, name: str, logs: Path,
                 procs: list[subprocess.Popen[bytes]]) -> None:
        self.rendered, self.name, self.logs, self.procs = rendered, name, logs, procs

    def file(self, suffix: str) -> str:
        (path,) = [p for p in {**self.rendered.files[self.name], **self.rendered.secret_files[self.name]}
                   if p.endswith(suffix)]
        return path

    def config(self, suffix: str) -> dict[str, Any]:
        data: dict[str, Any] = yaml.safe_load(Path(self.file(suffix)).read_text())
        return data

    def unit(self, name: str) -> tuple[list[str], dict[str, str]]:
        """The command line and environment of unit `name` (an instance of a template unit too), as systemd would
        run it."""
        template, instance = name, ""
        if "@" in name:
            prefix, _, rest = name.partition("@")
            template, instance = f"{prefix}@.service", rest.removesuffix(".service")
        text = self.rendered.files[self.name][self.file(f"/etc/systemd/system/{template}")].replace("%i", instance)
        settings = [line.partition("=") for line in text.splitlines() if "=" in line and not line.startswith("#")]
        (command,) = [v for k, _, v in settings if k == "ExecStart"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD", "MESHCAST_", "SSL_CERT"))}
        for key, _, value in settings:
            if key == "EnvironmentFile":
                env.update(systemd_environment(Path(value).read_text()))
        return shlex.split(command), env

    def start(self, unit: str) -> subprocess.Popen[bytes]:
        command, env = self.unit(unit)
        assert command[0] in (etcd_binary(), "/usr/bin/etcd", MESHCAST, f"{sys.prefix}/bin/python"), command
        if command[0] == "/usr/bin/etcd":
            command[0] = etcd_binary()
        with (self.logs / f"{self.name}-{unit}.log").open("ab") as log:
            # A session of its own: its process group is its PID, so the finalizer also reaches what it spawned (a
            # gateway's worker processes), as systemd's cgroup would.
            proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def run(self, unit: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A oneshot unit, to completion."""
        command, env = self.unit(unit)
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)


class App:
    """The application behind a sidecar: answers its name, path and `x-meshcast-source` (EchoHandler)."""

    def __init__(self, name: str, port: int) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", port), EchoHandler)
        self.server.name = name  # type: ignore[attr-defined]
        Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def http_ok(url: str, cafile: str | None = None) -> bool:
    context = ssl.create_default_context(cafile=cafile) if cafile else None
    try:
        with urllib.request.urlopen(url, timeout=1, context=context) as answer:
            return bool(answer.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as answer:
        assert answer.status == 200
        data: dict[str, Any] = json.loads(answer.read())
        return data


class Exited(RuntimeError):
    """A process of the mesh exited (wait_for retries AssertionErrors, not this)."""


def alive(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is not None:
            raise Exited(f"{shlex.join(str(a) for a in proc.args)} exited with {proc.returncode}")  # type: ignore[union-attr]


def etcd_client(config: dict[str, Any], urls_key: str, prefix: str) -> pyetcd.MultiEndpointEtcd3Client:
    """A client of the etcd a rendered --config YAML names, with the TLS files it names (`<prefix>ca-file`...)."""
    ca, key, cert = (Path(config[f"{prefix}{k}-file"]).read_bytes() for k in ("ca", "key", "cert"))
    creds = grpc.ssl_channel_credentials(ca, key, cert)
    endpoints = [pyetcd.Endpoint(*url.removeprefix("https://").rsplit(":", 1), secure=True, creds=creds,
                                 time_retry=0) for url in config[urls_key].split(",")]
    return pyetcd.MultiEndpointEtcd3Client(endpoints, timeout=5, failover=True)


def login(etcd: pyetcd.MultiEndpointEtcd3Client, user: str, password: str) -> None:
    token = etcd.authstub.Authenticate(etcdrpc.AuthenticateRequest(name=user, password=password), 5).token
    etcd.metadata = (("token", token),)


def metrics(admin_addr: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://{admin_addr}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def ingress_routed(admin_addr: str, service: str) -> float:
    labels = (("destination_service", service), ("mesh", "default"), ("outcome", "spliced"))
    return metrics(admin_addr).get(("meshcast_ingress_connections_total", labels), 0.0)


class Mesh:
    def __init__(self, rendered: dict[str, tftemplate.Rendered], logs: Path) -> None:
        self.rendered, self.logs = rendered, logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.apps: list[App] = []
        self.timings: dict[str, float] = {}
        self.started = time.monotonic()

    def node(self, module: str, name: str) -> Node:
        return Node(self.rendered[module], name, self.logs, self.procs)

    def stop(self) -> None:
        """SIGTERM (drain) to every Meshcast process at once, then to the etcd members; SIGKILL to whatever is
        left after 15 s, and to their process groups (by PID)."""
        meshcast = [p for p in self.procs if p.args[0] != etcd_binary()]  # type: ignore[index]
        for group in (meshcast, [p for p in self.procs if p not in meshcast]):
            for proc in group:
                if proc.poll() is None:
                    proc.terminate()
            deadline = time.monotonic() + 15
            for proc in group:
                stop_process(proc, grace=max(0.1, deadline - time.monotonic()))
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        for app in self.apps:
            app.close()


def deliver_tokens(region: tftemplate.Rendered) -> None:
    """What an operator does once the zone control plane runs: generate each token there, with the CLI over TLS,
    and write it where the unit expects it (region module output `tokens`)."""
    cp_url = region.extra["cp_url"]
    cp_node = next(n for n, files in region.files.items() if any(p.endswith("/zone-cp.yaml") for p in files))
    ca = next(p for p in region.files[cp_node] if p.endswith("/etc/meshcast/cp/ca.crt"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHCAST_")}
    running = []
    for tokens in region.extra["tokens"].values():
        for token in tokens:
            what = ["ingress-token"] if token["kind"] == "ingress" else [
                "dataplane-token", *(a for s in token["services"] for a in ("--service", s)), "--valid-for", "1h"]
            running.append((token["path"], subprocess.Popen(
                [MESHCAST, "--cp", cp_url, "--ca-file", ca, "generate", *what], env=env, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE)))
    for path, proc in running:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (path, err)
        Path(path).parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        Path(path).write_bytes(out)
        Path(path).chmod(0o640)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("terraform-local")
    tls = tftemplate.make_local_tls(tmp / "tls")
    ports = {key: free_port() for key in tftemplate.LOCAL_PORTS}
    rendered = tftemplate.render_local_example(tmp / "nodes", ports, tls_dir=tls, meshcast_venv=sys.prefix)
    for r in rendered.values():
        tftemplate.write_files(r.all_files(), [p for f in r.secret_files.values() for p in f])
    (tmp / "logs").mkdir()
    made = Mesh(rendered, tmp / "logs")
    start = made.started = time.monotonic()
    try:
        g = rendered["global"]
        assert g.units["global-cp"] == ["meshcast-etcd-bootstrap.service", "meshcast-global-cp.service",
                                        "meshcast-apply.service"]
        members = [made.node("global", f"etcd-{n}") for n in (1, 2, 3)]
        for member in members:
            assert g.units[member.name] == ["meshcast-etcd.service"]
            member.start("meshcast-etcd.service")
        zone_cps = {r: made.node(r, f"{r}-cp") for r in ("eu", "us")}
        for r, cp in zone_cps.items():
            assert rendered[r].units[cp.name] == ["meshcast-etcd.service", "meshcast-etcd-bootstrap.service",
                                                  "meshcast-zone-cp.service"]
            cp.start("meshcast-etcd.service")
        # The one-shot bootstraps (each retries until its etcd has a quorum), side by side.
        global_cp = made.node("global", "global-cp")
        boots = {n.name: n.unit("meshcast-etcd-bootstrap.service") for n in (global_cp, *zone_cps.values())}
        running = {name: subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                   for name, (cmd, env) in boots.items()}
        for name, proc in running.items():
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0, (name, out)
        made.timings["etcd clusters up and bootstrapped"] = time.monotonic() - start

        global_proc = global_cp.start("meshcast-global-cp.service")
        for cp in zone_cps.values():
            cp.start("meshcast-zone-cp.service")
        wait_for(lambda: alive(made.procs) or http_ok(f"{g.extra['global_cp_url']}/readyz"), "global CP ready",
                 timeout=30)
        applied = global_cp.run("meshcast-apply.service")  # the MeshGateways of both regions
        assert applied.returncode == 0, applied.stderr
        for r, cp in zone_cps.items():
            ca = cp.file("/etc/meshcast/cp/ca.crt")
            wait_for(lambda r=r, ca=ca: alive(made.procs) or http_ok(f"{rendered[r].extra['cp_url']}/readyz", ca),
                     f"zone CP {r} ready", timeout=40)
        assert global_proc.poll() is None
        made.timings["control planes ready"] = time.monotonic() - start

        for r in ("eu", "us"):
            deliver_tokens(rendered[r])
        for r in ("eu", "us"):
            region = rendered[r]
            for node, units in region.units.items():
                n = made.node(r, node)
                for unit in units:
                    if unit in ("meshcast-etcd.service", "meshcast-etcd-bootstrap.service",
                                "meshcast-zone-cp.service"):
                        continue  # started above
                    if unit == "meshcast-anycast.service":
                        # `ip address replace 127.0.0.100/32 dev lo` (root): 127.0.0.0/8 is on lo already.
                        assert n.unit(unit)[0] == ["/usr/sbin/ip", "address", "replace", "127.0.0.100/32", "dev",
                                                   "lo"]
                        continue
                    if unit.startswith("meshcast-sidecar@"):
                        instance = unit.removeprefix("meshcast-sidecar@").removesuffix(".service")
                        dataplane = n.config(f"/dataplanes/{instance}.dataplane.yaml")
                        made.apps.append(App(instance, dataplane["spec"]["inbound"][0]["appPort"]))
                    n.start(unit)
        admins = [yaml.safe_load(text)["admin-addr"] for r in ("eu", "us") for files in rendered[r].files.values()
                  for path, text in files.items() if path.endswith(("/ingress.yaml", "/gateway.yaml"))
                  or ("/dataplanes/" in path and not path.endswith(".dataplane.yaml"))]
        assert len(admins) == 2 + 2 + 4
        for admin in admins:
            wait_for(lambda admin=admin: alive(made.procs) or http_ok(f"http://{admin}/ready"), f"{admin} ready",
                     timeout=30)
        made.timings["every process ready"] = time.monotonic() - start
        yield made
    finally:
        made.stop()


def outbound(mesh: Mesh, instance: str, service: str) -> int:
    dataplane = mesh.node("eu", "eu-apps").config(f"/dataplanes/{instance}.dataplane.yaml")
    (port,) = [o["port"] for o in dataplane["spec"]["outbound"] if o["service"] == service]
    return int(port)


def test_the_bootstrap_is_idempotent_and_each_zone_has_exactly_its_rights(mesh: Mesh) -> None:
    cp = mesh.node("global", "global-cp")
    again = cp.run("meshcast-etcd-bootstrap.service")
    assert again.returncode == 0, again.stdout + again.stderr
    config = cp.config("/etc/meshcast/global-cp.yaml")
    assert all(u.startswith("https://127.0.0.") for u in config["etcd-endpoints"].split(","))  # the members
    passwords = tftemplate.LocalPasswords()
    etcd = etcd_client(config, "etcd-endpoints", "etcd-")
    try:
        # The client certificate has no common name: it admits the connection, it is no etcd user.
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


def test_both_zones_publish_themselves_over_tls_as_their_own_user(mesh: Mesh) -> None:
    zone_config = mesh.node("eu", "eu-cp").config("/etc/meshcast/zone-cp.yaml")
    root = etcd_client(zone_config, "global-etcd", "global-etcd-")  # the zone's own certificate
    try:
        login(root, "root", tftemplate.LocalPasswords().etcd_root)
        for zone in ("eu", "us"):
            wait_for(lambda zone=zone: root.get(f"/meshcast/v1/zones/{zone}/info")[0] is not None,
                     f"zone {zone} published", timeout=20)
    finally:
        root.close()


def test_a_call_to_a_service_only_in_us_crosses_through_us_ingress_with_the_callers_identity(mesh: Mesh) -> None:
    port = outbound(mesh, "eu-web-1", "api")
    us_ingress = mesh.node("us", "us-ingress").config("/etc/meshcast/ingress.yaml")["admin-addr"]
    eu_ingress = mesh.node("eu", "eu-ingress").config("/etc/meshcast/ingress.yaml")["admin-addr"]
    answer = wait_for(lambda: get(f"http://127.0.0.1:{port}/orders/7"), "api reachable from eu", timeout=30)
    mesh.timings["first cross-zone answer"] = time.monotonic() - mesh.started
    assert answer["server"] == "us-api-1" and answer["path"] == "/orders/7"
    assert answer["source"] == ["spiffe://default/web"]  # mTLS end to end: the ingress does not terminate it
    for _ in range(5):
        assert get(f"http://127.0.0.1:{port}/")["server"] == "us-api-1"
    assert ingress_routed(us_ingress, "api") >= 1
    assert ingress_routed(eu_ingress, "api") == 0


def test_a_call_to_a_service_both_zones_have_stays_local(mesh: Mesh) -> None:
    port = outbound(mesh, "eu-web-1", "backend")
    wait_for(lambda: get(f"http://127.0.0.1:{port}/")["server"] == "eu-backend-1", "backend served", timeout=30)
    for _ in range(20):
        answer = get(f"http://127.0.0.1:{port}/")
        assert answer["server"] == "eu-backend-1" and answer["source"] == ["spiffe://default/web"]
    us_ingress = mesh.node("us", "us-ingress").config("/etc/meshcast/ingress.yaml")["admin-addr"]
    assert ingress_routed(us_ingress, "backend") == 0


def test_each_gateway_listener_reaches_its_backend(mesh: Mesh) -> None:
    """Both MeshGateways route to web, which only eu runs: eu's locally, us's through eu's ingress."""
    for region in ("eu", "us"):
        (listener,) = yaml.safe_load(mesh.rendered[region].extra["mesh_gateway"])["spec"]["listeners"]
        url = f"http://{listener['address']}:{listener['port']}/shop"
        answer = wait_for(lambda url=url: get(url), f"{region} gateway", timeout=30)
        assert answer["server"] == "eu-web-1" and answer["path"] == "/shop", region
        gateway = yaml.safe_load(mesh.rendered[region].extra["mesh_gateway"])["name"]
        assert answer["source"] == [f"spiffe://default/{gateway}"], (region, answer)
    eu_ingress = mesh.node("eu", "eu-ingress").config("/etc/meshcast/ingress.yaml")["admin-addr"]
    assert ingress_routed(eu_ingress, "web") >= 1


def test_every_stage_was_reached_and_timed(mesh: Mesh, record_property: Any) -> None:
    """Last: reports how long each stage took from the first etcd member's start (-s shows them; figures, not
    assertions: this machine is shared)."""
    for what, seconds in mesh.timings.items():
        record_property(what, round(seconds, 2))
        print(f"\n{what}: {seconds:.1f}s", end="")
    assert {"etcd clusters up and bootstrapped", "control planes ready", "every process ready"} <= mesh.timings.keys()
