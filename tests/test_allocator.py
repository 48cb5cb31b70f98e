"""`megabyte.allocator.tune` keeps freed large blocks in the heap (glibc), which is its point."""

import subprocess
import sys

import pytest

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
