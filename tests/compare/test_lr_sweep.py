"""The learning-rate sweep of `megabyte compare`: it finds the best value of a grid where the
answer is known, scores its trials on held-back training bytes only, and reports its cost."""

from __future__ import annotations

import json

import pytest

from megabyte.cli import main
from megabyte.compare import run as run_module
from megabyte.compare.run import CompareConfig, choose_lr, fit_budget, plan_entries, sweep_lr
from megabyte.data.dataset import ByteDataset, load_dataset
from megabyte.training.presets import get_preset


def test_choose_lr_takes_the_lowest_score_and_skips_divergence_and_spikes():
    trials = [{"lr": 1e-4, "score": 3.0}, {"lr": 1e-3, "score": 2.5}, {"lr": 1e-2, "score": None}]
    assert choose_lr(trials) == 1e-3
    near = [{"lr": 1e-3, "score": 2.51}, {"lr": 2e-3, "score": 2.5}, {"lr": 4e-3, "score": 2.2}]
    assert choose_lr(near) == 4e-3 and choose_lr(near[:2]) == 1e-3  # within 0.02 bpb: the lower rate
    assert choose_lr([{"lr": 1e-3, "score": 2.6}, {"lr": 2e-3, "score": 2.4, "spikes": 1}]) == 1e-3
    assert choose_lr([{"lr": 1e-3, "score": 2.6, "spikes": 2}, {"lr": 2e-3, "score": 2.4, "spikes": 1}]) == 2e-3
    assert choose_lr([{"lr": 1.0, "score": None}]) is None


def test_the_sweep_finds_the_known_best_rate_without_reading_the_validation_split(text_data, tmp_path,
                                                                                   monkeypatch):
    """A rate too small to move the weights in a few steps (1e-6), one that trains the tiny
    model well (3e-3) and one far too large (30): the answer is the middle one."""
    data = load_dataset(text_data)
    config = CompareConfig(text_data, tmp_path, flops=2e10, preset="tiny", lr_grid=(1e-6, 3e-3, 30.0))
    (entry,) = plan_entries(["megabyte"], data, get_preset("tiny"))
    fit_budget(entry, config.limits, probe=None)
    real_split = ByteDataset.split

    def split(self, name):
        assert name != "val", "the sweep read the validation split"
        return real_split(self, name)

    monkeypatch.setattr(ByteDataset, "split", split)
    said = []
    sweep = sweep_lr(entry, config, said.append)
    monkeypatch.setattr(ByteDataset, "split", real_split)

    scores = {t["lr"]: t["score"] for t in sweep["trials"]}
    assert sweep["chosen"] == 3e-3 == entry.train_config.lr
    assert entry.train_config.min_lr == pytest.approx(3e-3 * 0.1)  # the preset's min_lr / lr ratio kept
    assert scores[1e-6] > 7.0 and scores[3e-3] < scores[1e-6] - 1.0
    assert scores[30.0] is None or scores[30.0] > scores[3e-3]  # diverged, or far worse
    steps = round(int(2e10 // entry.flops_per_step) * run_module.SWEEP_SLICE)
    finished = [t for t in sweep["trials"] if t["steps"] is not None]
    assert all(t["steps"] == steps for t in finished)
    assert any("too few to judge" in n for n in entry.notes) == (steps < run_module.SWEEP_FEW_STEPS)
    assert sweep["flops"] == len(finished) * steps * entry.flops_per_step and sweep["charged"] is False
    assert "train split" in sweep["scored_on"] and any("learning-rate sweep" in s for s in said)
    assert not list((tmp_path / "sweep").rglob("*.safetensors"))  # trials keep their curves, not weights


def test_compare_reports_the_sweep(text_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(run_module, "CURVE_POINTS", 2)
    out = tmp_path / "cmp"
    assert main(["compare", "--data", str(text_data), "--models", "megabyte,subword", "--preset", "tiny",
                 "--flops", "4e9", "--vocab-size", "300", "--lr-grid", "1e-3,3e-3", "--eval-bytes", "1024",
                 "--gen-bytes", "8", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "compare.json").read_text())
    for m in report["models"]:
        sweep = m["lr_sweep"]
        assert [t["lr"] for t in sweep["trials"]] == [1e-3, 3e-3]
        assert m["train"]["lr"] == sweep["chosen"] == choose_lr(sweep["trials"])
        assert sweep["flops"] > 0 and sweep["seconds"] > 0
    md = (out / "compare.md").read_text()
    assert "## Learning rates" in md and "held-back" in md and "--lr-grid 0.001,0.003" in md
    assert "too few to judge a rate by" in md  # 4 GFLOP gives these tiny models trials of a few steps
    assert "chosen by a sweep" in report["sizing"]
