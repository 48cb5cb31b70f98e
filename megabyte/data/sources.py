"""Finding input files and choosing the train/validation split, shared by every modality.

File order is deterministic: the SRC arguments in the order given, each directory walked
recursively with its files sorted by relative path. Hidden files and directories (names
starting with ".") and ``__pycache__`` are skipped inside directories; a file named
explicitly is always used.
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from megabyte.errors import MegabyteError

_SKIPPED_DIRS = {"__pycache__"}


def collect_files(
    sources: Sequence[str | os.PathLike[str]],
    accept: Callable[[Path], bool] | None = None,
    include: Sequence[str] = (),
    exclude: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """Expand files and directories into a deterministic, de-duplicated list of files.

    ``accept`` filters files found inside directories (e.g. by extension); ``include`` is a
    list of shell patterns (``*.py``) that such files' names must match, when given.
    Files under ``exclude`` (the output directory, when it lies inside a source) are left out.
    A missing path is a MegabyteError naming it.
    """
    skip = Path(exclude).resolve() if exclude is not None else None
    found: list[Path] = []
    seen: set[Path] = set()
    for source in sources:
        path = Path(source)
        if not path.exists():
            raise MegabyteError(f"input path {source} does not exist")
        if path.is_dir():
            candidates = [f for f in _walk(path) if (accept is None or accept(f)) and _included(f, include)]
        else:
            candidates = [path]
        for f in candidates:
            key = f.resolve()
            if skip is not None and key.is_relative_to(skip):
                continue
            if key not in seen:
                seen.add(key)
                found.append(f)
    return found


def _walk(root: Path) -> list[Path]:
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in _SKIPPED_DIRS]
        files.extend(Path(dirpath) / name for name in filenames if not name.startswith("."))
    return sorted((f for f in files if f.is_file()), key=lambda f: f.relative_to(root).as_posix())


def _included(path: Path, patterns: Sequence[str]) -> bool:
    return not patterns or any(fnmatch.fnmatch(path.name, p) for p in patterns)


def check_val_fraction(val_fraction: float) -> None:
    """``--val-fraction`` must lie in [0, 1)."""
    if not 0.0 <= val_fraction < 1.0:
        raise MegabyteError(f"--val-fraction must be in [0, 1), got {val_fraction}")


def choose_val_groups(sizes: Sequence[int], val_fraction: float, seed: int) -> set[int]:
    """Pick which whole groups (files, images), of the given byte sizes, go to validation.

    Groups are visited in an order drawn from ``seed``; each joins validation if the
    validation bytes then stay within ``val_fraction`` of all bytes. If none fits, the smallest
    group does (ties broken by the same order), so there is always one validation group when
    ``val_fraction > 0`` and there are two or more groups, and never all of them. The same
    seed gives the same split.
    """
    if val_fraction <= 0 or len(sizes) < 2:
        return set()
    order = [int(i) for i in np.random.default_rng(seed).permutation(len(sizes))]
    budget = val_fraction * sum(sizes)
    chosen: set[int] = set()
    taken = 0
    for i in order:
        if taken + sizes[i] <= budget:
            chosen.add(i)
            taken += sizes[i]
    if not chosen:
        chosen.add(min(order, key=lambda i: sizes[i]))  # min keeps the first of equal sizes
    return chosen


def tail_split(n_bytes: int, val_fraction: float, align: int = 1) -> int:
    """Bytes of a single source that go to training when its tail becomes validation.

    The tail holds ``ceil(val_fraction * n_bytes)`` bytes (at least ``align`` when possible),
    and the cut falls on a multiple of ``align`` (2 for 16-bit audio samples).
    """
    if val_fraction <= 0 or n_bytes < 2 * align:
        return n_bytes
    val = max(align, math.ceil(val_fraction * n_bytes / align) * align)
    return max(align, (n_bytes - val) // align * align)
