"""Access log: one JSON line per proxied request (HTTP) or connection (TCP), and sinks that never block the loop.

Interface:

    sink = FileSink("/var/log/meshcast/access.log")     # or StdoutSink()
    await nursery.start(sink.run)                      # the writer task; raises OSError if the file won't open
    sink.write(format_record(AccessRecord(...)))       # sync, O(1), never blocks, never raises
    sink.reopen()                                      # on SIGHUP, after logrotate moved the file (StdoutSink: no-op)
    sink.statistics()                                  # lines written, dropped, failed; bytes buffered

Every line has every field below, in this order; a value not known or not applicable is `null` (the field set is
stable: consumers may rely on it, and adding a field is a change to announce).

| field               | JSON type     | meaning                                                                       |
|---------------------|---------------|-------------------------------------------------------------------------------|
| start_time          | string        | when the request (or connection) started: RFC 3339, UTC, milliseconds, "Z"    |
| duration_ms         | number        | until the last byte of the response was sent (connection closed), 3 decimals |
| direction           | string        | "inbound", "outbound" or "gateway"                                            |
| protocol            | string        | "HTTP/1.1", "HTTP/2" or "TCP"                                                 |
| method              | string / null | the request method; null for TCP                                              |
| path                | string / null | the request target as received (path and query); null for TCP                |
| authority           | string / null | Host or :authority; null for TCP                                              |
| status              | int / null    | the response status sent downstream; null if none was (TCP, client gone)      |
| bytes_received      | int           | body bytes received from downstream (TCP: all bytes)                          |
| bytes_sent          | int           | body bytes sent downstream (TCP: all bytes)                                   |
| source_service      | string / null | the calling service (from its certificate or our own, per direction)          |
| destination_service | string / null | the service the request was routed to                                         |
| upstream_address    | string / null | "host:port" of the endpoint used last; null if none was reached               |
| zone                | string        | this dataplane's zone                                                         |
| mesh                | string        | this dataplane's mesh                                                         |
| dataplane           | string        | this dataplane's name                                                         |
| trace_id            | string / null | 32 lowercase hex digits, the trace the request belongs to                     |
| response_flags      | string / null | why the proxy failed or cut the exchange short ("upstream_connect_failed",   |
|                     |               | "timeout", "rate_limited", "no_healthy_upstream", ...); null when none       |
| retries             | int           | attempts beyond the first                                                     |
| user_agent          | string / null | the User-Agent header                                                         |
| request_id          | string / null | the x-request-id header                                                       |

Lines are compact JSON in ASCII (other characters escaped), terminated by "\n"; a non-finite duration is null.

Theory of operation (sinks). `write()` appends to an in-memory buffer bounded in bytes (`max_buffer`): a line that
does not fit is dropped and counted, so a slow disk costs log lines, never proxy latency or memory. `run()` is the
one writer: every `flush_interval` seconds, or sooner once `batch_size` bytes are waiting, it takes the whole buffer
and writes it in one call on a worker thread (`trio.to_thread.run_sync`); the file is only ever touched from those
calls, one at a time, so no lock is needed. While a batch is being written, new lines fill a fresh buffer (so up to
twice `max_buffer` may be held). `reopen()` makes the next batch close and reopen the path first. A failed write
(disk full, file gone) drops that batch, is counted in `failed` and logged, and never ends `run()`. When `run()` is
cancelled it writes what is buffered, shielded, before returning.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import BinaryIO, Literal

import trio

log = logging.getLogger(__name__)

MAX_BUFFER = 1 << 20  # bytes of lines held at most; more are dropped
BATCH_SIZE = 64 << 10  # bytes waiting that trigger a write before the interval is up
FLUSH_INTERVAL = 0.5  # seconds between writes otherwise

Direction = Literal["inbound", "outbound", "gateway"]
Protocol = Literal["HTTP/1.1", "HTTP/2", "TCP"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessRecord:
    """One access log entry; see the module's table. Times are taken by the proxy: `start_time` is Unix time."""

    start_time: float  # seconds since the epoch (time.time() when the request arrived)
    duration_ms: float
    direction: Direction
    protocol: Protocol
    method: str | None
    path: str | None
    authority: str | None
    status: int | None
    bytes_received: int
    bytes_sent: int
    source_service: str | None
    destination_service: str | None
    upstream_address: str | None
    zone: str
    mesh: str
    dataplane: str
    trace_id: str | None = None
    response_flags: str | None = None
    retries: int = 0
    user_agent: str | None = None
    request_id: str | None = None


def rfc3339_ms(unix: float) -> str:
    """`unix` as RFC 3339 in UTC with milliseconds (truncated), e.g. 2025-01-02T03:04:05.678Z."""
    seconds, ms = divmod(int(unix * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"


_encode = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


def format_record(r: AccessRecord) -> bytes:
    """`r` as one compact JSON line, "\\n"-terminated, with every field of the table in order."""
    return (_encode({
        "start_time": rfc3339_ms(r.start_time),
        "duration_ms": round(r.duration_ms, 3) if math.isfinite(r.duration_ms) else None,
        "direction": r.direction, "protocol": r.protocol, "method": r.method, "path": r.path,
        "authority": r.authority, "status": r.status, "bytes_received": r.bytes_received, "bytes_sent": r.bytes_sent,
        "source_service": r.source_service, "destination_service": r.destination_service,
        "upstream_address": r.upstream_address, "zone": r.zone, "mesh": r.mesh, "dataplane": r.dataplane,
        "trace_id": r.trace_id, "response_flags": r.response_flags, "retries": r.retries,
        "user_agent": r.user_agent, "request_id": r.request_id,
    }) + "\n").encode("ascii")


@dataclass(frozen=True, slots=True)
class SinkStatistics:
    written: int  # lines handed to the file or stream
    dropped: int  # lines refused because the buffer was full
    failed: int  # lines lost to a failed write
    buffered_bytes: int  # waiting for the next batch


class _BufferedSink(ABC):
    """The buffer and writer task shared by the sinks; subclasses say how a batch reaches its destination."""

    def __init__(self, *, max_buffer: int, batch_size: int, flush_interval: float) -> None:
        self.max_buffer = max_buffer
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self._lines: list[bytes] = []
        self._size = 0
        self._written = self._dropped = self._failed = 0
        self._wakeup = trio.Event()
        self._reopen = False  # read and cleared by `_write` on the worker thread

    def write(self, line: bytes) -> None:
        """Queue one line (from `format_record`). Never blocks; drops the line if the buffer is full."""
        size = self._size + len(line)
        if size > self.max_buffer:
            self._dropped += 1
            return
        self._lines.append(line)
        self._size = size
        if size >= self.batch_size:
            self._wakeup.set()

    def reopen(self) -> None:
        """Close and reopen the destination before the next batch (on SIGHUP). Only sets a flag: safe anywhere."""
        self._reopen = True
        self._wakeup.set()

    def statistics(self) -> SinkStatistics:
        return SinkStatistics(self._written, self._dropped, self._failed, self._size)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write batches until cancelled, then write what is left."""
        await trio.to_thread.run_sync(self._open)
        task_status.started()
        try:
            while True:
                with trio.move_on_after(self.flush_interval):
                    await self._wakeup.wait()
                await self._flush()
        finally:
            with trio.CancelScope(shield=True):
                await self._flush()
                await trio.to_thread.run_sync(self._close)

    async def _flush(self) -> None:
        self._wakeup = trio.Event()  # before taking the batch: a write after this wakes the next round
        lines, self._lines, self._size = self._lines, [], 0
        if lines or self._reopen:
            with trio.CancelScope(shield=True):  # the thread runs to the end anyway: keep its outcome
                ok = await trio.to_thread.run_sync(self._write_batch, lines)
            if ok:
                self._written += len(lines)
            else:
                self._failed += len(lines)

    def _write_batch(self, lines: list[bytes]) -> bool:
        """On a worker thread: write the lines in one call, or log and return False."""
        data = b"".join(lines)
        try:
            self._write(data)
        except (OSError, ValueError) as exc:  # ValueError: a closed stream
            log.warning("access log: %d lines lost: %s", len(lines), exc)
            return False
        return True

    @abstractmethod
    def _open(self) -> None:
        """On a worker thread, before `run()` reports started: open the destination or raise OSError."""

    @abstractmethod
    def _write(self, data: bytes) -> None:
        """On a worker thread: `data` (possibly empty) to the destination in full, or raise OSError."""

    @abstractmethod
    def _close(self) -> None:
        """On a worker thread, when `run()` ends."""


class StdoutSink(_BufferedSink):
    """Lines to a binary stream, the process's stdout by default (`stream` is for tests). It is never closed."""

    def __init__(self, stream: BinaryIO | None = None, *, max_buffer: int = MAX_BUFFER, batch_size: int = BATCH_SIZE,
                 flush_interval: float = FLUSH_INTERVAL) -> None:
        super().__init__(max_buffer=max_buffer, batch_size=batch_size, flush_interval=flush_interval)
        self._stream = stream if stream is not None else sys.stdout.buffer

    def reopen(self) -> None:
        pass  # a stream is not rotated: nothing to reopen

    def _open(self) -> None:
        pass  # the stream is open already, and stays open

    def _close(self) -> None:
        pass

    def _write(self, data: bytes) -> None:
        self._stream.write(data)
        self._stream.flush()


class FileSink(_BufferedSink):
    """Lines appended to the file at `path` (created if missing). `reopen()` after logrotate moved it away."""

    def __init__(self, path: str | os.PathLike[str], *, max_buffer: int = MAX_BUFFER, batch_size: int = BATCH_SIZE,
                 flush_interval: float = FLUSH_INTERVAL) -> None:
        super().__init__(max_buffer=max_buffer, batch_size=batch_size, flush_interval=flush_interval)
        self.path = path
        self._file: BinaryIO | None = None

    def _open(self) -> None:
        self._file = open(self.path, "ab")  # noqa: SIM115 (owned by the sink, closed by _close)

    def _write(self, data: bytes) -> None:
        if self._reopen or self._file is None:
            self._reopen = False
            self._close()
            self._open()
        assert self._file is not None
        if data:
            self._file.write(data)
            self._file.flush()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
