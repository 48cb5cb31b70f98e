"""Where the run executes: device, precision, and the process's place in its group.

`Runtime` is the one object the training loop asks for its rank, its device, whether it may
write files, how to wrap the model for data parallelism and how to combine numbers across
processes. `init_distributed` builds it, for one process or for one of many started by torchrun:

    torchrun --nproc_per_node 4 -m megabyte train ...   # RANK, WORLD_SIZE, LOCAL_RANK, MASTER_* set

    runtime = init_distributed("auto", "auto", parallel="ddp", timeout=600)
    network = runtime.wrap(model)        # DDP, FSDP2 (megabyte.training.parallel), or the model itself
    nats, count = runtime.sum([nats, count])
    runtime.close()

Without torchrun's environment it is rank 0 of 1 and joins no group. Under torchrun the device
follows the local rank (cuda:LOCAL_RANK, or the CPU) and the backend follows the device: NCCL
for CUDA tensors, with gloo beside it for the few small CPU messages (stop decisions, sums of
Python numbers); gloo alone on CPUs. Every collective fails after `timeout` seconds, so a rank
that dies or hangs ends the job (torchrun then stops the others) instead of stalling it.

Leaving the group is part of the contract: `close` destroys the process group *and* waits for its
native threads (gloo's loop and workers, NCCL's watchdog) to end. A thread of the group still
alive when the interpreter shuts down is destroyed during its teardown, and one that then
reaches for the GIL (to free a tensor of the last collective) ends the process with "terminate
called without an active exception" after a good run: the intermittent abort of two-process
runs. With DDP the group ends inside `close` (a test holds it to that). Under FSDP2, PyTorch's
DTensor keeps the device mesh, and so the group, in caches we cannot reach; `close` then records
the surviving threads in `OUTLIVED`, and the command line leaves with `os._exit` after flushing
its output (every file is written and closed by then), so the teardown that aborts never runs.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import platform
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from megabyte import allocator
from megabyte.errors import MegabyteError

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class Runtime:
    device: torch.device
    precision: str
    """"bf16" (autocast to bfloat16, fp32 master weights) or "fp32"."""
    rank: int = 0
    world_size: int = 1
    parallel: str = "ddp"
    """"ddp" or "fsdp": how `wrap` spreads the model over the processes (when distributed)."""
    distributed: bool = False
    """Whether this process belongs to a torch.distributed process group (torchrun)."""
    owns_group: bool = False
    """Whether `close` should destroy the group (we created it, not the caller)."""

    @property
    def is_main(self) -> bool:
        """Only the main process writes files (metrics, plots, checkpoints)."""
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """Whether parameters and optimizer state are split over the processes (FSDP2)."""
        return self.distributed and self.parallel == "fsdp"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype forward passes autocast to (None: the model's own, fp32)."""
        return torch.bfloat16 if self.precision == "bf16" else None

    def autocast(self):
        """The context in which forward passes run."""
        if self.autocast_dtype is not None:
            return torch.autocast(self.device.type, dtype=self.autocast_dtype)
        return contextlib.nullcontext()

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """Place `model` on the device and return the module training steps run: `model` itself
        for one process, DDP around it, or `model` sharded in place by FSDP2, which moves one
        block at a time to the device (build the optimizer after this)."""
        if self.sharded:
            from megabyte.training import parallel

            return parallel.apply_fsdp(model, self.device, self.world_size, param_dtype=self.autocast_dtype)
        model.to(self.device)
        if not self.distributed:
            return model
        from megabyte.training import parallel

        return parallel.apply_ddp(model, self.device)

    def gradient_sync(self, network: torch.nn.Module, enabled: bool):
        """Context for one micro-batch's forward and backward: `enabled=False` keeps the gradients
        local (accumulating), True averages them over the processes (the last micro-batch)."""
        if self.sharded:
            network.set_requires_gradient_sync(enabled)  # FSDP2: skip the reduce-scatter, keep unsharded grads
            return contextlib.nullcontext()
        if self.distributed and not enabled:
            return network.no_sync()  # DDP: skip the all-reduce
        return contextlib.nullcontext()

    def sum(self, values: list[float]) -> list[float]:
        """Sum numbers over all processes (identity for one process). A collective."""
        return self._reduce(values, "sum")

    def max(self, values: list[float]) -> list[float]:
        """Element-wise maximum over all processes (identity for one process). A collective."""
        return self._reduce(values, "max")

    def _reduce(self, values: list[float], op: str) -> list[float]:
        if not self.distributed:
            return [float(v) for v in values]
        import torch.distributed as dist

        # CPU float64: exact for byte counts below 2**53; goes through gloo even beside NCCL.
        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return t.tolist()

    def gather_objects(self, obj: Any) -> list[Any]:
        """`obj` of every process, by rank (a one-element list for one process). A collective."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self, wait: float = 1.0) -> None:
        """Leave the process group if `init_distributed` created it, and wait (up to `wait`
        seconds) until its native threads have ended. Call it after the objects that use the
        group (the DDP or FSDP model, the trainer) are released: they hold the group too. (A
        group that is destroyed joins its threads at once; one that something still holds keeps
        them however long we wait, so the wait is short.)"""
        if not self.owns_group:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        self.owns_group = False
        gc.collect()  # reference cycles (module hooks) may hold the last DDP reducer, and so the group
        deadline = time.monotonic() + wait
        while (left := group_threads()) and time.monotonic() < deadline:
            time.sleep(0.01)
        OUTLIVED[:] = left


OUTLIVED: list[str] = []
"""Threads of a process group that this process created and left, still running after `close`
(see the module docstring): the command line then exits without the interpreter's teardown."""


GROUP_THREADS = ("gloo", "pt_nccl", "pt_gloo")
"""Name prefixes of the native threads a process group runs (gloo_tcp_loop, pt_gloo_runloop,
pt_nccl_watchdg, pt_nccl_heartbt)."""


def group_threads() -> list[str]:
    """Names of this process's threads that belong to a torch.distributed process group (Linux;
    elsewhere an empty list): none should be left once `Runtime.close` has returned."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return []
    names = []
    for task in tasks.iterdir():
        try:
            name = (task / "comm").read_text().strip()
        except OSError:  # the thread ended while we looked
            continue
        if name.startswith(GROUP_THREADS):
            names.append(name)
    return names


def synchronize(device: torch.device | str) -> None:
    """Wait until the work queued on `device` has run. A GPU runs kernels after the Python call
    that queued them returns, so a clock read without this counts the queueing, and the queued
    work lands in whatever waits next (logging, evaluation). Every timing reads its clock
    between two of these. Nothing to wait for on the CPU: its operations end before they return."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@contextlib.contextmanager
def float32_products(device: torch.device, *, tf32: bool):
    """Within this context, on CUDA, fp32 matrix products and cuDNN convolutions use TF32 if
    `tf32` and full fp32 otherwise (`TrainConfig.tf32`). The switches are process-wide, so the
    ones before are restored on leaving. The CPU and MPS have no TF32: nothing changes there."""
    if device.type != "cuda":
        yield
        return
    # The `allow_tf32` switches, not PyTorch 2.9's per-backend `fp32_precision`: torch.compile
    # reads `torch.get_float32_matmul_precision()`, which raises once the new switch has been set
    # (PyTorch 2.13), and reads the old ones correctly.
    switches = [(torch.backends.cuda.matmul, "allow_tf32", tf32), (torch.backends.cudnn, "allow_tf32", tf32)]
    before = [getattr(owner, name) for owner, name, _ in switches]
    for owner, name, value in switches:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for (owner, name, _), value in zip(switches, before):
            setattr(owner, name, value)


def init_runtime(device: str = "auto", precision: str = "auto") -> Runtime:
    """A single process: rank 0 of 1."""
    resolved = resolve_device(device)
    return Runtime(device=resolved, precision=resolve_precision(precision, resolved))


def launched_by_torchrun(env: dict[str, str] | None = None) -> bool:
    """Whether the environment holds a process-group rendezvous (torchrun, or the same by hand)."""
    env = os.environ if env is None else env
    return all(name in env for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def init_distributed(device: str = "auto", precision: str = "auto", *, parallel: str = "ddp",
                     timeout: float = 600.0) -> Runtime:
    """The runtime of this process: rank 0 of 1, or, under torchrun, its place in the group it joins.

    Joins the default process group (unless the caller already has), with `timeout` seconds for
    every collective. NCCL (plus gloo for CPU tensors) when the device is CUDA, gloo otherwise.
    """
    if not launched_by_torchrun():
        return init_runtime(device, precision)
    import torch.distributed as dist

    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_distributed_device(device, local_rank)
    owns = not dist.is_initialized()
    if owns:
        # torch.distributed.nn.functional binds the default group into its functions' default
        # arguments when first imported (DDP imports it): imported after the group exists, it
        # keeps the group, and its threads, alive until the interpreter's own teardown, where
        # they abort the exit. Imported now, those defaults are None.
        import torch.distributed.nn  # noqa: F401

        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        backend = "cpu:gloo,cuda:nccl" if resolved.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
        except (RuntimeError, ValueError) as exc:  # DistStoreError is a RuntimeError
            raise MegabyteError(f"rank {rank} of {world_size}: cannot join the process group at "
                                f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} ({exc})") from None
    elif dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise MegabyteError(f"the existing process group (rank {dist.get_rank()} of {dist.get_world_size()}) "
                            f"disagrees with RANK={rank} WORLD_SIZE={world_size}")
    return Runtime(device=resolved, precision=resolve_precision(precision, resolved), rank=rank,
                   world_size=world_size, parallel=parallel, distributed=True, owns_group=owns)


def resolve_distributed_device(name: str, local_rank: int) -> torch.device:
    """The device of local rank `local_rank`: "auto" and "cuda" mean cuda:LOCAL_RANK when CUDA is there."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise MegabyteError(f"LOCAL_RANK {local_rank} but this machine has {count} GPU(s): start at most "
                                f"{count} processes per node (torchrun --nproc_per_node {count})")
        return torch.device("cuda", local_rank)
    device = resolve_device(name)
    if device.type not in ("cpu", "cuda"):
        raise MegabyteError(f"train.device: distributed training runs on cuda or cpu, not {device.type}")
    return device


def resolve_device(name: str) -> torch.device:
    """The device `name` stands for ("auto": CUDA if there is one). The CPU allocator tuning the
    command line asked for (`megabyte.allocator`) applies here, once the device is known: on the
    CPU only."""
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise MegabyteError(f"device: unknown device {name!r} (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MegabyteError(f"device {name} requested but CUDA is not available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise MegabyteError(f"device {name} requested but MPS is not available")
    allocator.tune_for(device)
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


def load_average() -> float | None:
    """The 1-minute load average: how busy the machine was (other jobs slow wall-clock numbers)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def machine() -> dict[str, Any]:
    """What a measurement ran on: CPU, cores, PyTorch threads and version, memory, GPU, load, date."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "native_bf16": cpu_has_native_bf16(), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "load_average": load_average(),
    }
    try:
        info["memory_gib"] = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
