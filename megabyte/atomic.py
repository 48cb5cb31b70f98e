"""Atomic file and directory writes: write aside, fsync, rename into place. A reader (or a run
killed at any instant) sees the old file or directory or the new one, never half of one; when a
replacement fails, the old one is still there. Every writer of the project goes through here
(checkpoints, datasets, metrics, samples, saved models). No PyTorch needed here.

    with atomic_open(path) as f: f.write(data)       # a file, written through a file object
    with atomic_path(path) as tmp: library.save(tmp)  # a file that a library writes by name
    replace_dir(finished_tmp_dir, out)                # a directory built aside
"""

from __future__ import annotations

import os
import secrets
import shutil
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
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """`with atomic_path(path) as tmp: save(tmp)`: for writers that take a file name. `tmp` lies
    beside `path`; on success it gets ordinary permissions, is fsynced and renamed to `path`."""
    path = Path(path)
    fd, tmp = temp_file_beside(path)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, new_file_mode())  # the writer may have made a file of its own mode
        fsync_file(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it into place."""
    with atomic_open(path) as f:
        f.write(data)


def fsync_file(path: Path) -> None:
    """Flush a written file's contents to the disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (the names of renamed files) to the disk, where the platform can."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


ASIDE_SUFFIX = ".old"
"""Ending of the name an old directory has while `replace_dir` replaces it (cleaned up after a kill)."""


def replace_dir(src: Path, dst: Path) -> None:
    """Put the finished directory `src` in place of `dst`. An existing `dst` is renamed aside
    first and deleted once `src` is in place; if that rename fails, `dst` is put back, so the old
    directory survives any failure of its replacement. `src` and `dst` share a parent file system."""
    src, dst = Path(src), Path(dst)
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}{ASIDE_SUFFIX}")
        os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        if old is not None:
            os.replace(old, dst)
        raise
    fsync_dir(dst.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
