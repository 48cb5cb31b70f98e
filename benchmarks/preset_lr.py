"""Does a preset's learning rate let every model kind learn? For each dataset and batch size, one
`megabyte compare --steps N --lr-sweep off` (every kind, the subword model included, at the
preset's own rate and schedule, the same number of updates each) and each model's validation bpb
against the unigram entropy of the training bytes (what byte frequencies alone score).

    python benchmarks/preset_lr.py --data data/code data/prose data/stdlib --preset small
    python benchmarks/preset_lr.py --data data/text --kinds megabyte,transformer --batches 2 --steps 100

`--batches 2,preset` with `--steps 200`: 200 steps at batch 2 and, at the preset's batch B, the
steps that read about the same bytes (200 x 2 / B), so both rows see the same data and FLOPs.
One JSON line per model as it finishes, then a markdown table. Comparisons run one at a time
(the figures are the point; the seconds column is the clock of this machine).
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


def run(data: str, kinds: str, preset: str, batch: int, steps: int, eval_bytes: int, threads: int | None,
        out: Path) -> list[dict]:
    cmd = [sys.executable, "-m", "megabyte", "compare", "--data", data, "--models", kinds, "--preset", preset,
           "--steps", str(steps), "--batch-size", str(batch), "--eval-bytes", str(eval_bytes), "--gen-bytes", "16",
           "--lr-sweep", "off", "--no-progress", "--out", str(out)]
    cmd += ["--threads", str(threads)] if threads else []
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        return [{"error": ((proc.stderr or proc.stdout).strip().splitlines() or ["?"])[-1],
                 "seconds": time.perf_counter() - start}]
    report = json.loads((out / "compare.json").read_text())
    rows = []
    for m in report["models"]:
        records = [json.loads(line) for line in (out / "runs" / m["name"] / "metrics.jsonl").read_text().splitlines()]
        rows.append({"kind": m["name"], "lr": m["train"]["lr"], "steps": m["train"]["steps"],
                     "val_bpb": m["eval"]["basic"]["bpb"],
                     "spikes": sum(len(r.get("spikes", [])) for r in records),
                     "seconds": m["train"]["seconds"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    from megabyte.training.presets import get_preset

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", required=True, metavar="DIR", help="prepared text datasets")
    p.add_argument("--preset", default="small")
    p.add_argument("--kinds", default="megabyte,megabyte-space,transformer,perceiver-ar,subword")
    p.add_argument("--batches", default="2,preset", help="comma-separated batch sizes; 'preset': the preset's")
    p.add_argument("--steps", type=int, default=200, help="steps at the first batch size; others read as many bytes")
    p.add_argument("--eval-bytes", type=int, default=65536, help="validation bytes scored per model")
    p.add_argument("--threads", type=int, help="PyTorch CPU threads")
    args = p.parse_args(argv)
    preset = get_preset(args.preset)
    batches = [preset.train["batch_size"] if b == "preset" else int(b) for b in args.batches.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for data in args.data:
            unigram = unigram_bits(data)
            for batch in batches:
                steps = max(1, round(args.steps * batches[0] / batch))
                out = Path(tmp) / f"cmp{len(rows)}"
                for r in run(data, args.kinds, args.preset, batch, steps, args.eval_bytes, args.threads, out):
                    row = {"data": Path(data).name, "batch": batch, "unigram": unigram, **r}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    print("\n| kind | data | batch | steps | lr | val bpb | unigram | below unigram by | loss spikes | train s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| - | {r['data']} | {r['batch']} | | | error: {r['error']} | | | | |")
            continue
        print(f"| {r['kind']} | {r['data']} | {r['batch']} | {r['steps']} | {r['lr']:g} | {r['val_bpb']:.3f} | "
              f"{r['unigram']:.3f} | {r['unigram'] - r['val_bpb']:+.3f} | {r['spikes']} | {r['seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
