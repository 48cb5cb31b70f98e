"""Fixtures for the distributed tests: a small real-text dataset (the stdlib's json package)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def text_data(tmp_path_factory) -> Path:
    """~48 kB of Python source (the stdlib `json` package) prepared as a text dataset."""
    from megabyte.data.text import prepare_text

    out = tmp_path_factory.mktemp("data") / "text"
    prepare_text([os.path.dirname(json.__file__)], out, val_fraction=0.05, seed=0)
    return out
