"""Data-plane benchmark: client -> sidecar -> mTLS -> sidecar -> server, beside direct and an HAProxy pair.

Three paths to the same nginx serving 1 KB responses:
  direct   wrk -> nginx
  meshcast wrk -> web's sidecar (outbound) -> mTLS (pooled HTTP/1.1) -> backend's sidecar (inbound) -> nginx
  haproxy  wrk -> HAProxy A -> mTLS (ALPN http/1.1, connection reuse) -> HAProxy B -> nginx
Both proxies of a pair share core 0 (nbthread 1 / one process each); nginx and the load generator use core 1.
Reported per path: throughput at saturation (wrk, 16 connections, median of --runs), latency at a fixed
1,000 req/s (h2load --h1, 16 clients x 62.5 req/s; p50/p99), CPU seconds per 1,000 requests of the proxy pair at
saturation, and the sidecars' RSS.

HTTP/2 (h2load, prior knowledge from the client, 16 connections x 10 concurrent streams) on the same three paths
to an h2c nginx: the sidecars hop over pooled mTLS `h2`, the HAProxy pair over TLS with ALPN h2.

    .venv/bin/python bench/bench_proxy.py [--runs 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meshcast.pki import MeshCA, build_csr, generate_workload_key
from tests.support.ports import free_port
from tests.support.sidecar import SidecarProcess
from tests.support.zone import ZoneCPProcess

BODY = "x" * 1024


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pin(pid: int, cpu: int) -> None:
    subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)], check=True, capture_output=True)


def wrk(url: str, seconds: int) -> float:
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c16", f"-d{seconds}s", url],
                         capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match, out
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    assert non2xx is None, out
    return float(match.group(1))


def h2load_fixed(url: str, seconds: int) -> tuple[float, float]:
    """p50 and p99 request latency (ms) at 1,000 req/s: h2load prints min/max/mean/sd, so take them from a
    per-request log."""
    with tempfile.NamedTemporaryFile(suffix=".log") as log:
        subprocess.run(["taskset", "-c", "1", "h2load", "--h1", "-c16", "--rps=62.5", "-D", str(seconds),
                        "--log-file", log.name, url], capture_output=True, text=True, check=True)
        latencies = sorted(int(line.split("\t")[2]) / 1000 for line in Path(log.name).read_text().splitlines()
                           if line.strip() and line.split("\t")[1] == "200")
    return latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]


def h2load_saturate(url: str, seconds: int) -> float:
    out = subprocess.run(["taskset", "-c", "1", "h2load", "-c16", "-m10", "-D", str(seconds), url],
                         capture_output=True, text=True, check=True).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    rate = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
    assert done and rate and done.group(1) == done.group(2), out
    return float(rate.group(1))


def write_haproxy(tmp: Path, nginx_port: int, *, h2: bool = False, prefix: str = "") -> tuple[Path, Path, int]:
    ca = MeshCA.generate("bench")
    alpn = "h2" if h2 else "http/1.1"
    proto = " proto h2" if h2 else ""
    pems = {}
    for name in ("a", "b"):
        key = generate_workload_key()
        chain = ca.sign_workload_csr(build_csr(key, f"spiffe://bench/{name}"), service=name, mesh="bench",
                                     ttl=timedelta(hours=1))
        from cryptography.hazmat.primitives import serialization

        pems[name] = chain + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption())
        (tmp / f"{prefix}{name}.pem").write_bytes(pems[name])
    (tmp / f"{prefix}ca.pem").write_bytes(ca.trust_bundle())
    port_a, port_b = free_port(), free_port()
    common = "global\n  nbthread 1\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 5s\n" \
             "  timeout client 30s\n  timeout server 30s\n  http-reuse always\n"
    pem = f"{tmp}/{prefix}"
    (tmp / f"{prefix}a.cfg").write_text(
        common + f"frontend in\n  bind 127.0.0.1:{port_a}{proto}\n  default_backend mesh\n"
        f"backend mesh\n  server b 127.0.0.1:{port_b} ssl verify required "
        f"ca-file {pem}ca.pem crt {pem}a.pem alpn {alpn} ssl-min-ver TLSv1.3\n")
    (tmp / f"{prefix}b.cfg").write_text(
        common + f"frontend in\n  bind 127.0.0.1:{port_b} ssl crt {pem}b.pem "
        f"ca-file {pem}ca.pem verify required alpn {alpn} ssl-min-ver TLSv1.3\n"
        f"  default_backend app\nbackend app\n  server nginx 127.0.0.1:{nginx_port}{proto}\n")
    return tmp / f"{prefix}a.cfg", tmp / f"{prefix}b.cfg", port_a


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"command: {' '.join(sys.argv)}")
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        nginx_port, nginx_h2_port = free_port(), free_port()
        (tmp / "nginx.conf").write_text(
            f"worker_processes 1;\ndaemon off;\npid {tmp}/nginx.pid;\nerror_log {tmp}/nginx.err;\n"
            "events { worker_connections 4096; }\n"
            f"http {{ access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp};\n"
            f"  fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};\n"
            f"  server {{ listen 127.0.0.1:{nginx_port}; keepalive_requests 1000000;\n"
            f"    location / {{ default_type text/plain; return 200 '{BODY}'; }} }}\n"
            f"  server {{ listen 127.0.0.1:{nginx_h2_port} http2; keepalive_requests 1000000;\n"
            f"    location / {{ default_type text/plain; return 200 '{BODY}'; }} }} }}\n")
        cp = ZoneCPProcess(tmp / "cp")
        sidecars: list[SidecarProcess] = []
        try:
            procs.append(subprocess.Popen(["nginx", "-c", str(tmp / "nginx.conf"), "-p", str(tmp)]))
            time.sleep(0.5)
            pin(procs[-1].pid, 1)
            cp.start()
            web_out, web_out_h2 = free_port(), free_port()
            for name, service, app_port, protocol, outbound in (
                    ("backend-1", "backend", nginx_port, "http", {}),
                    ("backend-h2-1", "backend-h2", nginx_h2_port, "http2", {}),
                    ("web-1", "web", nginx_port, "http", {"backend": web_out, "backend-h2": web_out_h2})):
                doc = {"type": "Dataplane", "mesh": "default", "name": name, "spec": {
                    "address": "127.0.0.1",
                    "inbound": [{"port": free_port(), "appPort": app_port, "service": service,
                                 "protocol": protocol}],
                    "outbound": [{"port": p, "service": s} for s, p in outbound.items()]}}
                sidecar = SidecarProcess(tmp / name, cp.url, cp.token(service), doc)
                sidecar.start()
                sidecars.append(sidecar)
            a_cfg, b_cfg, haproxy_port = write_haproxy(tmp, nginx_port)
            a2_cfg, b2_cfg, haproxy_h2_port = write_haproxy(tmp, nginx_h2_port, h2=True, prefix="h2-")
            for cfg in (b_cfg, a_cfg, b2_cfg, a2_cfg):
                procs.append(subprocess.Popen(["haproxy", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
            time.sleep(1)
            haproxy_pids = [p.pid for p in procs[-4:-2]]
            haproxy_h2_pids = [p.pid for p in procs[-2:]]
            by_name = {s.name: s.proc.pid for s in sidecars if s.proc is not None}
            sidecar_pids = [by_name["web-1"], by_name["backend-1"]]
            sidecar_h2_pids = [by_name["web-1"], by_name["backend-h2-1"]]
            for pid in haproxy_pids + haproxy_h2_pids + list(by_name.values()):
                pin(pid, 0)
            paths = {"direct": (f"http://127.0.0.1:{nginx_port}/", []),
                     "meshcast": (f"http://127.0.0.1:{web_out}/", sidecar_pids),
                     "haproxy": (f"http://127.0.0.1:{haproxy_port}/", haproxy_pids)}
            h2_paths = {"direct": (f"http://127.0.0.1:{nginx_h2_port}/", []),
                        "meshcast": (f"http://127.0.0.1:{web_out_h2}/", sidecar_h2_pids),
                        "haproxy": (f"http://127.0.0.1:{haproxy_h2_port}/", haproxy_h2_pids)}
            for url, _ in paths.values():  # warm up pools and check every path answers
                wrk(url, 1)
            results: dict[str, dict[str, list[float]]] = {name: {"rps": [], "cpu": [], "p50": [], "p99": []}
                                                          for name in paths}
            for _ in range(args.runs):
                for name, (url, pids) in paths.items():  # side by side, interleaved
                    before = sum(cpu_seconds(pid) for pid in pids)
                    start = time.monotonic()
                    rps = wrk(url, args.seconds)
                    elapsed = time.monotonic() - start
                    used = sum(cpu_seconds(pid) for pid in pids) - before
                    results[name]["rps"].append(rps)
                    results[name]["cpu"].append(used / (rps * elapsed / 1000) if pids else 0.0)
                    p50, p99 = h2load_fixed(url, args.seconds)
                    results[name]["p50"].append(p50)
                    results[name]["p99"].append(p99)
            h2_results: dict[str, dict[str, list[float]]] = {name: {"rps": [], "cpu": []} for name in h2_paths}
            for url, _ in h2_paths.values():
                h2load_saturate(url, 1)
            for _ in range(args.runs):
                for name, (url, pids) in h2_paths.items():
                    before = sum(cpu_seconds(pid) for pid in pids)
                    start = time.monotonic()
                    rps = h2load_saturate(url, args.seconds)
                    elapsed = time.monotonic() - start
                    used = sum(cpu_seconds(pid) for pid in pids) - before
                    h2_results[name]["rps"].append(rps)
                    h2_results[name]["cpu"].append(used / (rps * elapsed / 1000) if pids else 0.0)
            rss = [rss_mb(pid) for pid in by_name.values()]
            med = {name: {k: statistics.median(v) for k, v in r.items()} for name, r in results.items()}
            print(f"{'path':10} {'req/s':>8} {'x haproxy':>9} {'p50 ms':>7} {'p99 ms':>7} {'+p99 ms':>8} "
                  f"{'CPU-s/1k':>8}")
            for name, m in med.items():
                print(f"{name:10} {m['rps']:8.0f} {m['rps'] / med['haproxy']['rps']:9.2f} {m['p50']:7.2f} "
                      f"{m['p99']:7.2f} {m['p99'] - med['direct']['p99']:8.2f} {m['cpu']:8.3f}")
            print("runs (req/s): " + "; ".join(f"{n}: {', '.join(f'{v:.0f}' for v in r['rps'])}"
                                             for n, r in results.items()))
            h2med = {name: {k: statistics.median(v) for k, v in r.items()} for name, r in h2_results.items()}
            print(f"HTTP/2 (h2load -c16 -m10)\n{'path':10} {'req/s':>8} {'x haproxy':>9} {'CPU-s/1k':>8}")
            for name, m in h2med.items():
                print(f"{name:10} {m['rps']:8.0f} {m['rps'] / h2med['haproxy']['rps']:9.2f} {m['cpu']:8.3f}")
            print("runs (req/s): " + "; ".join(f"{n}: {', '.join(f'{v:.0f}' for v in r['rps'])}"
                                             for n, r in h2_results.items()))
            print(f"sidecar RSS after the runs: {', '.join(f'{v:.1f} MB' for v in rss)}")
        finally:
            for sidecar in sidecars:
                sidecar.stop()
            cp.stop()
            for proc in procs:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    main()
