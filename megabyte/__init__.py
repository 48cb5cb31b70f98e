"""megabyte-lm: tokenizer-free byte-level language modelling with MEGABYTE.

    import megabyte
    model = megabyte.Megabyte(megabyte.MegabyteConfig(patch_sizes=(8,), dims=(512, 256), depths=(6, 4)))
    logits = model(x)                  # (B, T) bytes -> (B, T, 256)
    model.save_pretrained("ckpt/"); same = megabyte.load("ckpt/")
    text = megabyte.generate(model, b"Once upon a time", 200, temperature=0.8)

Names are imported on first use, so `import megabyte` (and the command line's start) stays
fast and does not load PyTorch until a model is needed.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "MegabyteError": "megabyte.errors",
    "ByteModel": "megabyte.model",
    "ConfigError": "megabyte.model",
    "LossResult": "megabyte.model",
    "Megabyte": "megabyte.model",
    "MegabyteConfig": "megabyte.model",
    "PerceiverAR": "megabyte.model",
    "PerceiverARConfig": "megabyte.model",
    "Transformer": "megabyte.model",
    "TransformerConfig": "megabyte.model",
    "build_model": "megabyte.model",
    "byte_loss": "megabyte.model",
    "load": "megabyte.training.checkpoint",
    "generate": "megabyte.generation",
    "stream": "megabyte.generation",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'megabyte' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

