"""Every window that training reads keeps the dataset's layout: audio windows start on whole
16-bit samples (the low byte), image windows on image boundaries. With one process, on each rank
of two, and after a resume; over several epochs, since each epoch moves the window grid.

The data is made so that a misplaced window shows in its first byte: every audio sample's low
byte is 0x01 and no high byte is; every image's first byte is 0xFF and no other byte is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from megabyte.data.dataset import BatchSampler, load_dataset
from megabyte.data.format import DatasetWriter
from megabyte.model import MegabyteConfig
from megabyte.training.config import TrainConfig
from megabyte.training.loop import Trainer, resolved_configs, train
from megabyte.training.runtime import Runtime

ITEM = 48  # a 4 x 4 RGB image


def layout_bytes(modality: str, n_items: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    if modality == "audio":  # n_items samples, little-endian: low byte 0x01, high byte 0x02..0xFE
        pairs = np.stack([np.ones(n_items, np.uint8), rng.integers(2, 255, n_items, dtype=np.uint8)], axis=1)
        return pairs.tobytes()
    images = rng.integers(0, 255, (n_items, ITEM), dtype=np.uint8)  # 0..254
    images[:, 0] = 255
    return images.tobytes()


def make_dataset(root: Path, modality: str) -> Path:
    out = root / modality
    n = 330 if modality == "audio" else 14  # about 10 windows an epoch: many epochs in a few steps
    if modality == "audio":
        meta = {"modality": "audio", "item_len": None, "sample_rate": 16000, "sample_width": 2, "channels": 1,
                "encoding": "pcm_s16le"}
    else:
        meta = {"modality": "image", "item_len": ITEM, "size": 4, "order": "patch", "patch_pixels": 2,
                "channels": 3, "crops": 0}
    with DatasetWriter(out, {"modality": modality, "test": "layout"}) as writer:
        writer.write("train", layout_bytes(modality, n, seed=1))
        writer.write("val", layout_bytes(modality, n // 4, seed=2))
        writer.finish(meta)
    return out


def misplaced(modality: str, batch: torch.Tensor) -> int:
    """How many rows of `batch` (B, T) do not start where the layout says a window may."""
    if modality == "audio":
        return int((batch[:, 0] != 1).sum())
    return int((batch[:, 0] != 255).sum())


@pytest.fixture
def windows(monkeypatch) -> list[torch.Tensor]:
    """Every batch any BatchSampler hands out while the test runs."""
    seen: list[torch.Tensor] = []
    original = BatchSampler.next_batch

    def spy(self):
        batch = original(self)
        seen.append(batch.clone())
        return batch

    monkeypatch.setattr(BatchSampler, "next_batch", spy)
    return seen


def configs(modality: str, steps: int) -> tuple[TrainConfig, MegabyteConfig]:
    seq = 64 if modality == "audio" else ITEM
    model = MegabyteConfig(patch_sizes=(4,), dims=(32, 16), depths=(1, 1), max_seq_len=64)
    cfg = TrainConfig(seq_len=seq, batch_size=4, max_steps=steps, warmup=1, eval_every=0, save_every=0,
                      log_every=5, precision="fp32", dropout=0.0)
    return cfg, model


@pytest.mark.parametrize("modality", ["audio", "image"])
def test_one_process_and_after_a_resume(modality, tmp_path, windows):
    data = make_dataset(tmp_path, modality)
    cfg, model = configs(modality, steps=8)
    run = tmp_path / "run"
    train(cfg, model, data, run, progress=False)
    first = len(windows)
    cfg, model = configs(modality, steps=16)
    train(cfg, model, data, run, resume=True, progress=False)
    assert first and len(windows) > first  # both legs trained
    rows = sum(b.shape[0] for b in windows)
    assert rows >= 16 * 4 and sum(misplaced(modality, b) for b in windows) == 0


@pytest.mark.parametrize("modality", ["audio", "image"])
def test_each_rank_of_two(modality, tmp_path, windows):
    data_dir = make_dataset(tmp_path, modality)
    cfg, model = configs(modality, steps=16)
    cfg, model = resolved_configs(cfg, model, data_dir)
    data = load_dataset(data_dir)
    for rank in (0, 1):
        runtime = Runtime(device=torch.device("cpu"), precision="fp32", rank=rank, world_size=2)
        trainer = Trainer(cfg, model, data, tmp_path / f"run{rank}", runtime, progress=False)
        assert trainer.micro_batch == 2  # half of the global batch of 4
        for _ in range(16):
            trainer.train_step()
    assert len(windows) == 32 and sum(misplaced(modality, b) for b in windows) == 0


def test_the_check_sees_a_misplaced_window(tmp_path):
    """The marker bytes do catch a window off the layout (so the tests above can fail)."""
    data = load_dataset(make_dataset(tmp_path, "audio"))
    unaligned = BatchSampler(data.split("train"), 64, 4, seed=0, align=1)
    off = sum(misplaced("audio", unaligned.next_batch()) for _ in range(40))
    assert off > 0
