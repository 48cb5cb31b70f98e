"""Exact resume: a run stopped at step k and resumed reaches the same losses as a run that never
stopped (fp32 on the CPU, dropout on); and the errors that protect a run directory."""

from __future__ import annotations

import json
import shutil

import pytest

from megabyte import MegabyteError
from megabyte.training import TrainConfig, get_preset, train
from tests.training.helpers import cli, metrics

K = 12
# dropout on (its RNG must be restored); a fixed decay horizon so that stopping early with
# --max-steps does not change the schedule; evaluation and saves off the stop step.
COMMON = ["--preset", "tiny", "train.dropout=0.1", f"train.decay_steps={2 * K}", "--eval-every", "5",
          "--save-every", "7"]


def losses(run):
    return [(r["step"], r.get("train_bpb"), r.get("val_bpb")) for r in metrics(run)]


@pytest.mark.parametrize("kind", ["megabyte", "transformer"])
def test_stop_and_resume_matches_an_uninterrupted_run(kind, text_data, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert cli("train", "--data", str(text_data), "--out", str(whole), "--model", kind, *COMMON,
               "--max-steps", str(2 * K)) == 0
    assert cli("train", "--data", str(text_data), "--out", str(parts), "--model", kind, *COMMON,
               "--max-steps", str(K)) == 0
    assert (parts / "latest").read_text().strip() == f"checkpoints/step-{K:08d}"
    assert cli("train", "--out", str(parts), "--resume", "--max-steps", str(2 * K)) == 0

    a, b = losses(whole), losses(parts)
    assert [s for s, _, _ in a] == [s for s, _, _ in b] == list(range(1, 2 * K + 1))
    for (step, train_a, val_a), (_, train_b, val_b) in zip(a, b):
        assert train_a == pytest.approx(train_b, rel=1e-6, abs=1e-6), step
        if val_a is not None and val_b is not None:
            assert val_a == pytest.approx(val_b, rel=1e-6), step
    # The stopped run also validated at its stop step; both validated at the shared steps and the end.
    assert {s for s, _, v in a if v is not None} == {5, 10, 15, 20, 2 * K}
    assert {s for s, _, v in b if v is not None} == {5, 10, K, 15, 20, 2 * K}
    state = json.loads((parts / f"checkpoints/step-{2 * K:08d}/trainer_state.json").read_text())
    assert state["step"] == 2 * K and state["train_config"]["max_steps"] == 2 * K


def test_resume_through_the_python_api(text_data, tmp_path):
    preset = get_preset("tiny")
    model_config = preset.model_config("megabyte")
    cfg = TrainConfig(**{**preset.train, "max_steps": 4, "decay_steps": 8, "eval_every": 0, "save_every": 0})
    first = train(cfg, model_config, text_data, tmp_path / "run", progress=False)
    assert first["step"] == 4
    cfg.max_steps = 8
    second = train(cfg, model_config, text_data, tmp_path / "run", resume=True, progress=False)
    assert second["step"] == 8 and second["bytes"] == 8 * 4 * 64
    # Resuming a finished run does nothing but report it.
    again = train(cfg, model_config, text_data, tmp_path / "run", resume=True, progress=False)
    assert again["step"] == 8 and len(metrics(tmp_path / "run")) == 8


def test_resume_drops_metrics_written_after_the_checkpoint(text_data, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--data", str(text_data), "--out", str(run), *COMMON]
    assert cli(*args, "--max-steps", "7") == 0
    with open(run / "metrics.jsonl", "a") as f:  # as if killed at step 9, after the step-7 checkpoint
        f.write(json.dumps({"step": 8, "bytes": 0, "train_bpb": 99.0}) + "\n")
        f.write('{"step": 9, "bytes": 0, "train_b')
    assert cli("train", "--out", str(run), "--resume", "--max-steps", "9") == 0
    steps = [r["step"] for r in metrics(run)]
    assert steps == list(range(1, 10)) and all(r.get("train_bpb") != 99.0 for r in metrics(run))


def test_fresh_run_into_an_existing_run_is_refused(text_data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", str(text_data), "--out", str(run), "--preset", "tiny", "--max-steps", "2"]
    assert cli(*args) == 0
    assert cli(*args) == 2
    assert "already holds a training run" in capsys.readouterr().err


def test_resume_errors(text_data, tmp_path, capsys):
    missing = tmp_path / "nothing"
    assert cli("train", "--out", str(missing), "--resume") == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli("train", "--out", str(empty), "--resume") == 2
    assert "no checkpoint" in capsys.readouterr().err

    run = tmp_path / "run"
    assert cli("train", "--data", str(text_data), "--out", str(run), "--preset", "tiny", "--max-steps", "2") == 0
    capsys.readouterr()
    for args, message in [
        (["train.lr=0.1"], "train.lr was 0.003, now 0.1"),
        (["model.depths=3,2"], "model.depths"),
        (["--model", "transformer"], "it trains a megabyte model"),
        (["--preset", "small"], "with preset small"),
    ]:
        assert cli("train", "--out", str(run), "--resume", "--max-steps", "4", *args) == 2
        assert message in capsys.readouterr().err

    other = tmp_path / "other_data"
    shutil.copytree(text_data, other)
    meta = json.loads((other / "meta.json").read_text())
    meta["recipe"]["seed"] = 99
    (other / "meta.json").write_text(json.dumps(meta))
    assert cli("train", "--out", str(run), "--resume", "--data", str(other), "--max-steps", "4") == 2
    assert "not the one" in capsys.readouterr().err
    # The budget may change: the run continues.
    assert cli("train", "--out", str(run), "--resume", "--max-steps", "3", "--eval-every", "1") == 0
    assert metrics(run)[-1]["step"] == 3


def test_api_resume_with_a_different_config_is_refused(text_data, tmp_path):
    preset = get_preset("tiny")
    model_config = preset.model_config("megabyte")
    cfg = TrainConfig(**{**preset.train, "max_steps": 2})
    train(cfg, model_config, text_data, tmp_path / "run", progress=False)
    with pytest.raises(MegabyteError, match="train.batch_size was 4, now 2"):
        train(TrainConfig(**{**preset.train, "max_steps": 4, "batch_size": 2}), model_config, text_data,
              tmp_path / "run", resume=True, progress=False)


# --------------------------------------------------------------------- requeued jobs, the schedule
def test_resume_auto_runs_one_command_on_every_start(text_data, tmp_path, capsys):
    """A requeued job runs the same command each time: it starts the run, then continues it."""
    run = tmp_path / "job"
    command = ["train", "--data", str(text_data), "--out", str(run), "--preset", "tiny", "--resume", "auto",
               "train.decay_steps=8", "--eval-every", "0", "--save-every", "2"]
    assert cli(*command, "--max-steps", "4") == 0
    assert "holds no checkpoint yet, starting a new run" in capsys.readouterr().err
    assert cli(*command, "--max-steps", "4") == 0  # restarted after it finished: nothing left to do
    out = capsys.readouterr().out
    assert "resuming from step 4" in out
    assert cli(*command, "--max-steps", "8") == 0  # requeued with the whole budget
    assert [r["step"] for r in metrics(run) if "train_bpb" in r] == list(range(1, 9))
    whole = tmp_path / "whole"
    assert cli("train", "--data", str(text_data), "--out", str(whole), "--preset", "tiny", "train.decay_steps=8",
               "--eval-every", "0", "--max-steps", "8") == 0
    assert [r["train_bpb"] for r in metrics(run) if "train_bpb" in r] == pytest.approx(
        [r["train_bpb"] for r in metrics(whole) if "train_bpb" in r], rel=1e-6)


def test_resume_values(text_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("train", "--out", str(run), "--resume", "--max-steps", "2") == 2  # strict: no run yet
    assert "does not exist" in capsys.readouterr().err
    assert cli("train", "--data", str(text_data), "--out", str(run), "--resume", "later") == 2
    assert "--resume takes no value, or 'auto'" in capsys.readouterr().err
    assert cli("train", "--data", str(text_data), "--out", str(run), "--preset", "tiny", "--max-steps", "2") == 0
    # An override right after --resume is still an override.
    assert cli("train", "--out", str(run), "--resume", "train.log_every=1", "--max-steps", "3") == 0
    assert json.loads((run / "train_config.json").read_text())["train"]["log_every"] == 1


def test_a_step_budget_fixes_the_schedule_at_the_first_start(text_data, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["--preset", "tiny", "--eval-every", "0", "--save-every", "0", "train.warmup=0", "train.min_lr=1e-4"]
    assert cli("train", "--data", str(text_data), "--out", str(run), *base, "--max-steps", "6") == 0
    assert json.loads((run / "train_config.json").read_text())["train"]["decay_steps"] == 6
    capsys.readouterr()
    assert cli("train", "--out", str(run), "--resume", "--max-steps", "9") == 0
    out = capsys.readouterr().out
    assert "the learning-rate decay ends at step 6, as planned at the first start: steps 7..9 train at min_lr" in out
    lrs = {r["step"]: r["lr"] for r in metrics(run) if "lr" in r}
    assert [lrs[s] for s in (7, 8, 9)] == pytest.approx([1e-4] * 3)  # the schedule did not move
    assert lrs[6] > 1e-4
    # Re-planning is a choice made on purpose, and said.
    assert cli("train", "--out", str(run), "--resume", "--max-steps", "12", "train.decay_steps=12") == 0
    assert "re-planned from step 9: train.decay_steps was 6, now 12" in capsys.readouterr().out
    lrs = {r["step"]: r["lr"] for r in metrics(run) if "lr" in r}
    assert lrs[10] > lrs[12] > 1e-4  # decaying again, over the new horizon


def test_a_time_budget_says_the_schedule_is_re_planned(text_data, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["--preset", "tiny", "--eval-every", "0", "--save-every", "0"]
    assert cli("train", "--data", str(text_data), "--out", str(run), *base, "--max-time", "1s") == 0
    assert json.loads((run / "train_config.json").read_text())["train"]["decay_steps"] is None
    capsys.readouterr()
    assert cli("train", "--out", str(run), "--resume", "--max-time", "2s") == 0
    assert "re-planned from step" in capsys.readouterr().out
