"""AdamW with the paper's settings, and the learning-rate schedule (warm-up, then decay)."""

from __future__ import annotations

import math

import torch
from torch import nn

from megabyte.training.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over fp32 parameters: weight decay on matrices and embeddings only.

    Uses the fused implementation where PyTorch has one for the device, else foreach.
    """
    decay, no_decay = [], []
    for _, p in model.named_parameters():  # named_parameters() lists tied weights once
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs = {"lr": cfg.lr, "betas": tuple(cfg.betas), "eps": cfg.eps}
    if device.type in ("cuda", "cpu"):
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, ValueError):  # no fused kernel for this device or dtype
            pass
    return torch.optim.AdamW(groups, foreach=device.type != "cpu", **kwargs)


def schedule_progress(cfg: TrainConfig, step: int, elapsed: float) -> float:
    """How far the decay has gone, 0..1, at optimizer step `step` after `elapsed` seconds.

    With decay_steps set: by steps alone (deterministic). Otherwise by the budget: the share of
    max_steps done, or of max_time if that is further along.
    """
    fractions = []
    horizon = cfg.decay_steps or cfg.max_steps
    if horizon:
        fractions.append((step - cfg.warmup) / max(1, horizon - cfg.warmup))
    if cfg.decay_steps is None and cfg.max_time:
        fractions.append(elapsed / cfg.max_time)
    return min(1.0, max([0.0, *fractions]))


def lr_at(cfg: TrainConfig, step: int, elapsed: float = 0.0) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up, then decay to min_lr."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    q = schedule_progress(cfg, step, elapsed)
    if cfg.decay == "cosine":
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * q))
    if cfg.decay == "linear":
        return cfg.lr - (cfg.lr - cfg.min_lr) * q
    return cfg.lr
