"""Named model + training shapes. A preset gives a model config for each model kind
(MEGABYTE, and a Transformer and a PerceiverAR of about the same size for the baselines)
and the training settings that suit it.

    megabyte train --data DIR --out RUN --preset small --model transformer
    megabyte train --list-presets          # with parameter counts
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from megabyte.errors import MegabyteError

MODEL_KINDS = ("megabyte", "transformer", "perceiver-ar")
"""The `--model` choices; the names are the configs' `model_type`."""


def config_class(kind: str) -> type:
    """The config dataclass of model kind `kind` (imported on use: this module loads no PyTorch)."""
    from megabyte.model import MegabyteConfig, PerceiverARConfig, TransformerConfig

    classes = {"megabyte": MegabyteConfig, "transformer": TransformerConfig, "perceiver-ar": PerceiverARConfig}
    if kind not in classes:
        raise MegabyteError(f"unknown model kind {kind!r}; expected one of {', '.join(MODEL_KINDS)}")
    return classes[kind]


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    models: dict[str, dict[str, Any]]
    """Model kind -> fields of that kind's config class."""
    train: dict[str, Any]
    """TrainConfig fields."""

    def model_fields(self, kind: str) -> dict[str, Any]:
        config_class(kind)  # a clear error for an unknown kind
        return dict(self.models[kind])

    def model_config(self, kind: str):
        """The model config of `kind` in this preset, e.g. `get_preset("small").model_config("megabyte")`."""
        return config_class(kind)(**self.model_fields(kind))


def _preset(name: str, summary: str, *, ctx: int, megabyte: dict, transformer: dict, perceiver: dict,
            train: dict) -> Preset:
    models = {
        "megabyte": {"max_seq_len": ctx, **megabyte},
        "transformer": {"max_seq_len": ctx, **transformer},
        "perceiver-ar": {"max_seq_len": ctx, **perceiver},
    }
    return Preset(name, summary, models, train)


PRESETS: dict[str, Preset] = {p.name: p for p in [
    _preset(
        "tiny", "seconds on a CPU: for tests and smoke runs", ctx=64,
        megabyte={"patch_sizes": (4,), "dims": (64, 32), "depths": (2, 2)},
        transformer={"dim": 64, "depth": 2},
        perceiver={"dim": 64, "depth": 2, "num_latents": 16},
        train={"batch_size": 4, "lr": 3e-3, "min_lr": 3e-4, "warmup": 5, "max_steps": 40, "dropout": 0.0,
               "eval_every": 20, "eval_bytes": 4096, "log_every": 1, "save_every": 20, "keep_last": 2,
               "precision": "fp32"},
    ),
    _preset(
        "small", "a few minutes of useful training on a laptop CPU", ctx=1024,
        megabyte={"patch_sizes": (8,), "dims": (256, 128), "depths": (4, 2)},
        transformer={"dim": 256, "depth": 4},
        perceiver={"dim": 256, "depth": 4, "num_latents": 256},
        train={"batch_size": 8, "lr": 1.5e-3, "min_lr": 1.5e-4, "warmup": 50, "max_steps": 2000, "dropout": 0.0,
               "eval_every": 250, "eval_bytes": 1 << 19, "log_every": 10, "save_every": 500},
    ),
    _preset(
        "image-small", "CPU minutes on 32 x 32 RGB images (3,072 bytes): P=12 is one 2x2-pixel patch", ctx=3072,
        megabyte={"patch_sizes": (12,), "dims": (384, 128), "depths": (4, 2)},
        transformer={"dim": 384, "depth": 4},
        perceiver={"dim": 384, "depth": 4, "num_latents": 512},
        train={"batch_size": 4, "lr": 1.5e-3, "min_lr": 1.5e-4, "warmup": 50, "max_steps": 2000, "dropout": 0.0,
               "eval_every": 250, "eval_bytes": 1 << 18, "log_every": 10, "save_every": 500},
    ),
    _preset(
        "audio-small", "CPU minutes on 16 kHz PCM: P=32 (16 samples), 4,096-byte context (0.128 s)", ctx=4096,
        megabyte={"patch_sizes": (32,), "dims": (384, 128), "depths": (4, 2)},
        transformer={"dim": 384, "depth": 4},
        perceiver={"dim": 384, "depth": 4, "num_latents": 512},
        train={"batch_size": 4, "lr": 1.5e-3, "min_lr": 1.5e-4, "warmup": 50, "max_steps": 2000, "dropout": 0.0,
               "eval_every": 250, "eval_bytes": 1 << 18, "log_every": 10, "save_every": 500},
    ),
    _preset(
        "medium", "one GPU for a few hours", ctx=8192,
        megabyte={"patch_sizes": (8,), "dims": (1024, 512), "depths": (12, 6)},
        transformer={"dim": 1024, "depth": 13},
        perceiver={"dim": 1024, "depth": 13, "num_latents": 1024},
        train={"batch_size": 8, "lr": 6e-4, "min_lr": 6e-5, "warmup": 500, "max_steps": 50_000, "dropout": 0.1,
               "eval_every": 1000, "eval_bytes": 1 << 22, "log_every": 10, "save_every": 1000},
    ),
    _preset(
        "text", "the paper's text shape: global 2048 x 14, local 1024 x 18, P=8, 8,192-byte context", ctx=8192,
        megabyte={"patch_sizes": (8,), "dims": (2048, 1024), "depths": (14, 18)},
        transformer={"dim": 2048, "depth": 19},
        perceiver={"dim": 2048, "depth": 19, "num_latents": 1024},
        train={"batch_size": 8, "lr": 2e-4, "min_lr": 2e-5, "warmup": 2000, "max_steps": 100_000, "dropout": 0.1,
               "eval_every": 1000, "eval_bytes": 1 << 24, "log_every": 10, "save_every": 1000},
    ),
    _preset(
        "imagenet64", "the paper's ImageNet64 shape: P=12 (2x2 RGB pixels), 12,288-byte context, "
        "sized to the paper's 2.7B global + 350M local parameters", ctx=12288,
        megabyte={"patch_sizes": (12,), "dims": (3072, 1024), "depths": (24, 28)},
        transformer={"dim": 3072, "depth": 26},
        perceiver={"dim": 3072, "depth": 26, "num_latents": 1024},
        train={"batch_size": 8, "lr": 2e-4, "min_lr": 2e-5, "warmup": 2000, "max_steps": 100_000, "dropout": 0.1,
               "eval_every": 1000, "eval_bytes": 1 << 24, "log_every": 10, "save_every": 1000},
    ),
    _preset(
        "audio", "audio shape: P=32 over 16 kHz 16-bit PCM, 2^19-byte context (16.4 s), "
        "text-sized stages (global 2048 x 14, local 1024 x 18)", ctx=1 << 19,
        megabyte={"patch_sizes": (32,), "dims": (2048, 1024), "depths": (14, 18)},
        transformer={"dim": 2048, "depth": 19},
        perceiver={"dim": 2048, "depth": 19, "num_latents": 1024},
        train={"batch_size": 1, "lr": 2e-4, "min_lr": 2e-5, "warmup": 2000, "max_steps": 100_000, "dropout": 0.1,
               "eval_every": 1000, "eval_bytes": 1 << 24, "log_every": 10, "save_every": 1000},
    ),
]}

DEFAULT_PRESET = "small"


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise MegabyteError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def fit_to_data(config, data, *, seq_len: int | None = None, fixed: Collection[str] = ()) -> tuple[Any, list[str]]:
    """`config` (a preset's model config) made to meet the dataset `data`, and what changed.

    Images: the context holds the training sequence (`seq_len`, by default one whole image), and
    MEGABYTE's patch is one block of pixels in patch-scan order (P = channels x pixels^2: the
    paper's P=12 for 2x2 RGB), with the nearest global width that P divides. Fields named in
    `fixed` (what the user set) are never changed: a conflict then stays an error for them to see.
    """
    notes: list[str] = []
    meta, item = data.meta, data.item_len
    need = (seq_len or item) if item else None  # text and audio: the preset's context is the user's choice
    if need and config.max_seq_len < need and "max_seq_len" not in fixed:
        what = "one image" if need == item else f"{need // item} images"
        notes.append(f"context {config.max_seq_len} -> {need} bytes ({what})")
        config = dataclasses.replace(config, max_seq_len=need)
        if config.model_type == "perceiver-ar" and config.num_latents > need and "num_latents" not in fixed:
            config = dataclasses.replace(config, num_latents=need)
    if (config.model_type == "megabyte" and data.modality == "image" and meta.get("order") == "patch"
            and len(config.patch_sizes) == 1 and not {"patch_sizes", "dims"} & set(fixed)):
        pixels = int(meta.get("patch_pixels", 2))
        patch = int(meta.get("channels", 3)) * pixels**2
        if patch != config.patch_sizes[0] and patch > 1 and (item is None or item % patch == 0):
            fitted = _with_patch(config, patch)
            if fitted is not None:
                notes.append(f"patch {config.patch_sizes[0]} -> {patch} bytes, one {pixels}x{pixels}-pixel block "
                             f"(global width {config.dims[0]} -> {fitted.dims[0]})")
                config = fitted
    return config, notes


def _with_patch(config, patch: int):
    """`config` with patch size `patch` and the nearest valid global width, or None."""
    from megabyte.model.base import ConfigError

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


def parameter_count(model_config) -> int:
    """Parameters of a model built from `model_config`, counted without allocating them."""
    import torch

    from megabyte.model import build_model

    with torch.device("meta"):
        model = build_model(model_config)
    return sum(p.numel() for p in model.parameters())


def describe_presets() -> str:
    """A table of every preset: parameter counts per model kind, context, summary."""
    lines = [f"{'preset':<11} {'context':>8}  " + "  ".join(f"{k:>13}" for k in MODEL_KINDS) + "  summary"]
    for preset in PRESETS.values():
        counts = [parameter_count(preset.model_config(k)) for k in MODEL_KINDS]
        ctx = preset.models["megabyte"]["max_seq_len"]
        lines.append(f"{preset.name:<11} {ctx:>8}  " + "  ".join(f"{_human(c):>13}" for c in counts)
                     + f"  {preset.summary}")
    return "\n".join(lines)


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)
