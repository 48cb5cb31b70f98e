"""Transformer building blocks shared by every model: attention, MLP, block, stack, KV caches.

Shape legend for this module:
    N  rows (sequences, or patches batched as sequences)
    L  positions in a row (queries)
    S  positions visible to a query (keys: cached prefix + new positions)
    H  attention heads, Dh head width, D model width

Reading order: `KVCache` and `KVCapture` (how decoding remembers the past), `Attention`,
`MLP`, `Block`, `TransformerStack`.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from megabyte.errors import MegabyteError


def host_reads_are_free(device: torch.device) -> bool:
    """Whether decoding may read a value back from `device` to decide what to run: on the CPU
    it costs nothing; on an accelerator it waits for every queued kernel, so decoding computes
    over fixed shapes instead (more arithmetic, no stall)."""
    return device.type == "cpu"


def compute_dtype(weight: Tensor) -> torch.dtype:
    """The dtype of what a layer with `weight` computes: autocast's while autocast is on for the
    weight's device (bf16 keys and values from fp32 weights), else the weight's own."""
    device = weight.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype


class KVCache:
    """Keys and values of one attention layer, preallocated, for incremental decoding.

    `append` adds the new positions and returns everything visible so far. `restart(keep)`
    begins a new patch: the last `keep` entries move to the front (the previous patch's tail
    that cross-patch attention still sees), everything else is forgotten. Keys and values share
    one buffer `kv` (2, N, H, capacity, Dh): a decode step writes both with one copy.
    """

    reads_past_length = False
    """Whether attention reads (masked) entries never written: those must be zeros, not garbage
    that could be NaN (0 x NaN is NaN)."""

    def __init__(self, rows: int, heads: int, capacity: int, head_dim: int, *, device, dtype) -> None:
        new = torch.zeros if self.reads_past_length else torch.empty  # an entry is written before it is read
        self.kv = new(2, rows, heads, capacity, head_dim, device=device, dtype=dtype)
        self.length = 0
        self.offset = 0  # sequence position of entry 0 (sliding windows: `Window`)
        self._views: dict[int, tuple[Tensor, Tensor, Tensor]] = {}  # `append_kv`'s, per length

    @property
    def k(self) -> Tensor:
        """Keys (N, H, capacity, Dh), a view of `kv` (taken afresh: autograd tracks it then)."""
        return self.kv[0]

    @property
    def v(self) -> Tensor:
        return self.kv[1]

    @property
    def capacity(self) -> int:
        return self.kv.shape[3]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        end = self._reserve(k.shape[2])
        self.k.narrow(2, end - k.shape[2], k.shape[2]).copy_(k)
        self.v.narrow(2, end - k.shape[2], k.shape[2]).copy_(v)
        kv = self.kv.narrow(3, 0, end)
        return kv[0], kv[1]  # (N, H, S, Dh)

    def append_kv(self, kv: Tensor) -> tuple[Tensor, Tensor]:
        """`append` of keys and values stacked (2, N, H, L, Dh), as a decode step has them.
        One position at a time, the views it writes and reads are made once per length."""
        if kv.shape[3] != 1:
            end = self._reserve(kv.shape[3])
            self.kv.narrow(3, end - kv.shape[3], kv.shape[3]).copy_(kv)
            seen = self.kv.narrow(3, 0, end)
            return seen[0], seen[1]
        views = self._views.get(self.length)
        if views is None:
            seen = self.kv.narrow(3, 0, self.length + 1)
            views = self._views[self.length] = (self.kv.narrow(3, self.length, 1), seen[0], seen[1])
        self._reserve(1)
        views[0].copy_(kv)
        return views[1], views[2]

    def _reserve(self, new: int) -> int:
        end = self.length + new
        if end > self.capacity:
            raise RuntimeError(f"KV cache overflow: {end} positions > capacity {self.capacity}")
        self.length = end
        return end

    def attn_mask(self, queries: int, window: Window | None) -> Tensor | None:
        """What the last `queries` positions appended see of the `length` entries (None: all
        of them, one query)."""
        S = self.length
        if window is not None:
            kpos = self.offset + torch.arange(S, device=self.kv.device)
            qpos = window.start + torch.arange(queries, device=self.kv.device)
            return ((kpos >= window.lo[:, :, None]) & (kpos <= qpos[:, None]))[:, None]  # (N, 1, L, S)
        return None if queries == 1 else _causal_mask_with_offset(queries, S, self.kv.device)

    def restart(self, keep: int = 0) -> None:
        keep = min(keep, self.length)
        if keep:
            self.kv[:, :, :, :keep] = self.kv[:, :, :, self.length - keep : self.length].clone()
        self.offset += self.length - keep
        self.length = keep


class StaticKVCache(KVCache):
    """A `KVCache` whose decode steps have the same shapes at every byte, as `torch.compile`
    and CUDA graphs need: `TransformerStack.step` writes the new position at `pos`, a device
    tensor (1,) that mirrors `length`, and attends over the whole capacity under the mask
    `slots <= pos` (reading a growing slice would change the shapes every byte, and the host
    int `length` would be baked into a captured graph). The layers of one stack share `pos`
    and `slots`. Outside the step (the prompt's pass, `restart`) it behaves as a `KVCache`."""

    reads_past_length = True

    def __init__(self, rows: int, heads: int, capacity: int, head_dim: int, *, device, dtype,
                 pos: Tensor | None = None) -> None:
        super().__init__(rows, heads, capacity, head_dim, device=device, dtype=dtype)
        self.pos = torch.zeros(1, dtype=torch.long, device=device) if pos is None else pos
        self.slots = torch.arange(capacity, device=device)

    def _reserve(self, new: int) -> int:
        end = super()._reserve(new)
        self.pos.fill_(end)
        return end

    def restart(self, keep: int = 0) -> None:
        super().restart(keep)
        self.pos.fill_(self.length)

    def reset(self) -> None:
        """Empty, for a new decoding session (its buffers are reused: `TransformerStack.new_caches`)."""
        self.kv.zero_()
        self.length = self.offset = 0
        self.pos.zero_()
        self._views.clear()


class RowKVCache(KVCache):
    """A KV cache whose rows hold different numbers of positions (a dynamically patched global
    stage: every row closes its patches at its own bytes). Before each call set `active`, the
    (N,) bool rows that add a position; the others write a scratch entry that stays invisible.

    On the CPU attention reads the entries up to the longest row's (a host read of that length
    costs nothing there); on an accelerator it reads the whole capacity under the mask instead,
    so that decoding never waits for the device to report a length."""

    reads_past_length = True

    def __init__(self, rows: int, heads: int, capacity: int, head_dim: int, *, device, dtype) -> None:
        super().__init__(rows, heads, capacity + 1, head_dim, device=device, dtype=dtype)
        self.lengths = torch.zeros(rows, dtype=torch.long, device=device)
        self.active = torch.ones(rows, dtype=torch.bool, device=device)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if k.shape[2] != 1:
            raise RuntimeError("RowKVCache appends one position at a time")
        rows = torch.arange(k.shape[0], device=k.device)
        at = self.lengths.clamp(max=self.capacity - 1)  # each row's new entry
        self.k[rows, :, at] = k[:, :, 0]
        self.v[rows, :, at] = v[:, :, 0]
        end = int(at.max()) + 1 if host_reads_are_free(k.device) else self.capacity
        self.visible = torch.arange(end, device=k.device) <= at[:, None]  # (N, S): a row sees its own entries
        self.lengths = self.lengths + self.active.long()
        return self.k[:, :, :end], self.v[:, :, :end]

    def append_kv(self, kv: Tensor) -> tuple[Tensor, Tensor]:
        return self.append(kv[0], kv[1])

    def attn_mask(self, queries: int, window: Window | None) -> Tensor:
        return self.visible[:, None, None, :]  # (N, 1, 1, S)

    def fill(self, k: Tensor, v: Tensor, lengths: Tensor) -> None:
        """Start from a full pass: k, v (N, H, L, Dh) of L positions, `lengths` (N,) of them real."""
        self.k[:, :, : k.shape[2]] = k
        self.v[:, :, : v.shape[2]] = v
        self.lengths = lengths.clone()


class KVCapture:
    """Fills a `KVCache` from a full (training-style) forward pass, to start decoding.

    The full pass runs every row of a stage at once (`groups` rows per sequence); decoding needs
    only row `row` of each sequence (the current patch), its first `keep` positions, and, for
    cross-patch attention, the last `prefix` positions of the row before it.
    """

    def __init__(self, cache: KVCache, *, row: int, keep: int, prefix: int = 0) -> None:
        self.cache, self.row, self.keep, self.prefix = cache, row, keep, prefix

    def __call__(self, k: Tensor, v: Tensor, groups: int) -> None:
        N, H, L, Dh = k.shape
        k = k.view(N // groups, groups, H, L, Dh)
        v = v.view(N // groups, groups, H, L, Dh)
        self.cache.length = 0
        if self.prefix and self.row >= 1:
            before = slice(L - self.prefix, L)
            self.cache.append(k[:, self.row - 1, :, before], v[:, self.row - 1, :, before])
        self.cache.append(k[:, self.row, :, : self.keep], v[:, self.row, :, : self.keep])


@dataclass
class Window:
    """Local attention over a byte stream cut into data-dependent patches: query t sees the keys
    lo[t] .. t (its patch so far, and for cross-patch attention the r bytes before the patch).
    Every query must satisfy t - lo[t] < `width`: a full pass then attends block by block, each
    block of `width` queries to its own and the previous block's keys, so the cost grows with
    the sequence and `width`, not with the longest patch over the mean one."""

    lo: Tensor
    """(N, L) long: sequence position of the first key each query sees."""
    width: int
    start: int = 0
    """Sequence position of query 0 (decoding: the byte being predicted)."""


def _windowed_attention(q: Tensor, k: Tensor, v: Tensor, window: Window, dropout_p: float) -> Tensor:
    """softmax(q k^T / sqrt(Dh)) v (N, H, L, Dh) with query t seeing keys window.lo[t] .. t."""
    N, H, L, Dh = q.shape
    W = window.width
    n = -(-L // W)
    pad = n * W - L
    qb = F.pad(q, (0, 0, 0, pad)).view(N, H, n, W, Dh)
    kb = F.pad(k, (0, 0, W, pad)).view(N, H, n + 1, W, Dh)  # one block of zeros in front
    vb = F.pad(v, (0, 0, W, pad)).view(N, H, n + 1, W, Dh)
    keys = torch.cat([kb[:, :, :-1], kb[:, :, 1:]], dim=3)  # (N, H, n, 2W, Dh): previous + own block
    values = torch.cat([vb[:, :, :-1], vb[:, :, 1:]], dim=3)
    qpos = torch.arange(n * W, device=q.device).view(n, W)  # (n, W)
    kpos = qpos[:, :1] - W + torch.arange(2 * W, device=q.device)  # (n, 2W)
    lo = torch.cat([window.lo, qpos.view(1, -1)[:, L:].expand(N, pad)], dim=1).view(N, n, W, 1)
    see = (kpos[None, :, None, :] >= lo) & (kpos[None, :, None, :] <= qpos[None, :, :, None])  # (N, n, W, 2W)
    scores = (qb @ keys.transpose(-1, -2)) * Dh**-0.5  # (N, H, n, W, 2W)
    softmax_dtype = torch.promote_types(scores.dtype, torch.float32)
    probs = scores.masked_fill(~see[:, None], float("-inf")).softmax(-1, dtype=softmax_dtype).to(v.dtype)
    if dropout_p:
        probs = F.dropout(probs, dropout_p)
    return (probs @ values).view(N, H, n * W, Dh)[:, :, :L]


def _causal_mask_with_offset(queries: int, keys: int, device) -> Tensor:
    """Boolean mask (L, S): query i sits at key position S - L + i and sees keys up to it."""
    return torch.ones(queries, keys, dtype=torch.bool, device=device).tril(diagonal=keys - queries)


SHORT_ROWS = 64
"""Rows of at most this many positions (MEGABYTE's local patches) attend through plain matrix
products on the CPU: for P = 8 the fused CPU attention kernel spends its time on per-row overhead
and is about 2x slower, forward and backward, than two batched products and a softmax."""


def _short_causal_attention(q: Tensor, k: Tensor, v: Tensor, dropout_p: float) -> Tensor:
    """Causal softmax(q k^T / sqrt(Dh)) v of short rows (N, H, L, Dh), softmax in fp32 at least."""
    L = q.shape[2]
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (N, H, L, L)
    future = torch.ones(L, L, dtype=torch.bool, device=q.device).triu(1)
    softmax_dtype = torch.promote_types(scores.dtype, torch.float32)
    probs = scores.masked_fill(future, float("-inf")).softmax(-1, dtype=softmax_dtype).to(v.dtype)
    if dropout_p:
        probs = F.dropout(probs, dropout_p)
    return probs @ v  # (N, H, L, Dh)


SDPA_MAX_ROWS = 65_535
"""Most rows x heads (N x H) one `scaled_dot_product_attention` call gets. PyTorch's CUDA flash
and memory-efficient kernels put batch x heads on a grid axis of at most 65,535 blocks and fail
beyond it (pytorch#142228); MEGABYTE's local stage attends over B x T / P rows (131,072 rows of
one 1 MiB sequence at P = 8, times its heads). `_sdpa` cuts the rows into calls under the limit.
Rows are independent, so the outputs and gradients are those of one call (with dropout, each
call draws its own masks: the same distribution, other draws). It applies on every device: on
the CPU it costs one copy of the output above the limit, and the CPU tests run the GPU's path."""


def _sdpa(q: Tensor, k: Tensor, v: Tensor, *, mask: Tensor | None = None, dropout_p: float = 0.0,
          causal: bool = False) -> Tensor:
    """`scaled_dot_product_attention` of rows (N, H, L, Dh), at most `SDPA_MAX_ROWS` rows x heads
    per call. `mask` is (L, S), or (N or 1, 1, L or 1, S): a per-row mask is cut with the rows."""
    N, H = q.shape[:2]
    rows = max(1, SDPA_MAX_ROWS // H)
    if N <= rows:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)
    per_row = mask is not None and mask.dim() == 4 and mask.shape[0] == N
    return torch.cat([
        F.scaled_dot_product_attention(q[i : i + rows], k[i : i + rows], v[i : i + rows],
                                       attn_mask=mask[i : i + rows] if per_row else mask,
                                       dropout_p=dropout_p, is_causal=causal)
        for i in range(0, N, rows)
    ])  # (N, H, L, Dh)


class Attention(nn.Module):
    """Multi-head causal self-attention through `scaled_dot_product_attention` (`_sdpa`).

    With `cross_patch = r > 0`, rows are consecutive patches of `groups` per sequence, and every
    position also attends to the last r positions of the previous patch of its sequence (the
    paper's cross-patch attention); the first patch of a sequence has no previous patch.
    """

    def __init__(self, dim: int, heads: int, *, dropout: float = 0.0, cross_patch: int = 0) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.cross_patch = cross_patch
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(
        self, x: Tensor, *, groups: int = 1, cache: KVCache | KVCapture | None = None, window: Window | None = None
    ) -> Tensor:
        N, L, D = x.shape
        q, k, v = self.qkv(x).view(N, L, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (N, H, L, Dh)
        if isinstance(cache, KVCache):
            y = self._cached(q, k, v, cache, window)
        else:
            if cache is not None:
                cache(k, v, groups)
            if window is not None:
                y = _windowed_attention(q, k, v, window, self.dropout if self.training else 0.0)
            else:
                y = self._full(q, k, v, groups)
        y = y.transpose(1, 2).reshape(N, L, D)  # (N, L, D)
        return self.out(y)

    def _full(self, q: Tensor, k: Tensor, v: Tensor, groups: int) -> Tensor:
        p = self.dropout if self.training else 0.0
        r = min(self.cross_patch, q.shape[2])
        if r == 0:
            if q.shape[2] <= SHORT_ROWS and q.device.type == "cpu":
                return _short_causal_attention(q, k, v, p)
            return _sdpa(q, k, v, dropout_p=p, causal=True)
        N, H, L, Dh = k.shape
        B = N // groups
        # Tail of the previous patch of the same sequence, zeros for the first patch (masked out).
        tail_k = k.view(B, groups, H, L, Dh)[:, :, :, L - r :]  # (B, G, H, r, Dh)
        tail_v = v.view(B, groups, H, L, Dh)[:, :, :, L - r :]
        prev_k = F.pad(tail_k, (0, 0, 0, 0, 0, 0, 1, 0))[:, :-1].reshape(N, H, r, Dh)
        prev_v = F.pad(tail_v, (0, 0, 0, 0, 0, 0, 1, 0))[:, :-1].reshape(N, H, r, Dh)
        keys = torch.cat([prev_k, k], dim=2)  # (N, H, r + L, Dh)
        values = torch.cat([prev_v, v], dim=2)
        has_prev = torch.arange(groups, device=q.device) > 0  # (G,)
        prev_mask = has_prev.view(1, groups, 1, 1, 1).expand(B, groups, 1, L, r)
        own_mask = torch.ones(L, L, dtype=torch.bool, device=q.device).tril().expand(B, groups, 1, L, L)
        mask = torch.cat([prev_mask, own_mask], dim=-1).reshape(N, 1, L, r + L)
        return _sdpa(q, keys, values, mask=mask, dropout_p=p)

    def _cached(self, q: Tensor, k: Tensor, v: Tensor, cache: KVCache, window: Window | None) -> Tensor:
        keys, values = cache.append(k, v)  # (N, H, S, Dh): every position so far
        return _sdpa(q, keys, values, mask=cache.attn_mask(q.shape[2], window))


class MLP(nn.Module):
    """Linear, GELU, linear. Exact (erf) GELU: on the CPU its ATen kernels run forward and
    backward about 3x faster than the tanh approximation's (bf16, 8192 x 1024)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(
        self, dim: int, heads: int, *, mlp_ratio: int = 4, dropout: float = 0.0, cross_patch: int = 0
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, bias=False)
        self.attn = Attention(dim, heads, dropout=dropout, cross_patch=cross_patch)
        self.norm2 = nn.LayerNorm(dim, bias=False)
        self.mlp = MLP(dim, mlp_ratio * dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, *, groups: int = 1, cache: KVCache | KVCapture | None = None, window: Window | None = None
    ) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), groups=groups, cache=cache, window=window))
        return x + self.mlp(self.norm2(x))


class TransformerStack(nn.Module):
    """`depth` blocks and a final norm. `gradient_checkpointing` trades compute for memory."""

    def __init__(
        self, dim: int, depth: int, heads: int, *, mlp_ratio: int = 4, dropout: float = 0.0,
        cross_patch: int = 0,
    ) -> None:
        super().__init__()
        self.dim, self.heads = dim, heads
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio=mlp_ratio, dropout=dropout, cross_patch=cross_patch)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, bias=False)
        self.gradient_checkpointing = False

    def forward(
        self, x: Tensor, *, groups: int = 1, caches: list | None = None, window: Window | None = None
    ) -> Tensor:
        for i, block in enumerate(self.blocks):
            cache = None if caches is None else caches[i]
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, groups=groups, cache=cache, window=window, use_reentrant=False)
            else:
                x = block(x, groups=groups, cache=cache, window=window)
        return self.norm(x)

    def new_caches(self, rows: int, capacity: int, *, cls: type = KVCache) -> LayerCaches:
        """One cache per block, on the stack's device, in the dtype its keys and values are
        computed in (`compute_dtype`): a cache of another dtype costs a conversion per layer and
        byte on writing, and another when attention reads it back.

        `StaticKVCache`s are allocated once per stack and shape and handed out again, emptied,
        to the next decoding session: a captured decode step (a CUDA graph) reads and writes
        them at fixed addresses. So one stack holds one static session at a time."""
        weight = self.norm.weight
        head_dim = self.dim // self.heads
        dtype = compute_dtype(weight)
        if cls is StaticKVCache:
            key = (rows, capacity, dtype, weight.device)
            pooled = _STATIC_POOL.get(self)
            if pooled is not None and pooled[0] == key:
                pooled[1].revoked = True  # the session that had them must not write into the new one's
                caches = LayerCaches(pooled[1])
                for cache in caches:
                    cache.reset()
                caches.weights = _block_weights(self)
                _STATIC_POOL[self] = (key, caches)
                return caches
            pos = torch.zeros(1, dtype=torch.long, device=weight.device)
            caches = LayerCaches(
                StaticKVCache(rows, self.heads, capacity, head_dim, device=weight.device, dtype=dtype, pos=pos)
                for _ in self.blocks)
            for cache in caches[1:]:
                cache.slots = caches[0].slots
            if weight.device.type == "cuda":  # a CUDA graph then reads them where they are, uncopied
                for cache in caches:
                    torch._dynamo.mark_static_address(cache.kv)
                torch._dynamo.mark_static_address(pos)
                torch._dynamo.mark_static_address(caches[0].slots)
            _STATIC_POOL[self] = (key, caches)
        else:
            caches = LayerCaches(cls(rows, self.heads, capacity, head_dim, device=weight.device, dtype=dtype)
                                 for _ in self.blocks)
        caches.weights = _block_weights(self)
        return caches

    def step(self, x: Tensor, caches: list[KVCache], *, window: Window | None = None,
             compiled: bool = False) -> Tensor:
        """Decoding: the stack over new positions x (N, L, D) after the cached ones, appending
        to `caches`. The cached `forward` op for op (the same numbers), with the Python of the
        module calls gone: a small stage's byte costs more in calls than in arithmetic.

        With `StaticKVCache`s and one position, the step has fixed shapes (`static_step`);
        `compiled` runs it through `torch.compile` (`compiled_step`: CUDA graphs on a GPU)."""
        N, L, D = x.shape
        if self.training:  # dropout: the modules' own path
            return self(x, caches=caches, window=window)
        first = caches[0]
        if isinstance(first, StaticKVCache) and window is None and L == 1:
            if first.length + 1 > first.capacity:
                raise RuntimeError(f"KV cache overflow: {first.length + 1} positions > capacity {first.capacity}")
            fn = compiled_step(x.device) if compiled else static_step
            out = fn(self, x, [c.kv for c in caches], first.pos, first.slots)
            if compiled and x.device.type == "cuda":
                out = out.clone()  # a CUDA graph's output lives in its pool until the graph runs again
            for cache in caches:
                cache.length += 1  # the host's copy of `pos`, which the step advanced
            return out
        weights = getattr(caches, "weights", None) or _block_weights(self)
        # A linear of rows is `mm(rows, W.t())` (what F.linear calls, bit for bit) minus three
        # dispatches; under autocast F.linear, whose cast of the weight autocast caches.
        mm = not torch.is_autocast_enabled(x.device.type)
        mask = None
        x = x.reshape(N * L, D)  # rows
        for i, (w, cache) in enumerate(zip(weights, caches)):
            h = F.layer_norm(x, (D,), w.norm1, None, w.eps1)
            qkv = (torch.mm(h, w.qkv_t) if mm else F.linear(h, w.qkv)).view(N, L, 3, w.heads, w.head_dim)
            qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, N, H, L, Dh)
            keys, values = cache.append_kv(qkv[1:])
            if i == 0 or isinstance(cache, RowKVCache):  # the layers' caches advance together
                mask = cache.attn_mask(L, window)
            y = _sdpa(qkv[0], keys, values, mask=mask)
            y = y.reshape(N, D) if L == 1 else y.transpose(1, 2).reshape(N * L, D)
            x = x + (torch.mm(y, w.out_t) if mm else F.linear(y, w.out))
            h = F.layer_norm(x, (D,), w.norm2, None, w.eps2)
            h = _row_gelu(torch.mm(h, w.up_t) if mm else F.linear(h, w.up))
            x = x + (torch.mm(h, w.down_t) if mm else F.linear(h, w.down))
        return F.layer_norm(x, (D,), self.norm.weight, None, self.norm.eps).view(N, L, D)

    def init_weights(self, std: float = 0.02) -> None:
        """GPT-2 style: normal(0, std), residual output projections scaled by 1/sqrt(2 * depth)."""
        out_std = std / math.sqrt(2 * max(1, len(self.blocks)))
        for block in self.blocks:
            nn.init.normal_(block.attn.qkv.weight, std=std)
            nn.init.normal_(block.attn.out.weight, std=out_std)
            nn.init.normal_(block.mlp.up.weight, std=std)
            nn.init.normal_(block.mlp.down.weight, std=out_std)
            nn.init.ones_(block.norm1.weight)
            nn.init.ones_(block.norm2.weight)
        nn.init.ones_(self.norm.weight)


def _row_gelu(x: Tensor) -> Tensor:
    """`F.gelu` of a decode step's few rows. On the CPU a float GELU goes to oneDNN, whose call
    cost about 120 us per byte-stage layer of the 25M model in a profile (its caches cold between
    the weight-streaming products: 10% of a byte) against a few us for ATen's own vectorized
    kernel, which agrees with it to 2 ulp; so oneDNN is switched off for the instant of the call.
    The switch is process-wide: an op of another thread that falls into that instant takes
    ATen's path too (the same numbers to a few ulp, nothing else)."""
    if x.device.type != "cpu" or not torch._C._get_mkldnn_enabled():
        return F.gelu(x)
    torch._C._set_mkldnn_enabled(False)
    try:
        return F.gelu(x)
    finally:
        torch._C._set_mkldnn_enabled(True)


class _BlockWeights(NamedTuple):
    norm1: Tensor
    eps1: float
    qkv: Tensor
    heads: int
    head_dim: int
    out: Tensor
    norm2: Tensor
    eps2: float
    up: Tensor
    down: Tensor
    qkv_t: Tensor  # the linear weights transposed (views)
    out_t: Tensor
    up_t: Tensor
    down_t: Tensor


def _block_weights(stack: TransformerStack) -> list[_BlockWeights]:
    """Each block's parameters, looked up through its modules once per decoding session."""
    weights = []
    for b in stack.blocks:
        qkv, out, up, down = b.attn.qkv.weight, b.attn.out.weight, b.mlp.up.weight, b.mlp.down.weight
        weights.append(_BlockWeights(b.norm1.weight, b.norm1.eps, qkv, b.attn.heads, b.attn.head_dim, out,
                                     b.norm2.weight, b.norm2.eps, up, down, qkv.t(), out.t(), up.t(), down.t()))
    return weights


class LayerCaches(list):
    """The caches of one stack's blocks for one decoding session (a list, one per block), with
    the blocks' weights gathered when it was made (`weights`, read by `TransformerStack.step`)."""

    weights: list[_BlockWeights] | None = None
    revoked = False  # its static caches were handed to a newer session (`new_caches`)


def ensure_current(*sessions: list[KVCache]) -> None:
    """Refuse to go on decoding with static caches that a newer session of the same stack has
    taken (`new_caches` hands them out again): the older one would write into the newer one's.
    Call before a decode step touches them (restarts included)."""
    if any(getattr(caches, "revoked", False) for caches in sessions):
        raise MegabyteError("this compiled decoding session's static caches were taken by a newer session "
                            "of the same model: decode one compiled session per model at a time")


_STATIC_POOL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Per stack: (shape key, its `StaticKVCache`s), reused by the next static session."""


def static_step(stack: TransformerStack, x: Tensor, kvs: list[Tensor], pos: Tensor, slots: Tensor) -> Tensor:
    """One position x (N, 1, D) through `stack` with static caches: each layer writes its keys
    and values at `pos` of its buffer `kvs[i]` (2, N, H, capacity, Dh) and attends over the
    whole capacity under `slots <= pos`; then `pos` advances. The same shapes at every byte."""
    N, L, D = x.shape
    mask = (slots <= pos).view(1, -1)  # (1, S): the entries written so far, this one included
    for block, kv in zip(stack.blocks, kvs):
        attn = block.attn
        qkv = attn.qkv(block.norm1(x)).view(N, L, 3, attn.heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        kv.index_copy_(3, pos, qkv[1:])
        y = _sdpa(qkv[0], kv[0], kv[1], mask=mask)
        x = x + attn.out(y.transpose(1, 2).reshape(N, L, D))
        x = x + block.mlp(block.norm2(x))
    pos.add_(1)
    return stack.norm(x)


_COMPILED: dict[str, Any] = {}


def compiled_step(device: torch.device):
    """`static_step` through `torch.compile` (made once per device type): CUDA graphs
    ("reduce-overhead") on a GPU, fused C++ kernels called from a C++ wrapper on the CPU (which
    needs a C++ compiler)."""
    kind = torch.device(device).type
    if kind not in _COMPILED:
        if kind == "cuda":
            _COMPILED[kind] = torch.compile(static_step, mode="reduce-overhead", fullgraph=True, dynamic=False)
        else:  # a C++ wrapper: no Python between the kernels of a step
            _COMPILED[kind] = torch.compile(static_step, options={"cpp_wrapper": True}, fullgraph=True,
                                            dynamic=False)
    return _COMPILED[kind]
