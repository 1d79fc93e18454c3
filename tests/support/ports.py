"""Listening ports for test processes, taken below the kernel's ephemeral range.

A port from `bind(0)` comes from the ephemeral range, where the kernel also picks the source ports of outgoing
connections: between choosing it and the process binding it, a client connection may take it. Ports below the
range are only ever taken by an explicit bind, so probing one and handing it over is safe enough; the starting
point is spread by PID so parallel runs do not walk the same sequence.
"""

from __future__ import annotations

import itertools
import os
import socket

_LOW, _HIGH = 20000, 32000
_next = itertools.count(_LOW + (os.getpid() * 97) % (_HIGH - _LOW))


def free_port() -> int:
    for _ in range(_HIGH - _LOW):
        port = _LOW + (next(_next) - _LOW) % (_HIGH - _LOW)
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000 on 127.0.0.1")
