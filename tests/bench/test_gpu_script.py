"""benchmarks/gpu.sh runs (on the CPU, with tiny models) and writes its tables."""

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
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    proc = subprocess.run(["bash", str(SCRIPT), "--device", "cpu"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (tmp_path / "table.md").read_text()
    assert "| `megabyte` |" in table
    assert "Largest batch that fits" in (tmp_path / "paper.md").read_text()
    assert (tmp_path / "table.json").exists() and (tmp_path / "paper.json").exists()
