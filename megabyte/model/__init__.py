"""The models: MEGABYTE and the two baselines of the paper, on shared transformer blocks, and
the registry of model kinds (`registry`; the built-in kinds are `kinds`, registered here)."""

from megabyte.model import kinds  # noqa: F401  (registers the built-in kinds)
from megabyte.model.base import ByteModel, ConfigError, LossResult, byte_loss
from megabyte.model.io import build_model, config_from_dict, load, save_pretrained
from megabyte.model.megabyte import Megabyte, MegabyteConfig
from megabyte.model.perceiver_ar import PerceiverAR, PerceiverARConfig
from megabyte.model.registry import ModelKind, get_kind, kind_of, register
from megabyte.model.transformer import Transformer, TransformerConfig

__all__ = [
    "ByteModel", "ConfigError", "LossResult", "byte_loss", "build_model", "config_from_dict", "load",
    "save_pretrained", "Megabyte", "MegabyteConfig", "ModelKind", "PerceiverAR", "PerceiverARConfig", "Transformer",
    "TransformerConfig", "get_kind", "kind_of", "register",
]
