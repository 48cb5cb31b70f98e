"""Tiny configurations of every model kind and variant (96 bytes, a few thousand parameters).

They are the model tests' configurations and the device check's (`megabyte.bench.numerics`):
one list, so that what the CPU tests prove and what a GPU run re-checks are the same models.
"""

from megabyte.model.megabyte import MegabyteConfig
from megabyte.model.perceiver_ar import PerceiverARConfig
from megabyte.model.transformer import TransformerConfig

MAX = 96
"""The `max_seq_len` of every tiny configuration."""

TINY_CONFIGS = {
    "megabyte-2stage": MegabyteConfig(patch_sizes=(4,), dims=(64, 32), depths=(2, 2), max_seq_len=MAX),
    "megabyte-3stage": MegabyteConfig(patch_sizes=(4, 2), dims=(64, 32, 16), depths=(1, 1, 2), max_seq_len=MAX),
    "megabyte-cross-patch": MegabyteConfig(
        patch_sizes=(4,), dims=(64, 32), depths=(1, 2), max_seq_len=MAX, cross_patch=2
    ),
    "megabyte-3stage-cross-patch": MegabyteConfig(
        patch_sizes=(3, 2), dims=(48, 32, 16), depths=(1, 1, 1), max_seq_len=MAX, cross_patch=1
    ),
    "megabyte-conv": MegabyteConfig(
        patch_sizes=(4,), dims=(64, 32), depths=(1, 1), max_seq_len=MAX, conv_kernels=(3, 5, 7)
    ),
    "megabyte-projected": MegabyteConfig(
        patch_sizes=(4, 4), dims=(64, 32, 16), depths=(1, 1, 1), max_seq_len=MAX, embed_dims=(8, 8, 16)
    ),
    "megabyte-space": MegabyteConfig(
        patch_sizes=(8,), dims=(64, 32), depths=(2, 2), max_seq_len=MAX, patching="space"
    ),
    "megabyte-space-cross-patch-conv": MegabyteConfig(
        patch_sizes=(6,), dims=(48, 32), depths=(1, 2), max_seq_len=MAX, patching="space", cross_patch=3,
        conv_kernels=(3,), max_patches=12,
    ),
    "transformer": TransformerConfig(dim=32, depth=2, max_seq_len=MAX),
    "perceiver-ar": PerceiverARConfig(dim=32, depth=2, max_seq_len=MAX, num_latents=16),
}
