"""PerceiverAR (Hawthorne et al., 2022), the paper's second baseline, on the same blocks.

Shape legend: B batch, T bytes, N latents per chunk, C = T / N chunks, D width.

PerceiverAR turns the last N positions of its context into latents: each latent cross-attends
causally to every input at or before its position, then a stack of causal self-attention
layers runs over the latents only. To give every position a prediction (the convention of all
models here), the sequence is cut into chunks of N positions from the start: the latents of a
chunk cross-attend to the whole prefix, and self-attend within their chunk. For T <= N this is
one chunk; the last chunk of a T = k*N sequence is exactly PerceiverAR with a T-byte context.
Cross-attention of every position over its prefix is a causal attention layer over the whole
sequence, so the first block is a full causal block and the rest run on (B*C, N, D).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from megabyte.model.base import VOCAB, ByteBuffer, ByteModel, ConfigMixin, check_stack_fields, require
from megabyte.model.layers import KVCache, StaticKVCache, TransformerStack, ensure_current
from megabyte.model.transformer import ShiftedByteEmbedding


@dataclass
class PerceiverARConfig(ConfigMixin):
    """PerceiverAR over bytes: one cross-attention block, then `depth` latent blocks."""

    dim: int = 512
    """Model width."""
    depth: int = 8
    """Self-attention layers over the latents."""
    heads: int | None = None
    """Attention heads (default: dim // 64, at least 1)."""
    max_seq_len: int = 8192
    """Longest sequence (the context) in bytes."""
    num_latents: int = 1024
    """Latents: the last positions of the context that the latent stack runs on."""
    dropout: float = 0.0
    """Dropout in attention and MLPs."""
    mlp_ratio: int = 4
    """MLP hidden width as a multiple of the model width."""
    tie_embeddings: bool = True
    """Tie the output layer to the byte embedding."""
    model_type: str = field(default="perceiver-ar", repr=False)

    def __post_init__(self) -> None:
        check_stack_fields(self, "perceiver-ar")
        require(1 <= self.num_latents <= self.max_seq_len, "num_latents",
                f"must be between 1 and max_seq_len ({self.max_seq_len}), got {self.num_latents}")


class PerceiverAR(ByteModel):
    """PerceiverAR: causal cross-attention from latents over the whole context, then latent blocks."""

    def __init__(self, config: PerceiverARConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embed = ShiftedByteEmbedding(c.dim, c.max_seq_len)
        self.cross = TransformerStack(c.dim, 1, c.heads, mlp_ratio=c.mlp_ratio, dropout=c.dropout)
        self.latent = TransformerStack(c.dim, c.depth, c.heads, mlp_ratio=c.mlp_ratio, dropout=c.dropout)
        self.head = nn.Linear(c.dim, VOCAB, bias=False)
        if c.tie_embeddings:
            self.head.weight = self.embed.bytes.weight
        self.init_weights()

    def init_weights(self, std: float = 0.02) -> None:
        self.embed.init_weights(std)
        self.cross.init_weights(std)
        self.latent.init_weights(std)
        if not self.config.tie_embeddings:
            nn.init.normal_(self.head.weight, std=std)

    def num_parameters(self) -> dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters())
        return {"cross": count(self.cross), "latent": count(self.latent), "total": count(self)}

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        x = x.long()
        B, T = x.shape
        N = self.config.num_latents
        h = self.cross(self.embed(x, 0, T))  # (B, T, D): every position cross-attends to its prefix
        Tp = -(-T // N) * N
        h = F.pad(h, (0, 0, 0, Tp - T))  # tail pad after the last chunk's real positions
        h = self.latent(h.view(B * (Tp // N), N, -1))  # (B*C, N, D): latents attend within a chunk
        return self.head(h.view(B, Tp, -1)[:, :T])

    @torch.no_grad()
    def start_decoding(self, prompt: Tensor, *, compile: bool = False) -> tuple[Tensor, _DecodeState]:
        B, L = prompt.shape
        cfg = self.config
        if L + 1 > cfg.max_seq_len:
            raise ValueError(f"prompt of {L} bytes leaves no room under max_seq_len {cfg.max_seq_len}")
        cls = StaticKVCache if compile else KVCache
        state = _DecodeState(
            buf=ByteBuffer(prompt.long(), cfg.max_seq_len),
            cross=self.cross.new_caches(B, cfg.max_seq_len, cls=cls),
            latent=self.latent.new_caches(B, cfg.num_latents, cls=cls),
            compiled=compile,
        )
        h = self.cross(self.embed(state.buf.data, 0, L + 1), caches=state.cross)  # positions 0..L
        chunk_start = L // cfg.num_latents * cfg.num_latents
        h = self.latent(h[:, chunk_start:], caches=state.latent)  # the current chunk's latents
        return self.head(h[:, -1]), state

    @torch.no_grad()
    def continue_decoding(self, state: _DecodeState, next_bytes: Tensor) -> Tensor:
        if state.compiled:
            ensure_current(state.cross, state.latent)
        state.buf.append(next_bytes)
        t = state.buf.length
        if t >= self.config.max_seq_len:
            raise ValueError(f"reached the model's max_seq_len ({self.config.max_seq_len} bytes)")
        if t % self.config.num_latents == 0:  # a new chunk: its latents start afresh
            for cache in state.latent:
                cache.restart()
        h = self.cross.step(self.embed(state.buf.data, t, 1), state.cross, compiled=state.compiled)
        h = self.latent.step(h, state.latent, compiled=state.compiled)
        return F.linear(h[:, -1], self.head.weight)


@dataclass
class _DecodeState:
    buf: ByteBuffer
    cross: list[KVCache]
    latent: list[KVCache]
    compiled: bool = False
