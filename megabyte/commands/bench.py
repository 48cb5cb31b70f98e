"""`megabyte bench`: training and generation speed, MFU, bf16 accuracy, long sequences.

Examples::

    megabyte bench --quick                                  # tiny models, a few seconds a row
    megabyte bench --compile --json-out bench.json          # the README table (2 CPU threads)
    megabyte bench --rows megabyte,megabyte/fp32/eager --seq-lens 8192 --no-generate
    megabyte bench --precision --steps 300                  # bf16 and fp32 losses on real text
    megabyte bench --long                                   # 1 MiB sequence, longest Transformer step
    megabyte bench --device cuda --compile                  # one GPU (see benchmarks/gpu.sh)

The table goes to stdout as markdown; progress goes to stderr; `--json-out` keeps every raw
measurement. Each measurement runs in its own process (clean peak memory, a memory cap).
"""

from __future__ import annotations

import argparse
import json
import sys


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    from megabyte.bench.rows import all_rows
    from megabyte.bench.speed import DEFAULT_ROWS

    p = subparsers.add_parser(
        "bench",
        help="benchmark training/generation speed and MFU against other MEGABYTE implementations",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rows", default=DEFAULT_ROWS,
                   help=f"comma-separated rows, from {', '.join(all_rows())}; options after slashes, "
                        f"e.g. megabyte/fp32/eager (default {DEFAULT_ROWS})")
    p.add_argument("--seq-lens", type=_ints, default=None, metavar="T,T",
                   help="training sequence lengths in bytes (default 2048,8192; --quick 256,512)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed training steps per row (default 5); --precision: training steps (default 300)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2; compiling happens here)")
    p.add_argument("--batch", default="1",
                   help="sequences per step (default 1); 'auto': the largest batch of one row that fits")
    p.add_argument("--max-batch", type=int, default=1024, help="--batch auto: stop doubling here (default 1024)")
    p.add_argument("--min-batch", type=int, default=1, help="--batch auto: start doubling here (default 1)")
    p.add_argument("--sizes", choices=("reference", "paper"), default="reference",
                   help="model sizes: the ~25M models of the issue (default) or the paper's text model "
                        "(global 2048 x 14, local 1024 x 18, P = 8)")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16",
                   help="our rows: bf16 autocast with fp32 master weights, or fp32 (default bf16)")
    p.add_argument("--external-dtype", choices=("bf16", "fp32"), default="fp32",
                   help="megabyte-pytorch and mblm (default fp32, as their users run them)")
    p.add_argument("--compile", action="store_true", help="torch.compile our rows' training step")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of every row (default 2)")
    p.add_argument("--no-generate", dest="generate", action="store_false", help="skip the generation column")
    p.add_argument("--no-train", dest="train", action="store_false", help="skip the training columns")
    p.add_argument("--prompt-bytes", type=int, default=None, help="generation prompt (default 512; --quick 32)")
    p.add_argument("--new-bytes", type=int, default=None, help="bytes to generate (default 512; --quick 32)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the training sweep, alternating the row order, and pool the steps (default 1)")
    p.add_argument("--gen-repeats", type=int, default=3, help="generation runs of our rows (default 3)")
    p.add_argument("--mem-limit-gb", type=float, default=16.0,
                   help="address-space cap of every measurement process on the CPU (default 16)")
    p.add_argument("--quick", action="store_true", help="tiny models and lengths: checks that everything runs")
    p.add_argument("--json-out", metavar="FILE", help="write every measurement as JSON")
    p.add_argument("--precision", action="store_true",
                   help="instead: train on real text in bf16 and in fp32 and compare the losses")
    p.add_argument("--data", metavar="PATH", help="--precision: a text file or directory (default: Python's stdlib)")
    p.add_argument("--long", action="store_true",
                   help="instead: one step on a 1 MiB sequence (3-stage MEGABYTE), longest Transformer step")
    p.add_argument("--long-bytes", type=_ints, default=None, metavar="T",
                   help="--long: the MEGABYTE sequence length (default 1048576)")
    p.add_argument("--transformer-max", type=int, default=None, metavar="T",
                   help="--long: stop the Transformer's doubling at T bytes (default 1048576; 0 skips it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from megabyte.errors import MegabyteError

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        if args.precision:
            from megabyte.bench.precision import PrecisionOptions, render_precision, run_precision

            opts = PrecisionOptions(steps=args.steps or 300, data=args.data, quick=args.quick,
                                    threads=args.threads, device=args.device, compile=args.compile)
            results = run_precision(opts, log=log)
            text = render_precision(results)
        elif args.long:
            from megabyte.bench.long import LongOptions, render_long, run_long

            opts = LongOptions(quick=args.quick, threads=args.threads, mem_limit_gb=args.mem_limit_gb,
                               device=args.device, dtype=args.dtype)
            if args.long_bytes:
                opts.megabyte_bytes = args.long_bytes[0]
            if args.transformer_max is not None:
                opts.transformer_max = args.transformer_max
            results = run_long(opts, log=log)
            text = render_long(results)
        else:
            from megabyte.bench.speed import (
                SpeedOptions,
                render_batch_search,
                render_markdown,
                run_batch_search,
                run_speed,
            )

            quick = args.quick
            auto_batch = args.batch == "auto"
            opts = SpeedOptions(
                rows=[r for r in args.rows.split(",") if r.strip()],
                seq_lens=args.seq_lens or ([256, 512] if quick else [2048, 8192]),
                steps=args.steps or 5, warmup=args.warmup, batch=1 if auto_batch else int(args.batch),
                sizes=args.sizes, dtype=args.dtype,
                external_dtype=args.external_dtype, compile=args.compile, device=args.device, threads=args.threads,
                generate=args.generate, train=args.train, prompt_bytes=args.prompt_bytes or (32 if quick else 512),
                new_bytes=args.new_bytes or (32 if quick else 512), gen_repeats=args.gen_repeats, quick=quick,
                mem_limit_gb=args.mem_limit_gb, rounds=args.rounds,
            )
            if auto_batch:
                results = run_batch_search(opts, log=log, max_batch=args.max_batch, min_batch=args.min_batch)
                text = render_batch_search(results)
            else:
                results = run_speed(opts, log=log)
                text = render_markdown(results)
    except ValueError as exc:
        raise MegabyteError(str(exc)) from None
    print(text)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=1, default=str)
        log(f"wrote {args.json_out}")
    return 0
