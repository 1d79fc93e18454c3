"""Zone CP config-push latency: from a store change to every connected sidecar's acknowledged snapshot.

A real `meshcast zone-cp run` process (memory store, or etcd with --store etcd --etcd-endpoints) serves N simulated
sidecars (default 100) that speak the real config stream. Each round changes one Dataplane that every sidecar
calls (a tag on backend-1) through the API and records, per sidecar, the time from just before the API call until
that sidecar has received and acknowledged the snapshot that carries the change. Prints p50/p90/p99/max over all
samples, per run, and the median of the runs.

    .venv/bin/python bench/bench_push.py [--sidecars 100] [--rounds 30] [--runs 3] [--etcd]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meshcast.testing.simdp import SimDataplane
from meshcast.wire.configstream import SnapshotReceived
from tests.support.etcd import EtcdProcess
from tests.support.zone import ZoneCPProcess


def _dp(name: str, service: str, port: int, outbound: list[str], tags: dict[str, str] | None = None) -> dict[str, Any]:
    return {"type": "Dataplane", "mesh": "default", "name": name,
            "spec": {"address": "127.0.0.1",
                     "inbound": [{"port": port, "service": service, "protocol": "http", "tags": tags or {}}],
                     "outbound": [{"port": 30000 + i, "service": s} for i, s in enumerate(outbound)]}}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far: robust against the noise of a shared machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_run(cp: ZoneCPProcess, sidecars: int, rounds: int) -> tuple[list[float], float]:
    arrivals: dict[int, list[float]] = {}
    complete: dict[int, trio.Event] = {}

    def seen(event: SnapshotReceived, now: float) -> None:
        for outbound in event.snapshot["outbound"]:
            for endpoint in outbound["endpoints"]:
                rev = endpoint["tags"].get("rev")
                if rev is not None:
                    times = arrivals.setdefault(int(rev), [])
                    times.append(now)
                    if len(times) == sidecars:
                        complete[int(rev)].set()

    web_token = cp.token("web")
    backend_token = cp.token("backend")
    backend = SimDataplane(cp.url, backend_token, _dp("backend-1", "backend", 10001, []))
    webs = [SimDataplane(cp.url, web_token, _dp(f"web-{i}", "web", 11000 + i, ["backend"]), on_snapshot=seen)
            for i in range(sidecars)]
    samples: list[float] = []
    put_times: list[float] = []
    firsts: list[float] = []
    async with trio.open_nursery() as nursery, httpx.AsyncClient(base_url=cp.url, timeout=30) as api:
        await nursery.start(backend.run)
        for web in webs:
            await nursery.start(web.run)
        doc = _dp("backend-1", "backend", 10001, [])
        gc.freeze()  # the simulated sidecars live for the whole run, as the control plane's own state does
        assert cp.proc is not None
        cpu_before = cpu_seconds(cp.proc.pid)
        for rev in range(rounds):
            doc["spec"]["inbound"][0]["tags"] = {"rev": str(rev)}
            arrivals.pop(rev, None)
            complete[rev] = trio.Event()
            start = time.monotonic()
            response = await api.put("/v1/meshes/default/dataplanes/backend-1", json=doc)
            response.raise_for_status()
            put_times.append(time.monotonic() - start)
            with trio.fail_after(30):
                await complete[rev].wait()
            samples += [t - start for t in arrivals[rev]]
            firsts.append(min(arrivals[rev]) - start)
            await trio.sleep(0.05)
        cpu = cpu_seconds(cp.proc.pid) - cpu_before
        nursery.cancel_scope.cancel()
    print(f"  API PUT round trip: median {statistics.median(put_times) * 1000:.1f} ms; "
          f"first sidecar's snapshot: median {statistics.median(firsts) * 1000:.1f} ms")
    return samples, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sidecars", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--etcd", action="store_true", help="run the zone CP on the etcd store (a local etcd-server)")
    args = parser.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"command: {' '.join(sys.argv)}")
    p99s: list[float] = []
    p50s: list[float] = []
    cpus: list[float] = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            etcd = None
            cp_args: list[str] = []
            if args.etcd:
                etcd = EtcdProcess("bench", Path(tmp) / "etcd")
                etcd.start()
                cp_args = ["--store", "etcd", "--etcd-endpoints", etcd.client_url]
            cp = ZoneCPProcess(Path(tmp) / "state", *cp_args)
            cp.start()
            try:
                samples, cpu = trio.run(one_run, cp, args.sidecars, args.rounds)
                metrics = httpx.get(cp.url + "/metrics").text
            finally:
                cp.stop()
                if etcd is not None:
                    etcd.kill()
        ms = [s * 1000 for s in samples]
        p50, p90, p99 = (percentile(ms, q) for q in (0.5, 0.9, 0.99))
        p50s.append(p50)
        p99s.append(p99)
        count = next((line.split()[-1] for line in metrics.splitlines()
                      if line.startswith("meshcast_cp_config_push_latency_seconds_count")), "?")
        per_push = cpu / (args.rounds * args.sidecars) * 1e6
        cpus.append(per_push)
        print(f"run {run + 1}: {len(ms)} acks, p50 {p50:.1f} ms, p90 {p90:.1f} ms, p99 {p99:.1f} ms, "
              f"max {max(ms):.1f} ms; zone CP CPU {per_push:.0f} us per pushed snapshot "
              f"(incl. heartbeats; CP histogram count {count})")
    store = "etcd" if args.etcd else "memory"
    print(f"store: {store}; median of {args.runs} runs: p50 {statistics.median(p50s):.1f} ms, "
          f"p99 {statistics.median(p99s):.1f} ms "
          f"({args.sidecars} sidecars, {args.rounds} changes per run); "
          f"zone CP CPU {statistics.median(cpus):.0f} us per pushed snapshot")


if __name__ == "__main__":
    main()
