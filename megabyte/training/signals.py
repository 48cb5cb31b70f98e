"""Ctrl-C and SIGTERM during training: finish the step, save a checkpoint, stop.

The first SIGINT or SIGTERM only sets `trainer.stop_requested` (the loop checks it between
steps), so the run ends with a complete checkpoint and `megabyte train --resume` continues it
exactly. A second signal aborts at once (KeyboardInterrupt) without saving; the checkpoint that
RUN/latest names is still complete, since every save is atomic.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signals(trainer: Any) -> Iterator[None]:
    """Route SIGINT and SIGTERM to `trainer.stop_requested` ("SIGINT"/"SIGTERM") while inside."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def handle(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if trainer.stop_requested:
            _say(f"{name} again: aborting now, without saving this step")
            raise KeyboardInterrupt
        trainer.stop_requested = name
        _say(f"{name}: finishing this step, saving a checkpoint and stopping ({name} again aborts at once)")

    previous = {sig: signal.signal(sig, handle) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _say(message: str) -> None:
    # os.write, not print: the signal may arrive while the main thread is inside a print.
    os.write(2, f"\n{message}\n".encode())
