"""megabyte-lm: tokenizer-free byte-level language modelling with MEGABYTE."""

__version__ = "0.1.0"
