"""Atomic file writes: write aside, fsync, rename into place. A reader (or a run killed at any
instant) sees the old file or the new one, never half of one. No PyTorch needed here."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def new_file_mode() -> int:
    """The permissions an ordinary new file gets under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def temp_file_beside(path: Path) -> tuple[int, str]:
    """A new temporary file (descriptor, name) in `path`'s directory, with ordinary permissions
    (mkstemp's own 0600 would otherwise stick to the renamed file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, new_file_mode())
    return fd, tmp


@contextmanager
def atomic_open(path) -> Iterator[BinaryIO]:
    """`with atomic_open(path) as f: f.write(...)`: `path` appears, complete, only on success."""
    path = Path(path)
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it into place."""
    with atomic_open(path) as f:
        f.write(data)
