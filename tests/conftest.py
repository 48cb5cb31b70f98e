"""Fixtures of the whole suite: one thread and a fixed seed per test, and a small real-text
dataset (the stdlib's json package, on every machine)."""

import json
import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    # Tiny models run fastest on one thread, and the CI machine has two cores to share.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def text_data(tmp_path_factory) -> Path:
    """~48 kB of Python source (the stdlib `json` package) prepared as a text dataset, 5% of it
    validation (tests/compare and tests/test_model_kinds prepare their own with 20%)."""
    from megabyte.data.text import prepare_text

    out = tmp_path_factory.mktemp("data") / "text"
    prepare_text([os.path.dirname(json.__file__)], out, val_fraction=0.05, seed=0)
    return out
