"""Model FLOPs of one training step (forward + backward), counted analytically from the config.

The convention (the one MFU is quoted in, as in PaLM and nanoGPT):

* A linear layer of `i x o` weights applied to R positions costs `2*R*i*o` forward and twice that
  backward (the input gradient and the weight gradient): **6*R*i*o per training step**. Every
  matrix product of the model counts: attention projections, MLPs, the patch-embedding projection,
  the global-to-local projection, convolutions, and the output layer.
* Attention costs `2*D` FLOPs per (query, key) pair for the scores and `2*D` for the weighted sum
  (D = heads x head width), forward; backward is twice that: **12*D per pair per step**. With
  `causal=True` (the default, used for MFU) only the pairs a causal model needs are counted,
  `L*(L+1)/2` per row of L positions (plus `L*r` for cross-patch attention); `causal=False` counts
  all `L*L` (what `torch.utils.flop_counter` counts, and what the tests compare against).
* Embedding look-ups, norms, activations, softmax and the optimizer are not counted.

For MEGABYTE the stages are counted separately: the global stage runs on K = T/P patch positions
(`6 * 12*D_G^2 * K` per layer plus attention over K positions), each local stage on all of its
positions in rows of P (`6 * 12*D_L^2 * T` per layer plus attention within a patch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

VOCAB = 256


@dataclass
class FlopCount:
    """FLOPs of one training step, split into named parts (e.g. 'global', 'local', 'head')."""

    parts: dict[str, float] = field(default_factory=dict)

    def add(self, part: str, flops: float) -> None:
        self.parts[part] = self.parts.get(part, 0.0) + flops

    @property
    def total(self) -> float:
        return sum(self.parts.values())


def _pairs(rows: int, length: int, causal: bool, extra_keys: int = 0) -> int:
    """(query, key) pairs of `rows` rows of `length` queries, each also seeing `extra_keys` keys."""
    own = length * (length + 1) // 2 if causal else length * length
    return rows * (own + length * extra_keys)


def transformer_stack(count: FlopCount, part: str, *, dim: int, depth: int, mlp_ratio: int, rows: int,
                      length: int, causal: bool, extra_keys: int = 0) -> None:
    """`depth` pre-norm blocks over `rows` rows of `length` positions of width `dim`."""
    positions = rows * length
    per_layer = (4 + 2 * mlp_ratio) * dim * dim  # qkv 3D^2 + out D^2 + MLP 2 * ratio * D^2
    count.add(part, depth * 6 * positions * per_layer)
    count.add(part, depth * 12 * dim * _pairs(rows, length, causal, extra_keys))


def megabyte_flops(cfg, batch: int, seq_len: int, *, causal: bool = True) -> FlopCount:
    """A `Megabyte` training step on `batch` sequences of `seq_len` bytes (parts per stage)."""
    S0 = cfg.sub_sizes[0]
    Tp = -(-seq_len // S0) * S0  # the model pads to whole global patches
    count = FlopCount()
    n = cfg.num_stages
    for i in range(n):
        part = "global" if i == 0 else ("local" if n == 2 else f"stage{i}")
        S, D, E = cfg.sub_sizes[i], cfg.dims[i], cfg.embed_width(i)
        N = Tp // S  # positions of stage i per sequence
        if S * E != D:
            count.add(part, 6 * batch * N * S * E * D)  # embed_proj
        if i == 0:
            for k in cfg.conv_kernels:  # over every byte but the last patch's (no global input needs it)
                count.add(part, 6 * batch * (Tp - S) * E * E * k)
            transformer_stack(count, part, dim=D, depth=cfg.depths[i], mlp_ratio=cfg.mlp_ratio,
                              rows=batch, length=N, causal=causal)
        else:
            P = cfg.patch_sizes[i - 1]
            count.add(part, 6 * batch * N * (cfg.dims[i - 1] // P) * D)  # from_parent
            transformer_stack(count, part, dim=D, depth=cfg.depths[i], mlp_ratio=cfg.mlp_ratio,
                              rows=batch * N // P, length=P, causal=causal, extra_keys=min(cfg.cross_patch, P))
    count.add("head", 6 * batch * seq_len * cfg.dims[-1] * VOCAB)
    return count


def transformer_flops(cfg, batch: int, seq_len: int, *, causal: bool = True) -> FlopCount:
    """A byte-level `Transformer` training step."""
    count = FlopCount()
    transformer_stack(count, "transformer", dim=cfg.dim, depth=cfg.depth, mlp_ratio=cfg.mlp_ratio,
                      rows=batch, length=seq_len, causal=causal)
    count.add("head", 6 * batch * seq_len * cfg.dim * getattr(cfg, "vocab_size", VOCAB))
    return count


def perceiver_ar_flops(cfg, batch: int, seq_len: int, *, causal: bool = True) -> FlopCount:
    """A `PerceiverAR` training step: one causal block over every position, then the latent
    blocks within chunks of `num_latents` positions."""
    count = FlopCount()
    N = cfg.num_latents
    chunks = -(-seq_len // N)
    transformer_stack(count, "cross", dim=cfg.dim, depth=1, mlp_ratio=cfg.mlp_ratio, rows=batch,
                      length=seq_len, causal=causal)
    transformer_stack(count, "latent", dim=cfg.dim, depth=cfg.depth, mlp_ratio=cfg.mlp_ratio,
                      rows=batch * chunks, length=N, causal=causal)
    count.add("head", 6 * batch * seq_len * cfg.dim * VOCAB)
    return count


def model_flops(cfg, batch: int, seq_len: int, *, causal: bool = True) -> FlopCount:
    """FLOPs of one training step of the model `cfg` describes (any of the three kinds)."""
    kind = cfg.model_type
    if kind == "megabyte":
        return megabyte_flops(cfg, batch, seq_len, causal=causal)
    if kind == "transformer":
        return transformer_flops(cfg, batch, seq_len, causal=causal)
    if kind == "perceiver-ar":
        return perceiver_ar_flops(cfg, batch, seq_len, causal=causal)
    raise ValueError(f"no FLOP formula for model_type {kind!r}")


def _sdpa_forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    # The model-FLOPs convention: backward = 2 x forward (torch's own formula adds the
    # recomputation of the scores, an implementation cost rather than a model FLOP).
    return 2 * _sdpa_forward(query, key, value)


def _attention_ops() -> dict:
    import torch

    aten = torch.ops.aten
    forward = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
               "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention")
    mapping = {}
    for name in forward:
        for op, formula in ((name, _sdpa_forward), (name + "_backward", _sdpa_backward)):
            if hasattr(aten, op):
                mapping[getattr(aten, op)] = formula
    return mapping


def counted_flops(step, *, attention_scale: float = 1.0) -> float:
    """FLOPs that `torch.utils.flop_counter` sees while `step()` runs (forward and backward).

    For models without a formula here (the other implementations), and to check the formulas.
    Fused attention kernels are counted like the formulas count them (all L*L pairs, backward
    = 2 x forward); their attention is causal, so `attention_scale=0.5` gives the causal
    convention (up to the diagonal). Attention written as plain matrix products is counted in
    full whatever the scale.
    """
    from torch.utils.flop_counter import FlopCounterMode

    mapping = _attention_ops()
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        step()
    names = {str(op).split(".")[-1] for op in mapping} | {str(op) for op in mapping}
    total = 0.0
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        total += flops * (attention_scale if str(op).split(".")[-1] in names else 1.0)
    return total
