"""Reading a prepared dataset, and the deterministic, resumable batch source for training.

``load_dataset(DIR).split("train")`` is a read-only ``numpy.memmap`` of uint8 bytes.

:class:`BatchSampler` walks the data in *epochs*. Each epoch cuts the split into
non-overlapping windows of ``seq_len`` bytes, starting at a random offset (so window edges move
between epochs), and visits them in a random order; both are drawn from a generator seeded
with ``(seed, epoch)``. All ranks walk this same global stream; global batch ``g`` is the
``world_size * batch_size`` windows that follow, and rank ``r`` takes its own contiguous
``batch_size`` of them. So within an epoch no two ranks (and no two batches) read the same
bytes, the global batch does not depend on how it is spread over ranks, and the whole state is
two integers (epoch, position), identical on every rank.

Image datasets (``item_len`` set) use windows of whole images: ``seq_len`` must be a multiple of
``item_len``, and windows and offsets start on image boundaries. Audio datasets pass
``align=2`` so that windows start on whole 16-bit samples (the low byte first);
:meth:`BatchSampler.for_split` sets both from a dataset's meta.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megabyte.data.format import SPLITS, bin_path, read_meta
from megabyte.errors import MegabyteError

_STATE_VERSION = 1


class ByteDataset:
    """A prepared dataset directory: its ``meta`` and its memory-mapped splits."""

    def __init__(self, directory: str | os.PathLike[str], meta: dict[str, Any]) -> None:
        self.directory = Path(directory)
        self.meta = meta

    @property
    def modality(self) -> str:
        """"text", "image" or "audio"."""
        return str(self.meta["modality"])

    @property
    def align(self) -> int:
        """Window starts must be multiples of this: the image size, the audio sample width, or 1."""
        if self.item_len:
            return self.item_len
        return int(self.meta.get("sample_width", 2)) if self.modality == "audio" else 1

    @property
    def item_len(self) -> int | None:
        """Bytes per image for image datasets (windows align to it), else None."""
        value = self.meta.get("item_len")
        return int(value) if value else None

    def split(self, name: str) -> np.ndarray:
        """The bytes of split ``name`` ("train" or "val"), memory-mapped read-only.

        An empty split is a zero-length array. A file whose size differs from ``meta.json``
        is a MegabyteError (the dataset is corrupt or was modified).
        """
        if name not in SPLITS:
            raise MegabyteError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        path = bin_path(self.directory, name)
        if not path.is_file():
            raise MegabyteError(f"{path} is missing: the dataset at {self.directory} is incomplete")
        expected = int(self.meta["bytes"][name])
        actual = path.stat().st_size
        if actual != expected:
            raise MegabyteError(
                f"{path} holds {actual} bytes but meta.json says {expected}: the dataset is corrupt"
            )
        if self.item_len and actual % self.item_len:
            raise MegabyteError(f"{path}: {actual} bytes is not a whole number of {self.item_len}-byte images")
        if actual == 0:
            return np.zeros(0, dtype=np.uint8)
        return np.memmap(path, dtype=np.uint8, mode="r")


def load_dataset(directory: str | os.PathLike[str]) -> ByteDataset:
    """Open a dataset written by ``megabyte prepare``; MegabyteError if it is not one."""
    return ByteDataset(directory, read_meta(directory))


def even_windows(data: np.ndarray, length: int, count: int) -> np.ndarray:
    """Up to `count` non-overlapping windows (k, length) of `data`, evenly spaced over it (all the
    whole windows there are when fewer fit); empty (0, length) when none fits."""
    fits = len(data) // length
    if fits == 0:
        return np.zeros((0, length), dtype=np.int64)
    starts = np.unique(np.linspace(0, len(data) - length, min(count, fits)).astype(np.int64))
    return np.stack([np.asarray(data[s : s + length], dtype=np.int64) for s in starts])


class BatchSampler:
    """Deterministic, resumable random windows of ``seq_len`` bytes for one rank.

    ``next_batch()`` returns a ``torch.LongTensor`` of shape ``(batch_size, seq_len)``.
    ``state_dict()`` is a small JSON-serialisable dict; a sampler given it through
    ``load_state_dict`` yields exactly the batches the original would have yielded next.
    The state is the same on every rank, so rank 0 can save it for all.
    """

    def __init__(
        self,
        data: np.ndarray,
        seq_len: int,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        item_len: int | None = None,
        align: int = 1,
    ) -> None:
        _check_sampler_args(len(data), seq_len, batch_size, rank, world_size, item_len, align)
        self.data = data
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.item_len = item_len
        self.align = align
        self.unit = item_len or align  # window starts are multiples of this
        self.epoch = 0
        self.position = 0  # windows of the current epoch already consumed (by all ranks)
        self._starts: np.ndarray | None = None  # (windows,) byte offsets of the current epoch

    @classmethod
    def for_split(
        cls,
        dataset: ByteDataset,
        split: str,
        seq_len: int,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        part: np.ndarray | None = None,
    ) -> BatchSampler:
        """A sampler over ``dataset.split(split)`` (or `part`, a slice of it) with the dataset's
        image size and alignment."""
        item_len = dataset.item_len
        data = dataset.split(split) if part is None else part
        return cls(data, seq_len, batch_size, seed=seed, rank=rank, world_size=world_size,
                   item_len=item_len, align=1 if item_len else dataset.align)

    def next_batch(self) -> torch.Tensor:
        """The next ``(batch_size, seq_len)`` batch of byte values for this rank."""
        starts = self._take(self.world_size * self.batch_size)
        mine = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        rows = np.stack([np.asarray(self.data[s : s + self.seq_len]) for s in mine])  # (B, T)
        return torch.from_numpy(rows.astype(np.int64))

    def _take(self, count: int) -> np.ndarray:
        """The next ``count`` window starts of the global stream, crossing epochs as needed."""
        taken: list[np.ndarray] = []
        while count > 0:
            starts = self._epoch_starts()
            if self.position >= len(starts):
                self.epoch, self.position, self._starts = self.epoch + 1, 0, None
                continue
            chunk = starts[self.position : self.position + count]
            taken.append(chunk)
            self.position += len(chunk)
            count -= len(chunk)
        return np.concatenate(taken)

    def _epoch_starts(self) -> np.ndarray:
        """Window start offsets of the current epoch, in visiting order (cached)."""
        if self._starts is None:
            self._starts = epoch_window_starts(len(self.data), self.seq_len, self.unit, self.seed, self.epoch)
        return self._starts

    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands, plus what it depends on (checked on load)."""
        return {
            "version": _STATE_VERSION,
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "item_len": self.item_len,
            "align": self.align,
            "data_len": len(self.data),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; MegabyteError if it belongs to a different stream.

        Batch size and world size may differ from the saved run: the position is counted in
        windows of the global stream.
        """
        mine = self.state_dict()
        for key in ("version", "seed", "seq_len", "item_len", "align", "data_len"):
            if state.get(key) != mine[key]:
                raise MegabyteError(
                    f"cannot resume the data stream: saved {key}={state.get(key)!r} but now {mine[key]!r}"
                )
        self.epoch, self.position, self._starts = int(state["epoch"]), int(state["position"]), None


def epoch_window_starts(data_len: int, seq_len: int, unit: int, seed: int, epoch: int) -> np.ndarray:
    """Byte offsets of epoch ``epoch``'s non-overlapping windows, shuffled.

    The grid starts at a random multiple of ``unit`` below ``seq_len`` (never so far that no
    window fits), so over several epochs every position can begin a window.
    """
    rng = np.random.default_rng([seed, epoch])
    slack = data_len - seq_len  # room left after one window
    offset = int(rng.integers(0, min((seq_len - 1) // unit, slack // unit) + 1)) * unit
    count = (data_len - offset) // seq_len
    starts = offset + seq_len * np.arange(count, dtype=np.int64)
    return starts[rng.permutation(count)]


def _check_sampler_args(
    data_len: int, seq_len: int, batch_size: int, rank: int, world_size: int, item_len: int | None, align: int
) -> None:
    if seq_len < 1 or batch_size < 1:
        raise MegabyteError(f"seq_len and batch_size must be positive, got {seq_len} and {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise MegabyteError(f"rank {rank} is not within world_size {world_size}")
    if item_len is not None and (item_len < 1 or seq_len % item_len):
        raise MegabyteError(
            f"seq_len {seq_len} must be a multiple of the image size in bytes ({item_len}) "
            "so that windows hold whole images"
        )
    if align < 1 or seq_len % align:
        raise MegabyteError(f"seq_len {seq_len} must be a multiple of the window alignment {align}")
    if data_len < seq_len:
        raise MegabyteError(f"the data holds {data_len} bytes, fewer than one window of seq_len={seq_len}")
    if item_len is not None and data_len % item_len:
        raise MegabyteError(f"the data ({data_len} bytes) is not a whole number of {item_len}-byte images")
