"""Named model + training shapes. A preset gives a model config for each model kind
(MEGABYTE, and a Transformer and a PerceiverAR of about the same size for the baselines)
and the training settings that suit it.

    megabyte train --data DIR --out RUN --preset small --model transformer
    megabyte train --list-presets          # with parameter counts
"""

from __future__ import annotations

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
