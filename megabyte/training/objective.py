"""What a `Trainer` trains on: where batches come from, what a batch's loss counts in nats and
bytes, and how validation scores. The training loop is the same for every objective.

    ByteObjective(load_dataset("data/text"))   the dataset's bytes: one position is one byte
    TokenObjective(...)                        BPE tokens of text (`megabyte.compare.subword`)

An objective gives:

    sampler(seq_len, batch, seed, rank, world_size)   a `BatchSampler` of (B, T) positions
    count(x)          the bytes of data a batch of positions stands for (bits per *byte*)
    loss(logits, x)   summed next-position nats of a batch
    validate(model, ...)  an `megabyte.evaluation.EvalResult` (this rank's sums): summed nats
                          and bytes over an evenly spaced sample of about `max_bytes` of the
                          validation split, scored by `megabyte.evaluation`, the code
                          `megabyte eval` runs
    meta, directory, modality, item_len, train_positions, describe()   for checkpoints and logs
    write_files(run_dir)  what a run needs beside its checkpoints (a tokenizer)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from megabyte.data.dataset import BatchSampler, ByteDataset, load_dataset
from megabyte.evaluation import EvalResult, evaluate
from megabyte.model.base import byte_loss


class ByteObjective:
    """Next-byte prediction on a prepared dataset (`megabyte prepare`)."""

    unit = "bytes"
    bytes_per_position = 1.0

    def __init__(self, data: ByteDataset) -> None:
        self.data = data
        self.meta: dict[str, Any] = data.meta
        self.directory: str = str(data.directory.resolve())
        self.modality: str = data.modality
        self.item_len: int | None = data.item_len
        self.train_positions = int(data.meta["bytes"]["train"])
        self._val = None

    @property
    def val(self):
        if self._val is None:
            self._val = self.data.split("val")
        return self._val

    def sampler(self, seq_len: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1) -> BatchSampler:
        # The dataset's layout (whole images, whole 16-bit audio samples) comes with the split.
        return BatchSampler.for_split(self.data, "train", seq_len, batch_size, seed=seed, rank=rank,
                                      world_size=world_size)

    def count(self, x: Tensor) -> int:
        return x.numel()

    def loss(self, logits: Tensor, x: Tensor) -> Tensor:
        return byte_loss(logits, x).nats

    def validate(self, model, *, seq_len: int, batch_size: int, max_bytes: int, rank: int, world_size: int,
                 device, autocast_dtype=None) -> EvalResult | None:
        """Basic inference over an evenly spaced sample of about `max_bytes` validation bytes
        (0: all of them), as `megabyte eval --method basic --sample-bytes max_bytes` scores it."""
        if len(self.val) == 0:
            return None
        return evaluate(model, self.val, seq_len=seq_len, batch_size=batch_size, sample_bytes=max_bytes or None,
                        item_len=self.item_len, align=self.data.align, rank=rank, world_size=world_size,
                        device=device, autocast_dtype=autocast_dtype)

    def describe(self) -> str:
        from megabyte.training.metrics import human

        return f"{self.modality} data: {human(self.train_positions)} train / {human(len(self.val))} val bytes"

    def write_files(self, run_dir: Path) -> None:
        """Nothing beside the checkpoints: the dataset stays where it is."""


def as_objective(data):
    """A dataset directory or a `ByteDataset` as the objective of its bytes; an objective as it is."""
    if isinstance(data, (str, Path)):
        data = load_dataset(data)
    if isinstance(data, ByteDataset):
        return ByteObjective(data)
    return data
