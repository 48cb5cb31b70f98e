"""The training loop end to end on real text: loss falls, the run directory is complete, the
latest checkpoint loads and reproduces the reported validation bpb (`test_validation.py`: through
`megabyte eval`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import megabyte
from megabyte.data.dataset import load_dataset
from megabyte.evaluation import evaluate
from megabyte.training import TrainConfig, get_preset, train
from tests.training.helpers import metrics


def tiny(kind: str = "megabyte", **train_fields):
    preset = get_preset("tiny")
    model_config = preset.model_config(kind)
    return TrainConfig(**{**preset.train, **train_fields}), model_config


@pytest.fixture(scope="module")
def tiny_run(text_data, tmp_path_factory):
    """One tiny MEGABYTE run of 40 steps (shared by the tests that only read it)."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    cfg, model_config = tiny(save_every=10, keep_last=2)
    summary = train(cfg, model_config, text_data, out, progress=False)
    return out, summary


def test_loss_falls_on_real_text(tiny_run):
    run, summary = tiny_run
    records = metrics(run)
    first = np.mean([r["train_bpb"] for r in records[:3]])
    last = np.mean([r["train_bpb"] for r in records[-5:]])
    assert first > 7.0  # about 8 bits per byte: uniform over 256 values
    assert last < first - 2.0
    assert summary["val_bpb"] < 6.0 and summary["step"] == 40


def test_metrics_lines(tiny_run):
    run, summary = tiny_run
    records = metrics(run)
    assert [r["step"] for r in records] == list(range(1, 41))  # tiny logs every step
    for r in records:
        assert {"step", "bytes", "train_bpb", "lr", "bytes_per_s", "elapsed"} <= set(r)
        assert r["bytes"] == r["step"] * 4 * 64
    assert [r["step"] for r in records if "val_bpb" in r] == [20, 40]
    assert records[-1]["val_bpb"] == pytest.approx(summary["val_bpb"])


def test_run_directory_layout(tiny_run):
    run, summary = tiny_run
    assert (run / "latest").read_text().strip() == "checkpoints/step-00000040"
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == ["step-00000030", "step-00000040"]  # keep_last=2, no temporary leftovers
    files = sorted(p.name for p in (run / "checkpoints" / "step-00000040").iterdir())
    assert files == ["config.json", "data_meta.json", "model.safetensors", "optimizer.safetensors",
                     "trainer_state.json"]
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in run.iterdir() if p.name.startswith(".")]
    resolved = json.loads((run / "train_config.json").read_text())
    assert resolved["model_kind"] == "megabyte" and resolved["train"]["seq_len"] == 64
    assert resolved["model"]["dims"] == [64, 32]
    state = json.loads((run / "checkpoints/step-00000040/trainer_state.json").read_text())
    assert state["step"] == 40 and state["bytes_seen"] == 40 * 256
    assert state["sampler"]["position"] > 0 and "torch" in state["rng"]
    data_meta = json.loads((run / "checkpoints/step-00000040/data_meta.json").read_text())
    assert data_meta["modality"] == "text"


def test_no_pickle_anywhere(tiny_run):
    run, _ = tiny_run
    for path in run.rglob("*"):
        if path.is_file():
            assert not path.read_bytes().startswith(b"\x80"), path  # pickle protocol 2+ magic
            assert path.suffix in (".json", ".jsonl", ".safetensors", ".png", "") and path.name != "data.pkl"


def test_load_run_gives_the_latest_model(tiny_run, text_data):
    run, summary = tiny_run
    model = megabyte.load(run)
    assert isinstance(model, megabyte.Megabyte) and not model.training
    # The loaded model reproduces the reported validation bpb (the same sample of windows, fp32).
    val = load_dataset(text_data).split("val")
    result = evaluate(model, val, seq_len=64, batch_size=4, sample_bytes=4096)
    assert result.bpb == pytest.approx(summary["val_bpb"], rel=1e-9)


@pytest.mark.parametrize("kind", ["transformer", "perceiver-ar"])
def test_baselines_train(kind, text_data, tmp_path):
    cfg, model_config = tiny(kind, max_steps=6, eval_every=0, save_every=0)
    summary = train(cfg, model_config, text_data, tmp_path / kind, progress=False)
    assert summary["step"] == 6 and summary["val_bpb"] is not None
    assert type(megabyte.load(tmp_path / kind)).__name__ == {"transformer": "Transformer",
                                                             "perceiver-ar": "PerceiverAR"}[kind]


def test_grad_accum_matches_a_larger_batch(text_data, tmp_path):
    """2 micro-batches of 2 = one batch of 4: the same windows, the same mean loss, the same update."""
    runs = {}
    for name, fields in {"big": {"batch_size": 4}, "accum": {"batch_size": 2, "grad_accum": 2}}.items():
        cfg, model_config = tiny(max_steps=3, eval_every=0, save_every=0, **fields)
        train(cfg, model_config, text_data, tmp_path / name, progress=False)
        runs[name] = [r["train_bpb"] for r in metrics(tmp_path / name)]
    assert runs["big"] == pytest.approx(runs["accum"], rel=1e-4)


def test_time_budget_stops_the_run(text_data, tmp_path):
    cfg, model_config = tiny(max_steps=None, max_time=1.5, eval_every=0, save_every=0)
    summary = train(cfg, model_config, text_data, tmp_path / "timed", progress=False)
    assert summary["stop_reason"] == "max_time" and summary["step"] >= 1
    assert (tmp_path / "timed" / "latest").is_file()
