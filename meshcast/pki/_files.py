"""Writing key and certificate files so that a reader never sees a partial file or a readable private key.

Each file is written to a temporary name in the same directory, created by ``os.open`` with
``O_CREAT | O_EXCL`` and its final mode (0600 for private keys), flushed to disk, then renamed over the
target. The key is therefore never readable by group or others, not even between create and chmod, and a
crash leaves either the old file or the new one. The umask can only narrow the mode further.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
DIR_MODE = 0o700


def ensure_dir(directory: Path) -> None:
    """Create `directory` (0700) if it is missing; an existing directory keeps its mode."""
    directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)


def write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    """Replace `path` with `data` atomically; the file has `mode` from the moment it exists."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_private(path: Path, data: bytes) -> None:
    write_atomic(path, data, mode=PRIVATE_MODE)


def write_public(path: Path, data: bytes) -> None:
    write_atomic(path, data, mode=PUBLIC_MODE)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename durable; some filesystems refuse to open a directory, which costs only durability.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
