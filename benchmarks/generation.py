"""Generation speed: MEGABYTE with and without its caches, against a cached Transformer.

    python benchmarks/generation.py                 # the issue's 25M configuration, 2 threads
    python benchmarks/generation.py --quick         # tiny models, seconds
    python benchmarks/generation.py --no-compile    # without the compiled row (no C++ compiler)

Prints a markdown table of bytes/s (median of --repeats runs) for 512 new bytes after a
512-byte prompt, the prompt's pass included. Untrained weights: speed does not depend on what
the weights are. The compiled row (`generate(compile=True)`) is timed after one untimed call
that compiles its steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import megabyte


def configs(quick: bool):
    if quick:
        return (
            megabyte.MegabyteConfig(patch_sizes=(8,), dims=(64, 32), depths=(2, 2), max_seq_len=2048),
            megabyte.TransformerConfig(dim=64, depth=2, max_seq_len=2048),
        )
    return (
        megabyte.MegabyteConfig(patch_sizes=(8,), dims=(512, 256), depths=(6, 4), heads=(8, 4), max_seq_len=8192),
        megabyte.TransformerConfig(dim=512, depth=8, heads=8, max_seq_len=8192),
    )


def bytes_per_second(model, prompt: bytes, new: int, *, use_cache: bool, repeats: int,
                     compile: bool = False) -> tuple[float, float]:
    rates = []
    for i in range(repeats):
        start = time.perf_counter()
        out = megabyte.generate(model, prompt, new, seed=i, use_cache=use_cache, compile=compile)
        rates.append(len(out) / (time.perf_counter() - start))
    return statistics.median(rates), (max(rates) - min(rates)) / 2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-bytes", type=int, default=512)
    parser.add_argument("--new-bytes", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--uncached-repeats", type=int, default=1, help="the uncached run is slow")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny models (for tests)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled row")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mb_cfg, tf_cfg = configs(args.quick)
    mb, tf = megabyte.Megabyte(mb_cfg).eval(), megabyte.Transformer(tf_cfg).eval()
    prompt = bytes(range(256)) * (args.prompt_bytes // 256) + bytes(args.prompt_bytes % 256)
    megabyte.generate(mb, prompt, 16)  # warm-up
    megabyte.generate(tf, prompt, 16)
    rows = [
        ("MEGABYTE, cached", mb, True, False, args.repeats),
        ("MEGABYTE, no cache", mb, False, False, args.uncached_repeats),
        ("Transformer, cached", tf, True, False, args.repeats),
    ]
    if not args.no_compile:
        megabyte.generate(mb, prompt, 16, compile=True)  # compiles the steps (a minute)
        rows.insert(1, ("MEGABYTE, cached, compiled", mb, True, True, args.repeats))
    results = {}
    for name, model, cache, compile, repeats in rows:
        results[name] = (bytes_per_second(model, prompt, args.new_bytes, use_cache=cache, repeats=repeats,
                                          compile=compile), model.num_parameters()["total"])
    base = results["MEGABYTE, no cache"][0][0]
    print(f"{args.new_bytes} new bytes after a {args.prompt_bytes}-byte prompt, {args.threads} threads, fp32\n")
    print("| model | parameters | bytes/s | ± | vs MEGABYTE without cache |")
    print("|---|---:|---:|---:|---:|")
    for name, ((rate, spread), params) in results.items():
        print(f"| {name} | {params / 1e6:.1f}M | {rate:.1f} | {spread:.1f} | {rate / base:.1f}x |")


if __name__ == "__main__":
    main()
