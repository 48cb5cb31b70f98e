"""The built-in model kinds, registered in `megabyte.model.registry` when `megabyte.model` loads:
MEGABYTE, the paper's two byte-level baselines (Transformer, PerceiverAR), and the subword
baseline (the Transformer over BPE tokens, for `megabyte compare` on text).

Each kind's shape in every preset sits here, side by side, so that one preset gives every kind
about the same parameter count (`megabyte train --list-presets` prints the counts); the preset's
training settings and context are in `megabyte.training.presets`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from megabyte.model.base import ConfigError
from megabyte.model.flops import megabyte_parts, perceiver_ar_parts, transformer_parts
from megabyte.model.megabyte import Megabyte, MegabyteConfig
from megabyte.model.perceiver_ar import PerceiverAR, PerceiverARConfig
from megabyte.model.registry import ModelKind, register
from megabyte.model.transformer import Transformer, TransformerConfig

MEGABYTE_PRESETS = {
    "tiny": {"patch_sizes": (4,), "dims": (64, 32), "depths": (2, 2)},
    "small": {"patch_sizes": (8,), "dims": (256, 128), "depths": (4, 2)},
    "image-small": {"patch_sizes": (12,), "dims": (384, 128), "depths": (4, 2)},
    "audio-small": {"patch_sizes": (32,), "dims": (384, 128), "depths": (4, 2)},
    "medium": {"patch_sizes": (8,), "dims": (1024, 512), "depths": (12, 6)},
    "text": {"patch_sizes": (8,), "dims": (2048, 1024), "depths": (14, 18)},
    "imagenet64": {"patch_sizes": (12,), "dims": (3072, 1024), "depths": (24, 28)},
    "audio": {"patch_sizes": (32,), "dims": (2048, 1024), "depths": (14, 18)},
}
SPACE_P_MAX = {"tiny": 8, "small": 16, "image-small": 24, "audio-small": 32, "medium": 16, "text": 16,
               "imagenet64": 24, "audio": 32}
"""The longest patch of the space-patched MEGABYTE per preset: twice the fixed model's patch where
its global width allows (mean patches on text are 6 to 8 bytes; `megabyte patches` shows them)."""
SPACE_PRESETS = {name: {**fields, "patch_sizes": (SPACE_P_MAX[name],), "patching": "space"}
                 for name, fields in MEGABYTE_PRESETS.items()}
ENTROPY_PRESETS = {name: {**fields, "patching": "entropy", "patch_sizes": (2 * fields["patch_sizes"][0],),
                          "patch_target": float(fields["patch_sizes"][0])}
                   for name, fields in MEGABYTE_PRESETS.items()}
"""Entropy patches: P_max twice the fixed model's patch, and theta calibrated to the fixed model's
patch length, so that the global stage runs about as often as the fixed model's and only where the
patches end differs (a target equal to P_max would leave theta nothing to decide: every patch would
be cut at the cap). The entropy model is the user's (`model.entropy_model=RUN`)."""
TRANSFORMER_PRESETS = {
    "tiny": {"dim": 64, "depth": 2},
    "small": {"dim": 256, "depth": 4},
    "image-small": {"dim": 384, "depth": 4},
    "audio-small": {"dim": 384, "depth": 4},
    "medium": {"dim": 1024, "depth": 13},
    "text": {"dim": 2048, "depth": 19},
    "imagenet64": {"dim": 3072, "depth": 26},
    "audio": {"dim": 2048, "depth": 19},
    "entropy": {"dim": 128, "depth": 2},
}
PERCEIVER_LATENTS = {"tiny": 16, "small": 256, "image-small": 512, "audio-small": 512, "medium": 1024,
                     "text": 1024, "imagenet64": 1024, "audio": 1024}
PERCEIVER_PRESETS = {name: {**fields, "num_latents": PERCEIVER_LATENTS[name]}
                     for name, fields in TRANSFORMER_PRESETS.items() if name in PERCEIVER_LATENTS}


# ------------------------------------------------------------------------------------ MEGABYTE
def describe_megabyte(c: dict[str, Any]) -> str:
    stages = " / ".join(f"{d}x{n}" for d, n in zip(c["dims"], c["depths"]))
    patches = f"P={'x'.join(map(str, c['patch_sizes']))}"
    if c.get("patching", "fixed") != "fixed":
        patches = f"{c['patching']} patches of at most {c['patch_sizes'][0]} bytes"
    return f"{patches}, width x layers {stages} (global first)"


def fit_megabyte(config: MegabyteConfig, data, fixed: frozenset[str]) -> tuple[MegabyteConfig, list[str]]:
    """On images stored in patch-scan order, the patch is one block of pixels (P = channels x
    pixels^2: the paper's P=12 for 2x2 RGB), with the nearest global width that P divides."""
    meta, item = data.meta, data.item_len
    if config.patching == "entropy":
        from megabyte.model.entropy import resolve

        return resolve(config, data, fixed)
    if config.dynamic:
        return config, []
    if not (data.modality == "image" and meta.get("order") == "patch" and len(config.patch_sizes) == 1
            and not {"patch_sizes", "dims"} & fixed):
        return config, []
    pixels = int(meta.get("patch_pixels", 2))
    patch = int(meta.get("channels", 3)) * pixels**2
    if patch == config.patch_sizes[0] or patch <= 1 or (item is not None and item % patch):
        return config, []
    fitted = _with_patch(config, patch)
    if fitted is None:
        return config, []
    return fitted, [f"patch {config.patch_sizes[0]} -> {patch} bytes, one {pixels}x{pixels}-pixel block "
                    f"(global width {config.dims[0]} -> {fitted.dims[0]})"]


def _with_patch(config: MegabyteConfig, patch: int) -> MegabyteConfig | None:
    """`config` with patch size `patch` and the nearest valid global width, or None."""
    width = config.dims[0]
    for delta in range(0, width, patch):
        for candidate in (width + delta, width - delta):
            base = candidate - candidate % patch
            if base < patch:
                continue
            try:
                return dataclasses.replace(config, patch_sizes=(patch,), dims=(base, *config.dims[1:]), heads=None)
            except ConfigError:
                continue
    return None


def sized_megabyte(s, max_seq_len: int) -> MegabyteConfig:
    return MegabyteConfig(patch_sizes=(s.patch,), dims=(s.global_dim, s.local_dim),
                          depths=(s.global_depth, s.local_depth), heads=(s.heads, s.local_heads),
                          max_seq_len=max_seq_len)


def sized_megabyte_space(s, max_seq_len: int) -> MegabyteConfig:
    """`megabyte bench`'s MEGABYTE shapes with space patches of at most twice its patch."""
    return dataclasses.replace(sized_megabyte(s, max_seq_len), patch_sizes=(2 * s.patch,), patching="space")


# ------------------------------------------------------------------------------------ the baselines
def describe_flat(c: dict[str, Any]) -> str:
    text = f"{c['dim']} x {c['depth']}"
    return text + (f", {c['vocab_size']}-token vocabulary" if c.get("vocab_size", 256) != 256 else "")


def describe_perceiver(c: dict[str, Any]) -> str:
    return f"{c['dim']} x (1 cross + {c['depth']} latent), {c['num_latents']} latents"


def fit_perceiver(config: PerceiverARConfig, data, fixed: frozenset[str]) -> tuple[PerceiverARConfig, list[str]]:
    """No more latents than context positions."""
    if config.num_latents > config.max_seq_len and "num_latents" not in fixed:
        config = dataclasses.replace(config, num_latents=config.max_seq_len)
    return config, []


def sized_transformer(s, max_seq_len: int) -> TransformerConfig:
    return TransformerConfig(dim=s.flat_dim, depth=s.flat_depth, heads=s.heads, max_seq_len=max_seq_len)


def sized_perceiver(s, max_seq_len: int) -> PerceiverARConfig:
    return PerceiverARConfig(dim=s.flat_dim, depth=s.flat_depth, heads=s.heads, max_seq_len=max_seq_len,
                             num_latents=min(s.latents, max_seq_len))


MEGABYTE = register(ModelKind(
    "megabyte", "MEGABYTE", MegabyteConfig, Megabyte, megabyte_parts, MEGABYTE_PRESETS, strided=True,
    colour="tab:red", describe=describe_megabyte, fit=fit_megabyte, sized=sized_megabyte))
MEGABYTE_SPACE = register(ModelKind(
    "megabyte-space", "MEGABYTE (space patches)", MegabyteConfig, Megabyte, megabyte_parts, SPACE_PRESETS,
    colour="tab:orange", describe=describe_megabyte, fit=fit_megabyte, sized=sized_megabyte_space,
    modalities=("text",)))
MEGABYTE_ENTROPY = register(ModelKind(
    "megabyte-entropy", "MEGABYTE (entropy patches)", MegabyteConfig, Megabyte, megabyte_parts, ENTROPY_PRESETS,
    colour="tab:brown", describe=describe_megabyte, fit=fit_megabyte, by_default=False))
TRANSFORMER = register(ModelKind(
    "transformer", "Transformer", TransformerConfig, Transformer, transformer_parts, TRANSFORMER_PRESETS,
    colour="tab:blue", describe=describe_flat, sized=sized_transformer))
PERCEIVER_AR = register(ModelKind(
    "perceiver-ar", "PerceiverAR", PerceiverARConfig, PerceiverAR, perceiver_ar_parts, PERCEIVER_PRESETS,
    colour="tab:green", describe=describe_perceiver, fit=fit_perceiver, sized=sized_perceiver))
SUBWORD = register(ModelKind(
    "subword", "Subword (BPE) Transformer", TransformerConfig, Transformer, transformer_parts, TRANSFORMER_PRESETS,
    units="tokens", colour="tab:purple", describe=describe_flat))
