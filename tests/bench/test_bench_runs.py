"""The benchmark runs end to end on tiny models in seconds (no timings are asserted)."""

import json
import sys

import pytest

from megabyte.bench.harness import run_worker
from megabyte.bench.rows import RowSpec
from megabyte.bench.speed import SpeedOptions, render_markdown, run_speed
from megabyte.bench.worker import run_task


def quiet(_msg):
    pass


def test_row_options_parse():
    spec = RowSpec.parse("megabyte/fp32/eager", dtype="bf16", compile=True, external_dtype="fp32")
    assert (spec.name, spec.dtype, spec.compile) == ("megabyte", "fp32", False)
    ext = RowSpec.parse("mblm", dtype="bf16", compile=True, external_dtype="fp32")
    assert (ext.dtype, ext.compile) == ("fp32", False)  # as its users run it
    with pytest.raises(ValueError, match="unknown row"):
        RowSpec.parse("gpt2", dtype="bf16", compile=False, external_dtype="fp32")
    with pytest.raises(ValueError, match="unknown row option"):
        RowSpec.parse("megabyte/fp16", dtype="bf16", compile=False, external_dtype="fp32")


def test_quick_table_inline(monkeypatch):
    # An implementation that is not installed becomes a "not installed" row, not a failure.
    monkeypatch.setitem(sys.modules, "MEGABYTE_pytorch", None)
    opts = SpeedOptions(rows=["megabyte", "transformer", "perceiver-ar", "megabyte-pytorch"], seq_lens=[64],
                        steps=1, warmup=0, quick=True, inline=True, prompt_bytes=8, new_bytes=8, gen_repeats=1)
    results = run_speed(opts, log=quiet)
    summary = results["summary"]
    for name in ("megabyte", "transformer", "perceiver-ar"):
        train = summary[name]["train"]["64"]
        assert train["rate"] > 0 and train["flops_per_step"] > 0 and 0 < train["mfu"]
        assert summary[name]["generate"]["rate"] > 0
    assert summary["megabyte-pytorch"]["train"]["64"]["error"] == "not installed"
    table = render_markdown(results)
    assert "| `megabyte` |" in table and "not installed" in table and "MFU @64" in table
    json.dumps(results, default=str)  # what --json-out writes


@pytest.mark.parametrize("name", ["megabyte-pytorch", "mblm"])
def test_external_rows_when_installed(name):
    pytest.importorskip({"megabyte-pytorch": "MEGABYTE_pytorch", "mblm": "mblm"}[name])
    row = {"name": name, "label": name, "dtype": "fp32", "compile": False}
    r = run_task({"task": "train", "row": row, "seq_len": 64, "steps": 1, "warmup": 0, "quick": True})
    assert "error" not in r and r["flops"] > 0 and r["params"] > 0
    g = run_task({"task": "generate", "row": row, "prompt_bytes": 8, "new_bytes": 8, "quick": True,
                  "warmup_bytes": 1})
    assert g["new_bytes"] == [8]


def test_worker_process_reports_json():
    r = run_worker({"task": "peak", "dtypes": ["fp32"], "matmul_sizes": [64], "warmup_s": 0.0, "reps": 1, "threads": 1},
                   timeout_s=120)
    assert r["fp32"]["flops"] > 0 and r["peak_rss"] > 0


def test_worker_reports_errors_instead_of_raising():
    r = run_task({"task": "train", "row": {"name": "megabyte", "label": "x", "dtype": "fp32", "compile": False},
                  "seq_len": 0, "steps": 1, "quick": True})
    assert "error" in r


def test_long_step_quick():
    r = run_task({"task": "long", "kind": "megabyte", "seq_len": 512, "checkpointing": True, "quick": True})
    assert "error" not in r and r["seconds"] > 0 and r["config"]["patch_sizes"] == [4, 4]


def test_precision_quick(tmp_path):
    from megabyte.bench.precision import PrecisionOptions, render_precision, run_precision

    text = tmp_path / "text.txt"
    text.write_bytes(b"The quick brown fox jumps over the lazy dog. " * 5000)
    results = run_precision(PrecisionOptions(steps=2, data=str(text), quick=True, threads=1), log=quiet)
    assert len(results["runs"]) == 4 and all(r["val_bpb"] > 0 for r in results["runs"])
    assert "bf16 - fp32" in render_precision(results)


def test_rounds_pool_steps_and_generation_only_table():
    opts = SpeedOptions(rows=["megabyte"], seq_lens=[64], steps=1, warmup=0, quick=True, inline=True, rounds=2,
                        generate=False)
    results = run_speed(opts, log=quiet)
    assert len(results["rows"]["megabyte"]["train"]["64"]["times"]) == 2
    gen_only = SpeedOptions(rows=["megabyte"], quick=True, inline=True, train=False, prompt_bytes=8, new_bytes=8,
                            gen_repeats=1)
    table = render_markdown(run_speed(gen_only, log=quiet))
    assert "train B/s" not in table and "generate B/s" in table


def test_batch_search_stops_at_the_cap():
    from megabyte.bench.speed import render_batch_search, run_batch_search

    opts = SpeedOptions(rows=["megabyte"], seq_lens=[64], steps=1, warmup=0, quick=True, inline=True)
    results = run_batch_search(opts, log=quiet, max_batch=2)
    assert [s["batch"] for s in results["summary"]] == [1, 2] and results["largest_batch"] == 2
    assert "Largest batch that fits: 2" in render_batch_search(results)
