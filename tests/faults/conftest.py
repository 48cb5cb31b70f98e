"""Fixtures of the fault suite: a finished tiny run to break in copies (on the text dataset of
tests/conftest.py), and a deterministic Hypothesis profile (the same examples on every CI run)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.faults.helpers import cli

settings.register_profile(
    "faults", max_examples=200, derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# HYPOTHESIS_PROFILE=explore: fresh random examples, fifteen times as many (to hunt, not for CI).
settings.register_profile("explore", parent=settings.get_profile("faults"), derandomize=False,
                          max_examples=3000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "faults"))



@pytest.fixture(scope="session")
def finished_run(text_data, tmp_path_factory) -> Path:
    """A tiny MEGABYTE run of 4 steps with checkpoints at steps 2 and 4 (do not modify: copy it)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert cli("train", "--data", str(text_data), "--out", str(run), "--preset", "tiny", "--max-steps", "4",
               "--save-every", "2", "--eval-every", "0", "train.keep_last=0") == 0
    return run


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    """A private copy of `finished_run` to damage."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))
