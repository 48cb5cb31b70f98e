"""Every row can run as its users run it and in bf16, and the table says which a row is: the
GPU table compares implementations, not dtypes (fp32 without TF32 against bf16)."""

from __future__ import annotations

import contextlib
import sys

import pytest

from megabyte.bench import worker
from megabyte.bench.rows import RowSpec, users_setting
from megabyte.bench.speed import SpeedOptions, render_markdown, run_speed


def parse(text: str) -> RowSpec:
    return RowSpec.parse(text, dtype="bf16", compile=True, external_dtype="fp32")


@pytest.mark.parametrize("text, dtype, tf32, setting", [
    ("megabyte", "bf16", False, "as its users run it"),
    ("megabyte/fp32", "fp32", False, "other"),
    ("megabyte-pytorch", "fp32", False, "as its users run it"),
    ("megabyte-pytorch/bf16", "bf16", False, "bf16"),
    ("mblm/tf32", "fp32", True, "other"),
    ("mblm/bf16/tf32", "bf16", True, "bf16"),
])
def test_row_settings(text, dtype, tf32, setting):
    spec = parse(text)
    assert (spec.dtype, spec.tf32, spec.setting) == (dtype, tf32, setting)


def test_users_settings():
    assert users_setting("megabyte") == ("bf16", False)
    assert users_setting("mblm") == ("fp32", False)


def test_the_table_says_which_setting_and_batch(monkeypatch):
    monkeypatch.setitem(sys.modules, "MEGABYTE_pytorch", None)
    opts = SpeedOptions(rows=["megabyte/eager", "megabyte-pytorch", "megabyte-pytorch/bf16"], seq_lens=[64], steps=1,
                        warmup=0, batch=2, quick=True, inline=True, generate=False)
    results = run_speed(opts, log=lambda _: None)
    table = render_markdown(results)
    lines = {line.split(" | ")[0]: line for line in table.splitlines() if line.startswith("| `")}
    assert "| as its users run it | " in lines["| `megabyte/eager`"]
    assert "| bf16 | - | bf16 | 2 | not installed" in lines["| `megabyte-pytorch/bf16`"]
    assert "| setting |" in table and "| batch |" in table


@pytest.mark.parametrize("row, want", [({"tf32": True}, True), ({}, False)])
def test_the_worker_sets_tf32_for_the_row(monkeypatch, row, want):
    import megabyte.training.runtime as runtime

    seen: list[bool] = []

    @contextlib.contextmanager
    def record(device, *, tf32):
        seen.append(tf32)
        yield

    monkeypatch.setattr(runtime, "float32_products", record)
    spec = {"task": "train", "row": {"name": "megabyte", "label": "m", "dtype": "fp32", "compile": False, **row},
            "seq_len": 32, "steps": 1, "warmup": 0, "quick": True}
    r = worker.run_task(spec)
    assert "error" not in r and seen == [want]


def test_rows_that_differ_only_in_training_dtype_share_one_generation(monkeypatch):
    from megabyte.bench import speed

    tasks: list[str] = []
    real = speed.run_worker

    def counting(spec, **kwargs):
        tasks.append(spec["task"])
        return real(spec, **kwargs)

    monkeypatch.setattr(speed, "run_worker", counting)
    opts = SpeedOptions(rows=["megabyte/eager", "megabyte/fp32/eager"], quick=True, inline=True, train=False,
                        prompt_bytes=8, new_bytes=8, gen_repeats=1)
    results = run_speed(opts, log=lambda _: None)
    assert tasks.count("generate") == 1  # generation is fp32 and eager for every row (`Row.generate`)
    rows = results["summary"]
    assert rows["megabyte/eager"]["generate"] == rows["megabyte/fp32/eager"]["generate"]
