"""`meshcast demo` (what `make demo` runs) completes its tour and stops everything it started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_tour_runs_and_cleans_up(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "meshcast.cli.main", "demo", "--once"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=180, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "The global CP created the mesh 'default' (builtin mTLS); every zone received it" in out
    assert out.count(" online ") >= 2 or out.count("online") >= 2  # both zones, at the global CP
    assert "eu (1), us (1)" in out  # backend in both zones; payments in us only
    # web (eu) reached backend in its own zone and payments in us through us's ingress, with its identity seen.
    assert '"instance": "backend-1"' in out and '"instance": "payments-1"' in out
    assert '"zone": "us"' in out and '"caller": "spiffe://default/web"' in out
    # After backend-1 stopped, web's calls to backend went to us.
    assert '"instance": "backend-2", "zone": "us"' in out
    assert "Demo stopped; everything it started has exited." in out
    # Every process shut down on the demo's SIGTERM rather than being killed.
    demo = tmp_path / ".demo"
    assert "shutting down" in (demo / "global-cp.log").read_text()
    for zone in ("eu", "us"):
        assert "shutting down" in (demo / f"zone-{zone}.log").read_text()
        assert "stopping" in (demo / f"ingress-{zone}.log").read_text()
    for sidecar in ("web-1", "backend-1", "backend-2", "payments-1"):
        assert "draining" in (demo / f"{sidecar}.log").read_text()
