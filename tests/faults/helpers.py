"""Helpers of the fault suite: training in-process or as a real `python -m megabyte train` process,
and the checks that a run directory holds nothing corrupt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

import megabyte
from megabyte.training import checkpoint as ckpt
from megabyte.training.faults import ENV
from tests.training.helpers import cli, metrics  # noqa: F401  (re-exported to the fault tests)

CHECKPOINT_FILES = sorted(["config.json", "data_meta.json", "model.safetensors", "optimizer.safetensors",
                           "trainer_state.json"])


def losses(run: Path) -> list[tuple]:
    return [(r["step"], r.get("train_bpb"), r.get("val_bpb")) for r in metrics(run)]


def assert_same_losses(run: Path, reference: Path) -> None:
    """Both runs logged the same steps, once each, with the same train and validation bpb."""
    import pytest

    a, b = losses(run), losses(reference)
    assert [s for s, _, _ in a] == [s for s, _, _ in b]
    for (step, train_a, val_a), (_, train_b, val_b) in zip(a, b):
        assert train_a == pytest.approx(train_b, rel=1e-6, abs=1e-6), step
        assert (val_a is None) == (val_b is None), step
        if val_a is not None:
            assert val_a == pytest.approx(val_b, rel=1e-6), step


class Training:
    """`python -m megabyte train ARGS` in its own process, its output collected by a thread."""

    def __init__(self, *args: str, faults: str | None = None) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        env.pop(ENV, None)
        if faults:
            env[ENV] = faults
        self.proc = subprocess.Popen([sys.executable, "-m", "megabyte", "train", *args, "--no-progress"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, condition, timeout: float = 120.0, what: str = "") -> None:
        """Poll `condition()` until true; fail if the process ends first or time runs out."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(f"training ended (status {self.proc.returncode}) before {what}:\n{self.output}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"timed out waiting for {what}:\n{self.output}")
            time.sleep(0.005)

    def wait_for_text(self, text: str, timeout: float = 120.0) -> None:
        self.wait_for(lambda: text in self.output, timeout, repr(text))

    def finish(self, timeout: float = 120.0) -> int:
        """Wait for the process to end; its exit status (-9 when killed by SIGKILL)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self._reader.join(10)
        return self.proc.returncode


def last_logged_step(run: Path) -> int:
    """The step of the last complete metrics line (0 if none)."""
    try:
        text = (Path(run) / "metrics.jsonl").read_text()
    except FileNotFoundError:
        return 0
    lines = [line for line in text.splitlines() if line.endswith("}")]
    return json.loads(lines[-1])["step"] if lines else 0


def latest_step(run: Path) -> int | None:
    latest = ckpt.latest_checkpoint(run)
    return None if latest is None else int(latest.name[5:])


def assert_run_intact(run: Path) -> int | None:
    """No corrupt file in RUN: every checkpoint directory is complete and loads (weights, optimizer,
    trainer state of its own step), `latest` names one, every JSON file parses. Returns the latest step.
    Half-written checkpoints of a killed save may lie in `.tmp-*` / `.*.old` directories, which
    `list_checkpoints` and `latest` never name; the next run clears them away."""
    run = Path(run)
    for path in ckpt.list_checkpoints(run):
        assert sorted(p.name for p in path.iterdir()) == CHECKPOINT_FILES, path
        step = int(path.name[5:])
        model = megabyte.load(path)
        assert all(torch.isfinite(p).all() for p in model.parameters()), path
        state = ckpt.read_trainer_state(path)
        assert state["step"] == step, path
        tensors = ckpt.read_optimizer_tensors(path)
        ckpt.check_optimizer_tensors(tensors, model, str(path))
        ckpt.read_json(path / ckpt.DATA_META)
    if (run / "train_config.json").exists():
        json.loads((run / "train_config.json").read_text())
    if (run / "metrics.jsonl").exists():
        metrics(run)
    step = latest_step(run)
    if (run / "latest").exists():
        assert step is not None and (run / ckpt.CHECKPOINTS / ckpt.checkpoint_name(step)).is_dir()
    return step


def leftovers(run: Path) -> list[str]:
    """Temporary files and directories of interrupted writes, anywhere in RUN."""
    run = Path(run)
    found = [p for p in run.iterdir() if p.name.startswith(".") and p.name != ".lock"]
    if (run / ckpt.CHECKPOINTS).is_dir():
        found += [p for p in (run / ckpt.CHECKPOINTS).iterdir() if p.name.startswith(".")]
    return sorted(str(p.relative_to(run)) for p in found)
