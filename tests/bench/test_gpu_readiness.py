"""What the benchmark would get wrong on a GPU, checked on the CPU: timings read between
synchronised points, and a batch search that stops only for lack of memory."""

from __future__ import annotations

import errno

import pytest
import torch

from megabyte.bench import worker
from megabyte.bench.speed import SpeedOptions, run_batch_search
from megabyte.errors import MegabyteError
from megabyte.training import runtime


def _record_syncs(monkeypatch) -> list[torch.device]:
    calls: list[torch.device] = []
    monkeypatch.setattr(runtime, "synchronize", lambda device: calls.append(torch.device(device)))
    return calls


def test_timed_steps_are_read_between_synchronised_points(monkeypatch):
    calls = _record_syncs(monkeypatch)
    r = worker.timed(torch, torch.device("cpu"), lambda: 1.0, warmup=1, steps=2)
    assert len(r["times"]) == 2 and len(calls) == 1 + 2 * 2  # after the warm-up; before and after each step


def test_long_step_synchronises_around_forward_and_step(monkeypatch):
    calls = _record_syncs(monkeypatch)
    r = worker.long_step({"kind": "megabyte", "seq_len": 64, "quick": True}, torch, torch.device("cpu"))
    assert r["seconds"] >= r["forward_s"] > 0
    assert calls == [torch.device("cpu")] * 3  # before the clock, after the forward, after the step


@pytest.mark.parametrize("exc, oom", [
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 68719476736 bytes."), True),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (RuntimeError("CUDA error: out of memory"), True),
    (MemoryError(), True),
    (OSError(errno.ENOMEM, "Cannot allocate memory"), True),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), False),
    (ValueError("cannot allocate memory for the mask"), False),  # says memory, but is not a RuntimeError
    (OSError(errno.ENOENT, "No such file"), False),
])
def test_out_of_memory_is_told_from_other_errors(exc, oom):
    assert worker.is_out_of_memory(exc) is oom
    assert ("oom" in worker.describe_error(exc)) is oom


def _steps_fail_from(monkeypatch, failing_batch: int, exc: BaseException) -> None:
    """Every training step of `failing_batch` sequences or more raises `exc`; the matmul peak is a constant."""
    real_row = worker._row

    def row(spec, torch, device, max_seq_len):
        built = real_row(spec, torch, device, max_seq_len)
        real_step_fn = built.train_step_fn

        def train_step_fn(B, T):
            step = real_step_fn(B, T)

            def maybe_failing():
                if B >= failing_batch:
                    raise exc
                return step()

            return maybe_failing

        built.train_step_fn = train_step_fn
        return built

    monkeypatch.setattr(worker, "_row", row)
    monkeypatch.setitem(worker.TASKS, "peak", lambda spec: {"bf16": {"flops": 1e12}, "fp32": {"flops": 1e12}})


def _search(max_batch: int = 8) -> dict:
    opts = SpeedOptions(rows=["megabyte"], seq_lens=[64], steps=1, warmup=0, quick=True, inline=True, dtype="fp32")
    return run_batch_search(opts, log=lambda _: None, max_batch=max_batch)


@pytest.mark.parametrize("exc", [
    RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 68719476736 bytes."),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
])
def test_batch_search_stops_at_the_first_batch_out_of_memory(monkeypatch, exc):
    _steps_fail_from(monkeypatch, 4, exc)
    results = _search()
    assert results["largest_batch"] == 2
    assert [s["batch"] for s in results["summary"]] == [1, 2, 4] and results["summary"][-1]["error"] == "out of memory"


@pytest.mark.parametrize("exc, shown", [
    (ValueError("shapes (2, 64) and (3, 64) do not match"), "ValueError: shapes (2, 64) and (3, 64) do not match"),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), "RuntimeError: CUDA error: an illegal"),
])
def test_batch_search_raises_any_other_error(monkeypatch, exc, shown):
    _steps_fail_from(monkeypatch, 2, exc)
    with pytest.raises(MegabyteError, match="batch 2") as info:
        _search()
    message = str(info.value)
    assert shown in message and "\n" not in message


@pytest.mark.parametrize("failure, stopped, says", [
    ({"error": "out of memory", "oom": True}, "out of memory", "out of memory at 1,024"),
    ({"error": "RuntimeError: CUDA error: an illegal memory access"}, "error", "not the machine's limit"),
    ({"error": "timed out after 60 s"}, "error", "not the machine's limit"),
])
def test_long_search_tells_memory_from_other_failures(monkeypatch, failure, stopped, says):
    from megabyte.bench import harness, long

    def fake_worker(spec, **kw):  # MEGABYTE and the first two Transformer lengths run, then the failure
        if spec["kind"] == "transformer" and spec["seq_len"] >= 1024:
            return dict(failure)
        return {"params": 1e6, "seconds": 0.1, "peak_memory": 2**20}

    monkeypatch.setattr(harness, "run_worker", fake_worker)
    results = long.run_long(long.LongOptions(quick=True), log=lambda m: None)
    assert results["transformer_longest"] == 512 and results["transformer_stopped_by"] == stopped
    assert says in long.render_long(results)
