"""`megabyte compare`: MEGABYTE against the paper's baselines on one dataset, with a matched budget.

Examples::

    megabyte compare --data data/text --budget 2m --out runs/cmp            # CPU, minutes, small preset
    megabyte compare --data data/text --budget 3s --preset tiny --out /tmp/c # smoke run, seconds
    megabyte compare --data data/image --models megabyte,transformer --flops 2e14 --out runs/img
    megabyte compare --data data/text --preset medium --budget 1h --device cuda --out runs/gpu   # one GPU

Every model trains on the same dataset for the same budget (per model): the same wall-clock on this
machine (--budget, default 10m), the same analytic training FLOPs (--flops), or the same optimizer
steps (--steps). Then all are scored
in bits per byte on the same validation bytes (basic, strided for MEGABYTE, sliding window) and
their cached generation speed is measured. OUT gets compare.md (tables), compare.png (validation bpb
against training compute and time), compare.json (everything) and runs/NAME/ (each training run).
"""

from __future__ import annotations

import argparse
import shlex

EPILOG = """examples:
  megabyte compare --data data/text --budget 2m --out runs/cmp                 CPU, a few minutes per model
  megabyte compare --data data/text --budget 3s --preset tiny --out /tmp/cmp   smoke run (seconds)
  megabyte compare --data data/image --flops 2e14 --out runs/img               matched training FLOPs
  megabyte compare --data data/text --preset medium --budget 1h --device cuda --out runs/gpu

models: megabyte, transformer, perceiver-ar, subword (a byte-level BPE Transformer; text only,
  skipped with a note on image and audio data unless named)
output: OUT/compare.md, OUT/compare.png, OUT/compare.json, OUT/runs/NAME/ (metrics.jsonl, checkpoints)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare", help="MEGABYTE vs Transformer, PerceiverAR and subword baselines at a matched budget",
        description="Train MEGABYTE and the baselines on one dataset with the same budget each, score them "
        "all in bits per byte on the same validation bytes, time their generation, and write a table, "
        "a plot and JSON.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, metavar="DIR", help="prepared dataset directory (megabyte prepare)")
    p.add_argument("--models", metavar="LIST",
                   help="comma-separated: megabyte,transformer,perceiver-ar,subword (default: all that fit the data)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget", metavar="T", help="wall-clock training time per model, e.g. 90s, 10m (default 10m)")
    budget.add_argument("--flops", metavar="F", help="training FLOPs per model, e.g. 1e15, 300T (analytic count)")
    budget.add_argument("--steps", type=int, metavar="N",
                        help="optimizer steps per model (the same updates for every model, whatever they cost)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: runs/compare-DATANAME)")
    p.add_argument("--preset", default="small", metavar="NAME",
                   help="model sizes for every kind: tiny, small, medium, text, ... (default small)")
    p.add_argument("--vocab-size", type=int, default=4096, metavar="V", help="BPE vocabulary of the subword model")
    p.add_argument("--eval-bytes", type=int, metavar="N",
                   help="score only the first N validation bytes (default: the whole split)")
    p.add_argument("--gen-bytes", type=int, default=256, metavar="N", help="bytes to generate for the speed test")
    p.add_argument("--device", default="auto", metavar="DEV", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), help="autocast precision (default: the preset's)")
    p.add_argument("--batch-size", type=int, metavar="B",
                   help="sequences per update for every model (default: the preset's)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="PyTorch CPU threads (default: PyTorch's choice; 1 is steadier on a busy, shared CPU)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of every model and data order")
    p.add_argument("--lr-sweep", choices=("on", "off"), default="on",
                   help="on (default): tune each model's peak learning rate first, every value of the grid training "
                   "the first fifth of the run, scored on held-back training bytes; off: the preset's for all")
    p.add_argument("--lr-grid", metavar="LRS", type=_grid,
                   help="comma-separated learning rates to try (default: 1/4, 1/2, 1 and 2 times the preset's)")
    p.add_argument("--entropy-model", metavar="RUN",
                   help="megabyte-entropy's entropy model (megabyte train --preset entropy); naming it adds "
                   "megabyte-entropy to the default models")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from megabyte.compare.run import compare

    out = args.out or str(Path("runs") / f"compare-{Path(args.data).resolve().name}")
    report = compare(
        args.data, out, models=args.models, budget=args.budget, flops=args.flops, steps=args.steps, preset=args.preset,
        vocab_size=args.vocab_size, eval_bytes=args.eval_bytes, gen_bytes=args.gen_bytes, device=args.device,
        precision=args.precision, seed=args.seed, batch_size=args.batch_size, threads=args.threads,
        progress=not args.no_progress, lr_sweep=args.lr_sweep == "on", lr_grid=args.lr_grid,
        entropy_model=args.entropy_model,
        command=_command(args, out),
    )
    print(Path(out, "compare.md").read_text(encoding="utf-8"))
    return 0 if report["models"] else 1


def _grid(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of learning rates: {text!r}") from None
    if not values or not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"learning rates must be above 0: {text!r}")
    return values


def _command(args: argparse.Namespace, out: str) -> str:
    """The command line that reproduces this comparison, as recorded in its report."""
    parts = ["megabyte", "compare", "--data", args.data]
    for flag, value, default in (("--models", args.models, None), ("--budget", args.budget, None),
                                 ("--flops", args.flops, None), ("--steps", args.steps, None),
                                 ("--preset", args.preset, "small"),
                                 ("--vocab-size", args.vocab_size, 4096), ("--eval-bytes", args.eval_bytes, None),
                                 ("--gen-bytes", args.gen_bytes, 256), ("--device", args.device, "auto"),
                                 ("--precision", args.precision, None), ("--batch-size", args.batch_size, None),
                                 ("--threads", args.threads, None), ("--seed", args.seed, 0),
                                 ("--lr-sweep", args.lr_sweep, "on"), ("--entropy-model", args.entropy_model, None),
                                 ("--lr-grid", ",".join(f"{v:g}" for v in args.lr_grid) if args.lr_grid else None,
                                  None)):
        if value is not None and value != default:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in [*parts, "--out", out])
