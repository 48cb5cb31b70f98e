"""Fixtures for the data-path tests: small inputs made in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_helpers import write_png


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def photos(tmp_path: Path, rng: np.random.Generator) -> Path:
    """A folder of three small RGB/grey PNGs and a JPEG, plus a text file to be ignored."""
    folder = tmp_path / "photos"
    folder.mkdir()
    write_png(folder / "a.png", rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    write_png(folder / "b.png", rng.integers(0, 256, (20, 20), dtype=np.uint8))
    write_png(folder / "c.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    from PIL import Image

    Image.fromarray(rng.integers(0, 256, (30, 25, 3), dtype=np.uint8)).save(folder / "d.jpg")
    (folder / "README.txt").write_text("not an image\n")
    return folder
