"""One training per run directory: `RUN/.lock`, held with `flock` for the life of the run.

A second `megabyte train` pointed at the same RUN (fresh or --resume) finds the lock taken and
stops with a message naming the holder, instead of interleaving checkpoints with it. The kernel
drops a `flock` when its process dies, however it dies, so the file a killed run leaves behind
never blocks a resume. The file is removed when the run ends normally.

Locks are advisory and local: `flock` may not reach across machines on some network file systems.
On platforms without `fcntl` (Windows) no lock is taken.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from megabyte.errors import MegabyteError

LOCK = ".lock"

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


class RunLock:
    """`with RunLock(run_dir):` holds RUN/.lock exclusively, or raises MegabyteError at once."""

    def __init__(self, run_dir: str | os.PathLike[str], *, enabled: bool = True) -> None:
        self.path = Path(run_dir) / LOCK
        self.enabled = enabled and fcntl is not None
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        if not self.enabled:
            return self
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise MegabyteError(f"cannot write to the run directory {self.path.parent}: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise MegabyteError(f"{self.path.parent} is in use by another training ({holder}); wait for it "
                                    f"to finish or stop it, or choose another --out") from None
            # The holder before us may have removed the file after we opened it: lock the file
            # that is at the path now, not an orphan.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # still ours: the lock is held until the close below
        finally:
            os.close(self._fd)
            self._fd = None
