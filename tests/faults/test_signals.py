"""Ctrl-C (SIGINT) and SIGTERM stop a real training process cleanly: it finishes the step, saves a
checkpoint, says so and exits with 128 + the signal; --resume then continues exactly. A second
signal aborts at once without saving, and the last checkpoint stays complete."""

from __future__ import annotations

import signal

import pytest

from tests.faults.helpers import (
    Training,
    assert_run_intact,
    assert_same_losses,
    cli,
    last_logged_step,
    leftovers,
    metrics,
)

# A fixed decay horizon, so that changing --max-steps on resume does not change the schedule.
ARGS = ["--preset", "tiny", "train.dropout=0.1", "train.decay_steps=40", "--save-every", "0", "--eval-every", "0"]


def stop_with(sig: signal.Signals, training: Training, run, after_step: int) -> int:
    """Send `sig` once training has logged `after_step`; the step at which the run stopped."""
    training.wait_for(lambda: last_logged_step(run) >= after_step, what=f"step {after_step}")
    training.proc.send_signal(sig)
    assert training.finish() == 128 + sig, training.output
    out = training.output
    assert f"{sig.name}: finishing this step, saving a checkpoint and stopping" in out
    stopped = last_logged_step(run)
    assert f"done ({sig.name}) at step {stopped}" in out
    assert f"stopped by {sig.name} at step {stopped}; continue with: megabyte train --out {run} --resume" in out
    assert "Traceback" not in out
    return stopped


@pytest.mark.slow
def test_sigint_then_sigterm_save_and_stop_and_resume_exactly(text_data, tmp_path):
    run = tmp_path / "run"
    first = Training("--data", str(text_data), "--out", str(run), *ARGS, "--max-steps", "100000")
    at_sigint = stop_with(signal.SIGINT, first, run, 3)
    assert assert_run_intact(run) == at_sigint  # saved at the very step it stopped (save_every is 0)
    assert "val_bpb" not in metrics(run)[-1]  # an interrupted run does not stop to evaluate

    second = Training("--out", str(run), "--resume", "--max-steps", "100000")
    second.wait_for_text(f"resuming from step {at_sigint}")
    at_sigterm = stop_with(signal.SIGTERM, second, run, at_sigint + 2)
    assert assert_run_intact(run) == at_sigterm > at_sigint
    assert leftovers(run) == [] and not (run / ".lock").exists()

    # Resumed to a fixed end, the run logs what an uninterrupted run logs.
    end = at_sigterm + 2
    assert cli("train", "--out", str(run), "--resume", "--max-steps", str(end)) == 0
    reference = tmp_path / "reference"
    assert cli("train", "--data", str(text_data), "--out", str(reference), *ARGS, "--max-steps", str(end)) == 0
    assert_same_losses(run, reference)


def test_a_second_signal_aborts_without_saving(text_data, tmp_path):
    run = tmp_path / "run"
    assert cli("train", "--data", str(text_data), "--out", str(run), *ARGS, "--max-steps", "2") == 0
    # Every save stalls 60 s at its start, so the second Ctrl-C lands inside the save.
    training = Training("--out", str(run), "--resume", "--max-steps", "100000", faults="checkpoint.start=sleep:60")
    training.wait_for(lambda: last_logged_step(run) >= 4, what="step 4")
    training.proc.send_signal(signal.SIGINT)
    training.wait_for(lambda: any(p.name.startswith(".tmp-") for p in (run / "checkpoints").iterdir()),
                      what="the save to start")
    training.proc.send_signal(signal.SIGINT)
    assert training.finish(timeout=30) == 130, training.output
    assert "SIGINT again: aborting now, without saving this step" in training.output
    assert "interrupted" in training.output and "Traceback" not in training.output
    assert assert_run_intact(run) == 2  # the checkpoint from before stays RUN/latest
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000002"]  # the aborted save cleaned up
