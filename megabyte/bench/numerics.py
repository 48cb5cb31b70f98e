"""The device check's first stage: do the models compute the same things on this device as the
CPU tests prove they do on the CPU?

Every check runs the package's tiny configurations (`megabyte.model.tiny`, the model tests' own)
and returns a dict with `pass` and the numbers it judged, so that a failure says by how much:

- `causality`: changing byte t changes no prediction at positions <= t (and does change t + 1);
- `cached_decoding`: cached decoding gives the full forward's logits at every step;
- `bf16_agreement`: bf16 autocast log-probabilities against fp32 ones, within `BF16_BOUNDS`;
- `sdpa_rows`: attention over more than `layers.SDPA_MAX_ROWS` rows x heads (one CUDA SDPA call
  cannot take them: `_sdpa` cuts them into calls) against attention written as matrix products,
  outputs and gradients, and a model forward over that many rows against the same rows in slices;
- `greedy_generation`: greedy generation with the cache gives the bytes of generation without it;
- `decoding_without_syncs` (CUDA): decode steps and sampling after the prompt's pass never make
  the host wait for the device (`torch.cuda.set_sync_debug_mode("error")`);
- `compiled_generation` (CUDA): `generate(compile=True)`, the decode steps captured as CUDA
  graphs, gives eager's bytes (greedy and seeded).

fp32 checks run with TF32 off (`float32_products(tf32=False)`, the caller's), so that a bound
that holds on the CPU means the same on a GPU.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import torch.nn.functional as F

import megabyte
from megabyte.model import layers
from megabyte.model.tiny import TINY_CONFIGS

LEAK = {"cpu": 0.0, "cuda": 1e-6}
"""Largest change of a prediction at positions <= t after changing byte t: none on the CPU (the
tests' `torch.equal`); on CUDA as good as none (a real leak moves logits by hundredths)."""

TOLERANCE = {"cpu": 1e-5, "cuda": 1e-4}
"""Largest |logit difference| of a cached step against the full forward. The CPU bound is the
tests'; on CUDA the cached step's shorter rows take other kernels (another summation order)."""

BF16_BOUNDS = {"max_logprob": 0.25, "mean_logprob": 0.02, "loss": 0.01}
"""bf16 autocast against fp32 on the tiny models, in nats: the largest and the mean |difference|
of a byte's log-probability, and the difference of the mean loss. bf16 keeps 8 bits of mantissa
(a relative error of 2^-9 per rounding); a few layers of such roundings move log-probabilities
by hundredths of a nat, so these bounds catch a broken bf16 path, not rounding."""

POSITIONS = (0, 1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 23, 24, 31, 32)


def tiny_model(name: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return megabyte.build_model(TINY_CONFIGS[name]).to(device).eval()


def _bytes(shape: tuple[int, ...], device: torch.device, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed)).to(device)


@torch.no_grad()
def causality(name: str, device: torch.device) -> dict[str, Any]:
    """Worst leak (difference at positions <= t after changing byte t) and weakest reach (at t + 1)."""
    model = tiny_model(name, device)
    leak, reach = 0.0, math.inf
    for T in (41, 48):  # 41 is a multiple of no patch size; 48 of all
        x = _bytes((2, T), device)
        base = model(x)
        for t in sorted({*POSITIONS, T - 2, T - 1}):
            changed = x.clone()
            changed[:, t] = (changed[:, t] + 1 + t) % 256
            out = model(changed)
            leak = max(leak, float((out[:, : t + 1] - base[:, : t + 1]).abs().max()))
            if t + 1 < T:
                reach = min(reach, float((out[:, t + 1] - base[:, t + 1]).abs().max()))
    bound = LEAK.get(device.type, LEAK["cuda"])
    return {"pass": leak <= bound and reach > 1e-4, "leak": leak, "reach": reach,
            "bound": f"leak <= {bound:g}, reach > 1e-4"}


@torch.no_grad()
def cached_decoding(name: str, device: torch.device) -> dict[str, Any]:
    model = tiny_model(name, device)
    x = _bytes((2, 40), device)
    full = model(x)  # full[:, t] predicts x[:, t] from x[:, :t]
    worst = 0.0
    for prompt_len in (0, 1, 5, 13):
        logits, state = model.start_decoding(x[:, :prompt_len])
        for t in range(prompt_len, x.shape[1]):
            worst = max(worst, float((logits - full[:, t]).abs().max()))
            logits = model.continue_decoding(state, x[:, t])
    bound = TOLERANCE.get(device.type, TOLERANCE["cuda"])
    return {"pass": worst <= bound, "max_diff": worst, "bound": bound}


@torch.no_grad()
def bf16_agreement(name: str, device: torch.device) -> dict[str, Any]:
    model = tiny_model(name, device)
    x = _bytes((4, TINY_CONFIGS[name].max_seq_len), device)
    fp32 = F.log_softmax(model(x).float(), dim=-1)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        bf16 = F.log_softmax(model(x).float(), dim=-1)
    diff = (bf16 - fp32).abs()
    nll = [float(-lp.gather(-1, x[..., None]).mean()) for lp in (fp32, bf16)]
    got = {"max_logprob": float(diff.max()), "mean_logprob": float(diff.mean()), "loss": abs(nll[1] - nll[0])}
    return {"pass": all(got[k] <= BF16_BOUNDS[k] for k in got), **got, "bounds": BF16_BOUNDS}


def _attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: int = 8192) -> torch.Tensor:
    """Causal attention as matrix products (no SDPA kernel), `rows` at a time. (N, H, L, Dh)"""
    L = q.shape[2]
    mask = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    out = []
    for i in range(0, q.shape[0], rows):
        scores = q[i : i + rows] @ k[i : i + rows].transpose(-1, -2) / math.sqrt(q.shape[-1])  # (n, H, L, L)
        out.append(scores.masked_fill(~mask, -math.inf).softmax(-1) @ v[i : i + rows])
    return torch.cat(out)


def sdpa_rows(device: torch.device, *, heads: int = 2, length: int = 8, head_dim: int = 32) -> dict[str, Any]:
    """`_sdpa` over just more than `SDPA_MAX_ROWS` rows x heads against the reference, outputs and
    gradients in fp32, outputs in bf16."""
    N = layers.SDPA_MAX_ROWS // heads + 64  # rows x heads above one call's limit
    g = torch.Generator().manual_seed(0)
    qkv = [torch.randn(N, heads, length, head_dim, generator=g).to(device).requires_grad_() for _ in range(3)]
    grad = torch.randn(N, heads, length, head_dim, generator=g).to(device)
    got = layers._sdpa(*qkv, causal=True)
    got_grads = torch.autograd.grad(got, qkv, grad)
    want = _attention_reference(*qkv)
    want_grads = torch.autograd.grad(want, qkv, grad)
    out_diff = float((got - want).abs().max())
    grad_diff = max(float((a - b).abs().max()) for a, b in zip(got_grads, want_grads))
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        bf16 = layers._sdpa(*(t.detach() for t in qkv), causal=True)
    bf16_diff = float((bf16.float() - want.detach()).abs().max())
    # fp32: another summation order only. bf16: inputs and output rounded to 8-bit mantissas
    # (2^-9 relative) on outputs of up to about 6 in size (averages of unit normals): hundredths.
    bounds = {"fp32": 1e-5, "bf16": 0.1}
    return {"pass": max(out_diff, grad_diff) <= bounds["fp32"] and bf16_diff <= bounds["bf16"], "rows": N,
            "rows_x_heads": N * heads, "limit": layers.SDPA_MAX_ROWS, "out_diff": out_diff, "grad_diff": grad_diff,
            "bf16_diff": bf16_diff, "bounds": bounds}


@torch.no_grad()
def model_over_the_row_limit(device: torch.device, name: str = "megabyte-2stage") -> dict[str, Any]:
    """A tiny MEGABYTE whose local stage sees more than `SDPA_MAX_ROWS` rows x heads (batch x
    patches rows), against the same sequences in slices under the limit (rows are independent)."""
    cfg = TINY_CONFIGS[name]
    model = tiny_model(name, device)
    patches = cfg.max_seq_len // cfg.patch_sizes[0]
    B = layers.SDPA_MAX_ROWS // patches + 8  # local rows alone exceed the limit, whatever its heads
    x = _bytes((B, cfg.max_seq_len), device)
    whole = model(x)
    step = max(1, B // 4)
    sliced = torch.cat([model(x[i : i + step]) for i in range(0, B, step)])
    diff = float((whole - sliced).abs().max())
    return {"pass": diff <= 1e-5, "batch": B, "local_rows": B * patches, "max_diff": diff, "bound": 1e-5}


@torch.no_grad()
def greedy_generation(name: str, device: torch.device) -> dict[str, Any]:
    model = tiny_model(name, device)
    prompt = b"def f(x):\n    return"
    cached = megabyte.generate(model, prompt, 40, temperature=0, use_cache=True)
    full = megabyte.generate(model, prompt, 40, temperature=0, use_cache=False)
    first = next((i for i, (a, b) in enumerate(zip(cached, full)) if a != b), None)
    return {"pass": cached == full, "bytes": len(cached), "first_difference": first}


SYNC_FREE = ("megabyte-2stage", "megabyte-3stage-cross-patch", "megabyte-space", "transformer", "perceiver-ar")
"""The configurations `decoding_without_syncs` decodes: fixed, nested and dynamic patches, the baselines."""


@torch.no_grad()
def decoding_without_syncs(name: str, device: torch.device, steps: int = 40) -> dict[str, Any]:
    from megabyte.generation import sample_next

    model = tiny_model(name, device)
    g = torch.Generator(device=device).manual_seed(0)
    logits, state = model.start_decoding(_bytes((2, 11), device))
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(steps):
            logits = model.continue_decoding(state, sample_next(logits, temperature=1.0, top_k=None, top_p=None,
                                                                generator=g))
        error = None
    except RuntimeError as exc:  # a synchronizing call raised
        error = str(exc).splitlines()[0][:300]
    finally:
        torch.cuda.set_sync_debug_mode(before)
    return {"pass": error is None, "steps": steps, "error": error}


@torch.no_grad()
def compiled_generation(device: torch.device, name: str = "megabyte-2stage") -> dict[str, Any]:
    model = tiny_model(name, device)
    prompt = b"def f(x):\n    return"
    out = {}
    for label, kw in (("greedy", dict(temperature=0)), ("seeded", dict(seed=3))):
        eager = megabyte.generate(model, prompt, 40, **kw)
        compiled = megabyte.generate(model, prompt, 40, compile=True, **kw)
        out[label] = next((i for i, (a, b) in enumerate(zip(eager, compiled)) if a != b), None)
    return {"pass": all(v is None for v in out.values()), "first_difference": out}


RAW_PROBE = """
import torch, torch.nn.functional as F
from megabyte.model.layers import SDPA_MAX_ROWS
q = torch.randn(SDPA_MAX_ROWS // 2 + 64, 2, 8, 32, device="cuda", dtype=torch.bfloat16)
F.scaled_dot_product_attention(q, q, q, is_causal=True)
torch.cuda.synchronize()
print("one call above the limit ran")
"""
"""One unchunked SDPA call above the limit, in a process of its own (a CUDA error can poison the
process that meets it): whether this PyTorch still needs `_sdpa`'s cut. Reported, not judged."""

PER_MODEL = {"causality": causality, "cached decoding": cached_decoding, "bf16 agreement": bf16_agreement,
             "greedy cached == uncached": greedy_generation}
"""The checks run on every tiny configuration, in this order."""


def model_names() -> list[str]:
    return sorted(TINY_CONFIGS)


def raw_probe(opts) -> dict[str, Any]:
    """`RAW_PROBE` in a process of its own: reported, never failed (see `RAW_PROBE`)."""
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", RAW_PROBE], capture_output=True, text=True,
                          timeout=opts.timeout(120), env=dict(os.environ))
    tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
    return {"pass": True, "exit": done.returncode, "said": tail[0][:300],
            "still_needed": done.returncode != 0}


CPU_ROW_LIMIT = 512
"""The row limit of the CPU form: the CPU has none, so the CI-sized check lowers it (as the CPU
tests do) and exercises the same cut at a size that takes milliseconds, not 20 seconds."""


@contextlib.contextmanager
def row_limit(limit: int | None):
    """`layers.SDPA_MAX_ROWS` is `limit` inside (None: unchanged)."""
    before = layers.SDPA_MAX_ROWS
    layers.SDPA_MAX_ROWS = limit or before
    try:
        yield
    finally:
        layers.SDPA_MAX_ROWS = before


def stage_correctness(stage, opts, work) -> None:
    """Stage 1: every check of this module on every tiny configuration, fp32 with TF32 off; on
    the CPU with the row limit lowered (`CPU_ROW_LIMIT`)."""
    from megabyte.training.runtime import float32_products

    device = torch.device(opts.device)
    with float32_products(device, tf32=False), row_limit(CPU_ROW_LIMIT if device.type == "cpu" else None):
        for check, fn in PER_MODEL.items():
            for name in model_names():
                stage.run(f"{check}: {name}", lambda fn=fn, name=name: fn(name, device))
        stage.run(f"_sdpa over {layers.SDPA_MAX_ROWS:,} rows x heads vs matrix products", lambda: sdpa_rows(device))
        stage.run("tiny MEGABYTE over the row limit vs in slices", lambda: model_over_the_row_limit(device))
    if device.type == "cuda":
        with float32_products(device, tf32=False):
            for name in SYNC_FREE:
                stage.run(f"decoding without host syncs: {name}",
                          lambda name=name: decoding_without_syncs(name, device))
            stage.run("compiled decoding (CUDA graphs) == eager: megabyte-2stage",
                      lambda: compiled_generation(device), needs_s=120)
        torch.cuda.empty_cache()  # the later stages' processes measure memory: leave them the GPU
        stage.run("one unchunked SDPA call over the limit (reported)", lambda: raw_probe(opts))
    else:
        stage.skip("decoding without host syncs", "CUDA only: a CPU has no device queue to wait for")
        stage.skip("compiled decoding (CUDA graphs) == eager", "CUDA only: the CPU tests compile it "
                   "(tests/model/test_decode_step.py)")
        stage.skip("one unchunked SDPA call over the limit (reported)", "CUDA only: the CPU has no row limit")
