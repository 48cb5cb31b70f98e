"""Shared pieces of the evaluation tests: real text, tiny models, a uniform stub."""

import os
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

import megabyte


def real_text(n: int, skip: int = 0) -> np.ndarray:
    """Real text present on every machine: the standard library's own source, as uint8."""
    return np.frombuffer(open(os.__file__, "rb").read()[skip : skip + n], dtype=np.uint8)


def tiny_megabyte(patch_sizes=(4,), dims=(64, 32), depths=(1, 1), max_seq_len=32) -> megabyte.Megabyte:
    config = megabyte.MegabyteConfig(patch_sizes=patch_sizes, dims=dims, depths=depths, max_seq_len=max_seq_len)
    return megabyte.Megabyte(config).eval()


class Uniform(nn.Module):
    """Logits that are all zero: every byte has probability 1/256, so exactly 8 bits per byte."""

    def __init__(self, max_seq_len: int = 16, patch: int | None = 4) -> None:
        super().__init__()
        self.config = SimpleNamespace(max_seq_len=max_seq_len, model_type="uniform")
        if patch is not None:
            self.config.sub_sizes = (patch, 1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.zeros(*x.shape, 256)
