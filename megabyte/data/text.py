"""Text corpora: files become bytes exactly as stored (UTF-8 or not), split by whole file."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from megabyte.data.build import build_dataset
from megabyte.data.sources import check_val_fraction, collect_files
from megabyte.errors import MegabyteError


def prepare_text(
    sources: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    val_fraction: float = 0.05,
    seed: int = 0,
    include: Sequence[str] = (),
) -> dict[str, Any]:
    """Turn text files and directories into a dataset at ``out``; returns its meta.

    Directories are walked recursively (sorted; hidden entries and ``__pycache__`` skipped;
    ``include`` patterns such as ``*.py`` filter their files). Files are concatenated as they
    are, with no separator. Whole files go to validation (seeded by ``seed``); a corpus of a
    single file gives the last ``val_fraction`` of its bytes to validation instead.
    """
    check_val_fraction(val_fraction)
    files = collect_files(sources, include=include, exclude=out)
    recipe = {
        "modality": "text",
        "inputs": [str(Path(s).absolute()) for s in sources],
        "include": list(include),
        "val_fraction": val_fraction,
        "seed": seed,
    }
    return build_dataset(
        out,
        recipe=recipe,
        files=files,
        read_groups=_read_text,
        meta={"modality": "text", "item_len": None},
        val_fraction=val_fraction,
        seed=seed,
    )


def _read_text(index: int, path: Path, info: dict[str, Any]) -> Iterator[bytes]:
    """One text file is one split group: its bytes, untouched."""
    try:
        yield path.read_bytes()
    except OSError as exc:
        raise MegabyteError(f"{path}: cannot read ({exc})") from exc


def stdlib_text(max_bytes: int) -> bytes:
    """Up to `max_bytes` of real text on every machine: the running Python's top-level standard
    library modules, sorted by name and concatenated."""
    import sysconfig

    out, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        if total >= max_bytes:
            break
        data = path.read_bytes()
        out.append(data)
        total += len(data)
    if not out:
        raise MegabyteError("found no standard library source")
    return b"".join(out)[:max_bytes]
