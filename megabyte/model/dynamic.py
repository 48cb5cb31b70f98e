"""MEGABYTE with data-dependent patches (`MegabyteConfig.patching` other than "fixed"): the full
pass and cached decoding. Two stages, the same modules as the fixed model (`Stage`), and the
paper's structure kept byte for byte:

    patch k spans bytes [s_k, s_{k+1}), at most P_max of them (`megabyte.model.patching`)
    global input k   = pad (k = 0), else the byte embeddings of patch k-1 in slots 0 .. len-1
                       of P_max (empty slots zero), concatenated: the lossless patch embedding
    local input of byte t (patch k, offset p) = e(x[t-1]) + from_parent(slice p of global
                       output k) + pos[p]
    local attention  byte t sees bytes max(0, s_k - r) .. t: its patch so far, and with
                       cross-patch attention (r = `cross_patch`) the r bytes before it

Whether byte t starts a patch depends on bytes < t, and global output k depends on patches < k,
so the prediction of byte t sees bytes < t only. Cost follows the data: the global stage runs
on the patches there are (the batch's most, at most `patch_cap` per row), the local stage on the
bytes, attending block by block (`layers.Window`), never on P_max slots per patch. Patches past
`patch_cap` get no global slice: their bytes are predicted by the local stage alone.

Shape legend: B rows, T bytes, K global positions, P = P_max, E global byte-embedding width,
D0 / D1 global / local width, W = P + r the local attention block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from megabyte.errors import MegabyteError
from megabyte.model import layers
from megabyte.model.base import ByteBuffer
from megabyte.model.entropy import entropy_of, full_precision
from megabyte.model.layers import KVCache, RowKVCache, Window
from megabyte.model.patching import PatchLayout, patch_starts, starts_next


def layout_of(source, x: Tensor, starts: Tensor | None = None) -> PatchLayout:
    """Patch layout of bytes `x` (B, T): of the patch `starts` given, else as the model `source`
    cuts them (`Megabyte.patch_starts`), or a config's rule and P_max (not for entropy patches,
    which need the entropy model)."""
    if starts is None:
        if hasattr(source, "patch_starts"):
            starts = source.patch_starts(x.long())
        elif source.patching == "entropy":
            raise MegabyteError("entropy patches depend on the entropy model: pass the model or the patch starts")
        else:
            starts = patch_starts(x.long(), source.patching, source.patch_sizes[0])
    return PatchLayout.of(starts)


def window_width(cfg) -> int:
    """W: every byte's visible keys span fewer than P_max + r positions."""
    return cfg.patch_sizes[0] + cfg.cross_patch


def byte_embeddings(stage, x: Tensor, first: int = 0) -> Tensor:
    """Global-stage embeddings (B, T, E) of bytes x, which sit at positions first .. first+T-1 of
    the sequence (with the conv encoder: exact for positions >= first + its context, or all
    when first = 0)."""
    T = x.shape[1]
    e = stage.byte_embed(x) + stage.byte_pos.weight[first : first + T]
    return stage.conv(e) if stage.conv is not None else e


def global_inputs(stage, e: Tensor, lay: PatchLayout, K: int) -> Tensor:
    """(B, K, D0): the pad, then patch k-1's byte embeddings in P_max slots for position k."""
    B, T, E = e.shape
    P = stage.sub_size
    target = lay.patch + 1  # the global position each byte's patch feeds
    slot = torch.where(target < K, target * P + lay.offset, torch.full_like(target, K * P))  # K*P: discarded
    slots = e.new_zeros(B, K * P + 1, E).scatter(1, slot[:, :, None].expand(B, T, E), e)
    inputs = torch.cat([stage.pad.expand(B, 1, P * E).to(e.dtype), slots[:, P : K * P].reshape(B, K - 1, P * E)], 1)
    return stage.embed_proj(inputs) if stage.embed_proj is not None else inputs


def local_inputs(stage, x: Tensor, gout: Tensor, lay: PatchLayout) -> Tensor:
    """(B, T, D1): previous byte's embedding + the byte's slice of its patch's global output + pos."""
    B, K, D0 = gout.shape
    P = stage.positions
    slices = torch.cat([gout.reshape(B, K * P, D0 // P), gout.new_zeros(B, 1, D0 // P)], 1)  # last: no global
    at = torch.where(lay.patch < K, lay.patch * P + lay.offset, torch.full_like(lay.patch, K * P))
    mine = slices.gather(1, at[:, :, None].expand(-1, -1, D0 // P))  # (B, T, D0 / P)
    return stage.embed(x, 0, x.shape[1]) + stage.from_parent(mine) + stage.pos(lay.offset)


def run_stages(model, x: Tensor, captures: list | None = None) -> list[Tensor]:
    """Both stages over bytes x (B, T): [global outputs (B, K, D0), local outputs (B, T, D1)]."""
    cfg = model.config
    g, loc = model.stages
    lay = layout_of(model, x)
    K = min(int(lay.count.max()), cfg.patch_cap)
    gout = g.transformer(global_inputs(g, byte_embeddings(g, x), lay, K),
                         caches=None if captures is None else captures[0])
    lo = (lay.start - cfg.cross_patch).clamp(min=0)
    h = loc.transformer(local_inputs(loc, x, gout, lay), window=Window(lo, window_width(cfg)),
                        caches=None if captures is None else captures[1])
    return [gout, h]


# ------------------------------------------------------------------------------------ decoding
@dataclass
class DynamicState:
    """Decoding state of a dynamically patched MEGABYTE, per row where rows differ."""

    buf: ByteBuffer
    global_caches: list[RowKVCache]
    local_caches: list[KVCache]
    gout: Tensor
    """(B, D0): the global output of each row's current patch (zeros past the cap)."""
    start: Tensor
    """(B,) long: first byte of each row's current patch."""
    count: Tensor
    """(B,) long: patches so far per row (the current one included)."""
    entropy_state: Any = None
    """Entropy patches: the entropy model's own decoding state, one byte behind the buffer."""
    entropy: Tensor | None = None
    """Entropy patches: (B,) H of the byte to predict next (from the entropy model's logits)."""


class _GlobalCapture:
    """Fills a RowKVCache from the full pass: every global position, `lengths` of them real."""

    def __init__(self, cache: RowKVCache, lengths: Tensor) -> None:
        self.cache, self.lengths = cache, lengths

    def __call__(self, k: Tensor, v: Tensor, groups: int) -> None:
        self.cache.fill(k, v, self.lengths)


class _TailCapture:
    """Fills the local cache from the full pass with the keys of the last `keep` bytes."""

    def __init__(self, cache: KVCache, end: int, keep: int) -> None:
        self.cache, self.end, self.keep = cache, end, keep

    def __call__(self, k: Tensor, v: Tensor, groups: int) -> None:
        first = max(0, self.end - self.keep)
        self.cache.length, self.cache.offset = 0, first
        self.cache.append(k[:, :, first : self.end], v[:, :, first : self.end])


@torch.no_grad()
def start_decoding(model, prompt: Tensor) -> tuple[Tensor, DynamicState]:
    """One full pass over the prompt and a placeholder byte at position L (by causality it changes
    nothing), filling the caches; returns the logits of byte L and the state."""
    cfg = model.config
    B, L = prompt.shape
    buf = ByteBuffer(prompt.long(), cfg.max_seq_len)
    g, loc = model.stages
    x = buf.window(0, L + 1)
    lay = layout_of(model, x)
    here = lay.patch[:, L]  # the patch of the byte to predict
    W = window_width(cfg)
    gcaches = g.transformer.new_caches(B, cfg.patch_cap, cls=RowKVCache)
    lcaches = loc.transformer.new_caches(B, 2 * W)
    lengths = (here + 1).clamp(max=cfg.patch_cap)
    captures = [[_GlobalCapture(c, lengths) for c in gcaches], [_TailCapture(c, L + 1, W) for c in lcaches]]
    gout, h = run_stages(model, x, captures)
    rows = torch.arange(B, device=x.device)
    current = torch.where((here < gout.shape[1])[:, None], gout[rows, here.clamp(max=gout.shape[1] - 1)],
                          gout.new_zeros(B, gout.shape[2]))
    state = DynamicState(buf, gcaches, lcaches, current, lay.start[:, L].clone(), here + 1)
    if cfg.patching == "entropy":
        with full_precision(prompt):
            logits, state.entropy_state = model.entropy_model.start_decoding(prompt)
        state.entropy = entropy_of(logits)
    return model.head(h[:, L]), state


@torch.no_grad()
def continue_decoding(model, state: DynamicState, next_bytes: Tensor) -> Tensor:
    """Append one byte per row. Rows whose rule closes a patch here run the global stage once
    (every row computes it, the others discard it); the local stage runs on every byte."""
    cfg, buf = model.config, state.buf
    buf.append(next_bytes)
    t = buf.length  # the byte to predict
    if t >= cfg.max_seq_len:
        raise ValueError(f"reached the model's max_seq_len ({cfg.max_seq_len} bytes)")
    loc = model.stages[1]
    P = cfg.patch_sizes[0]
    if cfg.patching == "entropy":
        previous = state.entropy
        with full_precision(next_bytes):
            state.entropy = entropy_of(model.entropy_model.continue_decoding(state.entropy_state, next_bytes))
        new = starts_next(buf.data, t, state.start, "entropy", P, entropy=state.entropy, previous=previous,
                          threshold=model.threshold, relative=cfg.patch_relative)
    else:
        new = starts_next(buf.data, t, state.start, cfg.patching, P)
    if not layers.host_reads_are_free(new.device) or bool(new.any()):  # else every row runs it, masked
        _close_patches(model, state, new, t)
    offset = t - state.start  # (B,)
    rows = torch.arange(offset.shape[0], device=offset.device)
    mine = state.gout.view(len(rows), P, -1)[rows, offset]  # (B, D0 / P)
    inputs = loc.embed(buf.data, t, 1)[:, 0] + loc.from_parent(mine) + loc.pos(offset)
    W = window_width(cfg)
    for cache in state.local_caches:
        if cache.length + 1 > cache.capacity:
            cache.restart(keep=W - 1)
    lo = (state.start - cfg.cross_patch).clamp(min=0)[:, None]
    h = loc.transformer.step(inputs[:, None], state.local_caches, window=Window(lo, W, start=t))
    return F.linear(h[:, 0], model.head.weight)


def _close_patches(model, state: DynamicState, new: Tensor, t: int) -> None:
    """Rows `new` begin a patch at byte t: global position count (input: bytes start .. t-1)."""
    cfg = model.config
    g = model.stages[0]
    P, B = cfg.patch_sizes[0], new.shape[0]
    first = max(0, t - P - (g.conv.context if g.conv is not None else 0))
    e = byte_embeddings(g, state.buf.data[:, first:t], first)  # (B, t - first, E)
    idx = (state.start - first)[:, None] + torch.arange(P, device=new.device)  # slots of the closed patch
    valid = idx < t - first
    slots = e.gather(1, idx.clamp(max=t - first - 1)[:, :, None].expand(-1, -1, e.shape[2]))
    inputs = (slots * valid[:, :, None]).reshape(B, 1, -1)
    if g.embed_proj is not None:
        inputs = g.embed_proj(inputs)
    active = new & (state.count < cfg.patch_cap)
    for cache in state.global_caches:
        cache.active = active
    out = g.transformer.step(inputs, state.global_caches)[:, 0]
    state.gout = torch.where(active[:, None], out, torch.where(new[:, None], torch.zeros_like(out), state.gout))
    state.start = torch.where(new, torch.full_like(state.start, t), state.start)
    state.count = state.count + new.long()


def patch_stats(source, windows: Tensor, starts: Tensor | None = None) -> dict[str, Any]:
    """How a dynamic model (or config: `layout_of`) cuts the byte rows `windows` (N, T), each on
    its own as in training: mean bytes per patch, patches per row, the share of bytes past
    `patch_cap`, and how many patches have each length (1 .. P_max)."""
    cfg = getattr(source, "config", source)
    lay = layout_of(source, windows, starts)
    lengths = lay.lengths()
    past = float((lay.patch >= cfg.patch_cap).float().mean())
    hist = torch.bincount(lengths, minlength=cfg.patch_sizes[0] + 1)[1:].tolist()
    return {"rule": cfg.patching, "max_len": cfg.patch_sizes[0], "cap": cfg.patch_cap, "rows": windows.shape[0],
            "row_bytes": windows.shape[1], "mean_bytes": windows.numel() / max(1, len(lengths)),
            "patches_per_row_mean": float(lay.count.float().mean()), "patches_per_row_max": int(lay.count.max()),
            "share_past_cap": past, "histogram": hist}
