"""The byte-level decoder-only Transformer baseline (same blocks as MEGABYTE's stages).

Shape legend: B batch, T bytes, D width, V vocabulary (256 byte values).
Input at position t is byte t-1 (a trainable start embedding at t = 0), so `logits[:, t]`
predicts byte t from bytes < t.

With `vocab_size` other than 256 the same network runs over token ids 0..V-1 instead of bytes:
that is the subword baseline of `megabyte compare` (its loss is per token, not `byte_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from megabyte.model.base import VOCAB, ByteBuffer, ByteModel, ConfigMixin, check_stack_fields, require
from megabyte.model.layers import KVCache, StaticKVCache, TransformerStack, ensure_current


@dataclass
class TransformerConfig(ConfigMixin):
    """A decoder-only Transformer over bytes."""

    dim: int = 512
    """Model width."""
    depth: int = 8
    """Transformer layers."""
    heads: int | None = None
    """Attention heads (default: dim // 64, at least 1)."""
    max_seq_len: int = 8192
    """Longest sequence in bytes."""
    dropout: float = 0.0
    """Dropout in attention and MLPs."""
    mlp_ratio: int = 4
    """MLP hidden width as a multiple of the model width."""
    tie_embeddings: bool = True
    """Tie the output layer to the byte embedding."""
    vocab_size: int = VOCAB
    """Input and output vocabulary: 256 byte values; a larger one makes it a token model
    (the subword baseline, whose inputs are token ids of a BPE vocabulary)."""
    model_type: str = field(default="transformer", repr=False)

    def __post_init__(self) -> None:
        check_stack_fields(self, "transformer")
        require(isinstance(self.vocab_size, int) and not isinstance(self.vocab_size, bool) and self.vocab_size >= 2,
                "vocab_size", f"must be an integer >= 2, got {self.vocab_size!r}")


class ShiftedByteEmbedding(nn.Module):
    """Embeds byte t-1 at position t (a trainable start vector at t = 0), plus a learned position.

    `vocab` is 256 for bytes; the subword baseline embeds token ids of a larger vocabulary."""

    def __init__(self, dim: int, max_seq_len: int, vocab: int = VOCAB) -> None:
        super().__init__()
        self.bytes = nn.Embedding(vocab, dim)
        self.start = nn.Parameter(torch.zeros(dim))
        self.pos = nn.Embedding(max_seq_len, dim)

    def forward(self, x: Tensor, first: int, count: int) -> Tensor:
        """Inputs (B, count, D) of positions first .. first+count-1; `x` holds bytes from 0."""
        B = x.shape[0]
        lo = max(first - 1, 0)
        e = self.bytes(x[:, lo : first + count - 1])  # (B, count or count-1, D)
        if first == 0:
            e = torch.cat([self.start.expand(B, 1, -1).to(e.dtype), e], dim=1)
        return e + self.pos.weight[first : first + count]

    def init_weights(self, std: float) -> None:
        for p in (self.bytes.weight, self.start, self.pos.weight):
            nn.init.normal_(p, std=std)


class Transformer(ByteModel):
    """Byte-level decoder-only Transformer: the paper's main baseline."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = ShiftedByteEmbedding(config.dim, config.max_seq_len, config.vocab_size)
        self.transformer = TransformerStack(
            config.dim, config.depth, config.heads, mlp_ratio=config.mlp_ratio, dropout=config.dropout
        )
        self.head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.bytes.weight
        self.init_weights()

    def init_weights(self, std: float = 0.02) -> None:
        self.embed.init_weights(std)
        self.transformer.init_weights(std)
        if not self.config.tie_embeddings:
            nn.init.normal_(self.head.weight, std=std)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        x = x.long()
        return self.head(self.transformer(self.embed(x, 0, x.shape[1])))  # (B, T, V)

    @torch.no_grad()
    def start_decoding(self, prompt: Tensor, *, compile: bool = False) -> tuple[Tensor, _DecodeState]:
        B, L = prompt.shape
        cfg = self.config
        if L + 1 > cfg.max_seq_len:
            raise ValueError(f"prompt of {L} bytes leaves no room under max_seq_len {cfg.max_seq_len}")
        caches = self.transformer.new_caches(B, cfg.max_seq_len, cls=StaticKVCache if compile else KVCache)
        state = _DecodeState(ByteBuffer(prompt.long(), cfg.max_seq_len), caches, compile)
        h = self.transformer(self.embed(state.buf.data, 0, L + 1), caches=caches)  # positions 0..L
        return self.head(h[:, -1]), state

    @torch.no_grad()
    def continue_decoding(self, state: _DecodeState, next_bytes: Tensor) -> Tensor:
        if state.compiled:
            ensure_current(state.caches)
        state.buf.append(next_bytes)
        t = state.buf.length
        if t >= self.config.max_seq_len:
            raise ValueError(f"reached the model's max_seq_len ({self.config.max_seq_len} bytes)")
        h = self.transformer.step(self.embed(state.buf.data, t, 1), state.caches, compiled=state.compiled)
        return F.linear(h[:, -1], self.head.weight)


@dataclass
class _DecodeState:
    buf: ByteBuffer
    caches: list[KVCache]
    compiled: bool = False
