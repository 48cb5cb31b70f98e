"""benchmarks/gpu.sh runs (on the CPU, with tiny models) from the working tree, with no peer
wheels (their rows say "not installed"), and writes the speed stage's table and JSON."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.sh"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_script_on_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), "WHEELS": str(tmp_path / "none"),
           "PYTHONPATH": ""}  # the script itself makes the checkout importable
    proc = subprocess.run(["bash", str(SCRIPT), "--device", "cpu"], env=env, capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = tmp_path / "out"
    table = (out / "3-speed.md").read_text()
    assert "| `megabyte/eager` | as its users run it |" in table
    assert "Largest batch that fits" in table
    assert json.loads((out / "3-speed.json").read_text())["status"] == "pass"
    assert "peers: no wheels in" in (out / "device_check.log").read_text()
