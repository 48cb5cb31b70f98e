"""Keep large CPU tensors in the process's heap instead of fresh pages from the kernel.

PyTorch allocates CPU tensors with the C library's `malloc`. glibc hands every block above
its mmap threshold (at most 32 MiB) to the kernel as new pages and returns it on `free`, so a
training step that creates and drops the same large activations every time pays for zeroing
and faulting in those pages again, every step. Measured here (2 threads, bf16): a
16384 x 256 x 1024 matrix product ran at 0.7 TFLOP/s with the default and 3.1 TFLOP/s with
the heap kept; the reference MEGABYTE training step at 8,192 bytes was ~15% faster.

`tune()` asks glibc (`mallopt`) to serve every block from its heap and never to shrink the
heap: the memory of one step is reused by the next. Peak memory stays that of one step; the
process just does not give it back between steps. It is a no-op where the C library is not
glibc. Set `MEGABYTE_MALLOC=default` to leave the C library's settings alone.

It is for host memory doing the work: CPU runs only. A GPU run's large tensors live in GPU
memory, so there is nothing for the heap to reuse, and a heap that never shrinks would keep the
run's largest host allocations (the weights read at start, a checkpoint gathered on rank 0) for
the rest of the run. So `megabyte` commands `request()` it on start, and the device resolution
(`megabyte.training.runtime.resolve_device`) applies it through `tune_for(device)`, on the CPU
only. Python users call `tune()` themselves if they want it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_done: bool | None = None
_requested = False


def tune() -> bool:
    """Serve large blocks from the heap and keep it (glibc only). Returns whether it applied."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("MEGABYTE_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success. Trimming is disabled first so that the heap never shrinks.
    _done = bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)) and bool(mallopt(_M_MMAP_MAX, 0))
    return _done


def request() -> None:
    """Ask for `tune()` once this process's device is known to be the CPU (`tune_for`): what the
    command line does on start, before any command has resolved its device."""
    global _requested
    _requested = True


def tune_for(device) -> bool:
    """`tune()` if it was requested and `device` (a torch.device or its name) is the CPU; for any
    other device, nothing (see the module docstring). Returns whether the heap is tuned now."""
    kind = getattr(device, "type", None) or str(device).split(":")[0]
    if not _requested or kind != "cpu":
        return bool(_done)
    return tune()
