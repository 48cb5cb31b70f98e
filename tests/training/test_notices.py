"""Training says what a user should see: a loss spike (a warning line with its step, and a
`spikes` entry in the metrics), and a model that learns no more than byte frequencies (a hint)."""

from __future__ import annotations

import pytest

from megabyte.training import TrainConfig, get_preset, train
from megabyte.training import loop as loop_module
from megabyte.training.notices import SpikeWatch, unigram_hint
from tests.training.helpers import metrics


def tiny(**fields):
    preset = get_preset("tiny")
    return TrainConfig(**{**preset.train, "save_every": 0, **fields}), preset.model_config("megabyte")


def test_spike_watch_judges_against_the_recent_median():
    watch = SpikeWatch(window=20, min_history=5)
    assert all(watch.check(step, 3.0 + 0.3 * (step % 2)) is None for step in range(1, 21))  # ordinary noise
    spike = watch.check(21, 5.0)
    assert spike is not None and spike["step"] == 21 and spike["median"] == pytest.approx(3.15)
    assert watch.check(22, 4.0) is None  # 1.27x the median: not a spike


def test_an_injected_spike_is_warned_about_and_recorded(text_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEGABYTE_FAULT_INJECT", "loss@30=spike:4")
    cfg, model = tiny(max_steps=36, eval_every=0)
    train(cfg, model, text_data, tmp_path / "run", progress=False)
    out = capsys.readouterr().out
    assert "warning: loss spike at step 30:" in out and out.count("loss spike") == 1
    flagged = [r for r in metrics(tmp_path / "run") if "spikes" in r]
    assert [r["step"] for r in flagged] == [30] and flagged[0]["spikes"][0]["step"] == 30


def test_no_spike_in_an_ordinary_run(text_data, tmp_path, capsys):
    cfg, model = tiny(max_steps=60, eval_every=0)
    train(cfg, model, text_data, tmp_path / "run", progress=False)
    assert "loss spike" not in capsys.readouterr().out
    assert not [r for r in metrics(tmp_path / "run") if "spikes" in r]


def test_a_run_that_learns_nothing_gets_a_hint(text_data, tmp_path, capsys, monkeypatch):
    cfg, model = tiny(max_steps=20, eval_every=2, lr=1e-7, min_lr=1e-8)
    # the default: a 20-step run is too short to judge
    train(cfg, model, text_data, tmp_path / "short", progress=False)
    assert "hint:" not in capsys.readouterr().out
    monkeypatch.setattr(loop_module, "HINT_MIN_STEPS", 4)  # judged at the first validation after 10% and 4 steps
    train(cfg, model, text_data, tmp_path / "stuck", progress=False)
    out = capsys.readouterr().out
    assert out.count("hint: validation") == 1 and "step 4 (20% of the run)" in out and "unigram entropy" in out
    train(cfg, model, text_data, tmp_path / "trial", progress=False, hints=False)  # as a learning-rate trial
    assert "hint:" not in capsys.readouterr().out
    assert unigram_hint(4.0, 4.57, 200) is None and "4.570 bits" in unigram_hint(4.6, 4.57, 200)
