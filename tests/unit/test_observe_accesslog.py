"""Access log lines (hypothesis: any record is one JSON line with its values) and the sinks' buffering and files."""

from __future__ import annotations

import io
import json
import math
import threading
from collections.abc import Callable
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from dataplane.observe.accesslog import AccessRecord, FileSink, StdoutSink, format_record, rfc3339_ms

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FIELDS = [f.name for f in fields(AccessRecord)]
TEXT = st.text(max_size=30)
OPT = st.none() | TEXT
COUNT = st.integers(0, 1 << 53)

RECORDS = st.builds(
    AccessRecord,
    start_time=st.floats(0, 253402300799.0),  # up to the end of year 9999
    duration_ms=st.floats(0, 1e9),
    direction=st.sampled_from(["inbound", "outbound", "gateway"]),
    protocol=st.sampled_from(["HTTP/1.1", "HTTP/2", "TCP"]),
    method=OPT, path=OPT, authority=OPT, status=st.none() | st.integers(100, 599),
    bytes_received=COUNT, bytes_sent=COUNT, source_service=OPT, destination_service=OPT, upstream_address=OPT,
    zone=TEXT, mesh=TEXT, dataplane=TEXT, trace_id=st.none() | st.from_regex(r"[0-9a-f]{32}", fullmatch=True),
    response_flags=OPT, retries=st.integers(0, 100), user_agent=OPT, request_id=OPT,
)

EXAMPLE = AccessRecord(
    start_time=1735787045.6789, duration_ms=12.34567, direction="inbound", protocol="HTTP/1.1", method="GET",
    path="/items?id=7", authority="web.mesh", status=200, bytes_received=0, bytes_sent=512,
    source_service="frontend", destination_service="web", upstream_address="127.0.0.1:8080", zone="zone-1",
    mesh="default", dataplane="web-1")


@given(RECORDS)
def test_any_record_is_one_json_line_with_its_values(record: AccessRecord) -> None:
    line = format_record(record)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.isascii()
    parsed = json.loads(line)
    assert list(parsed) == FIELDS  # every field, null or not, in the documented order
    start = datetime.fromisoformat(parsed.pop("start_time"))
    assert start.tzinfo == UTC
    assert (start - EPOCH) // timedelta(milliseconds=1) == int(record.start_time * 1000)  # exact: no float
    assert parsed.pop("duration_ms") == round(record.duration_ms, 3)
    assert parsed == {name: getattr(record, name) for name in FIELDS if name not in ("start_time", "duration_ms")}


def test_the_documented_format() -> None:
    assert rfc3339_ms(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339_ms(34359738368.1875) == "3058-10-26T03:46:08.187Z"  # milliseconds truncated, exactly
    assert format_record(EXAMPLE) == (
        b'{"start_time":"2025-01-02T03:04:05.678Z","duration_ms":12.346,"direction":"inbound",'
        b'"protocol":"HTTP/1.1","method":"GET","path":"/items?id=7","authority":"web.mesh","status":200,'
        b'"bytes_received":0,"bytes_sent":512,"source_service":"frontend","destination_service":"web",'
        b'"upstream_address":"127.0.0.1:8080","zone":"zone-1","mesh":"default","dataplane":"web-1",'
        b'"trace_id":null,"response_flags":null,"retries":0,"user_agent":null,"request_id":null}\n')
    for bad in (math.nan, math.inf):
        assert json.loads(format_record(replace(EXAMPLE, duration_ms=bad)))["duration_ms"] is None
    odd = json.loads(format_record(replace(EXAMPLE, path="/\u00e9\n\u2028\udcff", user_agent='a"b')))
    assert (odd["path"], odd["user_agent"]) == ("/\u00e9\n\u2028\udcff", 'a"b')


async def wait_until(done: Callable[[], bool], within: float = 5.0) -> None:
    with trio.fail_after(within):
        while not done():  # noqa: ASYNC110 - polls the sink's counters and the file system; no event to wait on
            await trio.sleep(0.01)


def lines(n: int, start: int = 0) -> list[bytes]:
    return [format_record(replace(EXAMPLE, request_id=str(i))) for i in range(start, start + n)]


def request_ids(data: bytes) -> list[str]:
    return [json.loads(line)["request_id"] for line in data.splitlines()]


async def test_file_sink_writes_everything_by_the_time_it_stops(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    sink = FileSink(path, flush_interval=0.01)
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        for line in lines(500):
            sink.write(line)
            if len(line) % 7 == 0:
                await trio.lowlevel.checkpoint()
        await trio.sleep(0.05)
        for line in lines(100, start=500):
            sink.write(line)
        nursery.cancel_scope.cancel()
    assert request_ids(path.read_bytes()) == [str(i) for i in range(600)]
    stats = sink.statistics()
    assert (stats.written, stats.dropped, stats.failed, stats.buffered_bytes) == (600, 0, 0, 0)


async def test_a_full_batch_is_written_before_the_interval(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "access.log", batch_size=4000, flush_interval=3600)
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        batch = lines(3)
        for line in batch:
            sink.write(line)
        assert sum(map(len, batch)) < 4000  # not a batch yet: nothing is written within the hour
        await trio.sleep(0.1)
        assert sink.statistics().written == 0
        for line in lines(10, start=3):
            sink.write(line)
        await wait_until(lambda: sink.statistics().written >= 13)
        nursery.cancel_scope.cancel()


async def test_reopen_follows_logrotate(tmp_path: Path) -> None:
    path, rotated = tmp_path / "access.log", tmp_path / "access.log.1"
    sink = FileSink(path, flush_interval=0.01)
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        sink.write(lines(1)[0])
        await wait_until(lambda: sink.statistics().written >= 1)
        path.rename(rotated)  # what logrotate does, then it sends SIGHUP
        sink.reopen()
        await wait_until(path.exists)  # reopened even before any new line comes
        sink.write(lines(1, start=1)[0])
        nursery.cancel_scope.cancel()
    assert request_ids(rotated.read_bytes()) == ["0"]
    assert request_ids(path.read_bytes()) == ["1"]


async def test_a_file_that_cannot_be_opened_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(ExceptionGroup) as caught:
        async with trio.open_nursery() as nursery:
            await nursery.start(FileSink(tmp_path / "missing-dir" / "access.log").run)
    assert caught.group_contains(FileNotFoundError)


class BlockingStream(io.BytesIO):
    """A stream whose writes wait for `released` (a stuck disk or a full pipe) and can be made to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()
        self.entered = threading.Event()
        self.fail = False

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.entered.set()
        self.released.wait(10)
        if self.fail:
            raise OSError(28, "No space left on device")
        return super().write(data)


async def test_a_stuck_destination_costs_lines_never_the_event_loop() -> None:
    stream = BlockingStream()
    line = lines(1)[0]
    sink = StdoutSink(stream, max_buffer=10 * len(line), flush_interval=0.01)
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        sink.write(line)
        await trio.to_thread.run_sync(stream.entered.wait, 5)  # the writer thread is now stuck on that line
        with trio.fail_after(1):  # the loop keeps running while the thread is stuck
            for _ in range(25):
                sink.write(line)
                await trio.sleep(0.001)
        stats = sink.statistics()
        assert (stats.written, stats.dropped, stats.buffered_bytes) == (0, 15, 10 * len(line))
        stream.released.set()
        await wait_until(lambda: sink.statistics().written >= 11)
        nursery.cancel_scope.cancel()
    assert stream.getvalue() == line * 11
    assert sink.statistics().dropped == 15


async def test_a_failed_write_is_counted_and_the_sink_goes_on() -> None:
    stream = BlockingStream()
    stream.released.set()
    stream.fail = True
    sink = StdoutSink(stream, flush_interval=0.01)
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        for line in lines(3):
            sink.write(line)
        await wait_until(lambda: sink.statistics().failed >= 3)
        stream.fail = False
        sink.write(lines(1, start=3)[0])
        sink.reopen()  # a no-op for a stream
        nursery.cancel_scope.cancel()
    assert request_ids(stream.getvalue()) == ["3"]
    assert (sink.statistics().written, sink.statistics().failed) == (1, 3)
