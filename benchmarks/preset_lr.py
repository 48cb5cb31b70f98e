"""Does a preset's learning rate let every model kind learn? Train each kind with the preset's
defaults (and any other peak learning rates to try) on each dataset, at batch 2 and at the
preset's batch, for a fixed number of steps, and print each final validation bpb against the
unigram entropy of the training bytes (what byte frequencies alone score).

    python benchmarks/preset_lr.py --data data/code data/prose data/stdlib --preset small --steps 200
    python benchmarks/preset_lr.py --data data/text --kinds megabyte --lrs 1.5e-3,6e-4 --batches 2

One line per run (kind, data, batch, lr, val bpb, unigram, margin, loss spikes, seconds), then a
markdown table. Runs are sequential (one at a time: the figures are the point, not the clock).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def unigram_bits(data: str) -> float:
    from megabyte.data.dataset import load_dataset
    from megabyte.training.objective import ByteObjective

    return ByteObjective(load_dataset(data)).unigram_bits()


def run(kind: str, data: str, preset: str, batch: int | None, lr: float | None, steps: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "megabyte", "train", "--data", data, "--out", str(out), "--preset", preset,
           "--model", kind, "--max-steps", str(steps), "--eval-every", str(max(1, steps // 2)), "--save-every", "0",
           "--no-progress"]
    cmd += ["--batch-size", str(batch)] if batch else []
    cmd += ["--lr", str(lr)] if lr else []
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:], "seconds": seconds}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_bpb"] for r in records if "val_bpb" in r]
    return {"val_bpb": vals[-1], "spikes": sum(len(r.get("spikes", [])) for r in records), "seconds": seconds,
            "lr": json.loads((out / "train_config.json").read_text())["train"]["lr"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", required=True, metavar="DIR", help="prepared text datasets")
    p.add_argument("--preset", default="small")
    p.add_argument("--kinds", default="megabyte,transformer,perceiver-ar")
    p.add_argument("--batches", default="2,preset", help="comma-separated batch sizes; 'preset': the preset's")
    p.add_argument("--lrs", default="preset", help="comma-separated peak learning rates; 'preset': the preset's")
    p.add_argument("--steps", type=int, default=200)
    args = p.parse_args(argv)
    batches = [None if b == "preset" else int(b) for b in args.batches.split(",")]
    lrs = [None if v == "preset" else float(v) for v in args.lrs.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for data in args.data:
            unigram = unigram_bits(data)
            for kind in args.kinds.split(","):
                for batch in batches:
                    for lr in lrs:
                        out = Path(tmp) / f"run{len(rows)}"
                        r = run(kind, data, args.preset, batch, lr, args.steps, out)
                        row = {"kind": kind, "data": Path(data).name, "batch": batch or "preset", "unigram": unigram,
                               **r}
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    print("\n| kind | data | batch | lr | val bpb | unigram | below unigram by | spikes | s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['kind']} | {r['data']} | {r['batch']} | - | error: {r['error']} | | | | |")
            continue
        print(f"| {r['kind']} | {r['data']} | {r['batch']} | {r['lr']:g} | {r['val_bpb']:.3f} | {r['unigram']:.3f} | "
              f"{r['unigram'] - r['val_bpb']:+.3f} | {r['spikes']} | {r['seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
