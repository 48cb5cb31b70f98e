"""Shared fixtures of the comparison tests: a tiny text dataset of real bytes (the standard
library's json package, on every machine) and a tiny image dataset. (tests/conftest.py runs
every test on one thread.)"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from megabyte.cli import main


@pytest.fixture(scope="session")
def text_data(tmp_path_factory):
    """`megabyte prepare text` over the json package's sources (about 48 kB, 5 files)."""
    out = tmp_path_factory.mktemp("compare") / "text"
    assert main(["prepare", "text", os.path.dirname(json.__file__), "--out", str(out), "--val-fraction", "0.2"]) == 0
    return out


@pytest.fixture(scope="session")
def image_data(tmp_path_factory):
    """Twelve 8x8 RGB noise images prepared as an image dataset."""
    from PIL import Image

    root = tmp_path_factory.mktemp("compare-images")
    src = root / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(src / f"{i}.png")
    out = root / "images"
    assert main(["prepare", "image", str(src), "--size", "8", "--out", str(out), "--val-fraction", "0.25"]) == 0
    return out
