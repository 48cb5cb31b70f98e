"""`megabyte eval RUN --data DIR`: bits per byte of a checkpoint over a whole dataset split.

Examples::

    megabyte eval runs/small --data data/text                              # basic windows, val split
    megabyte eval runs/small --data data/text --strided --sliding-window   # the paper's best method
    megabyte eval runs/small/checkpoints/step-00002000 --data data/text --split train --max-bytes 1000000
    megabyte eval runs/small --data data/text --json                       # one JSON object on stdout
    megabyte eval runs/small --data data/text --sample-bytes 524288        # what training validated on
    torchrun --nproc-per-node 8 -m megabyte eval runs/big --data data/text # windows split over GPUs

RUN is a training run directory (its `latest` checkpoint is used) or a checkpoint directory.
Every byte of the split is scored exactly once; the methods differ in the context each byte gets
and in cost (see `megabyte.evaluation`). bpb = summed nats / (ln 2 * bytes scored).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from megabyte.errors import MegabyteError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` sub-command."""
    p = subparsers.add_parser(
        "eval",
        help="bits per byte of a checkpoint over a dataset split (basic, strided, sliding window)",
        description="Score every byte of a dataset split once and report bits per byte, the bytes "
        "scored and the cost multiple of the inference method. --strided and --sliding-window combine.",
    )
    p.add_argument("run", metavar="RUN", help="training run directory (uses its latest checkpoint) or checkpoint")
    p.add_argument("--data", required=True, metavar="DIR", help="prepared dataset directory (megabyte prepare)")
    p.add_argument("--split", choices=("val", "train"), default="val", help="split to score (default val)")
    p.add_argument("--strided", action="store_true",
                   help="MEGABYTE only: a second pass offset by half a patch; each byte keeps the prediction "
                   "from the pass where it sits in the first half of its patch (about 2x cost)")
    p.add_argument("--sliding-window", action="store_true",
                   help="overlapping windows; each byte is scored with at least seq_len - stride bytes of context")
    p.add_argument("--stride", type=int, metavar="N", help="sliding-window stride (default seq_len // 2)")
    p.add_argument("--seq-len", type=int, metavar="N", help="window length (default: the model's max_seq_len)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="windows per forward pass (default 8)")
    limit = p.add_mutually_exclusive_group()
    limit.add_argument("--max-bytes", type=int, metavar="N", help="score only the first N bytes of the split")
    limit.add_argument("--sample-bytes", type=int, metavar="N",
                       help="score about N bytes in evenly spaced windows over the split: the bytes a training "
                       "run's validation scores with train.eval_bytes=N (with neither --strided nor "
                       "--sliding-window: the bpb it logged)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: CUDA when available, else CPU (default)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="forward precision; auto: bf16 autocast on CUDA GPUs that support it, else float32")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint and the split, evaluate (on every rank under torchrun), print on rank 0."""
    import torch

    import megabyte
    from megabyte.evaluation import evaluate, reduce_result
    from megabyte.training.checkpoint import resolve_checkpoint

    if args.stride is not None and not args.sliding_window:
        raise MegabyteError("--stride needs --sliding-window")
    from megabyte.training.runtime import init_distributed

    runtime = init_distributed(args.device, "fp32")  # one process, or this rank of torchrun's group
    rank, world_size, device = runtime.rank, runtime.world_size, runtime.device
    try:
        checkpoint = _checkpoint_dir(args.run, resolve_checkpoint)
        model = megabyte.load(checkpoint, device=device)
        data, item_len, align = _read_split(args.data, args.split)
        seq_len = model.config.max_seq_len if args.seq_len is None else args.seq_len
        _check_length(data, args, seq_len, item_len)
        dtype = _autocast_dtype(args.dtype, device)
        limit = args.max_bytes if args.max_bytes is not None else args.sample_bytes
        bar = _progress(len(data) if limit is None else min(len(data), limit), world_size,
                        quiet=args.json or rank != 0)
        started = time.perf_counter()
        result = evaluate(
            model, data, seq_len=seq_len, batch_size=args.batch_size, strided=args.strided,
            sliding_window=args.sliding_window, window_stride=args.stride, max_bytes=args.max_bytes,
            sample_bytes=args.sample_bytes,
            item_len=item_len, align=align, rank=rank, world_size=world_size, device=device, autocast_dtype=dtype,
            progress=bar.update if bar else None,
        )
        result = reduce_result(result)
        if world_size > 1:
            # Every rank is done with the group before any leaves it: a rank that tears its gloo
            # connections down while another still holds them can abort the other at exit.
            torch.distributed.barrier()
        seconds = time.perf_counter() - started
        if bar:
            bar.close()
    finally:
        runtime.close()
    if rank == 0:
        report = {
            **result.to_dict(), "split": args.split, "data": str(args.data), "checkpoint": str(checkpoint),
            "model_type": model.config.model_type, "parameters": model.num_parameters()["total"],
            "device": str(device), "dtype": str(dtype or next(model.parameters()).dtype).replace("torch.", ""),
            "world_size": world_size, "seconds": round(seconds, 3),
        }
        print(json.dumps(report) if args.json else summary(report))
    return 0


def summary(r: dict[str, Any]) -> str:
    """The human-readable report."""
    details = [f"seq_len {r['seq_len']:,}"]
    if r["stride"] is not None:
        details.append(f"stride {r['stride']:,}")
    if r["offset"] is not None:
        details.append(f"second pass +{r['offset']} bytes")
    rate = r["bytes"] / r["seconds"] if r["seconds"] > 0 else float("inf")
    return "\n".join([
        f"checkpoint  {r['checkpoint']} ({r['model_type']}, {r['parameters']:,} parameters)",
        f"data        {r['data']} ({r['split']} split)",
        f"method      {r['method']} ({', '.join(details)})",
        f"bpb         {r['bpb']:.4f}",
        f"bytes       {r['bytes']:,} scored",
        f"cost        {r['cost']:.2f}x ({r['forward_bytes']:,} bytes through the model, {r['windows']:,} windows)",
        f"time        {r['seconds']:.1f} s ({rate:,.0f} bytes/s on {r['device']}, {r['dtype']}"
        + (f", {r['world_size']} ranks)" if r["world_size"] > 1 else ")"),
    ])


# ------------------------------------------------------------------------------------- helpers
def _checkpoint_dir(run: str, resolve) -> Path:
    path = Path(run)
    if not path.is_dir():
        raise MegabyteError(f"{path}: no such run or checkpoint directory")
    if not (path / "config.json").exists() and not (path / "latest").exists():
        raise MegabyteError(f"{path}: holds no checkpoint (neither a 'latest' file nor config.json); "
                            "has the run saved one yet?")
    return resolve(path)


def _read_split(directory: str, split: str):
    """The split's bytes (memory-mapped), the dataset's item length (images) or None, and the
    alignment of its windows (2 for 16-bit audio)."""
    from megabyte.data.dataset import load_dataset

    dataset = load_dataset(directory)
    return dataset.split(split), dataset.item_len, dataset.align


def _check_length(data, args: argparse.Namespace, seq_len: int, item_len: int | None) -> None:
    """The split must hold at least one whole window (one image for image data)."""
    n = len(data) if args.max_bytes is None else min(len(data), args.max_bytes)
    if len(data) == 0:
        raise MegabyteError(f"the {args.split} split of {args.data} is empty: nothing to evaluate")
    need = item_len or seq_len
    if n < need:
        what = f"one {need:,}-byte image" if item_len else f"one window of seq_len={seq_len:,} bytes"
        hint = "" if item_len else "; pass a smaller --seq-len"
        source = f"--max-bytes {args.max_bytes:,} gives" if args.max_bytes is not None and args.max_bytes < len(
            data) else f"the {args.split} split holds"
        raise MegabyteError(f"{source} {n:,} bytes, fewer than {what}{hint}")


def _autocast_dtype(choice: str, device):
    import torch

    if choice == "bfloat16":
        return torch.bfloat16
    if choice == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None  # float32: the model's own precision


def _progress(total: int, world_size: int, quiet: bool):
    """A progress bar on stderr (this rank's share of the bytes), or None."""
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=-(-total // world_size), unit="B", unit_scale=True, desc="eval", leave=False)
