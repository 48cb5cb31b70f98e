"""Checkpoint pieces: optimizer state by parameter name, RNG states as JSON, atomic saves, and
the sharded (FSDP2) format written by one process (tests/distributed writes it with two)."""

from __future__ import annotations

import json

import pytest
import torch

import megabyte
from megabyte.training import checkpoint as ckpt
from megabyte.training.config import TrainConfig
from megabyte.training.optim import build_optimizer


def small_model():
    return megabyte.Megabyte(megabyte.MegabyteConfig(patch_sizes=(4,), dims=(32, 16), depths=(1, 1), max_seq_len=16))


def stepped_optimizer(model):
    opt = build_optimizer(model, TrainConfig(max_steps=1), torch.device("cpu"))
    for _ in range(2):
        x = torch.randint(0, 256, (2, 16))
        model.loss(x).mean.backward()
        opt.step()
        opt.zero_grad()
    return opt


def save(run, step, model, opt, keep_last=2, shards=None):
    tensors, meta = ckpt.optimizer_state(opt, model)
    return ckpt.save_checkpoint(run, step, model=model, trainer_state={"step": step, "optimizer": meta},
                                optimizer_tensors=tensors, data_meta={"modality": "text"}, keep_last=keep_last,
                                shards=shards)


def one_process():
    """What `save_checkpoint(shards=...)` asks of the runtime, for one process without a group."""
    from megabyte.training.runtime import Runtime

    return Runtime(device=torch.device("cpu"), precision="fp32")


def test_optimizer_state_round_trip():
    model = small_model()
    opt = stepped_optimizer(model)
    tensors, meta = ckpt.optimizer_state(opt, model)
    assert "head.weight/exp_avg" not in tensors  # tied to the byte embedding: stored once
    assert any(k.endswith("/exp_avg_sq") for k in tensors)
    json.dumps(meta)  # the rest is JSON-safe

    fresh = small_model()
    fresh.load_state_dict(model.state_dict())
    other = build_optimizer(fresh, TrainConfig(max_steps=1), torch.device("cpu"))
    from safetensors.torch import load, save

    ckpt.load_optimizer_state(other, fresh, load(save(tensors)), json.loads(json.dumps(meta)), "test")
    a, b = opt.state_dict(), other.state_dict()
    for index, entry in a["state"].items():
        for key, value in entry.items():
            assert torch.equal(value, b["state"][index][key])
    # The next steps of both are identical.
    x = torch.randint(0, 256, (2, 16))
    for m, o in ((model, opt), (fresh, other)):
        m.loss(x).mean.backward()
        o.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), fresh.parameters()))


def test_optimizer_state_of_another_model_is_refused():
    model = small_model()
    tensors, meta = ckpt.optimizer_state(stepped_optimizer(model), model)
    other = megabyte.Transformer(megabyte.TransformerConfig(dim=32, depth=1, max_seq_len=16))
    opt = build_optimizer(other, TrainConfig(max_steps=1), torch.device("cpu"))
    with pytest.raises(megabyte.MegabyteError, match="optimizer state does not match"):
        ckpt.load_optimizer_state(opt, other, tensors, meta, "optimizer.safetensors")


def test_saves_are_atomic_pruned_and_loadable(tmp_path):
    model = small_model()
    opt = stepped_optimizer(model)
    for step in (1, 2, 3):
        save(tmp_path, step, model, opt)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000003"
    loaded = megabyte.load(tmp_path)
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), loaded.state_dict().values()))
    # Saving the same step again replaces it.
    save(tmp_path, 3, model, opt)
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000003"
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model = small_model()
    opt = stepped_optimizer(model)
    save(tmp_path, 1, model, opt)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        save(tmp_path, 2, model, opt)
    assert (tmp_path / "latest").read_text().strip() == "checkpoints/step-00000001"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000001"]
    megabyte.load(tmp_path)


@pytest.mark.parametrize("name", ["megabyte-2stage", "transformer", "perceiver-ar"])
def test_a_sharded_checkpoint_holds_each_tensor_once_and_loads_in_full(name, tmp_path):
    """The sharded format, written by one process (DCP without a process group): tied weights
    stored once, `megabyte.load` gives the same model back, the optimizer tensors come back whole."""
    from tests.model.configs import make

    model = make(name).train()
    opt = build_optimizer(model, TrainConfig(max_steps=1), torch.device("cpu"))
    x = torch.randint(0, 256, (2, 16))
    model.loss(x).mean.backward()
    opt.step()
    path = save(tmp_path, 1, model, opt, shards=one_process())
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "data_meta.json", "model", "optimizer",
                                                      "shards.json", "trainer_state.json"]
    held = ckpt.model_tensors(model)
    assert len(held) == len({t.data_ptr() for t in held.values()}) == len(list(model.parameters())) + len(
        list(model.buffers()))  # every tied parameter once
    loaded = megabyte.load(tmp_path)
    want = model.state_dict()
    assert list(loaded.state_dict()) == list(want)
    assert all(torch.equal(loaded.state_dict()[k], want[k]) for k in want)
    tensors, _ = ckpt.optimizer_state(opt, model)
    got = ckpt.read_sharded_tensors(path, ckpt.OPTIMIZER_SHARDS)
    assert set(got) == set(tensors) and all(torch.equal(got[k], tensors[k]) for k in tensors)


def test_a_failed_sharded_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    model = small_model()
    opt = stepped_optimizer(model)
    save(tmp_path, 1, model, opt, shards=one_process())

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save", disk_full)  # what DCP's writer calls for every shard
    with pytest.raises(OSError, match="No space"):  # an OSError still, for the trainer's message
        save(tmp_path, 2, model, opt, shards=one_process())
    assert (tmp_path / "latest").read_text().strip() == "checkpoints/step-00000001"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000001"]
    megabyte.load(tmp_path)


def test_stale_temporaries_are_removed(tmp_path):
    stale = tmp_path / "checkpoints" / ".tmp-step-00000005-123-abcd"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    ckpt.remove_stale_temporaries(tmp_path)
    assert not stale.exists()


def test_rng_state_is_json_and_restores():
    state = json.loads(json.dumps(ckpt.rng_state()))
    a = torch.rand(4)
    ckpt.set_rng_state(state)
    assert torch.equal(a, torch.rand(4))


def test_latest_must_point_inside_the_run(tmp_path):
    (tmp_path / "latest").write_text("../../etc\n")
    with pytest.raises(megabyte.MegabyteError, match="does not name a checkpoint"):
        ckpt.latest_checkpoint(tmp_path)
