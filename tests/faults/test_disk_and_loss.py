"""A save that fails (disk full, read-only or forbidden output, simulated by fault injection) and a
non-finite loss both stop the run with a clear message and keep the last good checkpoint, from
which --resume continues exactly."""

from __future__ import annotations

import pytest
import torch

import megabyte
from megabyte import MegabyteError
from megabyte.data.dataset import load_dataset
from megabyte.training import TrainConfig, Trainer, get_preset
from megabyte.training.faults import ENV
from megabyte.training.loop import resolved_configs
from megabyte.training.runtime import init_runtime
from tests.faults.helpers import assert_run_intact, assert_same_losses, cli, leftovers, metrics

ARGS = ["--preset", "tiny", "--max-steps", "8", "--save-every", "2", "--eval-every", "4"]


@pytest.fixture(scope="module")
def reference(text_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("reference") / "run"
    assert cli("train", "--data", str(text_data), "--out", str(run), *ARGS) == 0
    return run


@pytest.mark.parametrize("stage, error, message", [
    ("checkpoint.optimizer", "ENOSPC", "No space left on device"),   # writing the files
    ("checkpoint.start", "EACCES", "Permission denied"),             # an output we may not write
    ("checkpoint.renamed", "EROFS", "Read-only file system"),        # updating RUN/latest
])
def test_a_failed_save_stops_cleanly_and_keeps_the_last_checkpoint(stage, error, message, text_data, reference,
                                                                   tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    monkeypatch.setenv(ENV, f"{stage}@4={error}")
    assert cli("train", "--data", str(text_data), "--out", str(run), *ARGS) == 2
    err = capsys.readouterr().err
    assert f"cannot write the checkpoint of step 4 into {run}: {message}" in err and f"[{error}]" in err
    assert f"The last complete checkpoint ({run / 'checkpoints' / 'step-00000002'}) is intact" in err
    assert "--resume" in err and "Traceback" not in err
    assert assert_run_intact(run) == 2
    assert leftovers(run) == [] and not (run / ".lock").exists()
    megabyte.load(run)

    monkeypatch.delenv(ENV)  # space freed: the run continues where it stopped
    assert cli("train", "--out", str(run), "--resume") == 0
    assert assert_run_intact(run) == 8
    assert_same_losses(run, reference)


@pytest.mark.parametrize("log_every, caught", [(1, "at step 5"), (10, "between steps 5 and 6")])
def test_a_non_finite_loss_stops_without_saving(log_every, caught, text_data, reference, tmp_path, monkeypatch,
                                                capsys):
    run = tmp_path / "run"
    monkeypatch.setenv(ENV, "loss@5=nan")
    assert cli("train", "--data", str(text_data), "--out", str(run), *ARGS, f"train.log_every={log_every}") == 2
    err = capsys.readouterr().err
    assert f"the training loss became non-finite (nan or inf) {caught}; stopping without saving" in err
    assert str(run / "checkpoints" / "step-00000004") in err and "Traceback" not in err
    assert assert_run_intact(run) == 4  # the poisoned step 6 was never saved; all weights finite
    assert all(r["step"] <= 4 for r in metrics(run) if r.get("train_bpb") is not None)

    monkeypatch.delenv(ENV)
    assert cli("train", "--out", str(run), "--resume", "train.log_every=1") == 0
    assert metrics(run)[-1]["step"] == 8
    if log_every == 1:
        assert_same_losses(run, reference)


def test_non_finite_weights_are_never_saved(text_data, tmp_path):
    preset = get_preset("tiny")
    cfg, model_config = resolved_configs(TrainConfig(**preset.train), preset.model_config("megabyte"), text_data)
    trainer = Trainer(cfg, model_config, load_dataset(text_data), tmp_path, init_runtime("cpu", "fp32"),
                      progress=False)
    trainer.train_step()
    with torch.no_grad():
        next(trainer.model.parameters())[0] = float("inf")  # e.g. an overflowing update with a finite loss
    with pytest.raises(MegabyteError, match="the training weights became non-finite"):
        trainer.save()
    assert not (tmp_path / "checkpoints").exists()
