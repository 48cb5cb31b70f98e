"""Entropy patches (BLT, Pagnoni et al. 2024): a small frozen byte model decides where
MEGABYTE's patches end.

    H = entropies(small_model, x)                         # (B, T) nats: H_t from bytes < t
    theta, mean = calibrate(H, target=6.0, max_len=16)    # the threshold giving 6-byte patches
    starts = patch_starts(x, "entropy", 16, entropy=H, threshold=theta)

The small model is any byte model this project trains (`megabyte train --preset entropy`: a small
Transformer). `MegabyteConfig.entropy_model` holds its config; its weights sit inside the
MEGABYTE model (module `entropy_model`, frozen), so one checkpoint holds both. Training resolves
a path given there (`resolve`): the small model is loaded (safetensors and JSON only), checked
against the MEGABYTE config, and the threshold is calibrated on the training split so that the
mean patch length meets `patch_target`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from megabyte.errors import MegabyteError
from megabyte.model.patching import capped, rule_starts

CALIBRATION_ROWS = 256
"""Training windows the threshold is calibrated on (evenly spaced over the train split)."""


def entropy_of(logits: Tensor) -> Tensor:
    """The entropy in nats of each softmax(logits) over the last axis (float32)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def full_precision(x: Tensor):
    """The entropy model runs outside autocast: boundaries are the same in a bf16 run as in the
    fp32 calibration, evaluation and decoding (a bf16 entropy moves by ~1e-2 nats, enough to move
    boundaries near theta)."""
    return torch.autocast(x.device.type, enabled=False)


@torch.no_grad()
def entropies(model, x: Tensor) -> Tensor:
    """(B, T) float32: H_t, the entropy of `model`'s prediction of byte t from bytes < t."""
    with full_precision(x):
        return entropy_of(model(x))


def mean_patch(H: Tensor, threshold: float, max_len: int, relative: bool = False) -> float:
    """Mean patch length in bytes of rows whose entropies are H (N, T), each row on its own."""
    starts = capped(rule_starts(H.new_zeros(H.shape, dtype=torch.long), "entropy", H, threshold, relative), max_len)
    return H.numel() / max(1, int(starts.sum()))


def calibrate(H: Tensor, target: float, max_len: int, relative: bool = False) -> tuple[float, float]:
    """The threshold theta whose mean patch length on rows with entropies H (N, T) is nearest
    `target`, and that mean. Theta sits halfway between two observed scores, never on one, so a
    boundary is not decided by rounding."""
    if not 1.0 <= target <= max_len:
        raise MegabyteError(f"patch_target must be between 1 and the longest patch ({max_len} bytes), got {target}")
    scores = (H[:, 1:] - H[:, :-1]) if relative else H[:, 1:]
    values = torch.unique(scores.reshape(-1).double())  # sorted
    if not len(values):
        return 0.0, float(H.shape[1])
    # candidates[i]: below every score (i = 0), between values i-1 and i, above every score (i = n)
    mids = (values[1:] + values[:-1]) / 2
    candidates = torch.cat([values[:1] - 1, mids, values[-1:] + 1]).tolist()
    lo, hi = 0, len(candidates) - 1  # the mean grows with theta: find the first at or above target
    while lo < hi:
        mid = (lo + hi) // 2
        if mean_patch(H, candidates[mid], max_len, relative) >= target:
            hi = mid
        else:
            lo = mid + 1
    best = min({max(0, lo - 1), lo}, key=lambda i: abs(mean_patch(H, candidates[i], max_len, relative) - target))
    theta = candidates[best]
    return theta, mean_patch(H, theta, max_len, relative)


# ------------------------------------------------------------------------------------ resolving
def check_entropy_config(small, config) -> None:
    """The small model can give the MEGABYTE model `config` its entropies: a byte model (not
    itself entropy-patched) that reads at least the MEGABYTE model's context in one pass."""
    if getattr(small, "vocab_size", 256) != 256:
        raise MegabyteError(f"the entropy model predicts {small.vocab_size} symbols, not bytes (a subword model?)")
    if getattr(small, "patching", None) == "entropy":
        raise MegabyteError("the entropy model is itself entropy-patched: use a model with fixed or space patches")
    if small.max_seq_len < config.max_seq_len:
        raise MegabyteError(f"the entropy model reads {small.max_seq_len} bytes, the MEGABYTE context is "
                            f"{config.max_seq_len}: train it with model.max_seq_len={config.max_seq_len}")


def load_small_model(source: str | Path):
    """The entropy model saved at `source` (a training run or model directory), in eval mode."""
    from megabyte.training.checkpoint import load

    try:
        return load(source)
    except MegabyteError as exc:
        raise MegabyteError(f"entropy model {source}: {exc}") from None


def resolve(config, data, fixed: frozenset[str] = frozenset(), *, seq_len: int | None = None) -> tuple[Any, list[str]]:
    """An entropy-patched `config` ready to train on `data`: `entropy_model` given as a path
    becomes that model's config (checked, `entropy_source` keeps the path for the weights), and
    with `patch_target` the threshold is calibrated on the training split. Returns the config and
    what was done, for the run's notes."""
    notes: list[str] = []
    small = None
    if isinstance(config.entropy_model, (str, Path)):
        source = str(Path(config.entropy_model).resolve())
        small = load_small_model(source)
        try:
            check_entropy_config(small.config, config)
        except MegabyteError as exc:
            raise MegabyteError(f"entropy model {source}: {exc}") from None
        config = dataclasses.replace(config, entropy_model=small.config.to_dict(), entropy_source=source)
        notes.append(f"entropy model: {source} ({sum(p.numel() for p in small.parameters()):,} parameters, frozen)")
    if config.patch_target is not None and (config.patch_threshold is None or "patch_target" in fixed):
        if small is None:
            small = load_small_model(config.entropy_source) if config.entropy_source else None
        if small is None:
            raise MegabyteError("calibrating patch_threshold needs the entropy model's weights: "
                                "set model.entropy_model to its run directory")
        from megabyte.data.dataset import even_windows

        T = min(seq_len or config.max_seq_len, config.max_seq_len)
        windows = torch.from_numpy(even_windows(data.split("train"), T, CALIBRATION_ROWS)).long()
        if not len(windows):
            raise MegabyteError(f"the train split is shorter than one {T}-byte window: nothing to calibrate on")
        H = torch.cat([entropies(small, w) for w in windows.split(32)])
        theta, mean = calibrate(H, config.patch_target, config.patch_sizes[0], config.patch_relative)
        config = dataclasses.replace(config, patch_threshold=theta, patch_mean=mean)
        rule = "H_t - H_t-1" if config.patch_relative else "H_t"
        notes.append(f"entropy patches: theta = {theta:.4f} nats ({rule} > theta) gives {mean:.2f} bytes per patch "
                     f"on {len(windows)} training windows (target {config.patch_target:g})")
    if config.patch_threshold is None:
        raise MegabyteError("entropy patches need a threshold: set model.patch_target (a mean patch length in "
                            "bytes, calibrated on the training data) or model.patch_threshold (nats)")
    return config, notes
