"""The long-lived sidecar process imports none of the heavy libraries it has no lasting use for.

Its idle memory is a target (≤ 40 MB, docs/benchmarks.md): cryptography (keys and CSRs: `dataplane.transport.keygen`
runs in a child), httpx (the CP calls go over `meshcast.wire.h2duplex`), pydantic and the resource model (the
Dataplane file is validated in a child, `meshcast.cli.dataplane_file`), and YAML would cost it ~25 MB for good.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("cryptography", "httpx", "httpcore", "pydantic", "pydantic_core", "yaml", "meshcast.resources",
         "fastapi", "hypercorn")

# What `meshcast dataplane run` imports, at the top of its modules and in run_dataplane's body.
SIDECAR_MODULES = ("meshcast.cli.main", "meshcast.cli.run_dataplane", "dataplane.admin", "dataplane.listeners",
                   "dataplane.sidecar", "zone_cp.config")


def test_the_sidecar_imports_no_heavy_library() -> None:
    code = (f"import importlib, json, sys\nfor name in {SIDECAR_MODULES!r}: importlib.import_module(name)\n"
            "print(json.dumps(sorted(sys.modules)))")
    modules = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                        check=True).stdout)
    loaded = {m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)}
    assert not loaded, f"the sidecar imports {sorted(loaded)}"
