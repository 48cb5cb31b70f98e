"""Training FLOPs of every model kind, counted analytically from its config.

    count = training_flops(config, seq_len)      # one sequence of seq_len positions
    count.total, count.per_position, [(p.name, p.flops) for p in count.parts]

The one FLOP count of the project: `megabyte compare` matches budgets with it and `megabyte
bench` divides it by step time for MFU (the convention MFU is quoted in, as in PaLM and nanoGPT).

The rule (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", section 2.1), applied
part by part to what each model actually runs:

    matmuls     6 x (weights a position is multiplied by) x (positions the part runs on)
                (2 FLOPs per multiply-add forward, twice that backward)
    attention   12 x width x layers x (query, key) pairs per layer
                (q.k and the weighted sum of v: 2 x 2 x width per pair forward, x 3 for training)

Weights counted: every linear layer (attention q/k/v and output, MLP, MEGABYTE's embedding
projections and its global-to-local links, the output layer even when it is tied to the embedding:
it is a real matmul per position). Not counted: embedding lookups, position embeddings, norms and
element-wise work, the optimizer. Causal attention counts the pairs it needs, L(L+1)/2 for a row
of L positions (`causal=False` counts all L x L, as fused kernels compute them and as
`torch.utils.flop_counter` counts them: the tests compare the two).

What "positions" means is the point of MEGABYTE: its global stage runs once per patch (T/P
positions), its local stage once per byte, in rows of P. The Transformer runs every block on
every byte over the whole context; this PerceiverAR runs one full-context block and then its
latent blocks in chunks of `num_latents`. The subword baseline is the Transformer over tokens,
so its cost per *byte* is its cost per token divided by the bytes per token.
"""

from __future__ import annotations

from dataclasses import dataclass

from megabyte.errors import MegabyteError
from megabyte.model.registry import kind_of


@dataclass(frozen=True)
class Part:
    """One piece of a model's compute for one sequence."""

    name: str
    positions: int
    """Positions the part's matmuls run on (per sequence)."""
    weights: int
    """Weights each position is multiplied by."""
    width: int = 0
    """Attention width (0: no attention)."""
    layers: int = 0
    """Attention layers."""
    pairs: int = 0
    """(query, key) pairs per attention layer (per sequence)."""

    @property
    def matmul_flops(self) -> int:
        return 6 * self.weights * self.positions

    @property
    def attention_flops(self) -> int:
        return 12 * self.width * self.layers * self.pairs

    @property
    def flops(self) -> int:
        return self.matmul_flops + self.attention_flops


@dataclass(frozen=True)
class FlopCount:
    """Training FLOPs (forward + backward) of one sequence of `seq_len` positions; with a frozen
    part (the entropy model of entropy patches) its forward passes too, counted apart."""

    seq_len: int
    parts: tuple[Part, ...]
    frozen: tuple[Part, ...] = ()
    """Parts that run forward only (a third of a part's training FLOPs): the entropy model."""

    @property
    def trained(self) -> int:
        """FLOPs of the trained parts (forward + backward)."""
        return sum(p.flops for p in self.parts)

    @property
    def frozen_flops(self) -> int:
        """Forward FLOPs of the frozen parts (2 x weights x positions + 4 x width x layers x pairs)."""
        return sum(p.flops for p in self.frozen) // 3

    @property
    def total(self) -> int:
        return self.trained + self.frozen_flops

    @property
    def per_position(self) -> float:
        """FLOPs per byte (per token for a token model)."""
        return self.total / self.seq_len

    def to_dict(self) -> dict:
        out = {
            "seq_len": self.seq_len, "total": self.total, "per_position": self.per_position,
            "parts": [{"name": p.name, "positions": p.positions, "weights": p.weights, "layers": p.layers,
                       "attention_pairs": p.pairs, "flops": p.flops} for p in self.parts],
        }
        if self.frozen:
            out["trained"], out["frozen_forward"] = self.trained, self.frozen_flops
            out["frozen_parts"] = [{"name": p.name, "positions": p.positions, "weights": p.weights,
                                    "layers": p.layers, "attention_pairs": p.pairs, "forward_flops": p.flops // 3}
                                   for p in self.frozen]
        return out


def block_weights(dim: int, mlp_ratio: int) -> int:
    """Linear weights of one transformer block: q, k, v and output (4 D^2), MLP up and down (2 r D^2)."""
    return (4 + 2 * mlp_ratio) * dim * dim


def causal_pairs(length: int, causal: bool = True) -> int:
    """(query, key) pairs of causal attention over `length` positions (all of them if not `causal`)."""
    return length * (length + 1) // 2 if causal else length * length


def training_flops(config, seq_len: int, *, causal: bool = True, data=None, starts=None) -> FlopCount:
    """Training FLOPs of one sequence of `seq_len` positions for any model config (its kind's
    `flops` in `megabyte.model.registry`).

    A dynamically patched MEGABYTE computes what its bytes decide: give `data`, a (B, seq_len)
    batch of byte rows, and the count is what the model computes on that batch, per sequence
    (the mean over its rows; positions may then be fractional). Entropy patches also need the
    patch `starts` of those rows (`Megabyte.patch_starts`: the entropy model decides them), and
    count the entropy model's forward pass over the rows as a frozen part."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if getattr(config, "dynamic", False):
        if data is None:
            raise MegabyteError(f"a {config.patching!r}-patched MEGABYTE's FLOPs depend on its bytes: pass data=")
        if data.shape[-1] != seq_len:
            raise ValueError(f"data rows hold {data.shape[-1]} bytes, not seq_len {seq_len}")
        frozen = ()
        if config.patching == "entropy":
            from megabyte.model.io import config_from_dict

            small = config_from_dict(config.entropy_model, "entropy_model")
            frozen = tuple(Part(f"entropy model: {p.name}", p.positions, p.weights, p.width, p.layers, p.pairs)
                           for p in kind_of(small).flops(small, seq_len, causal))
        return FlopCount(seq_len, tuple(dynamic_megabyte_parts(config, data, causal, starts)), frozen)
    return FlopCount(seq_len, tuple(kind_of(config).flops(config, seq_len, causal)))


def transformer_parts(c, T: int, causal: bool) -> list[Part]:
    vocab = getattr(c, "vocab_size", 256)
    return [
        Part("blocks", T, c.depth * block_weights(c.dim, c.mlp_ratio), c.dim, c.depth, causal_pairs(T, causal)),
        Part("head", T, c.dim * vocab),
    ]


def perceiver_ar_parts(c, T: int, causal: bool) -> list[Part]:
    N = c.num_latents
    Tp = -(-T // N) * N  # the last chunk runs padded to N latents
    return [
        Part("cross", T, block_weights(c.dim, c.mlp_ratio), c.dim, 1, causal_pairs(T, causal)),
        Part("latent", Tp, c.depth * block_weights(c.dim, c.mlp_ratio), c.dim, c.depth,
             Tp // N * causal_pairs(N, causal)),
        Part("head", T, c.dim * 256),
    ]


def megabyte_parts(c, T: int, causal: bool) -> list[Part]:
    sub = c.sub_sizes
    Tp = -(-T // sub[0]) * sub[0]  # padded to whole global patches
    parts = []
    for i in range(c.num_stages):
        D, S, E = c.dims[i], sub[i], c.embed_width(i)
        N = Tp // S  # positions of stage i
        weights = c.depths[i] * block_weights(D, c.mlp_ratio)
        if S * E != D:
            weights += S * E * D  # embedding projection
        if i == 0:
            rows, length, cross = 1, N, 0
            name = "global"
        else:
            length = c.patch_sizes[i - 1]
            rows = N // length  # one row per parent position
            weights += c.dims[i - 1] // length * D  # global-to-local link, one slice per position
            r = min(c.cross_patch, length)  # keys of the previous patch (none for a first patch)
            cross = (rows - 1) * length * r if causal else rows * length * r
            name = "local" if c.num_stages == 2 else f"stage {i}"
        parts.append(Part(name, N, weights, D, c.depths[i], rows * causal_pairs(length, causal) + cross))
    if c.conv_kernels:
        E0 = c.embed_width(0)
        parts.append(Part("conv encoder", Tp - sub[0], sum(k * E0 * E0 for k in c.conv_kernels)))
    parts.append(Part("head", T, c.dims[-1] * 256))
    return parts


def dynamic_megabyte_parts(c, x, causal: bool, starts=None) -> list[Part]:
    """What a dynamically patched MEGABYTE computes on the byte rows x (B, T), per row: the
    global stage on the batch's most patches K (at most `patch_cap`; shorter rows are padded,
    as the model runs them), the local stage on every byte, attending in blocks of W = P_max + r
    to its own and the previous block (`causal=False`: every such pair, as the model computes
    them; `causal`: only the pairs a byte needs, its patch so far and r bytes before it)."""
    import torch

    from megabyte.model.dynamic import layout_of, window_width

    x = torch.as_tensor(x).long()
    B, T = x.shape
    lay = layout_of(c, x, starts)
    K = min(int(lay.count.max()), c.patch_cap)
    P, W = c.patch_sizes[0], window_width(c)
    (D0, D1), E0 = c.dims, c.embed_width(0)
    g_weights = c.depths[0] * block_weights(D0, c.mlp_ratio) + (P * E0 * D0 if P * E0 != D0 else 0)
    l_weights = c.depths[1] * block_weights(D1, c.mlp_ratio) + D0 // P * D1
    l_weights += c.embed_width(1) * D1 if c.embed_width(1) != D1 else 0
    if causal:
        pos = torch.arange(T)
        pairs = (pos - (lay.start - c.cross_patch).clamp(min=0) + 1).sum().item() / B
    else:
        pairs = -(-T // W) * W * 2 * W
    parts = [Part("global", K, g_weights, D0, c.depths[0], causal_pairs(K, causal)),
             Part("local", T, l_weights, D1, c.depths[1], pairs)]
    if c.conv_kernels:
        parts.append(Part("conv encoder", T, sum(k * E0 * E0 for k in c.conv_kernels)))
    parts.append(Part("head", T, D1 * 256))
    return parts


def mean_flops(config, windows, batch: int, *, causal: bool = True, starts=None) -> FlopCount:
    """Training FLOPs of one sequence, averaged over the training steps that `windows` (N, T)
    make in consecutive groups of `batch` rows: what a dynamically patched model costs on that
    data (any other kind: the same as `training_flops(config, T)`); `starts` (N, T): the
    windows' patch starts, for entropy patches."""
    import torch

    windows = torch.as_tensor(windows)
    T = windows.shape[1]
    if not getattr(config, "dynamic", False):
        return training_flops(config, T, causal=causal)
    counts = [training_flops(config, T, causal=causal, data=windows[i : i + batch],
                             starts=None if starts is None else starts[i : i + batch])
              for i in range(0, max(1, len(windows) - batch + 1), batch)]
    parts = []
    for same in zip(*(c.parts for c in counts)):
        first = same[0]
        parts.append(Part(first.name, sum(p.positions for p in same) / len(same), first.weights, first.width,
                          first.layers, sum(p.pairs for p in same) / len(same)))
    return FlopCount(T, tuple(parts), counts[0].frozen)
