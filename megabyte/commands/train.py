"""`megabyte train`: train MEGABYTE or a baseline on a prepared dataset, with exact resume.

Examples::

    megabyte train --data data/text --out runs/tiny --preset tiny                 # CPU smoke run, seconds
    megabyte train --data data/text --out runs/small --max-time 10m               # small MEGABYTE on a CPU
    megabyte train --data data/text --out runs/tf --model transformer --max-time 10m
    megabyte train --data data/text --out runs/gpu --preset medium --device cuda train.compile=true
    megabyte train --out runs/small --resume --max-steps 4000                     # continue a run
    megabyte train --data data/text --out runs/job --resume auto                  # requeued jobs: same command
    megabyte train --list-presets
    torchrun --nproc_per_node 8 -m megabyte train --data data/text --out runs/m --preset medium   # DDP, 8 GPUs
    torchrun --nproc_per_node 8 -m megabyte train --data data/text --out runs/m --preset medium --parallel fsdp

Settings come from the preset, then a TOML file (--config), then `model.FIELD=VALUE` /
`train.FIELD=VALUE` overrides, then the flags. With --resume they start from the run's saved
configuration instead, and only the budget, cadence, device and parallelism may change.
`--resume auto` continues RUN when it holds a checkpoint and starts it otherwise, so that a job
that is requeued or restarted (SLURM --requeue, torchrun --max-restarts) runs one command every time.

Under torchrun (one process per GPU, or several on a CPU) the same command trains with DDP, or
FSDP2 with --parallel fsdp. The global batch (batch_size x grad_accum sequences per step) stays
the same whatever the number of processes, so a run resumes on any number of them. See
docs/distributed.md for multi-node and SLURM launches.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from megabyte.errors import MegabyteError

EPILOG = """examples:
  megabyte train --data data/text --out runs/tiny --preset tiny            CPU smoke run (seconds)
  megabyte train --data data/text --out runs/small --max-time 10m          small MEGABYTE, 10 minutes
  megabyte train --data data/text --out runs/tf --model transformer        the same-size Transformer baseline
  megabyte train --data data/text --out runs/m --preset medium --device cuda train.compile=true   one GPU
  megabyte train --out runs/small --resume                                 continue a stopped run exactly
  megabyte train --out runs/small --resume --max-steps 4000                continue it with a longer budget
  megabyte train --data data/text --out runs/job --preset small --resume auto   the same command on every
                                                                           (re)start: continues, or starts
  megabyte train --list-presets                                            presets with parameter counts
  torchrun --nproc_per_node 4 -m megabyte train --data data/text --out runs/m --preset medium   4 GPUs, DDP
  torchrun --nproc_per_node 4 -m megabyte train ... --parallel fsdp        FSDP2: shard a model too big for one GPU

overrides: model.FIELD=VALUE and train.FIELD=VALUE, e.g. model.dims=512,256 train.batch_size=16
  train.grad_accum=4 train.precision=fp32 train.decay_steps=4000 train.dropout=0.1 train.dist_timeout=10m
batch: batch_size x grad_accum sequences make one optimizer step over all processes (torchrun); each
  of W processes runs 1/W of them, in micro-batches of at most batch_size sequences
run directory: RUN/train_config.json, RUN/metrics.jsonl, RUN/loss.png, RUN/latest,
  RUN/checkpoints/step-NNNNNNNN/ (megabyte.load(RUN) loads the latest model)
stopping: Ctrl-C or SIGTERM finishes the step, saves a checkpoint and exits with 130 or 143 (--resume
  continues exactly); a second one aborts without saving. A killed run resumes from its last complete
  checkpoint. One training at a time per RUN (RUN/.lock); a non-finite loss stops the run unsaved.
schedule: a step budget fixes the learning-rate decay at the first start (train.decay_steps = max_steps,
  saved with the run), so --resume continues the same schedule; a longer --max-steps then trains on at
  min_lr after the decay, unless train.decay_steps=N on that resume re-plans it. A time budget
  (--max-time) keeps following the budget: a longer one stretches the rest of the decay (said at resume).
requeued jobs: SLURM `#SBATCH --requeue` with `srun megabyte train ... --resume auto` (preemption sends
  SIGTERM: the step ends, a checkpoint is saved, the requeued job continues from it); under torchrun,
  `torchrun --max-restarts 3 ... -m megabyte train ... --resume auto` restarts every rank from the
  latest checkpoint after a failure.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from megabyte.training.presets import PRESETS, model_kinds

    p = subparsers.add_parser(
        "train", help="train a model on a prepared dataset (checkpoints, metrics, exact resume)",
        description="Train MEGABYTE, a Transformer or PerceiverAR on a dataset made by `megabyte prepare`.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", metavar="SECTION.FIELD=VALUE",
                   help="config overrides, e.g. model.dims=512,256 train.batch_size=8")
    p.add_argument("--data", metavar="DIR", help="prepared dataset directory (optional with --resume)")
    p.add_argument("--out", metavar="RUN", help="run directory for checkpoints, metrics and the loss curve")
    p.add_argument("--model", metavar="KIND", help=f"model kind: {', '.join(model_kinds())} (default megabyte)")
    p.add_argument("--preset", metavar="NAME", help=f"shape and settings: {', '.join(PRESETS)} (default small)")
    p.add_argument("--config", metavar="FILE.toml", help="TOML file: preset, model_kind, [model], [train]")
    p.add_argument("--resume", nargs="?", const="yes", metavar="auto",
                   help="continue RUN from its latest checkpoint (an error if it has none); --resume auto: "
                   "continue when RUN has a checkpoint, else start it (for requeued and restarted jobs)")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop after N optimizer steps in all")
    p.add_argument("--max-time", metavar="T", help="stop after this much time in all, e.g. 600, 10m, 1h30m "
                   "(replaces the preset's step budget unless --max-steps is given too)")
    p.add_argument("--save-every", type=int, metavar="N", help="checkpoint every N steps (0: only at the end)")
    p.add_argument("--eval-every", type=int, metavar="N", help="validate every N steps (0: only at the end)")
    p.add_argument("--lr", type=float, metavar="LR", help="peak learning rate")
    p.add_argument("--batch-size", type=int, metavar="B",
                   help="sequences per micro-batch; B x grad_accum make the global batch of a step")
    p.add_argument("--seed", type=int, metavar="S", help="seed of initialisation, data order and dropout")
    p.add_argument("--device", metavar="DEV", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), help="autocast precision")
    p.add_argument("--compile", action="store_true", default=None,
                   help="compile every transformer block with torch.compile")
    p.add_argument("--parallel", choices=("ddp", "fsdp"),
                   help="under torchrun: ddp (replicas, the default) or fsdp (FSDP2 shards)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list-presets", action="store_true", help="list the presets with parameter counts and exit")
    p.set_defaults(func=run)


_FLAGS = {"max_steps": "max_steps", "max_time": "max_time", "save_every": "save_every", "eval_every": "eval_every",
          "lr": "lr", "batch_size": "batch_size", "seed": "seed", "device": "device", "precision": "precision",
          "compile": "compile", "parallel": "parallel"}


def run(args: argparse.Namespace) -> int:
    from megabyte.training.loop import train
    from megabyte.training.presets import describe_presets

    if args.list_presets:
        print(describe_presets())
        return 0
    if not args.out:
        raise MegabyteError("--out RUN is required")
    args.resume = resume_mode(args)
    model_config, train_config, data_dir, preset = build_configs(args)
    summary = train(train_config, model_config, data_dir, args.out, resume=args.resume, preset=preset,
                    progress=not args.no_progress)
    reason = summary["stop_reason"] or ""
    if reason.startswith("SIG"):  # stopped by Ctrl-C or SIGTERM, after saving: say so, exit 128 + signal
        import signal

        print(f"stopped by {reason} at step {summary['step']}; continue with: megabyte train --out {args.out} "
              "--resume", file=sys.stderr)
        return 128 + signal.Signals[reason].value
    return 0


def resume_mode(args: argparse.Namespace) -> bool:
    """Whether to resume: --resume always, --resume auto when RUN holds a checkpoint."""
    value = args.resume
    if value is None:
        return False
    if value not in ("yes", "auto"):
        if "=" not in value:
            raise MegabyteError(f"--resume takes no value, or 'auto'; got {value!r}")
        args.overrides.insert(0, value)  # argparse gave an override that followed --resume to it
        value = "yes"
    if value == "yes":
        return True
    from pathlib import Path

    from megabyte.training.checkpoint import latest_checkpoint

    if latest_checkpoint(Path(args.out)) is not None:
        return True
    if _first_process():
        print(f"--resume auto: {args.out} holds no checkpoint yet, starting a new run", file=sys.stderr)
    return False


def _first_process() -> bool:
    """Whether this is the only process, or rank 0 of torchrun's (which alone speaks)."""
    import os

    return os.environ.get("RANK", "0") == "0"


def build_configs(args: argparse.Namespace) -> tuple[Any, Any, str, str | None]:
    """The model config, train config, data directory and preset name the arguments describe."""
    from megabyte.training.config import TrainConfig, parse_duration, read_toml, split_overrides
    from megabyte.training.presets import DEFAULT_PRESET, config_class, get_preset
    from megabyte.training.run import read_saved_run

    file = read_toml(args.config) if args.config else {}
    kind = args.model or file.get("model_kind")
    preset_name = args.preset or file.get("preset")
    if args.resume:
        saved = read_saved_run(args.out)
        saved_kind = saved.model_config.model_type
        if kind and kind != saved_kind:
            raise MegabyteError(f"cannot resume {args.out} as {kind}: it trains a {saved_kind} model")
        if preset_name and preset_name != saved.preset:
            raise MegabyteError(f"cannot resume {args.out} with preset {preset_name}: it was started "
                                f"with {saved.preset or 'no preset'}")
        kind, preset_name = saved_kind, saved.preset
        model_fields, train_fields = saved.model_config.to_dict(), saved.train_config.to_dict()
        data_dir = args.data or saved.data_dir
    else:
        if not args.data:
            raise MegabyteError("--data DIR is required (a dataset made by `megabyte prepare`)")
        preset_name = preset_name or DEFAULT_PRESET
        preset = get_preset(preset_name)
        kind = kind or preset.kind
        model_fields, train_fields = preset.model_fields(kind), dict(preset.train)
        data_dir = args.data
    model_cls = config_class(kind)
    model_over, train_over = split_overrides(args.overrides, model_cls)
    for flag, field in _FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            train_over[field] = parse_duration(value, "--max-time") if flag == "max_time" else value
    given = {**file.get("train", {}), **train_over}
    if not args.resume and "max_time" in given and "max_steps" not in given:
        train_fields["max_steps"] = None  # a time budget replaces the preset's step budget
    model_fields.update(file.get("model", {}))
    model_fields.update(model_over)
    train_fields.update(given)
    model_config, train_config = model_cls.from_dict(model_fields), TrainConfig.from_dict(train_fields)
    if not args.resume:  # the preset meets the data; what the user set stays as set
        model_config = fit_preset(model_config, train_config, data_dir, preset_name,
                                  fixed={*file.get("model", {}), *model_over})
    return model_config, train_config, data_dir, preset_name


def fit_preset(model_config, train_config, data_dir: str, preset_name: str, fixed: set[str]):
    """The preset's model fitted to the dataset (one image per context, the image patch), said."""
    from megabyte.data.dataset import load_dataset
    from megabyte.training.presets import fit_to_data

    data = load_dataset(data_dir)
    model_config, notes = fit_to_data(model_config, data, seq_len=train_config.seq_len, fixed=fixed)
    if notes and _first_process():
        print(f"preset {preset_name} fitted to the {data.modality} data: {'; '.join(notes)} "
              "(set model.FIELD=VALUE to choose otherwise)")
    return model_config
