"""MEGABYTE: a global transformer over patches, local transformers over the bytes inside them.

Shape legend:
    B batch, T bytes (padded to Tp, a multiple of the top patch size)
    n stages, i a stage (0 = global), S_i bytes per position of stage i
      (S_0 = P_1 * ... * P_{n-1}, S_{n-1} = 1), P_i positions of stage i inside one position of
      its parent, N_i = Tp / S_i positions of stage i in the whole sequence
    E_i byte-embedding width of stage i, D_i model width of stage i

The patch offset, with data. Two stages, P = 4, bytes x0..x7:
    global inputs        [pad, (x0 x1 x2 x3)]                 -> global outputs g0, g1
    local inputs, patch 1 [g1[0]+e(x3), g1[1]+e(x4), g1[2]+e(x5), g1[3]+e(x6)]
    local outputs, patch 1 predict                              x4, x5, x6, x7
Every stage's input at its position m is the embedding of the previous position's bytes
(bytes (m-1)*S_i .. m*S_i - 1; a trainable pad at m = 0), plus, below the global stage, slice j
of the parent's output at the enclosing position. So the prediction of byte t sees bytes < t only.
More stages nest the same construction: `patch_sizes=(16, 8)` has a global stage over 128-byte
patches, a middle stage over 8-byte sub-patches (16 per patch) and a byte stage (8 per sub-patch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from math import prod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from megabyte.errors import MegabyteError
from megabyte.model import dynamic
from megabyte.model.base import MAX_DEPTH, VOCAB, ByteBuffer, ByteModel, ConfigError, ConfigMixin, as_tuple, require
from megabyte.model.entropy import entropies
from megabyte.model.layers import KVCache, KVCapture, StaticKVCache, TransformerStack, ensure_current
from megabyte.model.patching import RULES, patch_starts


@dataclass
class MegabyteConfig(ConfigMixin):
    """A MEGABYTE model with `len(patch_sizes) + 1` stages; per-stage lists are global first."""

    patch_sizes: tuple[int, ...] = (8,)
    """Positions of each stage below the global one inside its parent: (8,) is the paper's
    two-stage model with 8-byte patches; (16, 8) three stages with 128-byte global patches."""
    dims: tuple[int, ...] = (512, 256)
    """Model width per stage. The global width is the concatenation of S_0 byte embeddings."""
    depths: tuple[int, ...] = (6, 4)
    """Transformer layers per stage."""
    heads: tuple[int, ...] | None = None
    """Attention heads per stage (default: width // 64, at least 1)."""
    max_seq_len: int = 8192
    """Longest sequence in bytes."""
    dropout: float = 0.0
    """Dropout in attention and MLPs (the paper trains with 0.1)."""
    mlp_ratio: int = 4
    """MLP hidden width as a multiple of the model width."""
    embed_dims: tuple[int, ...] | None = None
    """Byte-embedding width per stage. Default (None): lossless, dims[i] // S_i, as in the paper.
    Set it when that slice would be too thin (deep hierarchies): the S_i concatenated embeddings
    of width embed_dims[i] are then linearly projected to dims[i]."""
    cross_patch: int = 0
    """Cross-patch attention (paper variant): stages below the global one also attend to the last
    `cross_patch` positions of the previous patch. 0 disables it."""
    conv_kernels: tuple[int, ...] = ()
    """Convolutional patch encoder (paper variant): causal 1-D convolutions over the global byte
    embeddings before patching, e.g. (3, 5, 7). Empty disables it."""
    tie_embeddings: bool = True
    """Tie the output layer to the byte-level stage's embedding (as in the paper)."""
    patching: str = "fixed"
    """Where patches end (`megabyte.model.patching`): "fixed" every P bytes (the paper), "space"
    (SpaceByte's rule: a patch begins after each run of spacelike bytes), or "entropy" (BLT's
    rule: where a small frozen byte model is unsure of the next byte). With dynamic patching
    (two stages only) the patch size is the longest patch, P_max."""
    max_patches: int | None = None
    """Dynamic patching: the most global positions per sequence (default: a quarter of
    max_seq_len). Bytes of later patches are predicted by the local stage alone (no global
    slice), in training and evaluation alike; `megabyte patches` shows how often that happens."""
    entropy_model: dict[str, Any] | str | None = None
    """Entropy patching: the small frozen byte model that gives H_t (`megabyte.model.entropy`),
    as its config (a dict, as saved: its weights are part of this model's), or, until training
    resolves it, the path of its training run or model directory."""
    entropy_source: str | None = None
    """Entropy patching: where the entropy model's weights came from (read once, when a fresh
    run starts; a saved model carries the weights itself)."""
    patch_threshold: float | None = None
    """Entropy patching: theta in nats; byte t begins a patch when H_t > theta. Calibrated from
    `patch_target` when not given."""
    patch_relative: bool = False
    """Entropy patching: BLT's monotonic rule instead, H_t - H_{t-1} > theta."""
    patch_target: float | None = None
    """Entropy patching: the mean patch length in bytes that theta is calibrated to, on the
    training split when training starts."""
    patch_mean: float | None = None
    """Entropy patching: the mean patch length the calibrated theta gave on the training split."""
    model_type: str = field(default="megabyte", repr=False)

    def __post_init__(self) -> None:
        self.patch_sizes = as_tuple(self.patch_sizes)
        self.dims, self.depths = as_tuple(self.dims), as_tuple(self.depths)
        self.heads, self.embed_dims = as_tuple(self.heads), as_tuple(self.embed_dims)
        self.conv_kernels = as_tuple(self.conv_kernels) or ()
        require(self.model_type == "megabyte", "model_type", f"expected 'megabyte', got {self.model_type!r}")
        require(len(self.patch_sizes) >= 1, "patch_sizes", "needs at least one patch size (two stages)")
        for p in self.patch_sizes:
            require(isinstance(p, int) and p >= 1, "patch_sizes", f"every patch size must be >= 1, got {p}")
        n = self.num_stages
        for name in ("dims", "depths"):
            values = getattr(self, name)
            require(len(values) == n, name, f"needs {n} values (one per stage, global first), got {len(values)}")
            for v in values:
                require(isinstance(v, int) and v >= 1, name, f"every value must be >= 1, got {v}")
        for d in self.depths:
            require(d <= MAX_DEPTH, "depths", f"every value must be <= {MAX_DEPTH}, got {d}")
        if self.heads is None:
            self.heads = tuple(max(1, d // 64) for d in self.dims)
        require(len(self.heads) == n, "heads", f"needs {n} values, got {len(self.heads)}")
        for d, h in zip(self.dims, self.heads):
            require(h >= 1 and d % h == 0, "heads", f"{h} heads do not divide width {d}")
        if self.embed_dims is not None:
            require(len(self.embed_dims) == n, "embed_dims", f"needs {n} values, got {len(self.embed_dims)}")
            for e in self.embed_dims:
                require(isinstance(e, int) and e >= 1, "embed_dims", f"every value must be >= 1, got {e}")
        else:
            for i, (d, s) in enumerate(zip(self.dims, self.sub_sizes)):
                require(
                    d % s == 0,
                    "dims",
                    f"stage {i} width {d} is not divisible by its patch size {s} bytes "
                    "(the global width is the concatenation of one embedding per byte of a patch; "
                    "or set embed_dims to project)",
                )
        for i in range(1, n):
            require(
                self.dims[i - 1] % self.patch_sizes[i - 1] == 0,
                "dims",
                f"stage {i - 1} width {self.dims[i - 1]} is not divisible by the {self.patch_sizes[i - 1]} "
                f"positions of stage {i} it is split into",
            )
        require(isinstance(self.max_seq_len, int) and self.max_seq_len >= 1, "max_seq_len", "must be >= 1")
        require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        require(self.mlp_ratio >= 1, "mlp_ratio", f"must be >= 1, got {self.mlp_ratio}")
        require(
            0 <= self.cross_patch <= min(self.patch_sizes),
            "cross_patch",
            f"must be between 0 and the smallest patch size {min(self.patch_sizes)}, got {self.cross_patch}",
        )
        for k in self.conv_kernels:
            require(isinstance(k, int) and k >= 1, "conv_kernels", f"kernel sizes must be >= 1, got {k}")
        self._check_patching()
        if self.tie_embeddings:
            require(
                self.embed_width(n - 1) == self.dims[-1],
                "tie_embeddings",
                "needs the byte stage's embedding width equal to its model width",
            )

    def _check_patching(self) -> None:
        require(self.patching in RULES, "patching", f"expected one of {', '.join(RULES)}, got {self.patching!r}")
        if self.dynamic:
            n = self.num_stages
            require(n == 2, "patching", f"{self.patching!r} patches need two stages (one patch size), got {n}")
            require(self.max_patches is None or (isinstance(self.max_patches, int) and self.max_patches >= 1),
                    "max_patches", f"must be >= 1, got {self.max_patches}")
        else:
            require(self.max_patches is None, "max_patches", "applies to dynamic patching only")
        if self.patching == "entropy":
            require(self.entropy_model is not None, "entropy_model",
                    "entropy patches need the entropy model: model.entropy_model=RUN "
                    "(train one with: megabyte train --preset entropy)")
            if isinstance(self.entropy_model, dict):
                from megabyte.model.entropy import check_entropy_config
                from megabyte.model.io import config_from_dict

                try:
                    check_entropy_config(config_from_dict(self.entropy_model, "entropy_model"), self)
                except MegabyteError as exc:
                    raise ConfigError(f"entropy_model: {exc}") from None
            else:
                require(isinstance(self.entropy_model, str), "entropy_model",
                        "must be a model config or the path of a trained entropy model")
            for name in ("patch_threshold", "patch_target", "patch_mean"):
                value = getattr(self, name)
                require(value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                                          and math.isfinite(value)), name, f"must be a number, got {value!r}")
            require(isinstance(self.patch_relative, bool), "patch_relative", "must be true or false")
        else:
            for name in ("entropy_model", "entropy_source", "patch_threshold", "patch_target", "patch_mean"):
                require(getattr(self, name) is None, name, "applies to entropy patching only")

    @property
    def dynamic(self) -> bool:
        """Whether patch boundaries follow the data (any `patching` but "fixed")."""
        return self.patching != "fixed"

    @property
    def patch_cap(self) -> int:
        """Dynamic patching: the most global positions per sequence (`max_patches`)."""
        return self.max_patches or -(-self.max_seq_len // 4)

    @property
    def num_stages(self) -> int:
        return len(self.patch_sizes) + 1

    @property
    def sub_sizes(self) -> tuple[int, ...]:
        """Bytes per position of each stage: (S_0, ..., S_{n-1} = 1)."""
        return tuple(prod(self.patch_sizes[i:]) for i in range(self.num_stages))

    def embed_width(self, i: int) -> int:
        if self.embed_dims is not None:
            return self.embed_dims[i]
        return self.dims[i] // self.sub_sizes[i]

    @property
    def padded_len(self) -> int:
        S0 = self.sub_sizes[0]
        return -(-self.max_seq_len // S0) * S0


class CausalConvEncoder(nn.Module):
    """Causal 1-D convolutions over byte embeddings (B, T, E), each with a residual connection.

    Output at byte t depends on bytes <= t only (left padding of kernel - 1).
    """

    def __init__(self, width: int, kernels: tuple[int, ...]) -> None:
        super().__init__()
        self.kernels = kernels
        self.convs = nn.ModuleList(nn.Conv1d(width, width, k) for k in kernels)

    @property
    def context(self) -> int:
        """Earlier bytes that one output depends on."""
        return sum(k - 1 for k in self.kernels)

    def forward(self, x: Tensor) -> Tensor:
        h = x.transpose(1, 2)  # (B, E, T)
        for conv, k in zip(self.convs, self.kernels):
            h = h + F.gelu(conv(F.pad(h, (k - 1, 0))))
        return h.transpose(1, 2)


class Stage(nn.Module):
    """One level of the hierarchy: its byte embedder, its link to the parent, its transformer."""

    def __init__(self, cfg: MegabyteConfig, i: int) -> None:
        super().__init__()
        self.index = i
        self.sub_size = S = cfg.sub_sizes[i]
        self.embed_width = E = cfg.embed_width(i)
        D = cfg.dims[i]
        self.byte_embed = nn.Embedding(VOCAB, E)
        self.pad = nn.Parameter(torch.zeros(S * E))  # input of position 0 (no previous bytes)
        self.embed_proj = nn.Linear(S * E, D, bias=False) if S * E != D else None
        if i == 0:
            self.byte_pos = nn.Embedding(cfg.padded_len, E)  # absolute byte positions
            self.conv = CausalConvEncoder(E, cfg.conv_kernels) if cfg.conv_kernels else None
        else:
            P, parent = cfg.patch_sizes[i - 1], cfg.dims[i - 1]
            self.positions = P
            self.from_parent = nn.Linear(parent // P, D, bias=False)  # slice j of parent -> width D
            self.pos = nn.Embedding(P, D)  # position inside the parent's patch
        self.transformer = TransformerStack(
            D, cfg.depths[i], cfg.heads[i], mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout,
            cross_patch=cfg.cross_patch if i > 0 else 0,
        )

    def embed(self, x: Tensor, first: int, count: int) -> Tensor:
        """Inputs (B, count, D) of positions first .. first+count-1, before the parent's part.

        Position m embeds the bytes of position m - 1, [(m-1)*S, m*S), concatenated; m = 0 gets
        the pad. `x` (B, >= (first+count-1)*S) holds the bytes from the start of the sequence.
        """
        S, E = self.sub_size, self.embed_width
        lo, hi = max(first - 1, 0) * S, (first + count - 1) * S
        B = x.shape[0]
        if hi > lo:
            conv = getattr(self, "conv", None)
            ctx = min(lo, conv.context) if conv is not None else 0  # earlier bytes the convs need
            e = self.byte_embed(x[:, lo - ctx : hi])  # (B, ctx + hi - lo, E)
            if self.index == 0:
                e = e + self.byte_pos.weight[lo - ctx : hi]
                if conv is not None:
                    e = conv(e)[:, ctx:]
            e = e.reshape(B, (hi - lo) // S, S * E)  # lossless concatenation of S byte embeddings
        else:
            e = self.pad.new_zeros(B, 0, S * E)
        if first == 0:
            e = torch.cat([self.pad.expand(B, 1, S * E).to(e.dtype), e], dim=1)  # (B, count, S*E)
        return self.embed_proj(e) if self.embed_proj is not None else e

    def link(self, parent_out: Tensor, j: slice) -> Tensor:
        """Parent outputs (R, D_parent) -> slices j of each as inputs (R, |j|, D) of this stage."""
        R = parent_out.shape[0]
        parts = parent_out.view(R, self.positions, -1)[:, j]  # (R, |j|, D_parent / P)
        return self.from_parent(parts) + self.pos.weight[j]


class Megabyte(ByteModel):
    """The MEGABYTE multiscale transformer (Yu et al., 2023) with any number of stages."""

    def __init__(self, config: MegabyteConfig) -> None:
        super().__init__()
        self.config = config
        self.stages = nn.ModuleList(Stage(config, i) for i in range(config.num_stages))
        last = self.stages[-1]
        self.head = nn.Linear(config.dims[-1], VOCAB, bias=False)
        if config.tie_embeddings:
            self.head.weight = last.byte_embed.weight
        self.init_weights()
        if config.patching == "entropy":
            if not isinstance(config.entropy_model, dict):
                raise MegabyteError("the entropy model is given as a path: resolve it first "
                                    "(megabyte.model.entropy.resolve, as training does)")
            from megabyte.model.io import build_model, config_from_dict

            self.entropy_model = build_model(config_from_dict(config.entropy_model, "entropy_model"))
            self.entropy_model.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        """Training mode for the model; the entropy model stays frozen in eval mode."""
        super().train(mode)
        if getattr(self, "entropy_model", None) is not None:
            self.entropy_model.eval()
        return self

    def load_frozen(self) -> None:
        """A fresh run: the entropy model's weights from `entropy_source`, checked against its config."""
        if self.config.patching != "entropy":
            return
        from megabyte.model.entropy import load_small_model

        source = self.config.entropy_source
        if not source:
            raise MegabyteError("entropy_source: the entropy model's weights are needed to start a fresh run")
        small = load_small_model(source)
        if small.config.to_dict() != self.config.entropy_model:
            raise MegabyteError(f"entropy model {source}: its config differs from the one this run was set up "
                                "with (it changed since)")
        with torch.no_grad():
            for mine, theirs in zip(self.entropy_model.state_dict().values(), small.state_dict().values()):
                mine.copy_(theirs)

    def patch_starts(self, x: Tensor, entropy: Tensor | None = None) -> Tensor:
        """(B, T) bool: byte t begins a patch, under this model's dynamic rule (entropy patches:
        from `entropy`, the entropy model's H of x, when the caller has it already)."""
        cfg = self.config
        if cfg.patching == "entropy":
            H = entropies(self.entropy_model, x) if entropy is None else entropy
            return patch_starts(x, "entropy", cfg.patch_sizes[0], entropy=H, threshold=self.threshold,
                                relative=cfg.patch_relative)
        return patch_starts(x, cfg.patching, cfg.patch_sizes[0])

    @property
    def threshold(self) -> float:
        if self.config.patch_threshold is None:
            raise MegabyteError("patch_threshold is not set: give model.patch_target to calibrate it on the "
                                "training data, or set it")
        return float(self.config.patch_threshold)

    def init_weights(self, std: float = 0.02) -> None:
        for stage in self.stages:
            nn.init.normal_(stage.byte_embed.weight, std=std)
            nn.init.normal_(stage.pad, std=std)
            for name in ("embed_proj", "from_parent"):
                module = getattr(stage, name, None)
                if module is not None:
                    nn.init.normal_(module.weight, std=std)
            if stage.index == 0:
                nn.init.normal_(stage.byte_pos.weight, std=std)
                if stage.conv is not None:
                    for conv in stage.conv.convs:
                        nn.init.normal_(conv.weight, std=std)
                        nn.init.zeros_(conv.bias)
            else:
                nn.init.normal_(stage.pos.weight, std=std)
            stage.transformer.init_weights(std)
        if not self.config.tie_embeddings:
            nn.init.normal_(self.head.weight, std=std)

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts: the global stage, the local stages (with the output layer), total."""
        per_stage = [sum(p.numel() for p in s.parameters()) for s in self.stages]
        head = 0 if self.config.tie_embeddings else self.head.weight.numel()
        counts = {
            "global": per_stage[0],
            "local": sum(per_stage[1:]) + head,
            "stages": per_stage,
            "total": sum(per_stage) + head,
        }
        if getattr(self, "entropy_model", None) is not None:  # frozen, not in the total trained
            counts["entropy_model"] = sum(p.numel() for p in self.entropy_model.parameters())
        return counts

    # ----------------------------------------------------------------------------- training
    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        x = x.long()
        if self.config.dynamic:
            return self.head(dynamic.run_stages(self, x)[-1])
        B, T = x.shape
        S0 = self.config.sub_sizes[0]
        Tp = -(-max(T, 1) // S0) * S0
        x = F.pad(x, (0, Tp - T))  # the tail pad comes after every real byte: causality hides it
        h = self._run_stages(x, Tp)[-1]  # (B, Tp, D_last)
        return self.head(h[:, :T])

    def _run_stages(self, x: Tensor, Tp: int, captures: list | None = None) -> list[Tensor]:
        """Every stage over the padded bytes `x` (B, Tp); returns each stage's outputs (B, N_i, D_i)."""
        B = x.shape[0]
        outs: list[Tensor] = []
        for i, stage in enumerate(self.stages):
            N = Tp // stage.sub_size
            inputs = stage.embed(x, 0, N)  # (B, N_i, D_i)
            if i == 0:
                groups = 1
            else:
                P = stage.positions
                groups = N // P  # parent positions per sequence
                parent = outs[-1].reshape(B * groups, -1)  # (B * N_{i-1}, D_{i-1})
                inputs = inputs.view(B * groups, P, -1) + stage.link(parent, slice(None))  # (B*N_{i-1}, P_i, D_i)
            caches = None if captures is None else captures[i]
            outs.append(stage.transformer(inputs, groups=groups, caches=caches).view(B, N, -1))
        return outs

    def _prefill_current(self, x: Tensor, L: int, captures: list) -> list[Tensor]:
        """The full pass for decoding from byte L without cross-patch attention: the global
        stage over every position, each stage below only over the one parent position that
        byte L is in (the other patches' byte-level outputs and keys are never needed). Returns
        each stage's output (B, D_i) at its current position."""
        outs: list[Tensor] = []
        for i, stage in enumerate(self.stages):
            m = L // stage.sub_size  # current position of stage i
            if i == 0:
                N = x.shape[1] // stage.sub_size
                h = stage.transformer(stage.embed(x, 0, N), caches=captures[0])  # (B, N_0, D_0)
            else:
                P = stage.positions
                row = m // P  # the parent position: one row of P positions
                inputs = stage.embed(x, row * P, P) + stage.link(outs[-1], slice(None))  # (B, P, D_i)
                h = stage.transformer(inputs, caches=[_RowCapture(c) for c in captures[i]])
                m = m % P
            outs.append(h[:, m])
        return outs

    # ----------------------------------------------------------------------------- decoding
    @torch.no_grad()
    def start_decoding(self, prompt: Tensor, *, compile: bool = False) -> tuple[Tensor, _DecodeState]:
        """Run the prompt through one full forward pass that also fills every stage's KV cache.

        The pass covers the prompt plus one placeholder byte at position L (the one to predict):
        by causality the placeholder changes nothing, and every stage then sits exactly at the
        position that predicts byte L. `compile`: static caches and compiled decode steps
        (`TransformerStack.step`).
        """
        cfg = self.config
        B, L = prompt.shape
        if L + 1 > cfg.max_seq_len:
            raise ValueError(f"prompt of {L} bytes leaves no room under max_seq_len {cfg.max_seq_len}")
        if cfg.dynamic:
            if compile:
                raise MegabyteError(f"compiled decoding supports fixed patches only, not {cfg.patching!r} patches")
            return dynamic.start_decoding(self, prompt)
        buf = ByteBuffer(prompt.long(), cfg.padded_len)
        state = _DecodeState(buf=buf, caches=[], outs=[], compiled=compile)
        captures = []
        for i, stage in enumerate(self.stages):
            m = L // stage.sub_size  # current position of stage i
            if i == 0:
                capacity, row, keep = cfg.padded_len // stage.sub_size, 0, m + 1
            else:
                capacity, row, keep = cfg.cross_patch + stage.positions, m // stage.positions, m % stage.positions + 1
            caches = stage.transformer.new_caches(B, capacity, cls=StaticKVCache if compile else KVCache)
            state.caches.append(caches)
            prefix = cfg.cross_patch if i else 0
            captures.append([KVCapture(c, row=row, keep=keep, prefix=prefix) for c in caches])
        S0 = cfg.sub_sizes[0]
        Tp = (L // S0 + 1) * S0
        if cfg.cross_patch:  # every patch's keys reach the next one's: the full pass
            outs = self._run_stages(buf.window(0, Tp), Tp, captures)
            state.outs = [h[:, L // stage.sub_size] for h, stage in zip(outs, self.stages)]  # (B, D_i) each
        else:
            state.outs = self._prefill_current(buf.window(0, Tp), L, captures)
        state.links = [None] + [stage.link(parent, slice(None)) for stage, parent in zip(self.stages[1:], state.outs)]
        return self.head(state.outs[-1]), state

    @torch.no_grad()
    def continue_decoding(self, state: _DecodeState, next_bytes: Tensor) -> Tensor:
        """Append one byte per row; advance every stage whose position changes.

        Per byte only the byte stage runs; stage i runs once every S_i bytes (the global stage
        once per patch), which is where MEGABYTE's decoding speed comes from. A stage that runs
        also projects its output into the P slices its child adds to its inputs, once for the
        patch (`state.links`), as the full pass does.
        """
        if self.config.dynamic:
            return dynamic.continue_decoding(self, state, next_bytes)
        if state.compiled:
            ensure_current(*state.caches)
        buf, cfg = state.buf, self.config
        buf.append(next_bytes)
        t = buf.length  # position of the byte to predict next
        if t >= cfg.max_seq_len:
            raise ValueError(f"reached the model's max_seq_len ({cfg.max_seq_len} bytes)")
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            if t % stage.sub_size:
                continue  # stage i stays at its current position
            m = t // stage.sub_size
            if i == last and stage.sub_size == 1 and stage.embed_proj is None:
                inputs = F.embedding(buf.data.narrow(1, t - 1, 1), stage.byte_embed.weight)  # (B, 1, D): `embed`
            else:
                inputs = stage.embed(buf.data, m, 1)  # (B, 1, D_i)
            if i > 0:
                j = m % stage.positions
                if j == 0:
                    for cache in state.caches[i]:
                        cache.restart(keep=cfg.cross_patch)
                inputs = inputs + state.links[i][:, j : j + 1]
            state.outs[i] = stage.transformer.step(inputs, state.caches[i], compiled=state.compiled)[:, 0]
            if i < last:
                state.links[i + 1] = self.stages[i + 1].link(state.outs[i], slice(None))  # (B, P_{i+1}, D_{i+1})
        return F.linear(state.outs[-1], self.head.weight)


class _RowCapture:
    """A `KVCapture` of a pass over its row alone (row 0 of one group)."""

    def __init__(self, capture: KVCapture) -> None:
        self.capture = capture

    def __call__(self, k: Tensor, v: Tensor, groups: int) -> None:
        c = self.capture
        c.cache.length = 0
        c.cache.append(k[:, :, : c.keep], v[:, :, : c.keep])


@dataclass
class _DecodeState:
    buf: ByteBuffer
    caches: list[list[KVCache]]  # per stage, per layer
    outs: list[Any]  # per stage: output (B, D_i) at its current position
    links: list[Any] = field(default_factory=list)  # per stage below the global: (B, P_i, D_i), the parent's slices
    compiled: bool = False
