"""Entropy patches: what computing the boundaries on the fly costs a training step, against
reading them from a cache (what precomputing them beside the dataset would give).

    python benchmarks/entropy_boundaries.py                     # small preset, batch 2, stdlib text
    python benchmarks/entropy_boundaries.py --batch 8 --steps 6 --threads 2

The entropy model is the `entropy` preset's Transformer, the patched model `megabyte-entropy` in
the `small` preset, theta calibrated on the same text to the preset's target. Both variants run
the same batches, interleaved step by step (so that a busy machine slows both alike): "on the
fly" is the model as it trains; "cached" replaces the boundary computation by a lookup of the
same boundaries, computed beforehand. Prints a table: ms per step, the ratio, and the entropy
model's share of the step's FLOPs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    import torch

    import megabyte
    from megabyte.data.text import stdlib_text
    from megabyte.model.entropy import calibrate, entropies
    from megabyte.model.flops import training_flops
    from megabyte.training.presets import get_preset

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=8, help="timed steps per variant")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    small = get_preset("entropy").model_config("transformer")
    fields = get_preset("small").model_fields("megabyte-entropy")
    T = fields["max_seq_len"]
    text = torch.tensor(list(stdlib_text(max_bytes=(args.steps + 64) * args.batch * T)), dtype=torch.long)
    rows = text[: len(text) // T * T].view(-1, T)
    entropy_model = megabyte.build_model(small).eval()
    theta, mean = calibrate(entropies(entropy_model, rows[:64]), fields["patch_target"], fields["patch_sizes"][0])
    cfg = megabyte.MegabyteConfig(**{**fields, "entropy_model": small.to_dict(), "patch_threshold": theta})
    model = megabyte.build_model(cfg).train()
    model.entropy_model.load_state_dict(entropy_model.state_dict())
    batches = [rows[i * args.batch : (i + 1) * args.batch] for i in range(args.steps + 1)]
    cached = {id(x): model.patch_starts(x) for x in batches}
    on_the_fly = model.patch_starts

    def step(x, use_cache: bool) -> float:
        model.patch_starts = (lambda y: cached[id(x)]) if use_cache else on_the_fly
        start = time.perf_counter()
        model.loss(x).mean.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    step(batches[0], False), step(batches[0], True)  # warm-up
    times: dict[bool, list[float]] = {False: [], True: []}
    for x in batches[1:]:
        for use_cache in (False, True):
            times[use_cache].append(step(x, use_cache))
    count = training_flops(cfg, T, data=batches[1], starts=cached[id(batches[1])])
    fly, cache = (statistics.median(times[k]) * 1e3 for k in (False, True))
    print(f"megabyte-entropy (small), batch {args.batch} x {T} bytes, {args.threads} thread(s), "
          f"{mean:.2f} bytes per patch (theta {theta:.3f} on this text; untrained entropy model)")
    print(f"\n| boundaries | ms / step (median of {args.steps}) | relative |")
    print("|---|---:|---:|")
    print(f"| on the fly (the entropy model's forward in every step) | {fly:.0f} | {fly / cache:.2f}x |")
    print(f"| cached (looked up) | {cache:.0f} | 1.00x |")
    print(f"\nentropy model: {100 * count.frozen_flops / count.total:.1f}% of the step's counted FLOPs "
          f"({small.dim} x {small.depth} Transformer, forward only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
