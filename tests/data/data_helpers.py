"""Writers of small input files for the data-path tests (no dev data needed)."""

from __future__ import annotations

import gzip
import struct
import wave
from pathlib import Path

import numpy as np


def write_png(path: Path, pixels: np.ndarray) -> Path:
    """Save a uint8 HxW or HxWx3 array as PNG."""
    from PIL import Image

    Image.fromarray(pixels).save(path)
    return path


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    """Save int16 samples, shape (n,) or (n, channels), as a PCM16 WAV with the stdlib."""
    frames = (samples[:, None] if samples.ndim == 1 else samples).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(frames.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames.tobytes())
    return path


def write_idx(path: Path, array: np.ndarray, gz: bool = True, cut: int = 0) -> Path:
    """Save a uint8 array as an IDX file (optionally gzipped, optionally missing `cut` bytes)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    data = data[: len(data) - cut]
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


