"""Tiny configurations of every model kind and variant, shared by the model tests: the package's
list (`megabyte.model.tiny`), which the device check runs on a GPU too."""

import megabyte
from megabyte.model.tiny import MAX, TINY_CONFIGS

MODEL_CONFIGS = TINY_CONFIGS

__all__ = ["MAX", "MODEL_CONFIGS", "make"]


def make(name: str):
    return megabyte.build_model(MODEL_CONFIGS[name]).eval()
