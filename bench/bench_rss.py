"""Idle memory of a sidecar: VmRSS of a real `meshcast dataplane run` once it is registered, has its certificate
and its config, and has bound its listeners.

A real zone CP (memory store, the default mesh with mTLS) and, per run, a fresh sidecar (new state directory, so it
registers and gets a certificate from the CP) with an HTTP inbound and an outbound. Once `/ready` answers 200 the
sidecar idles for --idle seconds (heartbeats only), then its VmRSS is read from /proc. The last run also starts
with `--workers 2` to measure a worker process (a follower of the leader's saved state).

Which modules the sidecar holds: each sidecar runs with a `sitecustomize` on its PYTHONPATH that writes the names
in `sys.modules` to a file when the process exits (after SIGTERM and its drain); the heavy ones are listed.

    .venv/bin/python bench/bench_rss.py [--runs 3] [--idle 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.ports import free_port
from tests.support.sidecar import SidecarProcess
from tests.support.zone import ZoneCPProcess

# Top-level packages whose import the measurements showed to cost megabytes (docs/benchmarks.md).
HEAVY = ("cryptography", "httpx", "httpcore", "anyio", "certifi", "pydantic", "pydantic_core", "yaml", "fastapi",
         "hypercorn", "meshcast.resources", "meshcast.pki.ca", "meshcast.pki.workload", "meshcast.pki.tokens",
         "click", "prometheus_client", "h11")

SITECUSTOMIZE = """\
import atexit, os, sys

def _dump(path=os.environ["MESHCAST_BENCH_MODULES"] + "." + str(os.getpid())):
    with open(path, "w") as f:
        f.write("\\n".join(sorted(sys.modules)))

atexit.register(_dump)
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def heavy(modules: set[str]) -> list[str]:
    return [name for name in HEAVY if any(m == name or m.startswith(name + ".") for m in modules)]


def modules_of(prefix: Path, pid: int) -> set[str]:
    path = Path(f"{prefix}.{pid}")
    return set(path.read_text().split()) if path.exists() else set()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle", type=float, default=3.0, help="seconds to idle after /ready before measuring")
    args = parser.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"command: {' '.join(sys.argv)}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        hook = tmp / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
        prefix = tmp / "modules"
        cp = ZoneCPProcess(tmp / "cp")
        cp.start()
        token = cp.token("web")
        leaders: list[float] = []
        startups: list[float] = []
        worker_rss: float | None = None
        seen: dict[str, set[str]] = {}
        try:
            # Only the sidecars get the hook: set it after the zone CP (and the token's CLI call) started.
            os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
            os.environ["MESHCAST_BENCH_MODULES"] = str(prefix)
            for run in range(args.runs + 1):
                workers = run == args.runs  # the extra run measures a worker process
                name = f"web-{run + 1}"
                doc = {"type": "Dataplane", "mesh": "default", "name": name, "spec": {
                    "address": "127.0.0.1",
                    "inbound": [{"port": free_port(), "appPort": free_port(), "service": "web", "protocol": "http"}],
                    "outbound": [{"port": free_port(), "service": "backend"}]}}
                extra = ("--workers", "2") if workers else ()
                sidecar = SidecarProcess(tmp / name, cp.url, token, doc, *extra)
                started = time.monotonic()
                sidecar.start()
                startups.append(time.monotonic() - started)
                try:
                    assert sidecar.proc is not None
                    pid = sidecar.proc.pid
                    time.sleep(args.idle)
                    if workers:
                        follower = children(pid)[0]
                        worker_rss = rss_mb(follower)
                    else:
                        leaders.append(rss_mb(pid))
                finally:
                    sidecar.stop()
                seen["worker" if workers else "sidecar"] = modules_of(prefix, follower if workers else pid)
        finally:
            cp.stop()
        print(f"idle sidecar VmRSS: {statistics.median(leaders):.1f} MB (median; runs: "
              f"{', '.join(f'{v:.1f}' for v in leaders)} MB)")
        print(f"start to ready (new state: registers, gets its certificate): {statistics.median(startups):.2f} s "
              "(median)")
        if worker_rss is not None:
            print(f"idle worker process (--workers 2) VmRSS: {worker_rss:.1f} MB")
        for role, modules in seen.items():
            print(f"heavy modules in the {role}: {', '.join(heavy(modules)) or 'none'} ({len(modules)} modules)")


if __name__ == "__main__":
    main()
