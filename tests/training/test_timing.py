"""Step times are read between synchronised points (`runtime.synchronize`), so that work a GPU
still has queued at the end of a step counts in the step, not in the logging or evaluation after it."""

from __future__ import annotations

import time
import types

import torch

from megabyte.training import TrainConfig, get_preset, loop, train
from megabyte.training.runtime import synchronize


def test_synchronize_waits_for_cuda_and_does_nothing_on_the_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    synchronize(torch.device("cpu"))
    synchronize("cpu")
    assert calls == []
    synchronize(torch.device("cuda", 1))  # a device object only: no GPU needed to build it
    assert calls == [torch.device("cuda", 1)]


def test_every_step_is_timed_between_two_synchronised_points(monkeypatch, text_data, tmp_path):
    events: list[str] = []
    devices: list[torch.device] = []

    def record_sync(device) -> None:
        events.append("sync")
        devices.append(torch.device(device))

    def clock() -> float:
        events.append("clock")
        return time.monotonic()

    monkeypatch.setattr(loop, "synchronize", record_sync)
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(monotonic=clock))
    preset = get_preset("tiny")
    cfg = TrainConfig(**{**preset.train, "max_steps": 3, "eval_every": 0, "save_every": 0, "device": "cpu"})
    summary = train(cfg, preset.model_config("megabyte"), text_data, tmp_path / "run", progress=False)
    assert summary["step"] == 3 and summary["bytes_per_s"] > 0
    assert events.count("sync") == 2 * 3  # the start and the end of every step
    assert all(events[i + 1] == "clock" for i, e in enumerate(events) if e == "sync")  # the clock read right after
    assert set(devices) == {torch.device("cpu")}
