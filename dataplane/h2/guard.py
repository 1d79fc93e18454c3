"""What the h2 library does not bound on its own: header blocks split over many frames, and empty DATA floods.

`FrameGuard` reads only the 9-byte frame headers of what a peer sends (it never buffers payloads), before the
bytes reach h2, and raises `FloodDetected` when a header block (HEADERS + CONTINUATION frames) grows past
`max_header_block` bytes or `max_continuations` frames (CVE-2024-27316 class: the "CONTINUATION flood"), or when
more than `max_empty_frames` DATA frames in a row carry no payload and no END_STREAM (CVE-2019-9518). It also
tells the connection whether a header block is open, so a block trickled in slowly meets the header timeout.

Pure logic, no IO: tested alone, with hypothesis feeding arbitrary byte splits.
"""

from __future__ import annotations

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PUSH_PROMISE, CONTINUATION = 0x0, 0x1, 0x5, 0x9
END_STREAM, END_HEADERS = 0x1, 0x4


class FloodDetected(Exception):
    """The peer's frames crossed a limit; the connection should be closed with ENHANCE_YOUR_CALM."""


class FrameGuard:
    __slots__ = ("_block_bytes", "_block_frames", "_buffer", "_empty_run", "_preface_left", "_skip",
                 "in_header_block", "max_continuations", "max_empty_frames", "max_header_block")

    def __init__(self, *, server_side: bool, max_header_block: int = 64 * 1024, max_continuations: int = 32,
                 max_empty_frames: int = 16) -> None:
        self.max_header_block = max_header_block
        self.max_continuations = max_continuations
        self.max_empty_frames = max_empty_frames
        self._preface_left = len(PREFACE) if server_side else 0
        self._buffer = b""  # an incomplete frame header
        self._skip = 0  # payload bytes of the current frame still to pass
        self._block_bytes = 0
        self._block_frames = 0
        self._empty_run = 0
        self.in_header_block = False

    def feed(self, data: bytes | bytearray) -> None:
        """Account for `data`, the next bytes from the peer. Raises FloodDetected."""
        view = memoryview(data)
        if self._preface_left:
            taken = min(self._preface_left, len(view))
            self._preface_left -= taken
            view = view[taken:]
        while view:
            if self._skip:
                taken = min(self._skip, len(view))
                self._skip -= taken
                view = view[taken:]
                continue
            need = 9 - len(self._buffer)
            if len(view) < need:
                self._buffer += bytes(view)
                return
            header = self._buffer + bytes(view[:need])
            self._buffer = b""
            view = view[need:]
            self._frame(int.from_bytes(header[:3], "big"), header[3], header[4])

    def _frame(self, length: int, kind: int, flags: int) -> None:
        self._skip = length
        if kind in (HEADERS, PUSH_PROMISE):
            self._block_bytes, self._block_frames = length, 1
            self.in_header_block = not flags & END_HEADERS
        elif kind == CONTINUATION:
            self._block_bytes += length
            self._block_frames += 1
            if flags & END_HEADERS:
                self.in_header_block = False
            if self._block_frames > self.max_continuations + 1:
                raise FloodDetected(f"a header block in more than {self.max_continuations} CONTINUATION frames")
        elif kind == DATA:
            if length == 0 and not flags & END_STREAM:
                self._empty_run += 1
                if self._empty_run > self.max_empty_frames:
                    raise FloodDetected(f"more than {self.max_empty_frames} empty DATA frames in a row")
            else:
                self._empty_run = 0
        if kind in (HEADERS, PUSH_PROMISE, CONTINUATION) and self._block_bytes > self.max_header_block:
            raise FloodDetected(f"a header block over {self.max_header_block} bytes")


class ResetCounter:
    """Rapid Reset (CVE-2023-44487): streams the peer resets before their response completed ("premature" resets)
    are counted, as Envoy does; once at least `min_streams` streams were opened on the connection and more than
    `max_share` of them were reset prematurely, the connection is abusive. A client that cancels some calls
    (gRPC deadlines) stays well below; a flood of open-and-reset stays above from its first hundred streams."""

    __slots__ = ("max_share", "min_streams", "premature", "streams")

    def __init__(self, *, min_streams: int = 100, max_share: float = 0.5) -> None:
        self.min_streams = min_streams
        self.max_share = max_share
        self.streams = 0
        self.premature = 0

    def opened(self) -> None:
        self.streams += 1

    def reset_early(self) -> bool:
        """Count a premature reset; True when the connection crossed the limit."""
        self.premature += 1
        return self.streams >= self.min_streams and self.premature > self.max_share * self.streams
