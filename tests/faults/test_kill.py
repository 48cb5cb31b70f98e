"""kill -9 at random moments of a real `python -m megabyte train` process, including inside every
stage of a checkpoint save: after each kill no file in the run is corrupt, `--resume` starts from
the last complete checkpoint, and the run finally logs exactly the losses of one that never stopped."""

from __future__ import annotations

import random
import signal
import time

import pytest

from tests.faults.helpers import (
    Training,
    assert_run_intact,
    assert_same_losses,
    cli,
    last_logged_step,
    latest_step,
    leftovers,
)

STEPS = 40
# Dropout on (its random stream must be restored); a save every 2 steps, keeping 2 (so every save
# also prunes); validation every 5 steps, off the save steps.
ARGS = ["--preset", "tiny", "train.dropout=0.1", "--max-steps", str(STEPS), "--save-every", "2",
        "--eval-every", "5"]
# Every stage of a save (see megabyte.training.faults), each hit at least once below.
SAVE_STAGES = ["checkpoint.start", "checkpoint.model", "checkpoint.trainer_state", "checkpoint.optimizer",
               "checkpoint.renamed", "checkpoint.latest", "checkpoint.prune"]


def kill_plan(rng: random.Random) -> list[tuple[str, str | None]]:
    """10 kills: at a random moment after the first checkpoint, then in a random order inside each
    of the 7 stages of a save, at another random moment, and once while starting up."""
    rest = [("stage", stage) for stage in SAVE_STAGES] + [("moment", None), ("startup", None)]
    rng.shuffle(rest)
    return [("moment", None), *rest]


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_reaches_the_same_losses(text_data, tmp_path):
    reference = tmp_path / "reference"
    assert cli("train", "--data", str(text_data), "--out", str(reference), *ARGS) == 0

    rng = random.Random(9)
    run = tmp_path / "run"
    kills = []
    for kind, stage in kill_plan(rng):
        before = latest_step(run) if run.exists() else None
        assert before is None or before <= STEPS - 8, "the plan ran out of steps"
        args = ["--out", str(run), "--resume"] if before else ["--data", str(text_data), "--out", str(run), *ARGS]
        faults = None
        if kind == "stage":  # the process kills itself inside its first save (or its first prune)
            faults = f"{stage}=kill"
        training = Training(*args, faults=faults)
        if before and kind != "startup":
            training.wait_for_text(f"resuming from step {before} (checkpoints/step-{before:08d})")
        if kind == "moment":  # a random instant after a random step: in a step, a save, an evaluation, a log
            target = (before or 2) + rng.randint(1, 4)
            training.wait_for(lambda target=target: last_logged_step(run) >= target, what=f"step {target}")
            time.sleep(rng.uniform(0, 0.05))
            training.proc.send_signal(signal.SIGKILL)
        elif kind == "startup":  # importing, loading the checkpoint, clearing temporaries, rewriting metrics
            deadline = time.monotonic() + rng.uniform(0.5, 3.0)
            started = lambda deadline=deadline, before=before: (
                time.monotonic() > deadline or last_logged_step(run) > (before or 0))
            training.wait_for(started, what="a moment while starting up")
            training.proc.send_signal(signal.SIGKILL)
        status = training.finish()
        assert status == -signal.SIGKILL, f"{kind} {stage}: status {status}\n{training.output}"
        after = assert_run_intact(run)
        assert (after or 0) >= (before or 0), (kind, stage, before, after)
        kills.append((kind, stage, before, after))
    print("kills (kind, stage, latest step before, after):", *kills, sep="\n  ")
    assert len(kills) >= 10

    final = Training("--out", str(run), "--resume")
    assert final.finish() == 0, final.output
    assert f"resuming from step {kills[-1][3]}" in final.output
    assert assert_run_intact(run) == STEPS
    assert leftovers(run) == [] and not (run / ".lock").exists()
    assert_same_losses(run, reference)
