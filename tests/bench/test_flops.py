"""The analytic FLOP formulas against PyTorch's FLOP counter, on tiny configs of every model kind.

The counter sees every matrix product the model runs (forward and backward), so the formulas
with `causal=False` (all L*L attention pairs, as the counter counts them) must equal it exactly.
"""

import pytest
import torch

import megabyte
from megabyte.bench.flops import counted_flops
from megabyte.model.flops import training_flops
from tests.model.configs import MODEL_CONFIGS


@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
@pytest.mark.parametrize("seq_len", [96, 37])
def test_formula_matches_flop_counter(name, seq_len):
    cfg = MODEL_CONFIGS[name]
    model = megabyte.build_model(cfg).train()
    x = torch.randint(0, 256, (2, seq_len))
    counted = counted_flops(lambda: model.loss(x).mean.backward())
    assert 2 * training_flops(cfg, seq_len, causal=False, data=x).total == counted


def test_causal_counts_half_the_attention_pairs_plus_the_diagonal():
    cfg = megabyte.TransformerConfig(dim=64, depth=3, max_seq_len=128)
    full, causal = training_flops(cfg, 128, causal=False), training_flops(cfg, 128)
    attention = 3 * 12 * 64  # layers x (12 x width) FLOPs per (query, key) pair
    assert full.total - causal.total == attention * (128 * 128 - 128 * 129 // 2)


def test_megabyte_reference_split_and_size():
    """The issue's 25M model at 8,192 bytes: global and local counted separately, ~0.3 TFLOP a step."""
    cfg = megabyte.MegabyteConfig(patch_sizes=(8,), dims=(512, 256), depths=(6, 4), max_seq_len=8192)
    count = training_flops(cfg, 8192)
    parts = {p.name: p.flops for p in count.parts}
    assert set(parts) == {"global", "local", "head"}
    linear_global = 6 * 6 * 12 * 512**2 * (8192 // 8)  # 6 x layers x 12 D^2 x patches
    assert parts["global"] == linear_global + 6 * 12 * 512 * (1024 * 1025 // 2)
    assert 0.28e12 < count.total < 0.31e12


def test_three_stage_parts():
    cfg = MODEL_CONFIGS["megabyte-3stage"]
    assert [p.name for p in training_flops(cfg, 64).parts] == ["global", "stage 1", "stage 2", "head"]
