"""Two trainings pointed at the same run directory: the second refuses with a clear message
(RUN/.lock, held with flock), and the lock a killed run leaves behind never blocks a resume."""

from __future__ import annotations

import signal

import pytest

from megabyte import MegabyteError
from megabyte.training import TrainConfig, get_preset, train
from megabyte.training.lock import RunLock
from tests.faults.helpers import Training, assert_run_intact, cli, latest_step


def test_a_second_training_is_refused_and_a_killed_ones_lock_does_not_block(text_data, tmp_path, capsys):
    run = tmp_path / "run"
    holder = Training("--data", str(text_data), "--out", str(run), "--preset", "tiny", "--max-steps", "100000",
                      "--save-every", "2", "--eval-every", "0")
    holder.wait_for(lambda: (run / "latest").exists(), what="a first checkpoint")
    pid = holder.proc.pid
    capsys.readouterr()

    # A fresh run into a directory whose training has not saved yet, then --resume of the busy run.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with RunLock(fresh):
        assert cli("train", "--data", str(text_data), "--out", str(fresh), "--preset", "tiny", "--max-steps", "2") == 2
        assert f"{fresh} is in use by another training (pid" in capsys.readouterr().err
    assert cli("train", "--out", str(run), "--resume", "--max-steps", "100000") == 2
    assert f"{run} is in use by another training (pid {pid} on " in capsys.readouterr().err
    preset = get_preset("tiny")
    with pytest.raises(MegabyteError, match="is in use by another training"):
        train(TrainConfig(**{**preset.train, "max_steps": 100000}), preset.model_config("megabyte"), text_data,
              run, resume=True, progress=False)

    holder.proc.send_signal(signal.SIGKILL)
    assert holder.finish() == -signal.SIGKILL
    assert (run / ".lock").exists()  # left behind, but no longer locked
    step = assert_run_intact(run)
    assert cli("train", "--out", str(run), "--resume", "--max-steps", str(step + 2)) == 0
    assert latest_step(run) == step + 2 and not (run / ".lock").exists()


def test_the_lock_is_exclusive_and_released(tmp_path):
    with RunLock(tmp_path):
        assert "pid" in (tmp_path / ".lock").read_text()
        with pytest.raises(MegabyteError, match="in use by another training"):
            RunLock(tmp_path).__enter__()
    assert not (tmp_path / ".lock").exists()
    with RunLock(tmp_path):  # free again
        pass
