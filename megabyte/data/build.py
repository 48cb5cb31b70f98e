"""The modality-independent part of `megabyte prepare`: read, split, write.

A modality supplies a reader ``read_groups(index, path, info) -> Iterator[bytes]`` that turns
one input file into *split groups*: the units that go to train or val as a whole (a text
file, an audio file, a photo with all its crops, one image of an array file). The reader may
put per-file facts (image count, source sample rate) into ``info``.

Every group is first appended to a staging file, so the split is chosen only among files that
decoded cleanly (``--skip-bad`` may drop some). Then:

* two or more non-empty groups: whole groups go to val, about ``val_fraction`` of the bytes
  and at least one group (:func:`choose_val_groups`, seeded);
* a single group (one text file, one audio file, one photo's crops): its tail becomes val
  (:func:`tail_split`), cut on a multiple of ``align`` (2 for audio samples, one image for
  images) so no sample or image is split.

Inside each split, bytes keep the input file order; each file's bytes are contiguous, and
``meta["files"]`` gives each file's offset and byte count per split.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from megabyte.data.format import SPLITS, DatasetWriter
from megabyte.data.sources import choose_val_groups, tail_split
from megabyte.errors import MegabyteError

Reader = Callable[[int, Path, dict[str, Any]], Iterator[bytes]]
_COPY_CHUNK = 1 << 24


@dataclass(frozen=True)
class Segment:
    """A byte range of the staging file bound for one split."""

    file: int
    start: int
    length: int
    split: str = "train"


def build_dataset(
    out: str | os.PathLike[str],
    *,
    recipe: dict[str, Any],
    files: Sequence[Path],
    read_groups: Reader,
    meta: dict[str, Any],
    val_fraction: float,
    seed: int,
    align: int = 1,
    unit: str = "file",
    skip_bad: bool = False,
) -> dict[str, Any]:
    """Read ``files`` through ``read_groups``, split, and write the dataset at ``out``.

    ``unit`` names what one group is ("file", "image"), for the record in ``meta["split"]``.
    ``meta`` holds the modality's own keys (modality, item_len, image or audio parameters);
    file list, split, byte counts and skipped files are added here. Returns the written meta.
    """
    with DatasetWriter(out, recipe) as writer:
        staging_path = writer.scratch("staging.bin")
        infos: list[dict[str, Any]] = [{} for _ in files]
        with open(staging_path, "w+b") as staging:
            groups, skipped = _stage(staging, files, read_groups, infos, skip_bad)
        segments, method = _assign(groups, val_fraction, seed, align)
        if not segments:
            raise MegabyteError(_empty_message(files, skipped))
        entries = _copy(staging_path, segments, writer, files, infos)
        staging_path.unlink()
        if writer.counts["train"] == 0:
            raise MegabyteError("no training bytes left after the split; add more input files")
        if val_fraction > 0 and writer.counts["val"] == 0:
            raise MegabyteError(
                "too little data to hold out a validation split; add inputs or pass --val-fraction 0"
            )
        full = {
            **meta,
            "split": {"method": method, "unit": unit, "val_fraction": val_fraction, "seed": seed},
            "files": [e for e in entries if e["train_bytes"] or e["val_bytes"]],
            "skipped": skipped,
        }
        return writer.finish(full)


def _empty_message(files: Sequence[Path], skipped: list[dict[str, str]]) -> str:
    if not files:
        return "empty corpus: no input files found"
    if len(skipped) == len(files):
        return f"no usable input: all {len(files)} files were skipped as bad"
    return f"empty corpus: the {len(files)} input files hold no data"


def _stage(
    staging: BinaryIO,
    files: Sequence[Path],
    read_groups: Reader,
    infos: list[dict[str, Any]],
    skip_bad: bool,
) -> tuple[list[Segment], list[dict[str, str]]]:
    """Append every group of every file to ``staging``; drop a bad file's partial output."""
    groups: list[Segment] = []
    skipped: list[dict[str, str]] = []
    for index, path in enumerate(files):
        mark, n_before = staging.tell(), len(groups)
        try:
            for data in read_groups(index, path, infos[index]):
                groups.append(Segment(index, staging.tell(), len(data)))
                staging.write(data)
        except MegabyteError as exc:
            if not skip_bad:
                raise
            staging.seek(mark)
            staging.truncate()
            del groups[n_before:]
            skipped.append({"path": str(path), "reason": str(exc)})
    return groups, skipped


def _assign(groups: list[Segment], val_fraction: float, seed: int, align: int) -> tuple[list[Segment], str]:
    """Bind staged groups (or, for a single group, its head and tail) to train and val."""
    nonempty = [g for g in groups if g.length > 0]
    if len(nonempty) == 1:
        g = nonempty[0]
        cut = tail_split(g.length, val_fraction, align)
        parts = [Segment(g.file, g.start, cut, "train"), Segment(g.file, g.start + cut, g.length - cut, "val")]
        return [p for p in parts if p.length > 0], "tail"
    val = choose_val_groups([g.length for g in nonempty], val_fraction, seed)
    segments = [Segment(g.file, g.start, g.length, "val" if i in val else "train") for i, g in enumerate(nonempty)]
    return segments, "whole"


def _copy(
    staging_path: Path,
    segments: list[Segment],
    writer: DatasetWriter,
    files: Sequence[Path],
    infos: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Copy segments into the split files, split by split, and account bytes per file."""
    entries = [
        {"path": str(p.absolute()), **{f"{s}_{k}": 0 for s in SPLITS for k in ("offset", "bytes")}, **infos[i]}
        for i, p in enumerate(files)
    ]
    staged = np.memmap(staging_path, dtype=np.uint8, mode="r") if staging_path.stat().st_size else None
    for split in SPLITS:
        last_file = -1
        for seg in (s for s in segments if s.split == split):
            if seg.file != last_file:
                entries[seg.file][f"{split}_offset"] = writer.counts[split]
                last_file = seg.file
            entries[seg.file][f"{split}_bytes"] += seg.length
            for lo in range(seg.start, seg.start + seg.length, _COPY_CHUNK):
                hi = min(lo + _COPY_CHUNK, seg.start + seg.length)
                writer.write(split, memoryview(staged[lo:hi]))  # type: ignore[index]
    del staged
    return entries
