"""Build and load models: a config (or a model directory, `model.safetensors` + `config.json`)
becomes a model of its kind (`megabyte.model.registry`).

Loading reads JSON and safetensors only: nothing is ever unpickled, and `config.json` can only
choose among the registered model kinds and set their plain fields.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from megabyte.errors import MegabyteError
from megabyte.model.registry import kind_of
from megabyte.model.weights import CONFIG, WEIGHTS, load_weights, save_pretrained

__all__ = ["CONFIG", "WEIGHTS", "build_model", "check_weights_size", "config_from_dict", "load", "load_weights",
           "read_config", "save_pretrained"]


def config_from_dict(data: Any, source: str = CONFIG):
    """Build the config object of the model kind named by `data["model_type"]`."""
    if not isinstance(data, dict):
        raise MegabyteError(f"{source}: expected a JSON object")
    try:
        return kind_of(data.get("model_type")).config_class.from_dict(data)
    except MegabyteError as exc:
        raise MegabyteError(f"{source}: {exc}") from None


def build_model(config):
    """A freshly initialised model of any registered kind, from its config."""
    return kind_of(config).model_class(config)


class _NoDrawsOnMeta(TorchFunctionMode):
    """Initialisers (normal_, uniform_, fill_, zero_) of meta tensors do nothing: there is no
    data to draw. Done anyway they cost 3 ms a call, and the first `normal_` of a meta tensor
    imports torch._dynamo (3 s) -- for a model built only to count or check its parameters."""

    SKIP = {torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.fill_, torch.Tensor.zero_,
            nn.init.normal_, nn.init.uniform_, nn.init.ones_, nn.init.zeros_, nn.init.kaiming_uniform_}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.SKIP:
            tensor = args[0] if args else kwargs.get("tensor")  # nn.init passes it by name
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


def meta_model(config):
    """A model of `config` on the meta device: its parameters' shapes, nothing allocated or drawn."""
    with torch.device("meta"), _NoDrawsOnMeta():
        return build_model(config)


def read_config(directory) -> Any:
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise MegabyteError(f"{path}: missing (not a saved model directory?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or UTF-8
        raise MegabyteError(f"{path}: not valid JSON ({exc!s:.200})") from None
    return config_from_dict(data, str(path))


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
    tensors = meta_model(config).state_dict(keep_vars=True).values()
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
