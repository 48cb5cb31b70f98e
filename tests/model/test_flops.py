"""The analytic FLOP counter against hand counts, and against the weights the modules hold."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from megabyte.compare.flops import parse_flops
from megabyte.model import Megabyte, MegabyteConfig, PerceiverAR, PerceiverARConfig, Transformer, TransformerConfig
from megabyte.model.flops import block_weights, causal_pairs, training_flops


def test_megabyte_hand_count():
    # P=4, global 64 wide x 2 layers over 16/4 = 4 patches, local 32 wide x 2 layers over 16 bytes.
    cfg = MegabyteConfig(patch_sizes=(4,), dims=(64, 32), depths=(2, 2), max_seq_len=16)
    count = training_flops(cfg, 16)
    # global: 4 positions; per layer q,k,v,out (4 * 64^2) + MLP 64->256->64 (2 * 4 * 64^2) = 12 * 64^2
    global_matmul = 6 * (2 * 12 * 64 * 64) * 4
    global_attention = 12 * 64 * 2 * (4 * 5 // 2)  # one row of 4 patches: 10 causal pairs per layer
    # local: 16 positions; blocks 12 * 32^2 per layer, plus the link from a 64/4 = 16 wide global slice
    local_matmul = 6 * (2 * 12 * 32 * 32 + 16 * 32) * 16
    local_attention = 12 * 32 * 2 * (4 * (4 * 5 // 2))  # 4 rows (patches) of 4 bytes
    head = 6 * 32 * 256 * 16
    assert [p.name for p in count.parts] == ["global", "local", "head"]
    assert [p.flops for p in count.parts] == [global_matmul + global_attention, local_matmul + local_attention, head]
    assert count.total == global_matmul + global_attention + local_matmul + local_attention + head
    assert count.per_position == count.total / 16


def test_megabyte_global_stage_runs_once_per_patch():
    cfg = MegabyteConfig(patch_sizes=(8,), dims=(256, 64), depths=(4, 1), max_seq_len=1024)
    parts = {p.name: p for p in training_flops(cfg, 1024).parts}
    assert parts["global"].positions == 1024 // 8
    assert parts["local"].positions == 1024
    # a partial last patch runs padded: 1000 bytes cost the global stage 125 patches
    assert {p.name: p for p in training_flops(cfg, 1000).parts}["global"].positions == 125


def test_transformer_and_perceiver_hand_count():
    tf = training_flops(TransformerConfig(dim=64, depth=3, max_seq_len=32), 32)
    assert tf.total == 6 * 3 * 12 * 64 * 64 * 32 + 12 * 64 * 3 * (32 * 33 // 2) + 6 * 64 * 256 * 32
    sub = training_flops(TransformerConfig(dim=64, depth=3, max_seq_len=32, vocab_size=1000), 32)
    assert sub.total - tf.total == 6 * 64 * (1000 - 256) * 32  # only the output layer grows
    par = training_flops(PerceiverARConfig(dim=64, depth=2, num_latents=8, max_seq_len=32), 20)
    cross = 6 * 12 * 64 * 64 * 20 + 12 * 64 * 1 * (20 * 21 // 2)
    latent = 6 * 2 * 12 * 64 * 64 * 24 + 12 * 64 * 2 * (3 * (8 * 9 // 2))  # 20 -> 3 chunks of 8 latents
    assert par.total == cross + latent + 6 * 64 * 256 * 20


def _linear_weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


@pytest.mark.parametrize("cfg", [
    MegabyteConfig(patch_sizes=(4,), dims=(64, 32), depths=(2, 1), max_seq_len=32),
    MegabyteConfig(patch_sizes=(4, 2), dims=(64, 32, 16), depths=(1, 1, 1), max_seq_len=32, embed_dims=(8, 8, 16)),
])
def test_megabyte_weights_match_the_modules(cfg):
    """Every linear layer of every stage is counted once per position of its stage."""
    with torch.device("meta"):
        model = Megabyte(cfg)
    count = training_flops(cfg, 32)
    stages = [p for p in count.parts if p.name != "head"]
    for part, stage in zip(stages, model.stages):
        assert part.weights == _linear_weights(stage)
    assert count.parts[-1].weights == model.head.weight.numel()


def test_baseline_weights_match_the_modules():
    with torch.device("meta"):
        tf = Transformer(TransformerConfig(dim=64, depth=2, max_seq_len=16, vocab_size=300))
        par = PerceiverAR(PerceiverARConfig(dim=64, depth=2, num_latents=8, max_seq_len=16))
    assert sum(p.weights for p in training_flops(tf.config, 16).parts) == _linear_weights(tf)
    assert sum(p.weights for p in training_flops(par.config, 16).parts) == _linear_weights(par)
    assert block_weights(64, 4) == _linear_weights(tf.transformer.blocks[0])
    assert causal_pairs(4) == 10


def test_cross_patch_adds_the_previous_patch_keys():
    plain = MegabyteConfig(patch_sizes=(4,), dims=(64, 32), depths=(1, 1), max_seq_len=16)
    cross = MegabyteConfig(patch_sizes=(4,), dims=(64, 32), depths=(1, 1), max_seq_len=16, cross_patch=2)
    diff = training_flops(cross, 16).total - training_flops(plain, 16).total
    assert diff == 12 * 32 * 1 * (3 * 4 * 2)  # 3 patches with a predecessor, 4 queries, 2 extra keys


def test_parse_flops():
    assert parse_flops("1e15") == 1e15
    assert parse_flops("300T") == 3e14
    assert parse_flops("2.5 PFLOPs") == 2.5e15
    for bad in ("lots", "0", "-1e9"):
        with pytest.raises(ValueError):
            parse_flops(bad)
