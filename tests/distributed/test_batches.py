"""The distributed contract without launching processes: the global batch of a step is the same
whatever the world size, every rank runs as many validation forwards, the settings validate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megabyte.data.dataset import BatchSampler, load_dataset
from megabyte.errors import MegabyteError
from megabyte.training import TrainConfig, get_preset
from megabyte.training.config import split_overrides
from megabyte.training.loop import Trainer
from megabyte.training.run import resolve_lengths
from megabyte.training.runtime import Runtime, init_distributed, launched_by_torchrun


@pytest.mark.parametrize("batch_size, grad_accum, world_size, expected", [
    (8, 1, 1, (8, 1)), (8, 4, 1, (8, 4)), (8, 1, 2, (4, 1)), (8, 4, 2, (8, 2)), (8, 3, 2, (6, 2)),
    (8, 1, 8, (1, 1)), (6, 2, 4, (3, 1)), (4, 4, 16, (1, 1)),
])
def test_each_process_runs_its_share_of_the_global_batch(batch_size, grad_accum, world_size, expected):
    micro, steps = TrainConfig(batch_size=batch_size, grad_accum=grad_accum, max_steps=1).process_batches(world_size)
    assert (micro, steps) == expected
    assert micro <= batch_size and micro * steps * world_size == batch_size * grad_accum


def test_a_global_batch_that_cannot_be_shared_evenly_is_a_clear_error():
    with pytest.raises(MegabyteError, match=r"4 sequences per step cannot be shared evenly by 3 processes.*"
                                            r"train.grad_accum=3"):
        TrainConfig(batch_size=4, max_steps=1).process_batches(3)


@pytest.mark.parametrize("world_size", [2, 4])
def test_the_ranks_of_a_step_read_the_windows_one_process_reads(world_size):
    """Per step, the union of the ranks' micro-batches is the single process's step: same windows."""
    data = np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8)
    cfg = TrainConfig(batch_size=4, grad_accum=2, max_steps=1)

    def step_rows(world: int, steps: int = 3) -> list[set]:
        micro, count = cfg.process_batches(world)
        samplers = [BatchSampler(data, 32, micro, seed=5, rank=r, world_size=world) for r in range(world)]
        out = []
        for _ in range(steps):
            rows = [s.next_batch() for _ in range(count) for s in samplers]
            out.append({tuple(row.tolist()) for batch in rows for row in batch})
        return out

    single, spread = step_rows(1), step_rows(world_size)
    assert spread == single and all(len(rows) == 8 for rows in single)  # disjoint: 8 distinct windows per step


def test_every_rank_runs_as_many_validation_forwards(text_data, tmp_path):
    """A sharded forward is a collective: ranks with fewer windows still run as many batches;
    the nats and bytes they sum equal one process's."""
    preset = get_preset("tiny")
    data = load_dataset(text_data)
    cfg, model_cfg = resolve_lengths(TrainConfig(**{**preset.train, "eval_bytes": 64 * 9}),
                                     preset.model_config("megabyte"), data)
    totals = {}
    for world in (1, 2):
        sums, forwards = [], []
        for rank in range(world):
            runtime = Runtime(device=torch.device("cpu"), precision="fp32", rank=rank, world_size=world)
            runtime.sum = lambda values, sums=sums: sums.append(values) or values
            trainer = Trainer(cfg, model_cfg, data, tmp_path / f"{world}-{rank}", runtime, progress=False)
            calls = []
            trainer.model.register_forward_hook(lambda *_, calls=calls: calls.append(1))
            trainer.evaluate()
            forwards.append(len(calls))
        assert forwards == ([3] if world == 1 else [2, 2])  # 9 windows in 4s; 5 + 4 (the 2nd forward unscored)
        totals[world] = np.sum(sums, axis=0)
    assert totals[2][1] == totals[1][1] == 64 * 9
    assert totals[2][0] == pytest.approx(totals[1][0], rel=1e-6)


def test_parallel_settings_validate():
    assert TrainConfig(max_steps=1).parallel == "ddp"
    assert TrainConfig(max_steps=1, dist_timeout="10m").dist_timeout == 600
    _, train = split_overrides(["train.parallel=fsdp", "train.dist_timeout=90s"], TrainConfig)
    assert train == {"parallel": "fsdp", "dist_timeout": 90}
    with pytest.raises(MegabyteError, match="train.parallel: must be one of ddp, fsdp"):
        TrainConfig(max_steps=1, parallel="zero")
    assert TrainConfig(max_steps=1, parallel="fsdp", compile=True).compile  # blocks compiled, then sharded
    with pytest.raises(MegabyteError, match="train.dist_timeout"):
        TrainConfig(max_steps=1, dist_timeout=0)


def test_without_torchrun_a_process_is_rank_0_of_1(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert not launched_by_torchrun()
    runtime = init_distributed("cpu", "fp32", parallel="fsdp")
    assert (runtime.rank, runtime.world_size, runtime.distributed, runtime.sharded) == (0, 1, False, False)
    model = torch.nn.Linear(2, 2)
    assert runtime.wrap(model) is model and runtime.sum([1, 2.5]) == [1.0, 2.5]
    assert launched_by_torchrun({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"})


@pytest.mark.parametrize("precision, device, policy", [
    ("fp32", "cpu", None), ("bf16", "cpu", (torch.bfloat16, torch.float32, True)),
    ("bf16", "cuda", (torch.bfloat16, torch.float32, False)),
])
def test_fsdp_gathers_blocks_in_the_autocast_dtype(monkeypatch, precision, device, policy):
    """bf16 runs gather every block's weights in bf16 and reduce its gradients in fp32 (the
    residual stream enters a block as it is on CUDA, cast on the CPU); fp32 runs and the root
    get no policy. `fully_shard` recorded, not run: no process group is needed."""
    import torch.distributed.device_mesh
    import torch.distributed.fsdp

    from megabyte.model import build_model
    from megabyte.training.parallel import transformer_blocks

    calls = []
    monkeypatch.setattr(torch.distributed.device_mesh, "init_device_mesh", lambda *args, **kwargs: "mesh")
    monkeypatch.setattr(torch.distributed.fsdp, "fully_shard",
                        lambda module, **kwargs: calls.append((module, kwargs.get("mp_policy"))))
    model = build_model(get_preset("tiny").model_config("megabyte"))
    runtime = Runtime(device=torch.device(device), precision=precision, world_size=2, parallel="fsdp",
                      distributed=True)
    assert runtime.wrap(model) is model
    blocks = transformer_blocks(model)
    assert [module for module, _ in calls] == [*blocks, model]  # every block, then the root
    assert calls[-1][1] is None
    for _, mp in calls[:-1]:
        got = None if mp is None else (mp.param_dtype, mp.reduce_dtype, mp.cast_forward_inputs)
        assert got == policy
