"""A model's files: `model.safetensors` (weights) and `config.json` (its config), written
atomically, read strictly. Building a model from them is `megabyte.model.io`.
"""

from __future__ import annotations

import json
from pathlib import Path

from megabyte.atomic import atomic_path, atomic_write_bytes
from megabyte.errors import MegabyteError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_pretrained(model, directory) -> None:
    from safetensors.torch import save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / WEIGHTS) as tmp:
        save_model(model, str(tmp), metadata={"model_type": model.config.model_type})
    write_config(model.config, directory)


def write_config(config, directory) -> None:
    """`config.json` of a model config (the weights may be beside it, or in shards)."""
    text = json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(Path(directory) / CONFIG, text.encode())


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
