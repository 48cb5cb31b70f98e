"""The speed table: every row side by side in one invocation, each measurement in its own process.

For each sequence length, every row takes `warmup` training steps and then `steps` timed ones
(batch 1 unless `batch` says otherwise: on a GPU, batch 1 of a 25M model measures kernel
launches, not the model; benchmarks/gpu.sh runs 32 sequences a step); then every row generates
`new_bytes` after a `prompt_bytes` prompt (rows that differ only in training dtype or compile
share one generation: it runs in fp32, eager, for every row). The peak FLOP/s of large matrix
products is measured before and after, in the same threads, and the higher of the two is the
peak that MFU divides by (so a quiet moment at either end cannot flatter MFU). Medians over the
timed steps; the spread is half the range of the per-step rates, as a percentage of the median.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from megabyte.bench.harness import run_worker, worker_env
from megabyte.bench.rows import RowSpec, ours
from megabyte.errors import MegabyteError
from megabyte.training.runtime import machine

DEFAULT_ROWS = "megabyte,megabyte-space,transformer,perceiver-ar,megabyte-pytorch,mblm"
REFERENCE = "megabyte-pytorch"


@dataclass
class SpeedOptions:
    """What `megabyte bench` measures (see its --help for each field)."""

    rows: list[str] = field(default_factory=lambda: DEFAULT_ROWS.split(","))
    seq_lens: list[int] = field(default_factory=lambda: [2048, 8192])
    steps: int = 5
    warmup: int = 2
    batch: int = 1
    dtype: str = "bf16"
    external_dtype: str = "fp32"
    compile: bool = False
    device: str = "cpu"
    threads: int = 2
    generate: bool = True
    train: bool = True
    prompt_bytes: int = 512
    new_bytes: int = 512
    gen_repeats: int = 3
    rounds: int = 1
    """Repeat the training sweep this many times, in alternating row order, pooling the steps:
    on a shared machine, a busy minute then falls on every row instead of on one."""
    quick: bool = False
    sizes: str = "reference"
    """Model sizes: `reference` (the ~25M models of issue 6), `paper` (the paper's text model)."""
    mem_limit_gb: float = 16.0
    timeout_s: float = 1800.0
    inline: bool = False
    """Run every measurement in this process (for tests: no process start-up, no memory cap, and
    peak memory is this process's)."""

    def __post_init__(self) -> None:
        if self.dtype not in ("bf16", "fp32") or self.external_dtype not in ("bf16", "fp32"):
            raise ValueError("dtypes must be bf16 or fp32")
        if self.steps < 1 or self.warmup < 0 or self.batch < 1:
            raise ValueError("need steps >= 1, warmup >= 0, batch >= 1")
        self.specs = [RowSpec.parse(r, dtype=self.dtype, compile=self.compile, external_dtype=self.external_dtype)
                      for r in self.rows]


def summarize(times: list[float], amount: float) -> dict[str, float]:
    """Median rate `amount / time` over the steps, and its spread (half the range, % of median)."""
    rates = [amount / t for t in times]
    median = statistics.median(rates)
    return {
        "rate": median,
        "spread_pct": 100 * (max(rates) - min(rates)) / 2 / median,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
    }


def _base_spec(opts: SpeedOptions) -> dict[str, Any]:
    return {"device": opts.device, "threads": opts.threads, "quick": opts.quick, "model_sizes": opts.sizes,
            "mem_limit_gb": opts.mem_limit_gb if opts.device == "cpu" else None}


def _peak_spec(opts: SpeedOptions) -> dict[str, Any]:
    spec: dict[str, Any] = {"task": "peak", "dtypes": ["bf16", "fp32"]}
    if opts.quick:
        spec.update(matmul_sizes=[256, 512], warmup_s=0.05, reps=3)
    return spec


def run_speed(opts: SpeedOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every row; return the results (raw per-process results plus a summary)."""
    env = worker_env(opts.threads)
    base = _base_spec(opts)
    rows = {s.label: {"spec": asdict(s), "train": {}, "generate": None} for s in opts.specs}
    results: dict[str, Any] = {"options": asdict(opts), "machine": machine(), "rows": rows}

    def worker(spec: dict[str, Any], what: str) -> dict[str, Any]:
        log(f"  {what} ...")
        start = time.perf_counter()
        r = run_worker({**base, **spec}, timeout_s=opts.timeout_s, env=env, inline=opts.inline)
        log(f"  {what}: {'error: ' + r['error'] if 'error' in r else 'done'} ({time.perf_counter() - start:.0f} s)")
        return r

    peak_spec = _peak_spec(opts)
    peaks = [worker(peak_spec, "matmul peak (before)")]
    for rnd in range(opts.rounds if opts.train else 0):
        for T in opts.seq_lens:
            for s in opts.specs if rnd % 2 == 0 else opts.specs[::-1]:
                spec = {"task": "train", "row": asdict(s), "seq_len": T, "batch": opts.batch, "steps": opts.steps,
                        "warmup": opts.warmup}
                r = worker(spec, f"{s.label}: train @ {T}" + (f" (round {rnd + 1})" if opts.rounds > 1 else ""))
                pooled = results["rows"][s.label]["train"]
                pooled[str(T)] = pool(pooled.get(str(T)), r)
    if opts.generate:
        # Generation runs in fp32, eager, whatever the row's training dtype and compile
        # (`Row.generate`): rows that differ only in those share one measurement.
        done: dict[tuple[str, bool, bool], dict[str, Any]] = {}
        for s in opts.specs:
            key = (s.name, s.heap, s.tf32)
            if key not in done:
                spec = {"task": "generate", "row": asdict(s), "prompt_bytes": opts.prompt_bytes,
                        "new_bytes": opts.new_bytes, "max_seq_len": max(opts.seq_lens),
                        "repeats": opts.gen_repeats if s.name in ours() else 1}
                done[key] = worker(spec, f"{s.label}: generate {opts.new_bytes} bytes")
            results["rows"][s.label]["generate"] = done[key]
    peaks.append(worker(peak_spec, "matmul peak (after)"))
    results["peak"] = {
        dt: max((p[dt]["flops"] for p in peaks if dt in p), default=None) for dt in ("bf16", "fp32")
    }
    results["peak_runs"] = peaks
    results["machine"]["load_after"] = machine()["load_average"]
    results["summary"] = summarize_rows(results, opts)
    return results


def pool(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """Two rounds of one measurement as one: the steps of both (an error in either wins)."""
    if old is None or "error" in old:
        return old if old is not None and "error" in old else new
    if "error" in new:
        return new
    merged = dict(new)
    for key in ("times", "cpu_times"):
        merged[key] = old[key] + new[key]
    merged["peak_memory"] = max(old["peak_memory"], new["peak_memory"])
    merged["warmup_s"] = max(old["warmup_s"], new["warmup_s"])
    return merged


def summarize_rows(results: dict[str, Any], opts: SpeedOptions) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for label, row in results["rows"].items():
        spec = row["spec"]
        # A TF32 row's fp32 products run faster than the fp32 peak (measured without TF32) allows:
        # no MFU rather than a flattering one.
        peak = None if spec.get("tf32") and spec["dtype"] == "fp32" else results["peak"].get(spec["dtype"])
        out: dict[str, Any] = {"dtype": spec["dtype"], "compile": spec["compile"], "tf32": spec.get("tf32", False),
                               "setting": RowSpec(**spec).setting, "train": {}}
        for T, r in row["train"].items():
            if "error" in r:
                out["train"][T] = {"error": r["error"]}
                continue
            s = summarize(r["times"], r["bytes_per_step"])
            s["flops_per_step"] = r["flops"]
            s["flops_per_byte"] = r["flops"] / r["bytes_per_step"]
            s["bytes_per_patch"] = r.get("bytes_per_patch")
            s["achieved_flops"] = r["flops"] / s["median_s"]
            s["mfu"] = s["achieved_flops"] / peak if peak else None
            s["peak_memory"] = r["peak_memory"]
            s["cpu_share"] = sum(r["cpu_times"]) / sum(r["times"]) / max(1, opts.threads)
            s["warmup_s"] = r["warmup_s"]
            out["train"][T] = s
            out["params"] = r["params"]
        g = row["generate"]
        if g is not None:
            if "error" in g:
                out["generate"] = {"error": g["error"]}
            else:
                rates = [n / t for n, t in zip(g["new_bytes"], g["times"])]
                med = statistics.median(rates)
                out["generate"] = {"rate": med, "spread_pct": 100 * (max(rates) - min(rates)) / 2 / med,
                                   "runs": len(rates), "peak_memory": g["peak_memory"]}
                out.setdefault("params", g["params"])
        summary[label] = out
    ref = next((lab for lab, row in results["rows"].items() if row["spec"]["name"] == REFERENCE), None)
    for out in summary.values():
        out["vs_reference"] = {}
        if ref is None:
            continue
        r = summary[ref]
        for T, s in out["train"].items():
            base = r["train"].get(T, {})
            if "rate" in s and "rate" in base:
                out["vs_reference"][f"train@{T}"] = s["rate"] / base["rate"]
        g, gb = out.get("generate") or {}, r.get("generate") or {}
        if "rate" in g and "rate" in gb:
            out["vs_reference"]["generate"] = g["rate"] / gb["rate"]
    return summary


def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _cell_error(err: str) -> str:
    return {"not installed": "not installed", "out of memory": "OOM"}.get(err, "error")


def _rate(s: dict[str, Any], digits: int) -> str:
    if "rate" not in s:
        return _cell_error(s.get("error", ""))
    return f"{s['rate']:,.{digits}f} ±{s['spread_pct']:.0f}%"


def render_markdown(results: dict[str, Any]) -> str:
    """The table: one line per row; rates are medians with their spread."""
    opts = results["options"]
    lens = [str(T) for T in opts["seq_lens"]] if opts.get("train", True) else []
    last = lens[-1] if lens else None
    head = ["row", "setting", "params", "dtype", "batch"] + [f"train B/s @{T}" for T in lens]
    if last:
        head += [f"MFU @{last}", f"peak mem @{last}", f"FLOPs/byte @{last}", "bytes/patch"]
    if opts["generate"]:
        head += [f"generate B/s ({opts['new_bytes']} after {opts['prompt_bytes']})"]
    head += [f"x {REFERENCE}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for label, out in results["summary"].items():
        tag = out["dtype"] + (" +tf32" if out.get("tf32") else "") + (" +compile" if out["compile"] else "")
        cells = [f"`{label}`", out.get("setting", "-"), _si(out["params"]) if "params" in out else "-", tag,
                 str(opts.get("batch", 1))]
        for T in lens:
            s = out["train"].get(T, {})
            cells.append(_rate(s, 0))
        if last:
            s = out["train"].get(last, {})
            cells.append(f"{100 * s['mfu']:.1f}%" if s.get("mfu") is not None else "-")
            cells.append(f"{s['peak_memory'] / 2**30:.2f} GiB" if "peak_memory" in s else "-")
            cells.append(_si(s["flops_per_byte"]) if "flops_per_byte" in s else "-")
            cells.append(f"{s['bytes_per_patch']:.2f}" if s.get("bytes_per_patch") else "-")
        if opts["generate"]:
            g = out.get("generate") or {}
            cells.append(_rate(g, 1))
        ratios = out["vs_reference"]
        parts = [f"{ratios[k]:.1f}x {k.replace('train@', 'train @')}" for k in ratios]
        cells.append(", ".join(parts) if parts else "-")
        lines.append("| " + " | ".join(cells) + " |")
    peak = results["peak"]
    notes = [
        "",
        "Setting: `as its users run it` is each implementation's default on a GPU (ours bf16 autocast, the "
        "others fp32 with PyTorch's defaults: no TF32 in matrix products); `bf16` is the same row in bf16 "
        "autocast, the like-for-like comparison; `other` is neither.",
        "Peak matmul FLOP/s (best median of large square products, same threads, higher of before/after): "
        + ", ".join(f"{dt} {_si(v)}FLOP/s" for dt, v in peak.items() if v),
        "MFU = model FLOPs of a training step / median step time / the peak of the row's dtype. Model FLOPs: "
        "ours from megabyte.model.flops (causal attention: the pairs it needs), the others from PyTorch's "
        "FLOP counter (causal attention: half of L x L). A dynamically patched row (megabyte-space) trains on "
        "real text (Python's stdlib; the others on random bytes) and its FLOPs and bytes/patch are measured "
        "on those bytes.",
    ]
    return "\n".join(lines + notes)


def run_batch_search(opts: SpeedOptions, log: Callable[[str], None] = print, max_batch: int = 1024,
                     min_batch: int = 1) -> dict[str, Any]:
    """The largest batch of one row that fits: batch `min_batch`, twice that, ... (1, 2, 4, ... by
    default; a higher start saves a large model's small tries on a GPU) until a step runs out of
    memory, each in its own process; every batch that fitted is timed like a table row. Any other
    failure (an error, a timeout) says nothing about what fits: it stops the search as a
    MegabyteError instead of passing for the largest batch."""
    if len(opts.specs) != 1:
        raise ValueError("--batch auto measures one row: pass --rows with a single row")
    spec, T = opts.specs[0], opts.seq_lens[-1]
    env, base = worker_env(opts.threads), _base_spec(opts)

    def worker(task: dict[str, Any], what: str) -> dict[str, Any]:
        log(f"  {what} ...")
        r = run_worker({**base, **task}, timeout_s=opts.timeout_s, env=env, inline=opts.inline)
        log(f"  {what}: {'error: ' + r['error'] if 'error' in r else 'done'}")
        return r

    peaks = [worker(_peak_spec(opts), "matmul peak")]
    tries: list[dict[str, Any]] = []
    batch = max(1, min_batch)
    while batch <= max_batch:
        task = {"task": "train", "row": asdict(spec), "seq_len": T, "batch": batch, "steps": opts.steps,
                "warmup": opts.warmup}
        r = worker(task, f"{spec.label}: train @ {T} x batch {batch}")
        r["batch"] = batch
        tries.append(r)
        if "error" in r and not r.get("oom"):
            raise MegabyteError(f"--batch auto: {spec.label} at batch {batch} failed, not for lack of memory: "
                                f"{r['error']}")
        if "error" in r:
            break
        batch *= 2
    peak = max((p[spec.dtype]["flops"] for p in peaks if spec.dtype in p), default=None)
    summary = []
    for r in tries:
        if "error" in r:
            summary.append({"batch": r["batch"], "error": r["error"]})
            continue
        s = summarize(r["times"], r["bytes_per_step"])
        s.update(batch=r["batch"], params=r["params"], flops_per_step=r["flops"], peak_memory=r["peak_memory"],
                 mfu=r["flops"] / s["median_s"] / peak if peak else None)
        summary.append(s)
    fitted = [s for s in summary if "rate" in s]
    return {"options": asdict(opts), "machine": machine(), "row": asdict(spec), "seq_len": T, "peak": peak,
            "peak_runs": peaks, "tries": tries, "summary": summary,
            "largest_batch": fitted[-1]["batch"] if fitted else None}


def render_batch_search(results: dict[str, Any]) -> str:
    T, row = results["seq_len"], results["row"]
    params = next((s["params"] for s in results["summary"] if "params" in s), None)
    size = f", {_si(params)} parameters" if params else ""
    lines = [f"`{row['label']}` ({row['dtype']}{' +compile' if row['compile'] else ''}{size}), {T:,}-byte sequences",
             "", "| batch | bytes/s | MFU | peak memory |", "|---|---|---|---|"]
    for s in results["summary"]:
        if "error" in s:
            lines.append(f"| {s['batch']} | {_cell_error(s['error'])} | - | - |")
            continue
        mfu = f"{100 * s['mfu']:.1f}%" if s.get("mfu") is not None else "-"
        lines.append(f"| {s['batch']} | {s['rate']:,.0f} ±{s['spread_pct']:.0f}% | {mfu} | "
                     f"{s['peak_memory'] / 2**30:.1f} GiB |")
    peak = results["peak"]
    capped = results["summary"] and "error" not in results["summary"][-1]
    lines += ["", f"Largest batch that fits: {results['largest_batch']}{' (the --max-batch cap)' if capped else ''}. "
              + (f"Peak matmul: {_si(peak)}FLOP/s ({row['dtype']})." if peak else "")]
    return "\n".join(lines)
