"""Bits per byte at initialisation, overfitting a real string, and byte 0 as an ordinary byte."""

import math
import os

import pytest
import torch

from megabyte.model.base import byte_loss
from tests.model.configs import MODEL_CONFIGS, make

LEARNERS = ["megabyte-2stage", "megabyte-3stage", "megabyte-space", "transformer", "perceiver-ar"]


def real_text(n: int) -> bytes:
    """Real text present on every machine: the standard library's own source."""
    return open(os.__file__, "rb").read()[:n]


def fit(model, x: torch.Tensor, steps: int, lr: float = 3e-3) -> float:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        opt.zero_grad()
        loss = model.loss(x)
        loss.mean.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return model.loss(x).bpb


@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
def test_bits_per_byte_at_initialisation_is_close_to_8(name):
    model = make(name)
    x = torch.tensor([list(real_text(90))])
    with torch.no_grad():
        bpb = model.loss(x).bpb
    assert 7.8 < bpb < 8.2


def test_bits_per_byte_of_a_known_distribution():
    # Uniform logits over 256 values: exactly 8 bits per byte; a certain prediction: 0.
    targets = torch.randint(0, 256, (2, 10))
    assert math.isclose(byte_loss(torch.zeros(2, 10, 256), targets).bpb, 8.0, rel_tol=1e-6)
    sure = torch.full((2, 10, 256), -1e4).scatter(2, targets.unsqueeze(-1), 1e4)
    assert byte_loss(sure, targets).bpb < 1e-6
    # Summed nats over bytes, not an average of per-row averages.
    mask = torch.tensor([[True] * 10, [True] * 2 + [False] * 8])
    assert byte_loss(torch.zeros(2, 10, 256), targets, mask).bytes == 12


@pytest.mark.parametrize("name", LEARNERS)
def test_a_short_real_string_overfits_well_under_1_bpb(name):
    torch.manual_seed(0)
    model = make(name)
    x = torch.tensor([list(real_text(70))])  # 70: not a multiple of any patch size
    assert fit(model, x, steps=150) < 0.5


@pytest.mark.parametrize("name", ["megabyte-2stage", "megabyte-3stage"])
def test_a_sequence_of_zero_bytes_is_learned(name):
    # If byte 0 were treated as padding, these positions would carry no loss and no signal.
    model = make(name)
    x = torch.zeros(1, 45, dtype=torch.long)
    with torch.no_grad():
        start = model.loss(x)
    assert start.bytes == 45
    assert fit(model, x, steps=100, lr=1e-2) < 0.05 < start.bpb
