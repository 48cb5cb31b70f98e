"""One measurement in its own process: `python -m megabyte.bench.worker '<json spec>'`.

Running every measurement in a fresh process gives each its own clean peak memory (the
process's maximum resident set, or CUDA's peak allocation), isolates a crash or an out-of-memory
failure to its own row, and caps memory with `RLIMIT_AS` so that a too-long sequence fails
instead of pushing the shared machine into swap. The result is one JSON line on stdout,
prefixed with `RESULT_MARK`.

Tasks: `peak` (matrix-product FLOP/s), `train` (timed training steps of one row), `generate`
(bytes/s of one row), `long` (one step of a long sequence, see `megabyte.bench.long`).
"""

from __future__ import annotations

import errno
import json
import resource
import sys
import time
import traceback
from typing import Any

RESULT_MARK = "BENCH-RESULT "


def _setup(spec: dict[str, Any]):
    # The allocator setting of the `megabyte` commands: for our rows (see RowSpec.heap) and for
    # the matrix-product peak (the hardware's best, the denominator of every row's MFU); as
    # there, on the CPU only.
    if spec.get("row", {}).get("heap") or spec["task"] == "peak":
        from megabyte import allocator

        allocator.request()
        allocator.tune_for(spec.get("device", "cpu"))
    limit = spec.get("mem_limit_gb")
    if limit and spec.get("device", "cpu") == "cpu":
        cap = int(limit * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    import torch

    torch.set_num_threads(int(spec.get("threads") or torch.get_num_threads()))
    torch.manual_seed(spec.get("seed", 0))
    return torch, torch.device(spec.get("device", "cpu"))


def peak_memory(torch, device) -> int:
    """Peak bytes: CUDA's peak allocation on a GPU, the process's peak resident set on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def timed(torch, device, fn, *, warmup: int, steps: int) -> dict[str, Any]:
    """Run `fn` `warmup` times, then time it `steps` times (wall and process CPU seconds), each
    between two synchronised points (`megabyte.training.runtime.synchronize`)."""
    from megabyte.training.runtime import synchronize

    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    synchronize(device)
    warm = time.perf_counter() - start
    wall, cpu = [], []
    for _ in range(steps):
        synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        if isinstance(out, torch.Tensor) and out.numel() == 1:
            out = float(out)
        elif not isinstance(out, (int, float)):
            out = None
        synchronize(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"warmup_s": warm, "times": wall, "cpu_times": cpu, "last": out}


def task_peak(spec: dict[str, Any]) -> dict[str, Any]:
    """Best median FLOP/s of large square matrix products, per dtype."""
    from megabyte.training.runtime import synchronize

    torch, device = _setup(spec)
    sizes = spec.get("matmul_sizes") or ([8192, 16384] if device.type == "cuda" else [2048, 4096])
    result: dict[str, Any] = {}
    for name in spec.get("dtypes", ["bf16", "fp32"]):
        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[name]
        best, per_size = 0.0, {}
        for n in sizes:
            a = torch.randn(n, n, dtype=dtype, device=device)
            b = torch.randn(n, n, dtype=dtype, device=device)
            # Warm up for about a second: the first products run before the clocks and caches settle.
            deadline = time.perf_counter() + spec.get("warmup_s", 1.0)
            while time.perf_counter() < deadline:
                a @ b
            synchronize(device)
            r = timed(torch, device, lambda a=a, b=b: a @ b, warmup=0, steps=spec.get("reps", 7))
            flops = sorted(2 * n**3 / t for t in r["times"])
            per_size[n] = flops[len(flops) // 2]
            best = max(best, per_size[n])
        result[name] = {"flops": best, "per_size": per_size}
    return result


def _products(spec: dict[str, Any], device):
    """The fp32 matrix-product setting of the row's steps: TF32 only where the row asks
    (`RowSpec.tf32`); otherwise full fp32, PyTorch's default, whatever the process had."""
    from megabyte.training.runtime import float32_products

    return float32_products(device, tf32=bool(spec["row"].get("tf32", False)))


def _row(spec: dict[str, Any], torch, device, max_seq_len: int):
    from megabyte.bench.rows import RowSpec, Sizes, build_row

    row_spec = RowSpec(**spec["row"])
    sizes = Sizes.named("quick" if spec.get("quick") else spec.get("model_sizes", "reference"))
    return build_row(row_spec, sizes, max_seq_len, device)


def task_train(spec: dict[str, Any]) -> dict[str, Any]:
    torch, device = _setup(spec)
    T, B = spec["seq_len"], spec.get("batch", 1)
    row = _row(spec, torch, device, T)
    with _products(spec, device):
        flops = row.flops(B, T)
        step = row.train_step_fn(B, T)
        r = timed(torch, device, step, warmup=spec.get("warmup", 2), steps=spec.get("steps", 5))
    r.update(params=row.params, flops=flops, bytes_per_step=B * T, peak_memory=peak_memory(torch, device),
             bytes_per_patch=row.bytes_per_patch(B, T))
    return r


def task_generate(spec: dict[str, Any]) -> dict[str, Any]:
    torch, device = _setup(spec)
    prompt_len, new = spec.get("prompt_bytes", 512), spec.get("new_bytes", 512)
    name = spec["row"]["name"]
    # megabyte-pytorch's generate always fills its whole length: build it for exactly prompt + new.
    max_len = prompt_len + new if name == "megabyte-pytorch" else max(spec.get("max_seq_len", 0), prompt_len + new + 64)
    row = _row(spec, torch, device, max_len)
    g = torch.Generator().manual_seed(spec.get("seed", 0))
    prompt = bytes(torch.randint(0, 256, (prompt_len,), generator=g).tolist())
    warm = spec.get("warmup_bytes", 8) if name != "megabyte-pytorch" else 0
    counts: list[int] = []
    with _products(spec, device):
        if warm:
            row.generate(prompt, warm, seed=0)
        r = timed(torch, device, lambda: counts.append(row.generate(prompt, new, seed=len(counts))),
                  warmup=0, steps=spec.get("repeats", 1))
    r.update(params=row.params, new_bytes=counts, peak_memory=peak_memory(torch, device))
    return r


LONG_CONFIGS = {
    # kind: (quick fields, full fields) of `megabyte bench --long`'s two models
    "megabyte": ({"patch_sizes": (4, 4), "dims": (64, 32, 16), "depths": (1, 1, 1), "embed_dims": (4, 8, 16)},
                 {"patch_sizes": (16, 8), "dims": (512, 256, 128), "depths": (6, 2, 2), "heads": (8, 4, 2),
                  "embed_dims": (8, 32, 128)}),
    "transformer": ({"dim": 32, "depth": 1}, {"dim": 512, "depth": 8, "heads": 8}),
}


def long_config(kind: str, seq_len: int, quick: bool):
    from megabyte.model.registry import get_kind

    return get_kind(kind).config_class(**LONG_CONFIGS[kind][0 if quick else 1], max_seq_len=seq_len)


def long_step(spec: dict[str, Any], torch, device) -> dict[str, Any]:
    """Worker side: build the model, take one step (forward, backward, AdamW) on one sequence."""
    import megabyte
    from megabyte.bench.rows import adamw, autocast
    from megabyte.training.runtime import synchronize

    cfg = long_config(spec["kind"], spec["seq_len"], spec.get("quick", False))
    model = megabyte.build_model(cfg).to(device).train()
    if spec.get("checkpointing"):
        for module in model.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = True
    opt = adamw(model.parameters(), fused=True)
    x = torch.randint(0, 256, (1, spec["seq_len"]), device=device)
    # Clocks read between synchronised points: the forward's time is its kernels', not their queueing.
    synchronize(device)
    start = time.perf_counter()
    with autocast(device, spec.get("dtype", "bf16")):
        loss = model.loss(x).mean
    synchronize(device)
    forward = time.perf_counter() - start
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    synchronize(device)
    return {"seconds": time.perf_counter() - start, "forward_s": forward, "loss": float(loss.detach()),
            "params": sum(p.numel() for p in model.parameters()), "peak_memory": peak_memory(torch, device),
            "config": cfg.to_dict()}


def task_long(spec: dict[str, Any]) -> dict[str, Any]:
    torch, device = _setup(spec)
    return long_step(spec, torch, device)


TASKS = {"peak": task_peak, "train": task_train, "generate": task_generate, "long": task_long}


OOM_TEXTS = ("out of memory", "can't allocate memory", "cannot allocate memory", "bad_alloc")
"""How a RuntimeError says that memory ran out: CUDA ("CUDA out of memory", "CUDA error: out of
memory"), PyTorch's CPU allocator ("DefaultCPUAllocator: can't allocate memory"), C++'s bad_alloc."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` means that memory ran out: MemoryError, PyTorch's OutOfMemoryError, ENOMEM,
    or a RuntimeError that says so (`OOM_TEXTS`). Nothing else is, even an error whose message
    mentions memory ("CUDA error: an illegal memory access"): that is a bug to show, and treating
    it as a full device would hide it (the batch search would call it the largest batch)."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOMEM
    return isinstance(exc, RuntimeError) and any(s in str(exc).lower() for s in OOM_TEXTS)


def describe_error(exc: BaseException) -> dict[str, Any]:
    """A failed measurement as a result: not installed, out of memory, or the error's first line."""
    if type(exc).__name__ == "NotInstalled":
        return {"error": "not installed", "not_installed": True, "detail": str(exc)}
    if is_out_of_memory(exc):
        return {"error": "out of memory", "oom": True}
    return {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300], "traceback": traceback.format_exc()[-3000:]}


def run_task(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement here; a failure becomes a result too (one row must not sink the run)."""
    try:
        return TASKS[spec["task"]](spec)
    except Exception as exc:
        return describe_error(exc)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    result = run_task(json.loads(argv[0]))
    result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
