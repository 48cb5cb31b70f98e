"""Training: configs and presets, the loop (step / evaluate / save), checkpoints, metrics.

    from megabyte.training import TrainConfig, get_preset, train
    preset = get_preset("small")
    summary = train(TrainConfig(**preset.train), preset.model_config("megabyte"), "data/text", "runs/small")
    summary["val_bpb"], summary["bytes_per_s"], summary["checkpoint"]
    more = TrainConfig(**{**preset.train, "max_steps": 4000})
    train(more, preset.model_config("megabyte"), "data/text", "runs/small", resume=True)

Modules: `config` (TrainConfig, overrides, TOML), `presets`, `runtime` (device, precision, the
torchrun process group), `parallel` (DDP, FSDP2, gathered state), `optim` (AdamW, schedule), `loop`
(Trainer, train), `checkpoint`, `run` (run directory), `metrics`, `lock` (one training per run
directory), `signals` (Ctrl-C / SIGTERM: save and stop), `faults` (fault injection for the tests).
Names are imported on first use, so the command line starts without loading PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RESUMABLE": "megabyte.training.config",
    "TrainConfig": "megabyte.training.config",
    "parse_duration": "megabyte.training.config",
    "Trainer": "megabyte.training.loop",
    "train": "megabyte.training.loop",
    "PRESETS": "megabyte.training.presets",
    "Preset": "megabyte.training.presets",
    "get_preset": "megabyte.training.presets",
    "read_saved_run": "megabyte.training.run",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'megabyte.training' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
