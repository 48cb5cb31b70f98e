"""Launch `megabyte train` under torchrun on the CPU: gloo over the loopback interface only."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, nproc: int = 2, script: str | None = None, timeout: float = 120,
             env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """Run `torchrun --nproc_per_node NPROC -m megabyte ARGS` (or SCRIPT ARGS) on 127.0.0.1 and
    a free port; return the finished process (stdout and stderr merged) and its wall time."""
    target = [script] if script else ["-m", "megabyte"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *target, *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]), **(env or {})}
    if sys.platform.startswith("linux"):
        full_env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only, whatever the hostname resolves to
    start = time.monotonic()
    done = subprocess.run(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    return done, time.monotonic() - start


def losses(run: Path) -> list[tuple[int, float | None, float | None]]:
    """(step, train_bpb, val_bpb) of every metrics record of `run`."""
    records = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("train_bpb"), r.get("val_bpb")) for r in records]
