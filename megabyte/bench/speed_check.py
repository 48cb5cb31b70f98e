"""The device check's third stage: how fast, through `megabyte bench`'s own machinery (every
measurement in its own process on a GPU: its own peak memory, an out-of-memory try is a result).

1. the bf16 matrix-product peak (the denominator of every MFU);
2. the paper's text model (global 2048 x 14, local 1024 x 18, P = 8, 8,192 bytes) eager at the
   largest batch that fits (doubling from `paper_min_batch`), with MFU and peak memory;
3. the ~25M reference MEGABYTE against megabyte-pytorch and mblm, each of those twice: as its
   users run it (fp32) and in bf16, at a batch that fills the GPU (batch 1 of a 25M model
   measures kernel launches, not the model);
4. the paper's text model compiled (`torch.compile`) at the batch found in 2.

`benchmarks/gpu.sh` is this stage alone. The CPU form runs the same with tiny models and lengths
in this process, and skips the compiled run (compiling takes longer there than the whole form).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import Any

PEERS = ("megabyte-pytorch", "mblm")

NEEDS_S = {"paper": 120.0, "table": 150.0, "compiled": 150.0}
"""About how long each GPU measurement takes (process starts, a 1B model's steps, compiling):
one that would end well past the budget is skipped, not cut off mid-way."""


@dataclass(frozen=True)
class SpeedPlan:
    """Sizes of the speed stage on one kind of device."""

    quick: bool
    seq_len: int
    table_batch: int
    steps: int
    warmup: int
    compile: bool
    paper_min_batch: int
    paper_max_batch: int
    new_bytes: int
    threads: int

    @classmethod
    def for_device(cls, device: str, table_batch: int | None = None) -> SpeedPlan:
        plan = cls._default(device)
        return plan if table_batch is None else replace(plan, table_batch=table_batch)

    @classmethod
    def _default(cls, device: str) -> SpeedPlan:
        if device == "cpu":
            return cls(quick=True, seq_len=128, table_batch=2, steps=1, warmup=1, compile=False, paper_min_batch=1,
                       paper_max_batch=2, new_bytes=16, threads=2)
        # 32 x 8,192 bytes a step: a few GiB of activations for our 25M model, tens for the fp32
        # peers, all inside 139 GiB. The paper's model (~1B, 16 GiB of weights and AdamW state,
        # a few GiB of activations per sequence) starts its search at 8 to save the small tries.
        return cls(quick=False, seq_len=8192, table_batch=32, steps=5, warmup=2, compile=True, paper_min_batch=8,
                   paper_max_batch=64, new_bytes=512, threads=8)

    def table_rows(self) -> list[str]:
        ours = "megabyte" if self.compile else "megabyte/eager"
        return [ours, *(f"{p}{suffix}" for p in PEERS for suffix in ("", "/bf16"))]


def _options(plan: SpeedPlan, opts, **fields):
    from megabyte.bench.speed import SpeedOptions

    base = dict(seq_lens=[plan.seq_len], steps=plan.steps, warmup=plan.warmup, device=opts.device,
                threads=plan.threads, quick=plan.quick, inline=opts.inline, timeout_s=opts.timeout(600),
                prompt_bytes=plan.new_bytes, new_bytes=plan.new_bytes, gen_repeats=1)
    return SpeedOptions(**{**base, **fields})


def peak(plan: SpeedPlan, opts) -> dict[str, Any]:
    from megabyte.bench.harness import run_worker, worker_env
    from megabyte.bench.speed import _peak_spec

    spec = {**_peak_spec(_options(plan, opts)), "device": opts.device, "threads": plan.threads}
    r = run_worker(spec, timeout_s=opts.timeout(300), env=worker_env(plan.threads), inline=opts.inline)
    if "error" in r:
        raise RuntimeError(f"matmul peak: {r['error']}")
    return {"pass": r["bf16"]["flops"] > 0, "bf16_tflops": r["bf16"]["flops"] / 1e12,
            "fp32_tflops": r["fp32"]["flops"] / 1e12, "per_size": r["bf16"]["per_size"]}


def paper_search(plan: SpeedPlan, opts, found: dict[str, Any]) -> dict[str, Any]:
    from megabyte.bench.speed import render_batch_search, run_batch_search

    o = _options(plan, opts, rows=["megabyte/eager"], sizes="paper", generate=False,
                 steps=min(plan.steps, 2), warmup=1)
    results = run_batch_search(o, log=_log, max_batch=plan.paper_max_batch, min_batch=plan.paper_min_batch)
    largest = results["largest_batch"]
    found["batch"] = largest
    best = next((s for s in results["summary"] if s.get("batch") == largest), {})
    return {"pass": largest is not None, "largest_batch": largest, "mfu": best.get("mfu"),
            "bytes_per_s": best.get("rate"), "peak_memory_gib": best.get("peak_memory", 0) / 2**30,
            "params": best.get("params"), "results": results, "markdown": render_batch_search(results)}


def reference_table(plan: SpeedPlan, opts) -> dict[str, Any]:
    from megabyte.bench.speed import render_markdown, run_speed

    o = _options(plan, opts, rows=plan.table_rows(), batch=plan.table_batch, compile=plan.compile)
    results = run_speed(o, log=_log)
    errors = {label: out["train"].get(str(plan.seq_len), {}).get("error") for label, out in results["summary"].items()}
    ours = plan.table_rows()[0]
    absent = sorted(label for label, e in errors.items() if e == "not installed")
    # The other implementations' failures are findings about their code, reported, not judged:
    # e.g. their local attention is one SDPA call over batch x patches x heads rows, past the
    # CUDA kernels' 65,535 (pytorch#142228, `layers.SDPA_MAX_ROWS`) from batch 8 at 8,192 bytes.
    peer_errors = {label: e for label, e in errors.items() if label != ours and e not in (None, "not installed")}
    return {"pass": errors[ours] is None, "ours_error": errors[ours], "not_installed": absent,
            "peer_errors": peer_errors, "batch": plan.table_batch, "results": results,
            "markdown": render_markdown(results)}


def paper_compiled(plan: SpeedPlan, opts, found: dict[str, Any]) -> dict[str, Any]:
    from megabyte.bench.speed import render_markdown, run_speed

    if not found.get("batch"):
        raise RuntimeError("no batch of the paper's model fitted (the search above)")
    o = _options(plan, opts, rows=["megabyte/compile"], sizes="paper", batch=found["batch"], generate=False,
                 steps=min(plan.steps, 3), warmup=2)
    results = run_speed(o, log=_log)
    s = results["summary"]["megabyte/compile"]["train"][str(plan.seq_len)]
    if "error" in s:
        raise RuntimeError(f"compiled paper model at batch {found['batch']}: {s['error']}")
    return {"pass": True, "batch": found["batch"], "mfu": s["mfu"], "bytes_per_s": s["rate"],
            "peak_memory_gib": s["peak_memory"] / 2**30, "results": results, "markdown": render_markdown(results)}


def stage_speed(stage, opts, work) -> None:
    """Stage 3, in order of importance; each measurement guarded and within the budget."""
    plan, found = SpeedPlan.for_device(opts.device, opts.table_batch), {}
    stage.data["plan"] = plan.__dict__
    needs = {k: 0.0 if plan.quick else v for k, v in NEEDS_S.items()}
    stage.run("bf16 matmul peak", lambda: peak(plan, opts))
    size = "a small MEGABYTE (the CPU form)" if plan.quick else "the paper's text model"
    stage.run(f"{size}, eager, largest batch at {plan.seq_len:,} bytes", lambda: paper_search(plan, opts, found),
              needs_s=needs["paper"])
    stage.run(f"reference rows vs the other implementations, batch {plan.table_batch}",
              lambda: reference_table(plan, opts), needs_s=needs["table"])
    if plan.compile:
        stage.run("the paper's text model, compiled, at that batch", lambda: paper_compiled(plan, opts, found),
                  needs_s=needs["compiled"])
    else:
        stage.skip("the paper's text model, compiled", "GPU only: compiling takes longer here than the whole CPU form")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
