"""A sidecar's Dataplane file, validated in a short-lived child process.

Validating it takes the resource model (pydantic and the schema of every resource type, ~10 MB, docs/benchmarks.md)
once, at start; a long-lived sidecar that imported it would hold it for good. So `load_dataplane` runs
`python -m meshcast.cli.dataplane_file PATH`, which prints the resource as normalized JSON (camelCase, defaults
filled in), or its one-line error with exit status 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from meshcast.errors import MeshcastError


def load_dataplane(path: Path) -> dict[str, Any]:
    """The one Dataplane resource of the YAML or JSON file `path`, without metadata; ValueError (one line) if the
    file is not that."""
    result = subprocess.run([sys.executable, "-m", __name__, str(path)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        raise ValueError(lines[-1] if lines else f"could not be read (exit {result.returncode})")
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def _read(path: Path) -> dict[str, Any]:
    from meshcast.resources import load_documents

    resources = load_documents(path.read_text(), source=str(path))
    if len(resources) != 1 or resources[0].type != "Dataplane":
        raise ValueError("must hold exactly one Dataplane resource")
    return resources[0].to_dict(meta=False)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m meshcast.cli.dataplane_file PATH", file=sys.stderr)
        return 2
    try:
        doc = _read(Path(argv[0]))
    except (MeshcastError, ValueError, OSError) as exc:
        print(str(exc).replace("\n", " "), file=sys.stderr)
        return 1
    json.dump(doc, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
