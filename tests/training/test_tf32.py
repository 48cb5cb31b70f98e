"""`train.tf32`: TF32 products on CUDA, saved with the run, changeable on resume, inert on the CPU."""

from __future__ import annotations

import pytest
import torch

from megabyte.errors import MegabyteError
from megabyte.training import RESUMABLE, TrainConfig, get_preset, read_saved_run, train
from megabyte.training.config import split_overrides
from megabyte.training.runtime import float32_products
from tests.training.helpers import metrics

SWITCHES = ((torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32"))


def test_tf32_field_round_trips_and_is_checked():
    assert TrainConfig(max_steps=1).tf32 is False
    cfg = TrainConfig(max_steps=1, tf32=True)
    assert cfg.to_dict()["tf32"] is True and TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert split_overrides(["train.tf32=true"], TrainConfig)[1] == {"tf32": True}
    assert "tf32" in RESUMABLE
    with pytest.raises(MegabyteError, match="train.tf32: must be true or false"):
        TrainConfig(max_steps=1, tf32="yes")


def _switches() -> list[bool]:
    return [getattr(owner, name) for owner, name in SWITCHES]


def _set(values: list[bool]) -> None:
    for (owner, name), value in zip(SWITCHES, values):
        setattr(owner, name, value)


def test_cuda_products_switch_to_tf32_and_back():
    # Setting the switches needs no GPU: a CUDA device object is enough to take the CUDA path.
    saved = _switches()  # (process-wide switches, not attributes monkeypatch can restore)
    try:
        _set([False, False])
        with float32_products(torch.device("cuda", 0), tf32=True):
            assert _switches() == [True, True]
        assert _switches() == [False, False]
        _set([False, True])  # PyTorch's defaults: cuDNN may use TF32
        with float32_products(torch.device("cuda"), tf32=False):
            assert _switches() == [False, False]  # fp32 means fp32
        assert _switches() == [False, True]
        with float32_products(torch.device("cpu"), tf32=True):
            assert _switches() == [False, True]
    finally:
        _set(saved)


def test_tf32_changes_nothing_on_the_cpu_is_saved_and_may_change_on_resume(text_data, tmp_path):
    preset = get_preset("tiny")
    model_config = preset.model_config("megabyte")
    base = {**preset.train, "max_steps": 3, "eval_every": 0, "save_every": 0, "log_every": 1, "device": "cpu"}
    curves = {}
    for tf32 in (False, True):
        train(TrainConfig(**{**base, "tf32": tf32}), model_config, text_data, tmp_path / str(tf32), progress=False)
        curves[tf32] = [r["train_bpb"] for r in metrics(tmp_path / str(tf32)) if "train_bpb" in r]
    assert len(curves[True]) == 3 and curves[True] == curves[False]
    assert read_saved_run(tmp_path / "True").train_config.tf32 is True
    resumed = TrainConfig(**{**base, "max_steps": 4, "tf32": False})
    assert train(resumed, model_config, text_data, tmp_path / "True", resume=True, progress=False)["step"] == 4
    assert read_saved_run(tmp_path / "True").train_config.tf32 is False
