"""Clean exits of two-process training: run the same torchrun command many times in a row.

    python benchmarks/torchrun_exits.py --data data/text                  # 30 runs, DDP
    python benchmarks/torchrun_exits.py --data data/text --parallel fsdp --runs 10

Each run is `torchrun --standalone --nproc_per_node 2 -m megabyte train --data D --out R
--preset tiny --max-steps 8` in a fresh run directory. A run is clean when torchrun exits 0 and
no rank printed "terminate called" (the abort at interpreter exit that a process group's thread
outliving the group causes). Prints one line per run and the count; exits 1 unless all were clean.
Each run takes a few seconds, most of it starting the processes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(data: str, out: Path, parallel: str, steps: int) -> tuple[bool, int, float, str]:
    """(clean, exit code, seconds, last lines of output) of one two-process training."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "megabyte", "train", "--data", data, "--out", str(out), "--preset", "tiny",
           "--max-steps", str(steps), "--parallel", parallel, "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.monotonic()
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=300)
    seconds = time.monotonic() - start
    clean = done.returncode == 0 and "terminate called" not in done.stdout
    return clean, done.returncode, seconds, "\n".join(done.stdout.splitlines()[-5:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a dataset made by `megabyte prepare`")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--parallel", choices=("ddp", "fsdp"), default="ddp")
    args = parser.parse_args()
    clean = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(1, args.runs + 1):
            ok, code, seconds, tail = one_run(args.data, Path(tmp) / f"run{i}", args.parallel, args.steps)
            clean += ok
            print(f"run {i:>3}: exit {code}, {seconds:.1f} s{'' if ok else ' NOT CLEAN'}", flush=True)
            if not ok:
                print("  " + tail.replace("\n", "\n  "), flush=True)
    print(f"{clean}/{args.runs} clean exits ({args.parallel}, 2 processes, {args.steps} steps each)")
    return 0 if clean == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
