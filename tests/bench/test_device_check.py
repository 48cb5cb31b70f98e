"""The prepared device check (`megabyte.bench.device_check`): its CPU form passes every stage
end to end, and its reporting holds when a check fails, time runs out or the run is cut off."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from megabyte.bench.device_check import STAGES, CheckOptions, Stage
from megabyte.errors import MegabyteError

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "device_check.sh"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_cpu_form_passes_every_stage(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "WHEELS": str(tmp_path / "none"),
           "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--work", str(tmp_path / "work")], env=env,
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    for index, name in enumerate(STAGES, start=1):
        report = json.loads((out / f"{index}-{name}.json").read_text())
        failed = [c for c in report["checks"] if c["status"] == "fail"]
        assert report["status"] == "pass" and not failed, failed
        assert "**pass**" in (out / f"{index}-{name}.md").read_text()
    checks = {c["name"]: c for c in json.loads((out / "1-correctness.json").read_text())["checks"]}
    assert sum(name.startswith("causality: ") for name in checks) == 10  # every tiny configuration
    assert len(list(out.iterdir())) <= 8  # what the device machine sends back
    assert "device check: correctness pass, training pass, speed pass" in (out / "device_check.log").read_text()


def test_a_failing_check_is_recorded_and_the_next_runs(tmp_path):
    stage = Stage(1, "correctness", CheckOptions(device="cpu", out=str(tmp_path)))

    def broken() -> dict:
        raise RuntimeError("CUDA error: an illegal memory access\nsecond line")

    assert stage.run("broken", broken) is None
    assert stage.run("fine", lambda: {"pass": True, "x": 1}) == {"x": 1}
    assert stage.run("wrong", lambda: {"pass": False, "x": 2}) is None
    assert stage.finish() == "fail"
    report = json.loads((tmp_path / "1-correctness.json").read_text())
    assert [c["status"] for c in report["checks"]] == ["fail", "pass", "fail"]
    assert report["checks"][0]["error"] == "RuntimeError: CUDA error: an illegal memory access"
    assert "| broken | fail |" in (tmp_path / "1-correctness.md").read_text()


def test_results_are_on_disk_as_each_check_ends(tmp_path):
    stage = Stage(2, "training", CheckOptions(device="cpu", out=str(tmp_path)))
    path = tmp_path / "2-training.json"
    assert json.loads(path.read_text())["status"] == "running"  # a run cut off now still reports
    stage.run("first", lambda: {"pass": True})

    def second() -> dict:
        seen = json.loads(path.read_text())["checks"]
        return {"pass": [c["name"] for c in seen] == ["first"]}

    stage.run("second", second)
    assert stage.finish() == "pass"


def test_checks_past_the_budget_are_skipped(tmp_path):
    stage = Stage(3, "speed", CheckOptions(device="cpu", out=str(tmp_path), budget_s=0))
    assert stage.run("late", lambda: {"pass": True}) is None
    assert stage.checks[0]["status"] == "skipped" and stage.checks[0]["why"].startswith("out of time (budget 0 s")
    assert stage.finish() == "fail"  # nothing passed: not a pass


def test_a_check_that_needs_more_than_is_left_is_skipped(tmp_path):
    stage = Stage(3, "speed", CheckOptions(device="cpu", out=str(tmp_path), budget_s=30))
    assert stage.run("short", lambda: {"pass": True}, needs_s=60) == {}  # 30 s left + the grace
    assert stage.run("long", lambda: {"pass": True}, needs_s=600) is None
    assert [c["status"] for c in stage.checks] == ["pass", "skipped"]


def test_options_are_checked():
    with pytest.raises(MegabyteError, match="unknown stage 'sped'"):
        CheckOptions(device="cpu", stages=("sped",))
    with pytest.raises(MegabyteError, match="--device must be cpu or cuda"):
        CheckOptions(device="mps")
    gpu = CheckOptions(device="cuda")
    assert gpu.budget_s == 420.0 and gpu.inline is False
    assert CheckOptions(device="cpu").budget_s is None
