"""Training: configs and presets, the loop (step / evaluate / save), checkpoints, metrics.

    from megabyte.training import TrainConfig, train, get_preset
    preset = get_preset("small")
    model_config = megabyte.MegabyteConfig(**preset.model_fields("megabyte"))
    summary = train(TrainConfig(**preset.train), model_config, "data/text", "runs/small")
    summary["val_bpb"], summary["bytes_per_s"]
    train(TrainConfig(**{**preset.train, "max_steps": 4000}), model_config, "data/text", "runs/small", resume=True)
"""

from megabyte.training.config import RESUMABLE, TrainConfig, parse_duration
from megabyte.training.loop import Trainer, train
from megabyte.training.presets import PRESETS, Preset, get_preset
from megabyte.training.run import read_saved_run

__all__ = ["RESUMABLE", "TrainConfig", "parse_duration", "Trainer", "train", "PRESETS", "Preset", "get_preset",
           "read_saved_run"]
