"""The run directory: what a fresh run may start in, what a resumed run must match, and the
resolved configuration saved beside the checkpoints.

    RUN/train_config.json   the fully resolved configuration (model, train, data, preset, device)
    RUN/metrics.jsonl       one JSON object per log step
    RUN/loss.png            the loss curve, redrawn as the run goes
    RUN/latest              "checkpoints/step-00001000": the newest complete checkpoint
    RUN/checkpoints/step-*/ see `megabyte.training.checkpoint`
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megabyte import __version__
from megabyte.errors import MegabyteError
from megabyte.model.io import WEIGHTS, check_weights_size, read_config
from megabyte.training import checkpoint as ckpt
from megabyte.training.config import RESUMABLE, TrainConfig
from megabyte.training.objective import as_objective

TRAIN_CONFIG = "train_config.json"


def resolve_lengths(cfg: TrainConfig, model_config, data) -> tuple[TrainConfig, Any]:
    """Fill in seq_len (model context, or one image) and dropout; check they fit model and data
    (an objective: `megabyte.training.objective`)."""
    data = as_objective(data)
    dropout = cfg.dropout if cfg.dropout is not None else model_config.dropout
    model_config = dataclasses.replace(model_config, dropout=dropout)
    max_len, item = model_config.max_seq_len, data.item_len
    seq_len = cfg.seq_len or item or max_len
    if seq_len > max_len:
        what = f"one image is {item} bytes" if item and seq_len == item else f"train.seq_len is {seq_len}"
        raise MegabyteError(f"{what} but model.max_seq_len is {max_len}: set model.max_seq_len={seq_len} "
                            "or a shorter train.seq_len")
    if item and seq_len % item:
        raise MegabyteError(f"train.seq_len {seq_len} must be a multiple of the image size ({item} bytes) "
                            "so that every sequence holds whole images")
    train_len = data.train_positions
    if train_len < seq_len:
        raise MegabyteError(f"the train split of {data.directory} holds {train_len} {data.unit}, fewer than one "
                            f"sequence of {seq_len}: use a shorter train.seq_len or more data")
    return dataclasses.replace(cfg, seq_len=seq_len, dropout=dropout), model_config


def plan_schedule(cfg: TrainConfig) -> TrainConfig:
    """A fresh run's schedule: a step budget alone fixes the decay horizon now (decay_steps =
    max_steps, saved with the run), so that resuming with a longer --max-steps keeps it."""
    if cfg.decay_steps is None and cfg.max_time is None and cfg.max_steps is not None:
        return dataclasses.replace(cfg, decay_steps=cfg.max_steps)
    return cfg


def schedule_notice(saved: dict[str, Any], cfg: TrainConfig, step: int) -> str | None:
    """What a resume at `step` does to the learning-rate schedule saved in `saved` (a train
    config as a dict), when that is not simply "the same": a sentence to print, or None."""
    budget = {k: saved.get(k) for k in ("max_steps", "max_time")} != {"max_steps": cfg.max_steps,
                                                                     "max_time": cfg.max_time}
    before = saved.get("decay_steps")
    if before != cfg.decay_steps:
        what = cfg.decay_steps if cfg.decay_steps is not None else "the budget"
        return (f"learning-rate schedule re-planned from step {step}: train.decay_steps was {before}, now {what}")
    if not budget:
        return None
    if cfg.decay_steps is None:
        return (f"learning-rate schedule re-planned from step {step}: it follows the budget (train.decay_steps is "
                f"unset), now max_steps={cfg.max_steps}, max_time={cfg.max_time}. To keep a fixed schedule, "
                "start runs with train.decay_steps=N")
    if cfg.max_steps is not None and cfg.max_steps > cfg.decay_steps:
        return (f"the learning-rate decay ends at step {cfg.decay_steps}, as planned at the first start: steps "
                f"{max(step, cfg.decay_steps) + 1}..{cfg.max_steps} train at min_lr={cfg.min_lr:g}. To stretch the "
                f"decay over the new budget instead, resume with train.decay_steps={cfg.max_steps}")
    return None


def prepare_fresh_run(out_dir: Path) -> None:
    """A fresh run needs an absent, empty or checkpoint-free RUN directory."""
    if out_dir.exists() and not out_dir.is_dir():
        raise MegabyteError(f"--out {out_dir} exists and is not a directory")
    if (out_dir / ckpt.LATEST).exists() or ckpt.list_checkpoints(out_dir):
        raise MegabyteError(f"{out_dir} already holds a training run with checkpoints: pass --resume to "
                            "continue it, or choose another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MegabyteError(f"cannot create the run directory {out_dir}: {exc}") from None


def check_resumable(out_dir: Path, cfg: TrainConfig, model_config, data) -> Path:
    """The checkpoint to resume from; MegabyteError if there is none or the configs differ."""
    checkpoint = _latest_or_error(out_dir)
    state = ckpt.read_trainer_state(checkpoint)
    saved_model = _read_model_config(checkpoint, state)
    problems = _differences("model", saved_model.to_dict(), model_config.to_dict())
    saved_train = state.get("train_config", {})
    problems += _differences("train", saved_train, cfg.to_dict(), skip=RESUMABLE)
    if problems:
        raise MegabyteError(f"cannot resume {out_dir} with a different configuration: {'; '.join(problems)}. "
                            f"Only these may change on --resume: {', '.join(sorted(RESUMABLE))}")
    saved_meta = ckpt.read_json(checkpoint / ckpt.DATA_META)
    if not isinstance(saved_meta, dict):
        raise MegabyteError(f"{checkpoint / ckpt.DATA_META}: not a dataset description (expected a JSON object)")
    for key in ("modality", "item_len", "bytes", "recipe"):
        if saved_meta.get(key) != data.meta.get(key):
            raise MegabyteError(f"the dataset {data.directory} is not the one {out_dir} was trained on "
                                f"({key} differs: {saved_meta.get(key)!r} before, {data.meta.get(key)!r} now)")
    return checkpoint


def _read_model_config(checkpoint: Path, state: dict) -> Any:
    """The checkpoint's model config: of the kind its trainer state says it trains, and no larger
    than its weights file (or its shards) (a config.json claiming a huge model must not exhaust memory)."""
    config = read_config(checkpoint)
    if ckpt.is_sharded(checkpoint):  # the shards must hold exactly the config's weights
        ckpt.check_model_shards(config, checkpoint)
    else:
        check_weights_size(config, checkpoint / WEIGHTS)
    if state.get("model_kind", config.model_type) != config.model_type:
        raise MegabyteError(f"{checkpoint}: config.json describes a {config.model_type} model but "
                            f"{ckpt.TRAINER_STATE} belongs to a {state.get('model_kind')!r} run (files mixed up?)")
    return config


def _latest_or_error(out_dir: Path) -> Path:
    if not out_dir.is_dir():
        raise MegabyteError(f"cannot resume: the run directory {out_dir} does not exist")
    checkpoint = ckpt.latest_checkpoint(out_dir)
    if checkpoint is None:
        raise MegabyteError(f"cannot resume: {out_dir} has no checkpoint ({out_dir / ckpt.LATEST} is missing)")
    return checkpoint


def _differences(section: str, saved: dict, now: dict, skip: frozenset = frozenset()) -> list[str]:
    keys = sorted((set(saved) | set(now)) - skip)
    return [f"{section}.{k} was {saved.get(k)!r}, now {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]


def write_run_config(out_dir: Path, model_config, cfg: TrainConfig, data, *, preset: str | None,
                     runtime) -> None:
    try:
        ckpt.write_json(out_dir / TRAIN_CONFIG, {
            "megabyte_version": __version__,
            "model_kind": model_config.model_type,
            "preset": preset,
            "data_dir": data.directory,
            "modality": data.modality,
            "device": str(runtime.device),
            "precision": runtime.precision,
            "model": model_config.to_dict(),
            "train": cfg.to_dict(),
        })
    except OSError as exc:
        raise MegabyteError(f"cannot write {out_dir / TRAIN_CONFIG}: {exc.strerror or exc}") from None


@dataclass
class SavedRun:
    """What a run directory's latest checkpoint says about how it was trained."""

    checkpoint: Path
    model_config: Any
    train_config: TrainConfig
    data_dir: str
    preset: str | None


def read_saved_run(out_dir: str | Path) -> SavedRun:
    """The configs of `out_dir`'s latest checkpoint (the base that --resume starts from)."""
    out_dir = Path(out_dir)
    checkpoint = _latest_or_error(out_dir)
    state = ckpt.read_trainer_state(checkpoint)
    try:
        train_config = TrainConfig.from_dict(state["train_config"])
    except (KeyError, MegabyteError) as exc:
        raise MegabyteError(f"{checkpoint / ckpt.TRAINER_STATE}: invalid train config ({exc})") from None
    return SavedRun(checkpoint, _read_model_config(checkpoint, state), train_config, str(state.get("data_dir", "")),
                    state.get("preset"))
