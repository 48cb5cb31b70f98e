"""Save and load models as a directory: `model.safetensors` (weights) + `config.json`.

Loading reads JSON and safetensors only: nothing is ever unpickled, and `config.json` can only
choose among the three known model kinds and set their plain fields.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from megabyte.atomic import atomic_path, atomic_write_bytes
from megabyte.errors import MegabyteError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def _kinds() -> dict[str, tuple[type, type]]:
    from megabyte.model.megabyte import Megabyte, MegabyteConfig
    from megabyte.model.perceiver_ar import PerceiverAR, PerceiverARConfig
    from megabyte.model.transformer import Transformer, TransformerConfig

    return {
        "megabyte": (Megabyte, MegabyteConfig),
        "transformer": (Transformer, TransformerConfig),
        "perceiver-ar": (PerceiverAR, PerceiverARConfig),
    }


def config_from_dict(data: Any, source: str = CONFIG):
    """Build the config object of the model kind named by `data["model_type"]`."""
    if not isinstance(data, dict):
        raise MegabyteError(f"{source}: expected a JSON object")
    kind = data.get("model_type")
    kinds = _kinds()
    if not isinstance(kind, str) or kind not in kinds:
        raise MegabyteError(f"{source}: unknown model_type {kind!r} (expected one of {', '.join(kinds)})")
    try:
        return kinds[kind][1].from_dict(data)
    except MegabyteError as exc:
        raise MegabyteError(f"{source}: {exc}") from None


def build_model(config):
    """A freshly initialised model for any of the three config classes."""
    return _kinds()[config.model_type][0](config)


def save_pretrained(model, directory) -> None:
    from safetensors.torch import save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / WEIGHTS) as tmp:
        save_model(model, str(tmp), metadata={"model_type": model.config.model_type})
    text = json.dumps(model.config.to_dict(), indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(directory / CONFIG, text.encode())


def read_config(directory) -> Any:
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise MegabyteError(f"{path}: missing (not a saved model directory?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or UTF-8
        raise MegabyteError(f"{path}: not valid JSON ({exc!s:.200})") from None
    return config_from_dict(data, str(path))


def load_weights(model, path) -> None:
    """Load safetensors weights into `model`, strictly: every tensor present, every shape equal."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    path = Path(path)
    if not path.is_file():
        raise MegabyteError(f"{path}: missing weights file")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except SafetensorError as exc:
        raise MegabyteError(f"{path}: not a readable safetensors file ({exc})") from None
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).strip().splitlines()
        raise MegabyteError(f"{path}: weights do not match the config ({first[-1] if first else exc})") from None
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(sorted(missing)[:5])}")
        if unexpected:
            parts.append(f"unexpected {', '.join(sorted(unexpected)[:5])}")
        raise MegabyteError(f"{path}: weights do not match the config ({'; '.join(parts)})")


def check_weights_size(config, path) -> None:
    """Before building a model from `config`, check that the weights file `path` holds at least as
    many values as the config implies (read from its header and a meta-device model, allocating
    nothing), so that a config.json claiming a huge model is an error, not an exhausted memory."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise MegabyteError(f"{path}: missing weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            held = sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
            kind = (f.metadata() or {}).get("model_type", config.model_type)
    except (SafetensorError, OSError) as exc:
        raise MegabyteError(f"{path}: not a readable safetensors file ({exc})") from None
    if kind != config.model_type:
        raise MegabyteError(f"{path}: holds the weights of a {kind} model, but {CONFIG} describes a "
                            f"{config.model_type} model")
    with torch.device("meta"):
        tensors = build_model(config).state_dict(keep_vars=True).values()
    needed = sum(t.numel() for t in {id(t): t for t in tensors}.values())  # tied weights once
    if needed > held:
        raise MegabyteError(f"{path}: weights do not match the config ({CONFIG} describes {needed:,} values, "
                            f"the file holds {held:,})")


def load(directory, *, device: str | torch.device = "cpu"):
    """Rebuild a model saved by `save_pretrained` from its directory alone. (`megabyte.load`
    also takes a training run directory: see `megabyte.training.checkpoint.load`.)"""
    directory = Path(directory)
    if not directory.is_dir():
        raise MegabyteError(f"{directory}: no such model directory")
    config = read_config(directory)
    check_weights_size(config, directory / WEIGHTS)
    model = build_model(config)
    load_weights(model, directory / WEIGHTS)
    return model.to(device).eval()
