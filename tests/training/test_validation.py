"""Validation during training and `megabyte eval` are one computation: the bpb a run logs is the
bpb `megabyte eval` reports for its checkpoint on the same bytes (the whole split, or the sample
of windows that `train.eval_bytes` asks for, `--sample-bytes`)."""

from __future__ import annotations

import json

import pytest

from megabyte.cli import main
from megabyte.data.dataset import load_dataset
from megabyte.training import TrainConfig, get_preset, train
from tests.training.helpers import metrics


@pytest.mark.parametrize("eval_bytes", [0, 320])
def test_logged_validation_equals_megabyte_eval(text_data, tmp_path, capsys, eval_bytes):
    preset = get_preset("tiny")
    cfg = TrainConfig(**{**preset.train, "max_steps": 6, "eval_every": 3, "save_every": 0,
                         "eval_bytes": eval_bytes})
    run = tmp_path / "run"
    summary = train(cfg, preset.model_config("megabyte"), text_data, run, progress=False)
    logged = [r["val_bpb"] for r in metrics(run) if "val_bpb" in r]
    assert len(logged) == 2 and logged[-1] == summary["val_bpb"]

    args = ["eval", str(run), "--data", str(text_data), "--batch-size", str(cfg.batch_size), "--json"]
    assert main(args + (["--sample-bytes", str(eval_bytes)] if eval_bytes else [])) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["method"] == "basic" and report["seq_len"] == 64
    assert report["bpb"] == pytest.approx(summary["val_bpb"], rel=1e-9, abs=0)
    val = len(load_dataset(text_data).split("val"))
    assert report["bytes"] == (5 * 64 if eval_bytes else val)  # 5 windows of 64, or every byte once
