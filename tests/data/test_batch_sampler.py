"""load_dataset and BatchSampler: memory maps, corruption checks, exact resume, ranks, images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from megabyte.data.dataset import BatchSampler, epoch_window_starts, load_dataset
from megabyte.data.text import prepare_text
from megabyte.errors import MegabyteError

JSON_DIR = Path(json.__file__).parent


@pytest.fixture
def data() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8)


def _batches(sampler: BatchSampler, n: int) -> list[torch.Tensor]:
    return [sampler.next_batch() for _ in range(n)]


def test_batches_are_byte_windows_of_the_data(data: np.ndarray) -> None:
    sampler = BatchSampler(data, 64, 4, seed=0)
    batch = sampler.next_batch()
    assert batch.shape == (4, 64) and batch.dtype == torch.long
    text = data.tobytes()
    for row in batch:
        assert bytes(row.to(torch.uint8).tolist()) in text


def test_restored_sampler_yields_the_same_batches(data: np.ndarray) -> None:
    original = BatchSampler(data, 100, 8, seed=5)
    _batches(original, 30)  # 240 windows: crosses epoch boundaries (99 windows per epoch)
    state = json.loads(json.dumps(original.state_dict()))  # survives JSON
    expected = _batches(original, 40)
    restored = BatchSampler(data, 100, 8, seed=5)
    restored.load_state_dict(state)
    for a, b in zip(expected, _batches(restored, 40)):
        assert torch.equal(a, b)


def test_same_seed_same_stream_other_seed_other_stream(data: np.ndarray) -> None:
    a, b, c = (BatchSampler(data, 50, 4, seed=s) for s in (1, 1, 2))
    assert all(torch.equal(x, y) for x, y in zip(_batches(a, 5), _batches(b, 5)))
    assert not torch.equal(BatchSampler(data, 50, 4, seed=1).next_batch(), c.next_batch())


def test_an_epoch_visits_disjoint_windows_covering_the_data(data: np.ndarray) -> None:
    starts = epoch_window_starts(len(data), 64, 1, seed=3, epoch=0)
    assert len(set(starts.tolist())) == len(starts) == (len(data) - starts.min()) // 64
    assert starts.min() < 64 and np.all((starts - starts.min()) % 64 == 0)
    other = epoch_window_starts(len(data), 64, 1, seed=3, epoch=1)
    assert not np.array_equal(starts, other)


def test_ranks_read_disjoint_windows_that_make_up_the_global_batch(data: np.ndarray) -> None:
    world, per_rank = 3, 4
    ranks = [BatchSampler(data, 64, per_rank, seed=9, rank=r, world_size=world) for r in range(world)]
    single = BatchSampler(data, 64, world * per_rank, seed=9)
    seen: set[bytes] = set()
    for _ in range(5):  # 60 windows, within the first epoch of ~155
        parts = [s.next_batch() for s in ranks]
        assert torch.equal(torch.cat(parts), single.next_batch())  # world size does not change the data
        for part in parts:
            for row in part:
                key = bytes(row.to(torch.uint8).tolist())
                assert key not in seen  # no window is read twice, by any rank
                seen.add(key)
    assert ranks[0].state_dict() == ranks[2].state_dict()  # one state for all ranks


def test_image_windows_start_on_whole_images() -> None:
    item_len, n_images = 12, 50
    data = np.repeat(np.arange(n_images, dtype=np.uint8), item_len)  # image i is twelve bytes of value i
    sampler = BatchSampler(data, 3 * item_len, 5, seed=0, item_len=item_len)
    for _ in range(20):
        for row in sampler.next_batch():
            images = row.view(3, item_len)
            assert torch.all(images == images[:, :1])  # each image complete, none cut
            assert torch.all(images[1:, 0] - images[:-1, 0] == 1)  # consecutive images


def test_sampler_argument_errors(data: np.ndarray) -> None:
    with pytest.raises(MegabyteError, match="multiple of the image size"):
        BatchSampler(data[:1200], 20, 2, seed=0, item_len=12)
    with pytest.raises(MegabyteError, match="fewer than one window"):
        BatchSampler(data[:10], 64, 2, seed=0)
    with pytest.raises(MegabyteError, match="rank 2 is not within world_size 2"):
        BatchSampler(data, 64, 2, seed=0, rank=2, world_size=2)
    sampler = BatchSampler(data, 64, 2, seed=0)
    with pytest.raises(MegabyteError, match="saved seq_len=32"):
        sampler.load_state_dict(BatchSampler(data, 32, 2, seed=0).state_dict())


def test_load_dataset_maps_the_splits(tmp_path: Path) -> None:
    prepare_text([JSON_DIR], tmp_path / "ds", val_fraction=0.4)
    ds = load_dataset(tmp_path / "ds")
    train = ds.split("train")
    assert isinstance(train, np.memmap) and train.dtype == np.uint8
    assert len(train) == ds.meta["bytes"]["train"] and ds.modality == "text" and ds.item_len is None
    with pytest.raises(MegabyteError, match="unknown split 'test'"):
        ds.split("test")


def test_load_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(MegabyteError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(MegabyteError, match="no meta.json"):
        load_dataset(tmp_path / "plain")
    prepare_text([JSON_DIR], tmp_path / "ds", val_fraction=0.4)
    meta_path = tmp_path / "ds" / "meta.json"
    good_meta = meta_path.read_text()
    meta_path.write_text(good_meta[:50])
    with pytest.raises(MegabyteError, match="corrupt"):
        load_dataset(tmp_path / "ds")
    meta_path.write_text(good_meta)
    with open(tmp_path / "ds" / "val.bin", "ab") as f:
        f.write(b"extra")
    with pytest.raises(MegabyteError, match="meta.json says .* the dataset is corrupt"):
        load_dataset(tmp_path / "ds").split("val")
    (tmp_path / "ds" / "train.bin").unlink()
    with pytest.raises(MegabyteError, match="train.bin is missing"):
        load_dataset(tmp_path / "ds").split("train")


def test_audio_windows_start_on_whole_samples(tmp_path: Path) -> None:
    from data_helpers import write_wav

    from megabyte.data.audio import prepare_audio

    samples = np.arange(-3000, 3000, dtype=np.int16)
    write_wav(tmp_path / "a.wav", samples, 16000)
    prepare_audio([tmp_path / "a.wav"], tmp_path / "ds", val_fraction=0.1)
    ds = load_dataset(tmp_path / "ds")
    assert ds.align == 2
    sampler = BatchSampler.for_split(ds, "train", 64, 8, seed=4)
    for _ in range(30):
        for row in sampler.next_batch():
            values = np.frombuffer(row.to(torch.uint8).numpy().tobytes(), "<i2")
            assert np.all(np.diff(values) == 1)  # read as whole samples, they are consecutive
    with pytest.raises(MegabyteError, match="multiple of the window alignment 2"):
        BatchSampler.for_split(ds, "train", 63, 8, seed=4)
