"""Network namespaces and veth pairs that a test creates and always removes.

Each `Fabric` names its namespaces `mcbgp-<pid>-<random>-<role>`, so a run that crashed earlier cannot collide with
this one. Veth pairs are created directly inside their two namespaces (`ip link add ... netns A type veth peer ...
netns B`): they never exist in the root namespace, and neither do their addresses or any route. Processes started
in a namespace are `ip netns exec` children whose PID is the program's own (ip execs it); `close()` kills each by
its PID, then deletes the namespaces, which deletes their veths. Everything here needs root.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.support.process import stop_process


def _run(args: Sequence[str], *, check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


@dataclass
class Netns:
    name: str
    fabric: Fabric = field(repr=False)

    def ip(self, *args: str, check: bool = True) -> str:
        """`ip -n NAME ARGS...`'s output."""
        return _run(["ip", "-n", self.name, *args], check=check).stdout

    def run(self, *args: str, check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "netns", "exec", self.name, *args], check=check, timeout=timeout)

    def popen(self, args: Sequence[str], *, stdout: IO[Any] | int | None = None,
              stderr: IO[Any] | int | None = None, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start `args` inside the namespace; the fabric kills it (by PID) on close if it is still running."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *args], stdin=subprocess.DEVNULL,
                                stdout=stdout, stderr=stderr, env=env)
        self.fabric.processes.append(proc)
        return proc


class Fabric:
    """Owns a set of namespaces, the veths between them and the processes started in them."""

    def __init__(self) -> None:
        self.tag = f"mcbgp-{os.getpid()}-{secrets.token_hex(3)}"
        self.namespaces: list[Netns] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    def add(self, role: str) -> Netns:
        ns = Netns(f"{self.tag}-{role}", self)
        _run(["ip", "netns", "add", ns.name])
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    def link(self, a: Netns, a_if: str, a_addr: str, b: Netns, b_if: str, b_addr: str) -> None:
        """A veth pair `a_if` (in a, with a_addr as CIDR) <-> `b_if` (in b, with b_addr), both up."""
        _run(["ip", "link", "add", "name", a_if, "netns", a.name, "type", "veth", "peer", "name", b_if,
              "netns", b.name])
        for ns, ifname, addr in ((a, a_if, a_addr), (b, b_if, b_addr)):
            ns.ip("addr", "add", addr, "dev", ifname)
            ns.ip("link", "set", ifname, "up")

    def close(self) -> None:
        """Kill every process started here (by PID), then delete the namespaces. Safe to call twice."""
        for proc in reversed(self.processes):
            stop_process(proc, kill=True, grace=5)
        self.processes.clear()
        errors = []
        for ns in reversed(self.namespaces):
            result = _run(["ip", "netns", "del", ns.name], check=False)
            if result.returncode != 0 and Path(f"/run/netns/{ns.name}").exists():
                errors.append(f"{ns.name}: {result.stderr.strip()}")
        self.namespaces.clear()
        if errors:
            raise RuntimeError("could not delete namespaces: " + "; ".join(errors))


def namespaces_named(prefix: str) -> list[str]:
    out = _run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]
