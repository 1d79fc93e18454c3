"""Workload certificate issuance per second on one core: CSR parsing and verification plus signing.

CSRs (and their P-256 keys) are generated before timing starts; each timed call is exactly what the zone CP
does per request, ``MeshCA.sign_workload_csr(csr_pem, ...)`` returning the PEM chain. Runs pinned to one CPU
when the OS allows it. The target is >= 1,000 certificates/s.

    .venv/bin/python bench/bench_certs.py [--certs 2000] [--runs 7] [--signer root|intermediate]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from datetime import timedelta

import cryptography

from meshcast.pki import MeshCA, build_csr, generate_workload_key


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--certs", type=int, default=2000, help="certificates signed per run")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--signer", choices=("root", "intermediate"), default="intermediate")
    args = parser.parse_args()

    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    pinned = "no"
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        pinned = f"cpu {cpu}"

    root = MeshCA.generate("bench")
    ca = root if args.signer == "root" else root.generate_intermediate(zone="bench-zone")
    csrs = [build_csr(generate_workload_key(), "") for _ in range(args.certs)]
    ttl = timedelta(hours=24)

    for csr in csrs[:100]:  # warm up
        ca.sign_workload_csr(csr, service="web", mesh="bench", ttl=ttl)

    rates = []
    for _ in range(args.runs):
        start = time.perf_counter()
        for csr in csrs:
            ca.sign_workload_csr(csr, service="web", mesh="bench", ttl=ttl)
        rates.append(len(csrs) / (time.perf_counter() - start))

    uname = platform.uname()
    print(f"command:  {shlex.join([os.path.relpath(sys.executable), *sys.argv])}")
    print(f"machine:  {uname.system} {uname.release} {uname.machine}, {_cpu_model()}")
    print(f"          nproc {nproc} (os.cpu_count {os.cpu_count()}), pinned to {pinned}")
    print(
        f"software: Python {platform.python_version()}, cryptography {cryptography.__version__}, "
        f"{_openssl_version()}"
    )
    print(f"work:     {args.certs} CSRs per run, signer {args.signer} (ECDSA P-256, SHA-256), ttl 24h")
    print(f"runs:     {', '.join(f'{r:,.0f}' for r in rates)} certs/s")
    print(
        f"median:   {statistics.median(rates):,.0f} certs/s "
        f"({1e6 / statistics.median(rates):.0f} µs per certificate)"
    )
    return 0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu model unknown"


def _openssl_version() -> str:
    from cryptography.hazmat.backends.openssl.backend import backend

    return str(backend.openssl_version_text())


if __name__ == "__main__":
    sys.exit(main())
