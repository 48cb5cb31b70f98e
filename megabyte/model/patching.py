"""Where MEGABYTE's patches end: fixed every P bytes, or where the data says (dynamic patching).

    starts = patch_starts(x, "space", max_len=16)      # (B, T) bool: byte t begins a patch
    layout = PatchLayout.of(starts)                     # patch index, offset and start of every byte

The rules (`MegabyteConfig.patching`):

    fixed   a patch every P bytes (the paper; `Megabyte` keeps its own grid code for it)
    space   SpaceByte's rule (Slagle 2024): byte b is *spacelike* if it is not an ASCII letter or
            digit and not a UTF-8 continuation byte; byte t >= 2 begins a patch when x[t-1] is
            spacelike and x[t-2] is not: the first spacelike byte after a word ends the word's
            patch, the rest of a run of spaces or punctuation goes with the next word
            ("Hi," | " you " | " there" for "Hi, you  there"). Byte 0 always begins one.
    entropy BLT's rule (Pagnoni 2024): a small frozen byte model gives H_t, the entropy (nats) of
            its prediction of byte t from bytes < t; byte t begins a patch when H_t > theta, or
            with the monotonic variant when H_t - H_{t-1} > theta (`megabyte.model.entropy`
            computes H and calibrates theta to a target mean patch length).

Whatever the rule, a patch also ends when it reaches `max_len` bytes (P_max, the model's top
patch size): in a stretch of bytes without a rule boundary, patches begin every `max_len` bytes
from the last rule boundary. Whether byte t begins a patch depends on bytes < t only, which keeps
the model causal and lets decoding run the global stage exactly when a patch closes
(`starts_next`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

RULES = ("fixed", "space", "entropy")
"""`MegabyteConfig.patching` values; every rule but "fixed" is dynamic."""


def spacelike(x: Tensor) -> Tensor:
    """Bytes that are not an ASCII letter or digit and not a UTF-8 continuation byte (bool, like x)."""
    x = x.long()
    return (x < 0x30) | ((x > 0x39) & (x < 0x41)) | ((x > 0x5A) & (x < 0x61)) | ((x > 0x7A) & (x < 0x80)) | (x >= 0xC0)


def rule_starts(x: Tensor, rule: str, entropy: Tensor | None = None, threshold: float | None = None,
                relative: bool = False) -> Tensor:
    """(B, T) bool: the bytes the rule itself starts a patch at (byte 0 included), before the cap.
    The entropy rule needs `entropy` (B, T): H_t of every byte, and the `threshold`."""
    B, T = x.shape
    starts = torch.zeros(B, T, dtype=torch.bool, device=x.device)
    starts[:, 0] = True
    if rule == "space":
        s = spacelike(x)
        if T > 2:
            starts[:, 2:] = s[:, 1:-1] & ~s[:, :-2]
    elif rule == "entropy":
        if entropy is None or threshold is None:
            raise ValueError("the entropy rule needs every byte's entropy and a threshold")
        if T > 1:
            score = entropy[:, 1:] - entropy[:, :-1] if relative else entropy[:, 1:]
            starts[:, 1:] = score > threshold
    else:
        raise ValueError(f"unknown dynamic patching rule {rule!r}")
    return starts


def capped(starts: Tensor, max_len: int) -> Tensor:
    """The rule's `starts` (B, T) with a start every `max_len` bytes of a stretch without one."""
    T = starts.shape[1]
    pos = torch.arange(T, device=starts.device).expand_as(starts)
    last_rule = torch.where(starts, pos, torch.zeros_like(pos)).cummax(dim=1).values
    return starts | ((pos - last_rule) % max_len == 0)


def patch_starts(x: Tensor, rule: str, max_len: int, **scores) -> Tensor:
    """(B, T) bool: byte t begins a patch (the rule's boundaries, then one every `max_len` bytes
    of a stretch without one). `scores`: the entropy rule's `entropy`, `threshold`, `relative`."""
    return capped(rule_starts(x, rule, **scores), max_len)


def starts_next(data: Tensor, t: int, patch_start: Tensor, rule: str, max_len: int,
                entropy: Tensor | None = None, previous: Tensor | None = None, threshold: float | None = None,
                relative: bool = False) -> Tensor:
    """(B,) bool: whether byte t begins a patch, given the bytes data[:, :t] and the start of the
    patch byte t - 1 is in (decoding, one byte at a time; the same decision as `patch_starts`).
    The entropy rule: `entropy` (B,) is H_t, `previous` H_{t-1} (for the monotonic variant)."""
    if t == 0:
        return torch.ones(data.shape[0], dtype=torch.bool, device=data.device)
    full = patch_start <= t - max_len
    if rule == "entropy":
        if entropy is None or threshold is None or (relative and previous is None):
            raise ValueError("the entropy rule needs the byte's entropy (and the previous one) and a threshold")
        return full | ((entropy - previous if relative else entropy) > threshold)
    if rule != "space":
        raise ValueError(f"unknown dynamic patching rule {rule!r}")
    if t < 2:
        return full
    s = spacelike(data[:, t - 2 : t])
    return full | (s[:, 1] & ~s[:, 0])


@dataclass
class PatchLayout:
    """Where every byte of a batch sits: patch index, offset in the patch, the patch's first byte."""

    patch: Tensor
    """(B, T) long: index of the patch each byte is in (0 for the first patch)."""
    offset: Tensor
    """(B, T) long: the byte's position inside its patch (0 .. P_max - 1)."""
    start: Tensor
    """(B, T) long: position of the first byte of the byte's patch."""
    count: Tensor
    """(B,) long: patches per row."""

    @classmethod
    def of(cls, starts: Tensor) -> PatchLayout:
        pos = torch.arange(starts.shape[1], device=starts.device).expand_as(starts)
        start = torch.where(starts, pos, torch.zeros_like(pos)).cummax(dim=1).values
        patch = starts.long().cumsum(dim=1) - 1
        return cls(patch=patch, offset=pos - start, start=start, count=patch[:, -1] + 1)

    def lengths(self) -> Tensor:
        """1-D long tensor: the length in bytes of every patch of every row (row by row)."""
        B, T = self.patch.shape
        rows = torch.arange(B, device=self.patch.device)[:, None]
        counts = torch.bincount((self.patch + rows * T).reshape(-1))
        return counts[counts > 0]
