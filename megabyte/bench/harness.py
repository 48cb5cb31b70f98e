"""The subprocess harness of `megabyte bench`: every measurement runs in a fresh Python process
(`megabyte.bench.worker`), so that one row's memory, threads and allocator state cannot leak into
the next, and a crash or an out-of-memory kill is a result, not the end of the run.

    result = run_worker({"task": "train", ...}, timeout_s=600, env=worker_env(threads=2))
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from megabyte.bench.worker import RESULT_MARK


def worker_env(threads: int) -> dict[str, str]:
    """The environment of every worker: the same thread count for every library."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def run_worker(spec: dict[str, Any], *, timeout_s: float, env: dict[str, str] | None = None,
               inline: bool = False) -> dict[str, Any]:
    """Run one measurement in a fresh Python process (or here, `inline`) and return its result."""
    if inline:
        from megabyte.bench.worker import run_task

        return run_task({**spec, "mem_limit_gb": None, "threads": None})
    cmd = [sys.executable, "-m", "megabyte.bench.worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    if proc.returncode < 0:  # killed by a signal: the kernel's out-of-memory killer sends SIGKILL
        return {"error": f"killed by signal {-proc.returncode}", "oom": proc.returncode == -9}
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"worker exited with {proc.returncode}: {' | '.join(tail)[:300]}"}


