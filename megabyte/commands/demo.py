"""`megabyte demo`: the whole pipeline in one command, on text every machine has.

    megabyte demo                      # about 5 minutes on a laptop CPU
    megabyte demo --minutes 1          # quicker, worse
    megabyte demo --device cuda

It prepares the Python standard library's own source (the top-level modules of the running
interpreter: no downloads) as a byte dataset, trains a small MEGABYTE and a Transformer of about
the same size for the same wall-clock time each, reports both validation bits per byte, and
prints a continuation sampled from MEGABYTE with the cached sampler. Everything lands in --out.
"""

from __future__ import annotations

import argparse
import sysconfig
import time
from pathlib import Path

from megabyte.errors import MegabyteError

PROMPT = 'def read_config(path):\n    """'


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="prepare the stdlib source, train MEGABYTE and a Transformer, sample (no downloads)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--minutes", type=float, default=2.0, help="training time per model (default 2)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="where data and runs go (default runs/demo)")
    p.add_argument("--preset", default="small", help="model and training shapes (default small)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--prompt", default=PROMPT, help="the prompt of the sample")
    p.add_argument("--sample-bytes", type=int, default=400, help="bytes to sample (default 400)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def stdlib_sources() -> list[Path]:
    """The top-level modules of the running Python's standard library (about 4-5 MB of text)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    if not files:
        raise MegabyteError(f"found no standard library source in {root}")
    return files


def _fresh(path: Path) -> None:
    """Each demo trains from scratch: an earlier demo's run at `path` is removed first."""
    import shutil

    if path.exists():
        if not (path / "train_config.json").exists() and any(path.iterdir()):
            raise MegabyteError(f"{path} exists and is not a run of an earlier demo: choose another --out")
        shutil.rmtree(path)


def run(args: argparse.Namespace) -> int:
    import megabyte
    from megabyte.commands.sample import stream_text
    from megabyte.data.text import prepare_text
    from megabyte.training import TrainConfig, get_preset, train

    if args.minutes <= 0:
        raise MegabyteError(f"--minutes must be positive, got {args.minutes}")
    out: Path = args.out
    say = lambda *a: print(*a, flush=True)
    sources = stdlib_sources()
    say(f"1/4 preparing {len(sources)} files of the Python standard library in {sources[0].parent}")
    meta = prepare_text(sources, out / "data", val_fraction=0.05, seed=args.seed)
    say(f"    {meta['bytes']['train']:,} training bytes, {meta['bytes']['val']:,} validation bytes -> {out / 'data'}")

    preset = get_preset(args.preset)
    results = {}
    for step, kind in ((2, "megabyte"), (3, "transformer")):
        model_config = preset.model_config(kind)
        params = megabyte.build_model(model_config).num_parameters()["total"]
        say(f"{step}/4 training {kind} ({params / 1e6:.1f}M parameters) for {args.minutes:g} min")
        train_config = TrainConfig(
            **{**preset.train, "max_steps": None, "max_time": args.minutes * 60, "device": args.device,
               "seed": args.seed}
        )
        run_dir = out / kind
        _fresh(run_dir)
        started = time.perf_counter()
        summary = train(train_config, model_config, out / "data", run_dir, preset=args.preset, progress=True)
        summary["params"] = params
        summary["seconds"] = time.perf_counter() - started
        results[kind] = summary

    say("\n| model | parameters | steps | bytes trained | val bpb |")
    say("|---|---:|---:|---:|---:|")
    for kind, s in results.items():
        say(f"| {kind} | {s['params'] / 1e6:.1f}M | {s['step']} | {s['bytes']:,} | {s['val_bpb']:.3f} |")

    say(f"\n4/4 sampling {args.sample_bytes} bytes from MEGABYTE ({out / 'megabyte'}), cached decoding:\n")
    model = megabyte.load(out / "megabyte")
    started = time.perf_counter()
    sample = stream_text(model, args.prompt.encode(), args.sample_bytes, temperature=0.8, seed=args.seed)
    rate = len(sample) / (time.perf_counter() - started)
    say(f"\n({len(sample)} bytes at {rate:.0f} bytes/s; more: megabyte sample {out / 'megabyte'} --prompt 'import ')")
    return 0
