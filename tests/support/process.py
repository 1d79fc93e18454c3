"""Stopping the processes tests start: by their own PID, politely first."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_process(proc: subprocess.Popen[bytes] | None, *, kill: bool = False, grace: float = 15.0) -> None:
    """SIGTERM (or SIGKILL when `kill`), wait up to `grace` seconds, then SIGKILL. Safe on a process that exited."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
