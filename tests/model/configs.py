"""Tiny configurations of every model kind and variant, shared by the model tests."""

import megabyte

MAX = 96

MODEL_CONFIGS = {
    "megabyte-2stage": megabyte.MegabyteConfig(patch_sizes=(4,), dims=(64, 32), depths=(2, 2), max_seq_len=MAX),
    "megabyte-3stage": megabyte.MegabyteConfig(
        patch_sizes=(4, 2), dims=(64, 32, 16), depths=(1, 1, 2), max_seq_len=MAX
    ),
    "megabyte-cross-patch": megabyte.MegabyteConfig(
        patch_sizes=(4,), dims=(64, 32), depths=(1, 2), max_seq_len=MAX, cross_patch=2
    ),
    "megabyte-3stage-cross-patch": megabyte.MegabyteConfig(
        patch_sizes=(3, 2), dims=(48, 32, 16), depths=(1, 1, 1), max_seq_len=MAX, cross_patch=1
    ),
    "megabyte-conv": megabyte.MegabyteConfig(
        patch_sizes=(4,), dims=(64, 32), depths=(1, 1), max_seq_len=MAX, conv_kernels=(3, 5, 7)
    ),
    "megabyte-projected": megabyte.MegabyteConfig(
        patch_sizes=(4, 4), dims=(64, 32, 16), depths=(1, 1, 1), max_seq_len=MAX, embed_dims=(8, 8, 16)
    ),
    "megabyte-space": megabyte.MegabyteConfig(
        patch_sizes=(8,), dims=(64, 32), depths=(2, 2), max_seq_len=MAX, patching="space"
    ),
    "megabyte-space-cross-patch-conv": megabyte.MegabyteConfig(
        patch_sizes=(6,), dims=(48, 32), depths=(1, 2), max_seq_len=MAX, patching="space", cross_patch=3,
        conv_kernels=(3,), max_patches=12,
    ),
    "transformer": megabyte.TransformerConfig(dim=32, depth=2, max_seq_len=MAX),
    "perceiver-ar": megabyte.PerceiverARConfig(dim=32, depth=2, max_seq_len=MAX, num_latents=16),
}


def make(name: str):
    return megabyte.build_model(MODEL_CONFIGS[name]).eval()
