"""`megabyte.allocator.tune` keeps freed large blocks in the heap (glibc), which is its point."""

import subprocess
import sys

import pytest

from megabyte import allocator

CHILD = r"""
import os, sys
import torch
from megabyte import allocator
applied = allocator.tune() if sys.argv[1] == "tune" else False
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = rss()
x = torch.ones(64 * 2**20 // 4)  # 64 MiB, above glibc's largest mmap threshold
del x
print(applied, (rss() - before) // 2**20)
"""


def _run(mode: str, env=None):
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True, env=env)
    applied, kept_mib = out.stdout.split()
    return applied == "True", int(kept_mib)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_heap_keeps_a_freed_large_block_and_default_returns_it():
    applied, kept = _run("tune")
    if not applied:
        pytest.skip("the C library is not glibc")
    assert kept >= 60  # the 64 MiB stayed with the process, ready for the next step
    _, kept_default = _run("default")
    assert kept_default < 16  # glibc's default: a 64 MiB block is unmapped on free


def test_environment_switch_leaves_the_c_library_alone(monkeypatch):
    import os

    env = dict(os.environ, MEGABYTE_MALLOC="default")
    applied, kept = _run("tune", env=env)
    assert not applied
    assert kept < 16


# --- applied for CPU runs only: the command line asks, the device resolution applies --------------
@pytest.fixture
def tunes(monkeypatch) -> list[str]:
    """Calls of `allocator.tune` (recorded, not applied), with no request made yet."""
    calls: list[str] = []
    monkeypatch.setattr(allocator, "tune", lambda: calls.append("tune") or True)
    monkeypatch.setattr(allocator, "_requested", False)
    return calls


def test_command_line_requests_instead_of_tuning_before_the_device_is_known(tunes, tmp_path):
    from megabyte.cli import main

    assert main(["sample", str(tmp_path / "no-run")]) == 2  # fails before it resolves a device
    assert allocator._requested and tunes == []


def test_tuned_for_the_cpu_only(tunes, monkeypatch):
    import torch

    from megabyte.training import runtime

    runtime.resolve_device("cpu")
    assert tunes == []  # not requested (a Python user's process): nothing
    allocator.request()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert runtime.resolve_device("auto").type == "cuda"
    runtime.resolve_device("cuda:0")
    runtime.resolve_distributed_device("auto", 1)
    assert tunes == []  # GPU runs keep the C library's defaults
    runtime.resolve_device("cpu")
    assert tunes == ["tune"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    runtime.resolve_distributed_device("auto", 0)  # torchrun on CPUs
    assert allocator.tune_for("cpu") and tunes == ["tune"] * 3


@pytest.mark.parametrize("device, tuned", [("cpu", True), ("cuda", False)])
def test_bench_worker_tunes_for_cpu_rows_only(tunes, device, tuned):
    from megabyte.bench import worker

    worker._setup({"task": "peak", "device": device})
    assert tunes == (["tune"] if tuned else [])
