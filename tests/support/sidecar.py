"""Run a real `meshcast dataplane run` process for tests; stopped by PID (SIGTERM, then SIGKILL) when done."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.process import stop_process
from tests.support.zone import free_port, meshcast_cmd


class SidecarProcess:
    def __init__(self, workdir: Path, cp_url: str, token: str, dataplane: dict[str, Any], *extra: str) -> None:
        self.extra = list(extra)
        self.workdir = workdir
        self.name = dataplane["name"]
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "token").write_text(token)
        (workdir / "dp.json").write_text(json.dumps(dataplane))
        self.cp_url = cp_url
        self.admin_port = free_port()
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.log_path = workdir / "sidecar.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        cmd = meshcast_cmd("dataplane", "run", "--cp", self.cp_url, "--token-file", str(self.workdir / "token"),
                           "--dataplane-file", str(self.workdir / "dp.json"), "--state-dir",
                           str(self.workdir / "state"), "--admin-addr", f"127.0.0.1:{self.admin_port}",
                           "--drain-timeout", "3", *self.extra)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sidecar {self.name} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.admin + "/ready", timeout=0.5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"sidecar {self.name} not ready after {timeout}s:\n{self.log()}")

    def stop(self, *, kill: bool = False) -> None:
        stop_process(self.proc, kill=kill)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""
