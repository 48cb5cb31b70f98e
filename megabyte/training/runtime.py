"""Where the run executes: device, precision, and the process's place in a (future) group.

A single process today: rank 0 of 1. `Runtime` is the one object the training loop asks for
its rank, its device, whether it may write files, and how to sum numbers across processes, so
that distributed training (torchrun: DDP, FSDP2) only has to fill these in.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from megabyte.errors import MegabyteError


@dataclass
class Runtime:
    device: torch.device
    precision: str
    """"bf16" (autocast to bfloat16, fp32 master weights) or "fp32"."""
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes files (metrics, plots, checkpoints)."""
        return self.rank == 0

    def autocast(self):
        """The context in which forward passes run."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module training steps run (a data-parallel wrapper would go here)."""
        return model

    def sum(self, values: list[float]) -> list[float]:
        """Sum numbers over all processes (identity for one process)."""
        return list(values)


def init_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    resolved = resolve_device(device)
    return Runtime(device=resolved, precision=resolve_precision(precision, resolved))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MegabyteError(f"train.device: unknown device {name!r} (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MegabyteError(f"train.device: {name} requested but CUDA is not available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise MegabyteError(f"train.device: {name} requested but MPS is not available")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """"auto" -> "bf16" where bfloat16 runs natively, else "fp32"."""
    if name == "fp32":
        return "fp32"
    supported = bf16_supported(device)
    if name == "bf16" and device.type == "cuda" and not supported:
        raise MegabyteError("train.precision: bf16 requested but this GPU does not support bfloat16")
    if name == "bf16" and device.type == "mps":
        raise MegabyteError("train.precision: bf16 autocast is not supported on MPS; use fp32")
    return "bf16" if name == "bf16" or supported else "fp32"


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True on CPUs with AMX-BF16 or AVX512-BF16 instructions (read from /proc/cpuinfo on Linux).

    PyTorch's own capability level (`torch.backends.cpu.get_cpu_capability()`) stops at AVX512
    and does not say whether bfloat16 arithmetic is native, so look at the CPU flags.
    """
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"amx_bf16", "avx512_bf16"})
    return False
