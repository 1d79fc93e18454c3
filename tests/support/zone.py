"""Run a real `meshcast zone-cp run` process for tests; stopped by PID in the fixture's finalizer."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.ports import free_port
from tests.support.process import stop_process


def meshcast_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshcast.cli.main", *args]


class ZoneCPProcess:
    def __init__(self, state_dir: Path, *extra: str, ca_file: Path | None = None, component: str = "zone-cp") -> None:
        """`component`: zone-cp, or global-cp for the global control plane (same API, no dataplane server)."""
        self.component = component
        self.port = free_port()
        self.ca_file = ca_file
        self.url = f"{'https' if ca_file else 'http'}://127.0.0.1:{self.port}"
        self.state_dir = state_dir
        self.extra = list(extra)
        self.log_path = state_dir.parent / f"zone-cp-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        dp = ["--dp-addr", "127.0.0.1:0"] if self.component == "zone-cp" else []
        cmd = meshcast_cmd(self.component, "run", "--api-addr", f"127.0.0.1:{self.port}", *dp,
                           "--state-dir", str(self.state_dir), *self.extra)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the process owns it until it exits
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.component} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                verify = ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else True
                if httpx.get(self.url + "/readyz", timeout=0.5, verify=verify).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.component} not ready after {timeout}s:\n{self.log()}")

    def stop(self, *, kill: bool = False) -> None:
        stop_process(self.proc, kill=kill)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "MESHCAST_CP": self.url}
        if self.ca_file:
            env["MESHCAST_CA_FILE"] = str(self.ca_file)
        return subprocess.run(meshcast_cmd(*args), input=stdin, capture_output=True, text=True, env=env, timeout=60)

    async def acli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`cli` from a trio test, in a thread, so tasks such as heartbeats keep running meanwhile."""
        import trio

        return await trio.to_thread.run_sync(lambda: self.cli(*args))

    async def aget(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            return await client.get(path)

    def token(self, *services: str, mesh: str = "default", valid_for: str = "1h") -> str:
        args = ["generate", "dataplane-token", "--mesh", mesh, "--valid-for", valid_for]
        for service in services:
            args += ["--service", service]
        result = self.cli(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()
