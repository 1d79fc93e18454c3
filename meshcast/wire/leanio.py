"""A lean byte stream over a non-blocking socket, for the hot paths (config streams, later the proxy).

trio's `SocketStream` costs a scheduler round trip and several wrapper layers per call; measured on this kind of
machine its socket wrappers took ~17% of a proxy's CPU (see field notes). `LeanSocketStream` tries the system call
first and only parks on `trio.lowlevel.wait_readable`/`wait_writable` when the kernel would block, so a read or a
write that can complete at once costs one system call and one checkpoint.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import socket
import struct
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger("meshcast.wire.leanio")


class LeanSocketStream(trio.abc.HalfCloseableStream):
    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        with contextlib.suppress(OSError):  # not TCP (a Unix socket in tests)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.socket = sock
        self._closed = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        size = max_bytes or 65536
        waited = False
        while True:
            if self._closed:
                raise trio.ClosedResourceError("stream closed")
            try:
                data = self.socket.recv(size)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.socket)
                waited = True
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            if not waited:  # every call is a checkpoint; a call that waited already was one
                await trio.lowlevel.checkpoint()
            return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            if self._closed:
                raise trio.ClosedResourceError("stream closed")
            try:
                sent = self.socket.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.socket)
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            view = view[sent:]
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self.socket)

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc

    def close_now(self) -> None:
        """Close at once, from synchronous code (a pool evicting an idle connection)."""
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self.socket)
            self.socket.close()

    async def aclose(self) -> None:
        self.close_now()
        await trio.lowlevel.checkpoint()


class OrderedWriter:
    """Writes what a sans-IO protocol object (an h2 connection) has queued, from any task, in queue order.

    The bytes are taken from the protocol object under the lock, so frames from concurrent tasks never interleave
    out of order. A free lock is taken without a checkpoint, so the write happens before the task yields: with
    many tasks woken at once, each one's bytes leave before the next one computes its own.
    """

    def __init__(self, stream: trio.abc.SendStream) -> None:
        self._stream = stream
        self._lock = trio.Lock()

    async def flush(self, take: Callable[[], bytes]) -> None:
        if self._lock.locked():
            await self._lock.acquire()
        else:
            self._lock.acquire_nowait()
        try:
            data = take()
            if data:
                await self._stream.send_all(data)
            else:
                await trio.lowlevel.checkpoint()
        finally:
            self._lock.release()


async def open_lean_tcp_stream(host: str, port: int) -> LeanSocketStream:
    """Connect like `trio.open_tcp_stream` (every address of `host`, in order) and wrap the socket lean."""
    stream = await trio.open_tcp_stream(host, port)
    raw = stream.socket
    # Take the connected descriptor out of trio's wrapper so the lean stream owns it alone.
    sock = socket.socket(raw.family, raw.type, raw.proto, fileno=raw.detach())
    return LeanSocketStream(sock)


def listen_tcp(address: str, port: int, *, reuse_port: bool = False, backlog: int = 1024) -> socket.socket:
    """A listening TCP socket (SO_REUSEADDR; SO_REUSEPORT when several processes share it). Raises OSError."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((address, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


# Linux socket options (<asm-generic/socket.h>); Python's socket module does not name them.
SO_ATTACH_FILTER = 26


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


# A classic BPF program run on every segment a listening TCP socket receives, with the TCP header at offset 0:
# drop a segment whose SYN flag is set and ACK flag clear (a client opening a connection), keep the rest (the final
# ACK of a handshake already answered must still complete it).
_DROP_SYN = (
    (0x30, 0, 0, 13),          # ldb [13]          the flags byte: CWR ECE URG ACK PSH RST SYN FIN
    (0x54, 0, 0, 0x12),        # and #0x12         ACK | SYN
    (0x15, 0, 1, 0x02),        # jeq #0x02, 0, 1   only SYN?
    (0x06, 0, 0, 0),           # ret #0            drop it
    (0x06, 0, 0, 0xFFFFFFFF),  # ret #-1           keep the whole segment
)


def drop_new_connections(sock: socket.socket) -> None:
    """Make a listening TCP socket ignore new connections: their SYNs are dropped, not refused, so each client's
    kernel sends its SYN again (after ~1 s, then 3 s, ...) and reaches whoever holds the address by then. Handshakes
    already answered complete, and queued connections can still be accepted. Raises OSError (not Linux)."""
    program = (_SockFilter * len(_DROP_SYN))(*(_SockFilter(*insn) for insn in _DROP_SYN))
    fprog = struct.pack("HL", len(_DROP_SYN), ctypes.addressof(program))  # struct sock_fprog; the kernel copies it
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def close_listener(sock: socket.socket, serve: Callable[[LeanSocketStream], None]) -> None:
    """Close a listening socket now, first handing `serve` every connection the kernel has completed and queued on
    it (closing a listener resets those, though their clients may already have sent a request). Idempotent."""
    if sock.fileno() == -1:
        return
    sock.setblocking(False)
    while True:
        try:
            conn, _ = sock.accept()
        except OSError:  # BlockingIOError: the queue is empty; anything else: nothing more to take
            break
        serve(LeanSocketStream(conn))
    trio.lowlevel.notify_closing(sock)  # wakes an accept loop waiting on it
    sock.close()


async def serve_lean(
    sock: socket.socket,
    handler: Callable[[LeanSocketStream], Awaitable[None]],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept connections on a listening socket forever, each handled in its own task as a lean stream.

    Accept errors such as EMFILE back off for 100 ms instead of spinning. Cancelling this closes nothing it
    did not open: the caller owns `sock`.
    """
    sock.setblocking(False)
    async with trio.open_nursery() as nursery:
        task_status.started()
        while True:
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_readable(sock)
                except trio.ClosedResourceError:
                    return  # the owner closed the socket: this listener is done
                continue
            except OSError as exc:
                if sock.fileno() == -1:
                    return
                log.warning("accept failed on %s: %s", sock.getsockname(), exc)
                await trio.sleep(0.1)
                continue
            nursery.start_soon(handler, LeanSocketStream(conn))
