"""Does bf16 training reach the fp32 loss? Short runs on real text, compared on held-out text.

For each of two seeds, the same MEGABYTE trains on the same batches with the same schedule twice:
in bf16 autocast (fp32 master weights, the benchmark's setting) and in fp32. The bf16-fp32
difference of a pair is judged against the noise of training itself: the difference between the
two seeds (another initialisation and batch order) in fp32. Every run is scored in fp32 on the
same held-out bytes, in bits per byte.

Real text: `--data` (a file or a directory, read recursively), by default the Python standard
library's source, which every Python installation has.
"""

from __future__ import annotations

import math
import sysconfig
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

import megabyte

TEXT_SUFFIXES = {".py", ".txt", ".rst", ".md", ".html", ".c", ".h", ""}


@dataclass
class PrecisionOptions:
    steps: int = 300
    seq_len: int = 512
    batch: int = 8
    lr: float = 2e-3
    warmup: int = 30
    data: str | None = None
    max_bytes: int = 8_000_000
    eval_batches: int = 16
    quick: bool = False
    threads: int = 2
    device: str = "cpu"
    compile: bool = False
    seeds: tuple[int, int] = (0, 1)


def read_text(path: str | None, max_bytes: int) -> bytes:
    """Up to `max_bytes` of text files under `path` (sorted, so the same on every run)."""
    root = Path(path) if path else Path(sysconfig.get_paths()["stdlib"])
    if root.is_file():
        files = [root]
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    out, total = [], 0
    for f in files:
        if "site-packages" in f.parts:
            continue
        try:
            data = f.read_bytes()
        except OSError:
            continue
        out.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    data = b"".join(out)[:max_bytes]
    if len(data) < 100_000:
        raise ValueError(f"found only {len(data):,} bytes of text under {root}")
    return data


def config(opts: PrecisionOptions):
    if opts.quick:
        return megabyte.MegabyteConfig(patch_sizes=(8,), dims=(64, 32), depths=(2, 2), max_seq_len=opts.seq_len)
    # A smaller MEGABYTE than the speed table's, so that the three runs take minutes, not hours.
    return megabyte.MegabyteConfig(patch_sizes=(8,), dims=(256, 128), depths=(4, 2), heads=(4, 2),
                                   max_seq_len=opts.seq_len)


def train_once(opts: PrecisionOptions, data: torch.Tensor, val: torch.Tensor, *, dtype: str, seed: int,
               log: Callable[[str], None]) -> dict[str, Any]:
    """Train for `opts.steps` steps; return the loss curve and the held-out bits per byte."""
    from megabyte.bench.rows import adamw, autocast

    device = torch.device(opts.device)
    torch.manual_seed(seed)
    model = megabyte.build_model(config(opts)).to(device).train()
    opt = adamw(model.parameters(), fused=True)
    for group in opt.param_groups:
        group["lr"] = opts.lr
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / opts.warmup) * 0.5 * (
        1 + math.cos(math.pi * min(s, opts.steps) / opts.steps)))
    g = torch.Generator().manual_seed(seed)
    T, B = opts.seq_len, opts.batch

    def loss_of(x):
        with autocast(device, dtype):
            return model.loss(x).mean

    step_fn = torch.compile(loss_of) if opts.compile else loss_of
    curve, start = [], time.perf_counter()
    for step in range(opts.steps):
        idx = torch.randint(0, len(data) - T, (B,), generator=g)
        x = torch.stack([data[i : i + T] for i in idx.tolist()]).to(device)
        loss = step_fn(x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        curve.append(float(loss.detach()) / math.log(2))
        if (step + 1) % max(1, opts.steps // 5) == 0:
            log(f"    {dtype} seed {seed}: step {step + 1}/{opts.steps}, train {curve[-1]:.3f} bpb")
    model.eval()
    nats, count = 0.0, 0
    with torch.no_grad():
        for x in val.split(B):
            r = model.loss(x.to(device))  # fp32 evaluation for every run
            nats, count = nats + float(r.nats), count + r.bytes
    return {"dtype": dtype, "seed": seed, "val_bpb": nats / (math.log(2) * count), "train_bpb": curve,
            "seconds": time.perf_counter() - start}


def run_precision(opts: PrecisionOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    from megabyte.training.runtime import machine

    torch.set_num_threads(opts.threads)
    if opts.quick:
        opts.steps, opts.seq_len, opts.batch, opts.eval_batches = min(opts.steps, 20), 128, 4, 2
        opts.max_bytes, opts.warmup = 200_000, 5
    raw = read_text(opts.data, opts.max_bytes)
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
    cut = int(len(data) * 0.95)
    train, held = data[:cut], data[cut:]
    T = opts.seq_len
    n_val = min(opts.eval_batches * opts.batch, (len(held) - 1) // T)
    val = held[: n_val * T].view(n_val, T)
    log(f"  precision: {len(raw):,} bytes of text, {opts.steps} steps of {opts.batch} x {T} bytes")
    runs = [train_once(opts, train, val, dtype=dtype, seed=seed, log=log)
            for seed in opts.seeds for dtype in ("bf16", "fp32")]
    bpb = {(r["dtype"], r["seed"]): r["val_bpb"] for r in runs}
    diffs = [bpb["bf16", s] - bpb["fp32", s] for s in opts.seeds]
    noise = abs(bpb["fp32", opts.seeds[0]] - bpb["fp32", opts.seeds[1]])
    params = sum(p.numel() for p in megabyte.build_model(config(opts)).parameters())
    return {"options": asdict(opts), "machine": machine(), "params": params, "config": config(opts).to_dict(),
            "runs": runs, "bf16_minus_fp32": diffs, "noise": noise,
            "within_noise": all(abs(d) <= noise for d in diffs)}


def render_precision(results: dict[str, Any]) -> str:
    o = results["options"]
    params = results.get("params")
    size = f" ({params / 1e6:.1f}M parameters)" if params else ""
    lines = [f"bf16 vs fp32: MEGABYTE{size}, {o['steps']} steps of {o['batch']} x {o['seq_len']} bytes, "
             "held-out bits per byte (evaluated in fp32)", "",
             "| run | held-out bpb | last-50-step train bpb | time |", "|---|---|---|---|"]
    for r in results["runs"]:
        tail = r["train_bpb"][-50:]
        lines.append(f"| {r['dtype']}, seed {r['seed']} | {r['val_bpb']:.4f} | {sum(tail) / len(tail):.4f} | "
                     f"{r['seconds']:.0f} s |")
    lines.append("")
    diffs = ", ".join(f"{d:+.4f}" for d in results["bf16_minus_fp32"])
    lines.append(f"bf16 - fp32 (same seed and batches): {diffs} bpb; fp32 seed-to-seed difference: "
                 f"{results['noise']:.4f} bpb -> {'within' if results['within_noise'] else 'NOT within'} noise")
    return "\n".join(lines)
