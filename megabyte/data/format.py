"""The on-disk dataset format and its atomic writer.

A prepared dataset is a directory::

    DIR/train.bin   raw uint8 bytes, memory-mapped at training time
    DIR/val.bin     raw uint8 bytes (may be empty when --val-fraction is 0)
    DIR/meta.json   what the bytes are (see below)

``meta.json`` always holds ``format`` ("megabyte-dataset"), ``format_version``, ``modality``
("text" | "image" | "audio"), ``bytes`` ({"train": n, "val": m}), ``item_len`` (bytes per image,
or null), ``split`` (method, val_fraction, seed), ``recipe`` (everything that determines the
bytes: modality, inputs, options), ``files`` (per source file: path, split, byte counts) and
``skipped`` (files left out with --skip-bad, with the reason). Images add ``size``, ``order``,
``patch_pixels``, ``channels`` and ``items``; audio adds ``sample_rate``, ``sample_width`` and
``channels``.

Writing is atomic: everything goes into a temporary directory beside DIR, which is renamed to
DIR only once complete, so a crash or an error never leaves a half-written DIR. An existing DIR
is replaced only when its ``recipe`` equals the new one (the same command on the same inputs);
a DIR holding a different dataset, or a non-empty directory that is not a dataset, is an error.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from megabyte import __version__
from megabyte.atomic import replace_dir
from megabyte.errors import MegabyteError

FORMAT_NAME = "megabyte-dataset"
FORMAT_VERSION = 1
META_NAME = "meta.json"
SPLITS = ("train", "val")
MODALITIES = ("text", "image", "audio")


def bin_path(directory: str | os.PathLike[str], split: str) -> Path:
    """Path of a split's byte file inside a dataset directory."""
    return Path(directory) / f"{split}.bin"


def read_meta(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate ``DIR/meta.json``; a MegabyteError says what is wrong."""
    directory = Path(directory)
    path = directory / META_NAME
    if not directory.is_dir():
        raise MegabyteError(f"dataset directory {directory} does not exist")
    if not path.is_file():
        raise MegabyteError(f"{directory} is not a prepared dataset: it has no {META_NAME}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise MegabyteError(f"{path}: unreadable or corrupt ({exc})") from exc
    _check_meta(meta, path)
    return meta


def _check_meta(meta: Any, path: Path) -> None:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise MegabyteError(f"{path}: not a megabyte dataset description")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise MegabyteError(
            f"{path}: dataset format version {version!r} is newer than this megabyte-lm "
            f"understands ({FORMAT_VERSION}); upgrade megabyte-lm"
        )
    if meta.get("modality") not in MODALITIES:
        raise MegabyteError(f"{path}: unknown modality {meta.get('modality')!r}")
    counts = meta.get("bytes")
    if not isinstance(counts, dict) or not all(isinstance(counts.get(s), int) for s in SPLITS):
        raise MegabyteError(f"{path}: missing or invalid byte counts")


class DatasetWriter:
    """Write a dataset directory atomically.

    Usage::

        with DatasetWriter(out, recipe) as writer:    # checks `out` before any work
            writer.write("train", some_bytes)
            writer.write("val", other_bytes)
            writer.finish(meta)                        # writes meta.json, renames into place

    Leaving the ``with`` block without ``finish`` (an exception, Ctrl-C) deletes the
    temporary directory and leaves ``out`` as it was.
    """

    def __init__(self, out: str | os.PathLike[str], recipe: dict[str, Any]) -> None:
        self.out = Path(out)
        self.recipe = recipe
        self.replaces_existing = check_output_dir(self.out, recipe)
        self.counts = dict.fromkeys(SPLITS, 0)
        self._tmp: Path | None = None
        self._files: dict[str, Any] = {}

    def __enter__(self) -> DatasetWriter:
        parent = self.out.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            # Not mkdtemp: its 0700 mode would stick to the published dataset; mkdir honours umask.
            self._tmp = parent / f".{self.out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
            self._tmp.mkdir()
            self._files = {s: open(bin_path(self._tmp, s), "wb") for s in SPLITS}
        except OSError as exc:
            self._cleanup()
            raise MegabyteError(f"cannot create the output directory {self.out}: {exc}") from exc
        return self

    def scratch(self, name: str) -> Path:
        """A path for a temporary file inside the (unpublished) output; delete it before finish."""
        assert self._tmp is not None, "scratch() outside the with-block"
        return self._tmp / name

    def write(self, split: str, data: bytes | bytearray | memoryview) -> None:
        """Append bytes to the ``train`` or ``val`` split."""
        self._files[split].write(data)
        self.counts[split] += len(data)

    def finish(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Complete ``meta`` (format, version, recipe, byte counts), write it, publish the dir.

        Returns the complete meta, as written to ``meta.json``.
        """
        assert self._tmp is not None, "finish() outside the with-block"
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        tail = {k: meta[k] for k in ("skipped", "files") if k in meta}  # long lists last
        full = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "created_by": f"megabyte-lm {__version__}",
            **{k: v for k, v in meta.items() if k not in tail},
            "bytes": dict(self.counts),
            "recipe": self.recipe,
            **tail,
        }
        (self._tmp / META_NAME).write_text(json.dumps(full, indent=1) + "\n", encoding="utf-8")
        replace_dir(self._tmp, self.out)  # an old dataset survives a failed replacement
        self._tmp = None
        return full

    def __exit__(self, *exc_info: object) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        for f in self._files.values():
            f.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def check_output_dir(out: Path, recipe: dict[str, Any]) -> bool:
    """Decide whether ``out`` may receive a dataset made by ``recipe``.

    Returns False when ``out`` is absent or an empty directory, True when it holds a dataset
    with the same recipe (it will be replaced), and raises MegabyteError otherwise.
    """
    if not out.exists():
        return False
    if not out.is_dir():
        raise MegabyteError(f"--out {out} exists and is not a directory")
    if not any(out.iterdir()):
        return False
    if not (out / META_NAME).is_file():
        raise MegabyteError(f"--out {out} is a non-empty directory that is not a megabyte dataset")
    try:
        existing = json.loads((out / META_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise MegabyteError(f"--out {out} holds an unreadable {META_NAME} ({exc}); remove it first") from exc
    old = existing.get("recipe") if isinstance(existing, dict) else None
    if old != recipe:
        raise MegabyteError(
            f"--out {out} already holds a different dataset ({_recipe_difference(old, recipe)}); "
            "choose another --out or delete it"
        )
    return True


def _recipe_difference(old: Any, new: dict[str, Any]) -> str:
    if not isinstance(old, dict):
        return "no recipe recorded"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "differs in " + ", ".join(keys)
