"""The models: MEGABYTE and the two baselines of the paper, on shared transformer blocks."""

from megabyte.model.base import ByteModel, ConfigError, LossResult, byte_loss
from megabyte.model.io import build_model, config_from_dict, load, save_pretrained
from megabyte.model.megabyte import Megabyte, MegabyteConfig
from megabyte.model.perceiver_ar import PerceiverAR, PerceiverARConfig
from megabyte.model.transformer import Transformer, TransformerConfig

__all__ = [
    "ByteModel", "ConfigError", "LossResult", "byte_loss", "build_model", "config_from_dict", "load",
    "save_pretrained", "Megabyte", "MegabyteConfig", "PerceiverAR", "PerceiverARConfig", "Transformer",
    "TransformerConfig",
]
