"""Bits per byte over a whole byte array, with the paper's inference methods.

    from megabyte.evaluation import evaluate, reduce_result
    result = evaluate(model, data, strided=True, sliding_window=True)   # data: 1-D uint8
    result = reduce_result(result)   # sums over ranks when torch.distributed is initialised
    print(result.bpb, result.bytes, result.cost)

Every method scores every byte of `data` exactly once (`result.bytes == len(data)`); they differ
in the context each byte is predicted from, and in what that costs. Notation: N bytes of data,
L = `seq_len` (the window), s a window's first byte, P the top-level patch of a MEGABYTE model
(`config.sub_sizes[0]`: 8 for `patch_sizes=(8,)`, 128 for `(16, 8)`), h = P // 2.

basic
    Non-overlapping windows [0, L), [L, 2L), ...; the last one may be shorter. Byte a is predicted
    from bytes s .. a-1 of its own window: a - s bytes of context, 0 for a window's first byte.
    Cost 1: each byte goes through the model once.

sliding window (`sliding_window=True`, `window_stride` S, default L // 2)
    Windows start at 0, S, 2S, ... and end at min(start + L, N); the last is the first to reach N.
    The first window scores all its bytes; every later one only the bytes the previous window
    did not reach (its last S bytes, fewer in the last window). So except in the first window,
    every byte has at least L - S bytes of context. Cost about L / S. With S = L it is basic.

strided (`strided=True`, MEGABYTE only; paper section 4.2: predictions are worse late in a patch)
    Each window of the method above (basic or sliding) runs twice: as is (pass A), whose patches
    start at s, s+P, ...; and shifted h bytes later (pass B), whose patches start at s+h, s+h+P, ...
    Byte a, with q = (a - s) mod P its place in pass A's patch, takes pass A's prediction when
    q < h (the first half of its patch in pass A) and pass B's when q >= h (then it sits at
    q - h < P - h, the first half of its patch in pass B). For odd P, pass B keeps the larger half.
    So every byte is scored once, from the same window as without `strided`, and the bytes with
    q < h -- among them the first h bytes of the data, which no shifted window covers -- come
    from pass A. Pass B's window is [s+h, end): it stops where pass A's does, because it scores
    nothing later. Cost about 2 (2 - h/L for basic); combined with a sliding window, about 2L/S.

Images (`item_len` set): every image is scored on its own, from its own first byte: the methods
above run inside each image [k*item_len, (k+1)*item_len), so no window holds bytes of two images.
With item_len <= L that is one window per image; a larger image gets several windows, as text does.

A sample (`sample_bytes` S < N; what validation during training scores, `train.eval_bytes`):
max(1, S // L) windows of L bytes, evenly spaced over the data and not overlapping (whole images
with `item_len`: S // item_len of them), each scored on its own as an image is; with S >= N, the
whole data as above. `megabyte eval --sample-bytes S` scores the same bytes as training did.

Distributed: the windows are listed in one deterministic order, and rank r of W takes windows
r, r+W, r+2W, ... `evaluate` returns that rank's *sums* (nats, bytes, forward bytes); add them
over ranks (`reduce_result`) before dividing: bpb = total nats / (ln 2 * total bytes), never an
average of per-rank bpb. Every rank runs the same number of forward passes (a rank with fewer
windows runs empty padding batches), so a sharded (FSDP) model, whose forward is collective, works.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from megabyte.errors import MegabyteError

LN2 = math.log(2.0)


@dataclass
class EvalResult:
    """Summed loss of one evaluation (one rank's share before `reduce_result`)."""

    nats: float
    """Summed next-byte cross-entropy, in nats."""
    bytes: int
    """Bytes scored (each exactly once)."""
    forward_bytes: int
    """Bytes the model ran on (window lengths, both passes), excluding padding batches."""
    method: str
    """"basic", "sliding-window", "strided" or "strided+sliding-window"."""
    seq_len: int
    """Window length in bytes."""
    stride: int | None = None
    """Sliding-window stride (None without a sliding window)."""
    offset: int | None = None
    """Strided inference: how many bytes later the second pass starts (P // 2); else None."""
    windows: int = 0
    """Windows run (pass A and pass B counted separately)."""

    @property
    def bpb(self) -> float:
        """Bits per byte: nats / (ln 2 * bytes)."""
        return self.nats / (LN2 * self.bytes) if self.bytes else float("nan")

    @property
    def cost(self) -> float:
        """Forward bytes per scored byte: the compute multiple of the method (basic: 1)."""
        return self.forward_bytes / self.bytes if self.bytes else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"bpb": self.bpb, **asdict(self), "cost": self.cost}


class Window(NamedTuple):
    """One forward pass over data[start : start + length], scoring bytes a in [lo, hi) with
    (a - start) % period < keep (period 1, keep 1 scores all of [lo, hi))."""

    start: int
    length: int
    lo: int
    hi: int
    period: int = 1
    keep: int = 1

    def count(self) -> int:
        """How many bytes this pass scores."""
        f = lambda r: r // self.period * self.keep + min(r % self.period, self.keep)  # scored in [0, r)
        return max(0, f(self.hi - self.start) - f(self.lo - self.start))

    def mask(self) -> np.ndarray:
        """(length,) bools: the positions of the window that this pass scores."""
        pos = np.arange(self.length)
        a = self.start + pos
        return (a >= self.lo) & (a < self.hi) & (pos % self.period < self.keep)


# ------------------------------------------------------------------------------------ planning
def base_windows(begin: int, end: int, seq_len: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(start, end, lo, hi) of the windows covering bytes [begin, end): windows start every
    `stride` bytes and end at min(start + seq_len, end); each scores [lo, hi), the bytes the
    previous window did not reach. `stride == seq_len` gives the basic, non-overlapping windows."""
    out = []
    start, scored = begin, begin
    while scored < end:
        stop = min(start + seq_len, end)
        out.append((start, stop, scored, stop))
        scored, start = stop, start + stride
    return out


def sample_segments(n: int, length: int, sample_bytes: int, unit: int = 1) -> list[tuple[int, int]] | None:
    """(begin, end) of about `sample_bytes` bytes in evenly spaced, non-overlapping spans of
    `length` bytes starting at multiples of `unit` (at least one span); None when the sample
    would hold all `n` bytes (then score them all)."""
    length = min(length, n - n % unit)
    if sample_bytes >= n or length <= 0:
        return None
    count = min(n // length, max(1, sample_bytes // length))
    starts = np.unique(np.linspace(0, n - length, count).astype(np.int64) // unit * unit)
    return [(int(s), int(s) + length) for s in starts]


def plan_windows(
    n: int, seq_len: int, *, stride: int | None = None, patch: int | None = None, item_len: int | None = None,
    segments: list[tuple[int, int]] | None = None,
) -> list[Window]:
    """Every forward pass of an evaluation of `n` bytes, in a fixed order (see the module doc).

    `stride`: sliding-window stride (None: basic). `patch`: top-level patch size P for strided
    inference (None: off). `item_len`: score each item of that many bytes on its own.
    `segments`: score only these (begin, end) spans, each on its own (`sample_segments`).
    """
    if segments is None:
        size = item_len or n
        segments = [(begin, min(begin + size, n)) for begin in range(0, n, size)]
    jobs: list[Window] = []
    for begin, end in segments:
        for start, stop, lo, hi in base_windows(begin, end, seq_len, stride or seq_len):
            if patch is None:
                jobs.append(Window(start, stop - start, lo, hi))
                continue
            h = patch // 2
            jobs.append(Window(start, stop - start, lo, hi, patch, h))  # pass A: q < h
            if start + h < stop:  # pass B, h bytes later: its first P - h places are A's q >= h
                jobs.append(Window(start + h, stop - start - h, max(lo, start + h), hi, patch, patch - h))
    return [job for job in jobs if job.count() > 0]


def rank_batches(jobs: list[Window], batch_size: int, rank: int, world_size: int) -> list[list[Window]]:
    """Rank `rank`'s batches: jobs ordered longest first, dealt round-robin, then cut into batches
    of equal window length; padded with empty batches to the largest count over all ranks."""
    ordered = sorted(jobs, key=lambda j: (-j.length, j.start))

    def batches(mine: list[Window]) -> list[list[Window]]:
        out: list[list[Window]] = []
        for job in mine:
            if out and len(out[-1]) < batch_size and out[-1][0].length == job.length:
                out[-1].append(job)
            else:
                out.append([job])
        return out

    mine = batches(ordered[rank::world_size])
    most = max(len(batches(ordered[r::world_size])) for r in range(world_size)) if ordered else 0
    if len(mine) < most:  # keep collective forwards (FSDP) in step: run something, score nothing
        last = ordered[-1]
        mine += [[last._replace(hi=last.lo)]] * (most - len(mine))
    return mine


# ---------------------------------------------------------------------------------- evaluation
def evaluate(
    model: nn.Module,
    data: np.ndarray,
    *,
    seq_len: int | None = None,
    batch_size: int = 8,
    strided: bool = False,
    sliding_window: bool = False,
    window_stride: int | None = None,
    max_bytes: int | None = None,
    sample_bytes: int | None = None,
    item_len: int | None = None,
    align: int = 1,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Score every byte of `data` (1-D uint8) once with `model`; return this rank's sums.

    seq_len: window length (default and maximum: the model's `max_seq_len`).
    strided / sliding_window / window_stride: the inference method (module doc); they combine.
    max_bytes: score only the first `max_bytes` bytes (whole items when `item_len` is set).
    sample_bytes: score an evenly spaced sample of about this many bytes (module doc).
    item_len: bytes per image: each image is scored on its own from its first byte.
    align: every window starts at a multiple of this (`ByteDataset.align`: 2 for 16-bit audio, so
        that no window starts on a sample's high byte); seq_len, stride and the strided offset
        must be multiples of it, and max_bytes is rounded down to it.
    rank, world_size: this process's share of the windows; sum the results with `reduce_result`.
    device: where the windows go (default: where the model's parameters are).
    autocast_dtype: run the forward under `torch.autocast` in this dtype (e.g. torch.bfloat16);
        None runs in the model's own dtype. The loss is always summed in float32/float64.
    progress: called with the number of bytes scored after each batch.

    The model is put in eval mode and restored to its previous mode afterwards.
    """
    config = model.config
    seq_len = config.max_seq_len if seq_len is None else seq_len
    data = _first_bytes(_as_bytes(data), max_bytes, item_len or align, item_len)
    stride = _check_args(config, len(data), seq_len, batch_size, sliding_window, window_stride, item_len,
                         rank, world_size)
    patch = _strided_patch(config) if strided else None
    if not item_len:
        _check_alignment(align, seq_len, stride if sliding_window else None, patch // 2 if patch else None)
    segments = None
    if sample_bytes is not None:
        if max_bytes is not None or sample_bytes < 1:
            raise MegabyteError(f"sample_bytes must be at least 1 and comes without max_bytes, got {sample_bytes}")
        segments = sample_segments(len(data), item_len or seq_len, sample_bytes, item_len or align)
    jobs = plan_windows(len(data), seq_len, stride=stride, patch=patch, item_len=item_len, segments=segments)
    batches = rank_batches(jobs, batch_size, rank, world_size)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    nats, scored, forward, windows, _ = score_windows(model, data, batches, device=torch.device(device),
                                                      autocast_dtype=autocast_dtype, progress=progress)
    method = "+".join(m for m, on in (("strided", strided), ("sliding-window", sliding_window)) if on) or "basic"
    return EvalResult(
        nats=float(nats), bytes=scored, forward_bytes=forward, method=method, seq_len=seq_len,
        stride=stride if sliding_window else None, offset=patch // 2 if patch else None, windows=windows,
    )


def _first_bytes(data: np.ndarray, max_bytes: int | None, unit: int, item_len: int | None) -> np.ndarray:
    """The first `max_bytes` of `data`, rounded down to whole `unit`s (images, samples)."""
    if max_bytes is None:
        return data
    if max_bytes < 1:
        raise MegabyteError(f"max_bytes must be at least 1, got {max_bytes}")
    keep = max_bytes // unit * unit
    if keep == 0:
        raise MegabyteError(f"max_bytes {max_bytes} is less than one image of {item_len} bytes")
    return data[:keep]


class Scores(NamedTuple):
    """What `score_windows` summed over the windows it ran."""

    nats: Tensor
    """Summed loss in nats (a float64 tensor)."""
    scored: int
    """Positions scored."""
    forward: int
    """Positions run through the model (padding batches excluded)."""
    windows: int
    bytes: int
    """Bytes of data the scored positions stand for (= scored for bytes; tokens: their UTF-8 bytes)."""


def score_windows(
    model: nn.Module,
    data: np.ndarray,
    batches: list,
    *,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    progress: Callable[[int], None] | None = None,
    byte_lengths: np.ndarray | None = None,
) -> Scores:
    """Run `model` over the planned batches of windows of `data` (1-D ids: bytes or tokens) and
    sum the loss of the positions each window scores. `byte_lengths` (V,): the bytes each token
    id stands for (None: one per position). The model runs in eval mode, restored after; no
    gradients (no_grad, not inference_mode: validation runs between training steps, and a tensor
    a module caches here must stay usable by autograd)."""
    nats = torch.zeros((), dtype=torch.float64, device=device)
    scored = forward = windows = count_bytes = 0
    was_training = model.training
    model.eval()
    try:
        autocast = nullcontext() if autocast_dtype is None else torch.autocast(device.type, dtype=autocast_dtype)
        with torch.no_grad(), autocast:
            for batch in batches:
                rows = np.stack([data[j.start : j.start + j.length] for j in batch])  # (B, T)
                mask = np.stack([j.mask() for j in batch])  # (B, T)
                x = torch.from_numpy(rows.astype(np.int64)).to(device, non_blocking=True)
                logits = model(x)  # (B, T, V): logits[:, t] predicts x[:, t] from x[:, :t]
                count = int(mask.sum())
                if count == 0:  # a padding batch (distributed): nothing to score
                    continue
                nats += summed_nats(logits, x, torch.from_numpy(mask).to(device))
                scored += count
                count_bytes += count if byte_lengths is None else int(byte_lengths[rows[mask]].sum())
                forward += rows.size
                windows += len(batch)
                if progress is not None:
                    progress(count)
    finally:
        model.train(was_training)
    return Scores(nats, scored, forward, windows, count_bytes)


def summed_nats(logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
    """Summed cross-entropy in nats of `logits` (B, T, V) against `targets` (B, T), over the
    positions `mask` keeps (all without one), summed in float64: a split has millions of bytes."""
    nats = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").double()  # (B*T,)
    return (nats * mask.flatten() if mask is not None else nats).sum()


def reduce_result(result: EvalResult) -> EvalResult:
    """Sum nats, bytes, forward bytes and windows over all ranks when torch.distributed is
    initialised (a collective: call it on every rank); otherwise return `result` unchanged."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return result
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    sums = torch.tensor([result.nats, result.bytes, result.forward_bytes, result.windows],
                        dtype=torch.float64, device=device)  # counts are exact in float64 below 2**53
    dist.all_reduce(sums)
    nats, count, forward, windows = sums.tolist()
    return EvalResult(
        nats=nats, bytes=round(count), forward_bytes=round(forward), method=result.method,
        seq_len=result.seq_len, stride=result.stride, offset=result.offset, windows=round(windows),
    )


# ---------------------------------------------------------------------------------- validation
def _as_bytes(data: Any) -> np.ndarray:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    data = np.asarray(data)
    if data.ndim != 1:
        raise MegabyteError(f"expected a 1-D array of bytes, got shape {data.shape}")
    if data.dtype != np.uint8:
        if data.dtype.kind not in "iu" or (data.size and (data.min() < 0 or data.max() > 255)):
            raise MegabyteError(f"expected byte values 0..255 (uint8), got dtype {data.dtype}")
        data = data.astype(np.uint8)
    return data


def _strided_patch(config: Any) -> int:
    sub_sizes = getattr(config, "sub_sizes", None)
    if sub_sizes is None:
        kind = getattr(config, "model_type", type(config).__name__)
        raise MegabyteError(
            f"strided inference needs a MEGABYTE model (it shifts the patch grid), but this is a {kind} model"
        )
    if getattr(config, "dynamic", False):
        raise MegabyteError(f"strided inference shifts a fixed patch grid, and a {config.patching!r}-patched "
                            "MEGABYTE has none (its patches follow the bytes): use basic or sliding-window inference")
    if sub_sizes[0] < 2:
        raise MegabyteError(f"strided inference needs a top-level patch of at least 2 bytes, got {sub_sizes[0]}")
    return int(sub_sizes[0])


def _check_alignment(align: int, seq_len: int, stride: int | None, offset: int | None) -> None:
    """Windows start at multiples of seq_len, the stride and the strided offset: each must be a
    multiple of `align`, or some window would start inside a 16-bit sample."""
    if align < 1:
        raise MegabyteError(f"align must be at least 1, got {align}")
    for what, value in (("seq_len", seq_len), ("the sliding-window stride", stride),
                        ("the strided offset (half the top patch)", offset)):
        if value is not None and value % align:
            raise MegabyteError(f"{what} is {value}, not a multiple of {align}: on this data (whole {align}-byte "
                                "samples) every window must start on a sample")


def _check_args(config, n, seq_len, batch_size, sliding_window, window_stride, item_len, rank, world_size) -> int:
    """Validate the arguments; return the window stride (seq_len without a sliding window)."""
    if n == 0:
        raise MegabyteError("nothing to evaluate: the data is empty")
    if not 1 <= seq_len <= config.max_seq_len:
        raise MegabyteError(f"seq_len must be between 1 and the model's max_seq_len {config.max_seq_len}, "
                            f"got {seq_len}")
    if batch_size < 1:
        raise MegabyteError(f"batch_size must be at least 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise MegabyteError(f"rank {rank} is not within world_size {world_size}")
    if item_len is not None:
        if item_len < 1:
            raise MegabyteError(f"item_len must be at least 1, got {item_len}")
        if n % item_len:
            raise MegabyteError(f"the data ({n} bytes) is not a whole number of {item_len}-byte images")
    if window_stride is not None and not sliding_window:
        raise MegabyteError("a window stride needs the sliding-window method")
    if not sliding_window:
        return seq_len
    stride = max(1, seq_len // 2) if window_stride is None else window_stride
    if not 1 <= stride <= seq_len:
        raise MegabyteError(f"the sliding-window stride must be between 1 and seq_len {seq_len}, got {stride}")
    return stride
