"""`meshcast demo` (what `make demo` runs) completes its tour and stops everything it started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_tour_runs_and_cleans_up(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "meshcast.cli.main", "demo", "--once"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "created the mesh 'default' with builtin mTLS" in out
    # web's app called backend through both sidecars; each backend instance answered, seeing web's identity.
    assert '"backend": "backend-1", "version": "v1", "caller": "spiffe://default/web"' in out
    assert '"backend": "backend-2", "version": "v2", "caller": "spiffe://default/web"' in out
    assert "Demo stopped; everything it started has exited." in out
    # Every process shut down on the demo's SIGTERM (the zone CP and each sidecar say so) rather than being killed.
    assert "shutting down" in (tmp_path / ".demo" / "zone-cp.log").read_text()
    for sidecar in ("web-1", "backend-1", "backend-2"):
        assert "draining" in (tmp_path / ".demo" / f"{sidecar}.log").read_text()
