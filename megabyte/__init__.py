"""megabyte-lm: tokenizer-free byte-level language modelling with MEGABYTE.

    import megabyte
    model = megabyte.Megabyte(megabyte.MegabyteConfig(patch_sizes=(8,), dims=(512, 256), depths=(6, 4)))
    logits = model(x)                  # (B, T) bytes -> (B, T, 256)
    model.save_pretrained("ckpt/"); same = megabyte.load("ckpt/")
"""

__version__ = "0.1.0"

from megabyte.errors import MegabyteError
from megabyte.model import (
    ByteModel,
    ConfigError,
    LossResult,
    Megabyte,
    MegabyteConfig,
    PerceiverAR,
    PerceiverARConfig,
    Transformer,
    TransformerConfig,
    build_model,
    byte_loss,
    load,
)

__all__ = [
    "__version__", "MegabyteError", "ByteModel", "ConfigError", "LossResult", "Megabyte", "MegabyteConfig",
    "PerceiverAR", "PerceiverARConfig", "Transformer", "TransformerConfig", "build_model", "byte_loss", "load",
]

from megabyte.generation import generate, stream  # noqa: E402

__all__ += ["generate", "stream"]
