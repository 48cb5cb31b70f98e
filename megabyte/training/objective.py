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

import numpy as np
from torch import Tensor

from megabyte.data.dataset import BatchSampler, ByteDataset, load_dataset
from megabyte.errors import MegabyteError
from megabyte.evaluation import EvalResult, evaluate
from megabyte.model.base import byte_loss

HOLD_SHARE = 0.05
"""The share of the training split a learning-rate sweep holds back to score its trials on..."""
HOLD_MAX = 1 << 18
"""... at most this many bytes."""
UNIGRAM_SAMPLE = 1 << 24


class ByteObjective:
    """Next-byte prediction on a prepared dataset (`megabyte prepare`)."""

    unit = "bytes"
    bytes_per_position = 1.0

    def __init__(self, data: ByteDataset, *, train=None, val=None, scored_on: str = "the validation split") -> None:
        self.data = data
        self.scored_on = scored_on
        """Which bytes `validate` scores (a held-out objective: the end of the train split)."""
        self.meta: dict[str, Any] = data.meta
        self.directory: str = str(data.directory.resolve())
        self.modality: str = data.modality
        self.item_len: int | None = data.item_len
        self._train, self._val = train, val  # None: the dataset's splits (read when first needed)
        self.train_positions = int(data.meta["bytes"]["train"]) if train is None else len(train)

    @property
    def train(self):
        if self._train is None:
            self._train = self.data.split("train")
        return self._train

    @property
    def val(self):
        if self._val is None:
            self._val = self.data.split("val")
        return self._val

    def held_out(self) -> ByteObjective:
        """This objective with the end of the training split held back as its validation
        (`hold_back`, in whole images and samples): a learning-rate trial trains on the rest and
        is scored there, and the validation split is never read."""
        cut = hold_back(len(self.train), HOLD_MAX, self.item_len or self.data.align, "bytes")
        return ByteObjective(self.data, train=self.train[:cut], val=self.train[cut:],
                             scored_on=f"the last {len(self.train) - cut:,} bytes of the train split")

    def sampler(self, seq_len: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1) -> BatchSampler:
        # The dataset's layout (whole images, whole 16-bit audio samples) comes with the split.
        return BatchSampler.for_split(self.data, "train", seq_len, batch_size, seed=seed, rank=rank,
                                      world_size=world_size, part=self.train)

    def unigram_bits(self) -> float:
        """The entropy (bits per byte) of the training bytes' frequencies: what a model that has
        learned only byte frequencies scores (counted on up to 16 MiB spread over the split)."""
        return unigram_entropy(self.train, 256)

    def count(self, x: Tensor) -> int:
        return x.numel()

    def loss(self, logits: Tensor, x: Tensor) -> Tensor:
        return byte_loss(logits, x).nats

    def validate(self, model, *, seq_len: int, batch_size: int, max_bytes: int, rank: int, world_size: int,
                 device, autocast_dtype=None) -> EvalResult | None:
        """Basic inference over an evenly spaced sample of about `max_bytes` validation bytes
        (0: all of them), as `megabyte eval --sample-bytes max_bytes` scores it."""
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


def hold_back(n: int, most: float, unit: int = 1, what: str = "bytes") -> int:
    """Where the held-back end of a training split of `n` positions starts: `HOLD_SHARE` of it,
    at most `most` positions, in whole `unit`s, at least one unit. MegabyteError when less than
    that would be left to train on."""
    hold = max(unit, int(min(n * HOLD_SHARE, most)) // unit * unit)
    if n - hold < hold:
        raise MegabyteError(f"the train split ({n:,} {what}) is too small to hold back {hold:,} {what} "
                            "for the learning-rate sweep")
    return n - hold


def unigram_entropy(ids, vocab: int) -> float:
    """Entropy in bits of the frequencies of `ids` (1-D), counted on at most `UNIGRAM_SAMPLE`
    of them in 64 evenly spaced runs (a memory-mapped split is never read whole)."""
    n = len(ids)
    if n > UNIGRAM_SAMPLE:
        run = UNIGRAM_SAMPLE // 64
        ids = np.concatenate([np.asarray(ids[s : s + run]) for s in np.linspace(0, n - run, 64).astype(np.int64)])
    counts = np.bincount(np.asarray(ids, dtype=np.int64), minlength=vocab).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())
