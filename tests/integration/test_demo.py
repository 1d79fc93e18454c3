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
    assert "identity spiffe://default/web" in out
    assert "outbound backend -> backend-1:10001" in out and "backend-2:10002" in out
    assert "Demo stopped; everything it started has exited." in out
    # The zone CP's log says it shut down on the demo's signal rather than being killed.
    assert "shutting down" in (tmp_path / ".demo" / "zone-cp.log").read_text()
