"""Named model + training shapes. A preset gives a context and the training settings that suit
it; every model kind (`megabyte.model.registry`) gives its shape in each preset, so that one
preset means MEGABYTE and baselines of about the same size (`megabyte.model.kinds`).

    megabyte train --data DIR --out RUN --preset small --model transformer
    megabyte train --list-presets          # with parameter counts
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from megabyte.errors import MegabyteError
from megabyte.model.registry import get_kind, kind_names, kind_of


def model_kinds() -> tuple[str, ...]:
    """The `--model` choices: every registered kind that trains on bytes (its configs' `model_type`)."""
    return kind_names(units="bytes")


def config_class(kind: str) -> type:
    """The config dataclass of the byte model kind `kind`."""
    return get_kind(kind, units="bytes").config_class


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    ctx: int
    """The context (max_seq_len) of every kind's model, in bytes."""
    train: dict[str, Any]
    """TrainConfig fields."""
    kind: str = "megabyte"
    """The model kind `megabyte train --preset NAME` trains when no --model is given."""

    def model_fields(self, kind: str) -> dict[str, Any]:
        """The config fields of `kind` in this preset (its shape, from the registry, and the context)."""
        shapes = get_kind(kind).presets
        if self.name not in shapes:
            raise MegabyteError(f"the {kind} model kind has no shape for preset {self.name!r} "
                                f"(it has: {', '.join(shapes) or 'none'})")
        return {"max_seq_len": self.ctx, **shapes[self.name]}

    def model_config(self, kind: str):
        """The model config of `kind` in this preset, e.g. `get_preset("small").model_config("megabyte")`."""
        return get_kind(kind).config_class(**self.model_fields(kind))


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset(
        "tiny", "seconds on a CPU: for tests and smoke runs", ctx=64,
        train={"batch_size": 4, "lr": 3e-3, "min_lr": 3e-4, "warmup": 5, "max_steps": 40, "dropout": 0.0,
               "eval_every": 20, "eval_bytes": 4096, "log_every": 1, "save_every": 20, "keep_last": 2,
               "precision": "fp32"},
    ),
    Preset(
        "small", "a few minutes of useful training on a laptop CPU", ctx=1024,
        train={"batch_size": 8, "lr": 7.5e-4, "min_lr": 7.5e-5, "warmup": 50, "max_steps": 2000, "dropout": 0.0,
               "eval_every": 250, "eval_bytes": 1 << 19, "log_every": 10, "save_every": 500},
    ),
    Preset(
        "image-small", "CPU minutes on 32 x 32 RGB images (3,072 bytes): P=12 is one 2x2-pixel patch", ctx=3072,
        train={"batch_size": 4, "lr": 1.5e-3, "min_lr": 1.5e-4, "warmup": 50, "max_steps": 2000, "dropout": 0.0,
               "eval_every": 250, "eval_bytes": 1 << 18, "log_every": 10, "save_every": 500},
    ),
    Preset(
        "audio-small", "CPU minutes on 16 kHz PCM: P=32 (16 samples), 4,096-byte context (0.128 s)", ctx=4096,
        train={"batch_size": 4, "lr": 1.5e-3, "min_lr": 1.5e-4, "warmup": 50, "max_steps": 2000, "dropout": 0.0,
               "eval_every": 250, "eval_bytes": 1 << 18, "log_every": 10, "save_every": 500},
    ),
    Preset(
        "entropy", "the small byte model that places entropy patches (a 2-layer, 128-wide Transformer; "
        "its context must hold the patched model's)", ctx=1024, kind="transformer",
        train={"batch_size": 8, "lr": 1.5e-3, "min_lr": 1.5e-4, "warmup": 50, "max_steps": 2000, "dropout": 0.0,
               "eval_every": 250, "eval_bytes": 1 << 19, "log_every": 10, "save_every": 500},
    ),
    Preset(
        "medium", "one GPU for a few hours", ctx=8192,
        train={"batch_size": 8, "lr": 6e-4, "min_lr": 6e-5, "warmup": 500, "max_steps": 50_000, "dropout": 0.1,
               "eval_every": 1000, "eval_bytes": 1 << 22, "log_every": 10, "save_every": 1000},
    ),
    Preset(
        "text", "the paper's text shape: global 2048 x 14, local 1024 x 18, P=8, 8,192-byte context", ctx=8192,
        train={"batch_size": 8, "lr": 2e-4, "min_lr": 2e-5, "warmup": 2000, "max_steps": 100_000, "dropout": 0.1,
               "eval_every": 1000, "eval_bytes": 1 << 24, "log_every": 10, "save_every": 1000},
    ),
    Preset(
        "imagenet64", "the paper's ImageNet64 shape: P=12 (2x2 RGB pixels), 12,288-byte context, "
        "sized to the paper's 2.7B global + 350M local parameters", ctx=12288,
        train={"batch_size": 8, "lr": 2e-4, "min_lr": 2e-5, "warmup": 2000, "max_steps": 100_000, "dropout": 0.1,
               "eval_every": 1000, "eval_bytes": 1 << 24, "log_every": 10, "save_every": 1000},
    ),
    Preset(
        "audio", "audio shape: P=32 over 16 kHz 16-bit PCM, 2^19-byte context (16.4 s), "
        "text-sized stages (global 2048 x 14, local 1024 x 18)", ctx=1 << 19,
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

    Images: the context holds the training sequence (`seq_len`, by default one whole image); then
    the kind's own `fit` (`megabyte.model.registry.ModelKind.fit`: MEGABYTE's patch becomes one
    block of pixels). Fields named in `fixed` (what the user set) are never changed: a conflict
    then stays an error for them to see.
    """
    notes: list[str] = []
    item = data.item_len
    need = (seq_len or item) if item else None  # text and audio: the preset's context is the user's choice
    if need and config.max_seq_len < need and "max_seq_len" not in fixed:
        what = "one image" if need == item else f"{need // item} images"
        notes.append(f"context {config.max_seq_len} -> {need} bytes ({what})")
        config = dataclasses.replace(config, max_seq_len=need)
    fit = kind_of(config).fit
    if fit is not None:
        config, more = fit(config, data, frozenset(fixed))
        notes += more
    return config, notes


def parameter_count(model_config) -> int:
    """Parameters of a model built from `model_config`, counted without allocating them."""
    from megabyte.model.io import meta_model

    model = meta_model(model_config)
    return sum(p.numel() for p in model.parameters())


def describe_presets() -> str:
    """A table of every preset: parameter counts per model kind, context, summary."""
    kinds = model_kinds()
    lines = [f"{'preset':<11} {'context':>8}  " + "  ".join(f"{k:>13}" for k in kinds) + "  summary"]
    for preset in PRESETS.values():
        counts = [_count(preset, k) for k in kinds]
        lines.append(f"{preset.name:<11} {preset.ctx:>8}  " + "  ".join(f"{c:>13}" for c in counts)
                     + f"  {preset.summary}")
    return "\n".join(lines)


def _count(preset: Preset, kind: str) -> str:
    """The parameters of `kind` in `preset`; "-" where it has no shape; "N+E" for entropy patches
    (their frozen entropy model E is the user's)."""
    from megabyte.model.base import ConfigError

    if preset.name not in get_kind(kind).presets:
        return "-"
    try:
        return _human(parameter_count(preset.model_config(kind)))
    except ConfigError:
        fields = {k: v for k, v in preset.model_fields(kind).items() if k not in ("patch_target", "patch_threshold")}
        own = get_kind(kind).config_class(**{**fields, "patching": "space"})  # its shape, without the entropy model
        return _human(parameter_count(own)) + "+E"


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)
