"""Cross-zone policy propagation: from `meshcast apply` at the global CP until every sidecar of two zones has
acknowledged the snapshot that carries the change; and what the zone CPs spend on their sidecars (memory, CPU).

Per run, on loopback: a single-member etcd (the global store), a real `meshcast global-cp run`, two real
`meshcast zone-cp run` (zones eu and us, memory stores, `--global-etcd URL --zone-lease-ttl 2`) and one real
`meshcast ingress run` per zone, so that each zone publishes its ingress and sees the other zone's backend through
it. N simulated sidecars (`meshcast.testing.simdp`, all in this process) are split evenly between the zones:
--backends instances of backend per zone, the rest web instances with an outbound to backend. Once every web
sidecar has its zone's backend instances and the other zone's ingress (priority 1) as endpoints, each round applies
at the global CP (`POST /v1/apply`, the call behind `meshcast apply`) a MeshLoadBalancingStrategy for backend whose
failoverThreshold changes every round, and records, per web sidecar, the time from just before the API call until
it received (and at once acknowledged) a snapshot whose backend outbound has that threshold. The backend instances
call nothing, so their snapshots do not change and they give no sample. Prints p50/p90/p99/max over all samples,
per run, and the median of the runs.

Memory: each zone CP's VmRSS once federated with its ingress connected and no sidecar, then with its sidecars
connected (before and after the rounds); the growth is scaled to 1,000 sidecars. CPU: both zone CPs' user + system
seconds over the rounds divided by the pushed snapshots that carried a change (heartbeats, the global mirror, the
zone publication and the ingress's long polls included).

    .venv/bin/python bench/bench_federation.py [--sidecars 1000] [--rounds 20] [--runs 3] [--backends 5]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meshcast.testing.simdp import SimDataplane
from meshcast.wire.configstream import SnapshotReceived
from tests.support.etcd import EtcdProcess
from tests.support.ports import free_port
from tests.support.process import stop_process
from tests.support.zone import ZoneCPProcess, meshcast_cmd

ZONES = ("eu", "us")
ROUND_TIMEOUT = 30.0
SETTLE_TIMEOUT = 120.0


def _dp(name: str, service: str, port: int, outbound: list[str], tags: dict[str, str] | None = None) -> dict[str, Any]:
    return {"type": "Dataplane", "mesh": "default", "name": name,
            "spec": {"address": "127.0.0.1",
                     "inbound": [{"port": port, "service": service, "protocol": "http", "tags": tags or {}}],
                     "outbound": [{"port": 30000 + i, "service": s} for i, s in enumerate(outbound)]}}


def _policy(threshold: int) -> dict[str, Any]:
    return {"type": "MeshLoadBalancingStrategy", "mesh": "default", "name": "backend-lb",
            "spec": {"to": [{"targetRef": {"kind": "MeshService", "name": "backend"},
                             "default": {"localityAwareness": {"crossZone": {"failoverThreshold": threshold}}}}]}}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far: robust against the noise of a shared machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pid_of(cp: ZoneCPProcess) -> int:
    assert cp.proc is not None
    return cp.proc.pid


def pushes_sent(metrics: str) -> float:
    """The zone CP's count of snapshots sent (`meshcast_cp_config_pushes_total{result="sent"}`)."""
    return sum(float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith("meshcast_cp_config_pushes_total") and 'result="sent"' in line)


class IngressProcess:
    """A real `meshcast ingress run` for one zone, with a fresh ingress token; stopped by PID."""

    def __init__(self, zone: ZoneCPProcess, workdir: Path) -> None:
        self.zone = zone
        self.workdir = workdir
        self.port = free_port()
        self.admin_port = free_port()
        self.log_path = workdir / "ingress.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        token = self.zone.cli("generate", "ingress-token")
        if token.returncode != 0:
            raise RuntimeError(f"no ingress token from {self.zone.url}: {token.stderr.strip()}")
        token_file = self.workdir / "token"
        token_file.write_text(token.stdout.strip())
        cmd = meshcast_cmd("ingress", "run", "--cp", self.zone.url, "--token-file", str(token_file),
                           "--addr", f"127.0.0.1:{self.port}", "--admin-addr", f"127.0.0.1:{self.admin_port}",
                           "--state-dir", str(self.workdir / "state"))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ingress exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.admin_port}/ready", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"ingress not ready after {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        stop_process(self.proc)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


@dataclass
class RunResult:
    samples: list[float] = field(default_factory=list)
    by_zone: dict[str, list[float]] = field(default_factory=dict)
    firsts: list[float] = field(default_factory=list)
    lasts: list[float] = field(default_factory=list)  # per round: until every web sidecar acknowledged
    api_times: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    sims_cpu: float = 0.0  # this process: the simulated sidecars (and the API client)
    sent: float = 0.0
    webs: int = 0
    per_zone: int = 0
    rss_idle: dict[str, float] = field(default_factory=dict)
    rss_connected: dict[str, float] = field(default_factory=dict)
    rss_after: dict[str, float] = field(default_factory=dict)


@dataclass
class Round:
    threshold: float = -1.0
    arrivals: dict[str, tuple[str, float]] = field(default_factory=dict)  # sidecar -> (zone, when)
    complete: trio.Event = field(default_factory=trio.Event)


def _settled(sim: SimDataplane, zone: str, backends: int) -> bool:
    """The sidecar has its zone's backend instances and the other zone's ingress at priority 1."""
    other = next(z for z in ZONES if z != zone)
    endpoints = sim.endpoints("backend")
    local = sum(1 for e in endpoints if str(e.get("dataplane", "")).startswith(f"backend-{zone}-"))
    remote = any(e.get("dataplane") == f"ingress.{other}" and e.get("priority") == 1 for e in endpoints)
    return local == backends and remote


async def _wait_settled(webs: dict[str, list[SimDataplane]], zones: dict[str, ZoneCPProcess], backends: int) -> None:
    deadline = trio.current_time() + SETTLE_TIMEOUT
    while True:
        missing = {zone: [s for s in sims if not _settled(s, zone, backends)] for zone, sims in webs.items()}
        if not any(missing.values()):
            return
        if trio.current_time() > deadline:
            sims = next(s for s in missing.values() if s)
            logs = "\n".join(f"--- zone CP {z} ---\n{cp.log()[-1500:]}" for z, cp in zones.items())
            raise RuntimeError(
                f"after {SETTLE_TIMEOUT:.0f}s, sidecars without their zone's {backends} backend(s) and the other "
                f"zone's ingress (priority 1): { {z: len(s) for z, s in missing.items()} }; e.g. {sims[0].name} "
                f"sees backend endpoints {json.dumps(sims[0].endpoints('backend'))}\n{logs}")
        await trio.sleep(0.2)


def _rss_all(zones: dict[str, ZoneCPProcess]) -> dict[str, float]:
    return {zone: rss_mb(pid_of(cp)) for zone, cp in zones.items()}


async def one_run(global_cp: ZoneCPProcess, zones: dict[str, ZoneCPProcess], sidecars: int, backends: int,
                  rounds: int) -> RunResult:
    result = RunResult(per_zone=sidecars // len(zones))
    webs_per_zone = result.per_zone - backends
    result.webs = webs_per_zone * len(zones)
    current = Round()

    def watcher(zone: str, name: str) -> Callable[[SnapshotReceived, float], None]:
        def seen(event: SnapshotReceived, now: float) -> None:
            if name in current.arrivals:
                return
            for outbound in event.snapshot["outbound"]:
                if outbound["service"] == "backend" and outbound.get("failoverThreshold") == current.threshold:
                    current.arrivals[name] = (zone, now)
                    if len(current.arrivals) == result.webs:
                        current.complete.set()
        return seen

    await trio.sleep(1.0)  # let the ingress registration and the first publications settle before the baseline
    result.rss_idle = _rss_all(zones)

    sims: dict[str, tuple[list[SimDataplane], list[SimDataplane]]] = {}
    for zone, cp in zones.items():
        backend_token, web_token = cp.token("backend"), cp.token("web")
        sims[zone] = (
            [SimDataplane(cp.url, backend_token, _dp(f"backend-{zone}-{i}", "backend", 10000 + i, []))
             for i in range(backends)],
            [SimDataplane(cp.url, web_token, _dp(f"web-{zone}-{i}", "web", 11000 + i, ["backend"]),
                          on_snapshot=watcher(zone, f"web-{zone}-{i}"))
             for i in range(webs_per_zone)],
        )

    async with trio.open_nursery() as nursery, httpx.AsyncClient(base_url=global_cp.url, timeout=30) as api:
        async def start_zone(zone: str) -> None:
            for sim in sims[zone][0] + sims[zone][1]:  # backends first: the webs' first snapshots have them
                await nursery.start(sim.run)

        async with trio.open_nursery() as starters:  # both zones register at once, each one sidecar at a time
            for zone in zones:
                starters.start_soon(start_zone, zone)
        await _wait_settled({zone: webs for zone, (_, webs) in sims.items()}, zones, backends)
        # Includes the API connections the sidecars registered over: the API server keeps each one open for its
        # keep-alive timeout after the sidecar closed it, and freed memory is not handed back to the system.
        result.rss_connected = _rss_all(zones)
        result.by_zone = {zone: [] for zone in zones}
        gc.freeze()  # the simulated sidecars live for the whole run, as the control planes' own state does
        sent_before = 0.0
        for cp in zones.values():
            sent_before += pushes_sent((await api.get(cp.url + "/metrics")).text)
        cpu_before = {zone: cpu_seconds(pid_of(cp)) for zone, cp in zones.items()}
        sims_cpu_before = cpu_seconds(os.getpid())
        for rnd in range(rounds):
            threshold = rnd % 99 + 1  # 1..99, never the same twice in a row
            current.threshold, current.arrivals, current.complete = threshold / 100, {}, trio.Event()
            start = time.monotonic()
            response = await api.post("/v1/apply", json=[_policy(threshold)])
            response.raise_for_status()
            result.api_times.append(time.monotonic() - start)
            with trio.move_on_after(ROUND_TIMEOUT):
                await current.complete.wait()
            if not current.complete.is_set():
                late = {zone: sum(1 for s in zone_webs if s.name not in current.arrivals)
                        for zone, (_, zone_webs) in sims.items()}
                example = next(s for _, zone_webs in sims.values() for s in zone_webs
                               if s.name not in current.arrivals)
                raise RuntimeError(
                    f"round {rnd + 1}: failoverThreshold {threshold} not acknowledged within {ROUND_TIMEOUT:.0f}s "
                    f"by {late} web sidecars; e.g. {example.name}'s last snapshot: "
                    f"{json.dumps(example.snapshot)[:1500]}")
            for zone, when in current.arrivals.values():
                result.samples.append(when - start)
                result.by_zone[zone].append(when - start)
            result.firsts.append(min(when for _, when in current.arrivals.values()) - start)
            result.lasts.append(max(when for _, when in current.arrivals.values()) - start)
            await trio.sleep(0.1)
        result.cpu = {zone: cpu_seconds(pid_of(cp)) - cpu_before[zone] for zone, cp in zones.items()}
        result.sims_cpu = cpu_seconds(os.getpid()) - sims_cpu_before
        sent_after = 0.0
        for cp in zones.values():
            sent_after += pushes_sent((await api.get(cp.url + "/metrics")).text)
        result.sent = sent_after - sent_before
        result.rss_after = _rss_all(zones)
        nursery.cancel_scope.cancel()
    return result


def wait_for_default_mesh(zone: ZoneCPProcess, timeout: float = 30.0) -> None:
    """The global CP's default mesh reached the zone: its sidecars can register."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meshes = httpx.get(zone.url + "/v1/meshes", timeout=5).json()["items"]
        if "default" in {m["name"] for m in meshes}:
            return
        time.sleep(0.1)
    raise RuntimeError(f"mesh default not in zone {zone.url} after {timeout:.0f}s:\n{zone.log()}")


def run_federation(tmp: Path, args: argparse.Namespace) -> RunResult:
    """Start etcd, the global CP, both zone CPs and their ingresses; run the rounds; stop everything by PID."""
    etcd = EtcdProcess("global", tmp / "etcd")
    started: list[ZoneCPProcess | IngressProcess] = []
    try:
        etcd.start()
        global_cp = ZoneCPProcess(tmp / "global", "--etcd-endpoints", etcd.client_url, component="global-cp")
        started.append(global_cp)
        global_cp.start()
        zones: dict[str, ZoneCPProcess] = {}
        for name in ZONES:
            zone = ZoneCPProcess(tmp / name, "--zone", name, "--global-etcd", etcd.client_url,
                                 "--zone-lease-ttl", "2")
            started.append(zone)
            zone.start()
            zones[name] = zone
        for name, zone in zones.items():
            ingress = IngressProcess(zone, tmp / f"ingress-{name}")
            started.append(ingress)
            ingress.start()
        for zone in zones.values():
            wait_for_default_mesh(zone)
        return trio.run(one_run, global_cp, zones, args.sidecars, args.backends, args.rounds)
    finally:
        for proc in reversed(started):
            proc.stop()
        etcd.stop()


def per_thousand(result: RunResult, zone: str, after: dict[str, float]) -> float:
    return (after[zone] - result.rss_idle[zone]) * 1000 / result.per_zone


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sidecars", type=int, default=1000, help="simulated sidecars, split evenly between zones")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backends", type=int, default=5, help="backend instances per zone (the rest are web)")
    args = parser.parse_args()
    if args.sidecars // len(ZONES) <= args.backends:
        parser.error(f"--sidecars must leave web sidecars in each zone: more than {len(ZONES) * args.backends}")
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"command: {' '.join(sys.argv)}")
    p50s: list[float] = []
    p99s: list[float] = []
    firsts: list[float] = []
    cpus: list[float] = []
    rss: list[float] = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            result = run_federation(Path(tmp), args)
        ms = [s * 1000 for s in result.samples]
        p50, p90, p99 = (percentile(ms, q) for q in (0.5, 0.9, 0.99))
        p50s.append(p50)
        p99s.append(p99)
        first = statistics.median(result.firsts) * 1000
        firsts.append(first)
        zone_p99 = ", ".join(f"{zone} {percentile(s, 0.99) * 1000:.1f} ms" for zone, s in result.by_zone.items())
        print(f"run {run + 1}: {len(ms)} acks, p50 {p50:.1f} ms, p90 {p90:.1f} ms, p99 {p99:.1f} ms, "
              f"max {max(ms):.1f} ms (p99 by zone: {zone_p99})")
        print(f"  API POST /v1/apply round trip: median {statistics.median(result.api_times) * 1000:.1f} ms; "
              f"first sidecar's snapshot: median {first:.1f} ms; the last one's: median "
              f"{statistics.median(result.lasts) * 1000:.1f} ms")
        per_push = sum(result.cpu.values()) / (args.rounds * result.webs) * 1e6
        cpus.append(per_push)
        cpu_text = ", ".join(f"{zone} {cpu:.2f} s" for zone, cpu in result.cpu.items())
        print(f"  zone CP CPU over the rounds: {cpu_text}: {per_push:.0f} us per pushed snapshot "
              f"(incl. heartbeats; CPs counted {result.sent:.0f} sent for {args.rounds * result.webs} changes); "
              f"the simulated sidecars' process {result.sims_cpu:.2f} s")
        per_k = {zone: per_thousand(result, zone, result.rss_after) for zone in result.rss_idle}
        rss.append(statistics.mean(per_k.values()))
        rss_text = "; ".join(
            f"{zone} {result.rss_idle[zone]:.1f} -> {result.rss_connected[zone]:.1f} -> "
            f"{result.rss_after[zone]:.1f} MB "
            f"({per_thousand(result, zone, result.rss_connected):.1f} / {per_k[zone]:.1f} MB per 1,000)"
            for zone in result.rss_idle)
        print(f"  zone CP VmRSS idle -> {result.per_zone} sidecars connected -> after the rounds: {rss_text}")
    print(f"median of {args.runs} runs: p50 {statistics.median(p50s):.1f} ms, p99 {statistics.median(p99s):.1f} ms, "
          f"first sidecar {statistics.median(firsts):.1f} ms ({args.sidecars} sidecars in {len(ZONES)} zones, "
          f"{args.rounds} changes per run); zone CP CPU {statistics.median(cpus):.0f} us per pushed snapshot; "
          f"zone CP VmRSS {statistics.median(rss):.1f} MB per 1,000 sidecars")


if __name__ == "__main__":
    main()
