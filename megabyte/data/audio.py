"""Audio datasets: each file becomes mono 16-bit little-endian PCM at one sample rate.

Files are decoded with soundfile (WAV, FLAC, OGG/Vorbis, AIFF, MP3 ... whatever libsndfile
reads), averaged to mono and resampled with a polyphase band-limited filter
(:mod:`megabyte.data.codecs`). The stream is the files' samples concatenated in input order;
``meta["files"]`` keeps each file's offset and byte count per split, its source sample rate,
channel count and duration. Whole files go to validation; a single file gives its tail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from megabyte.data.build import build_dataset
from megabyte.data.codecs import SAMPLE_WIDTH, read_audio, samples_to_pcm16
from megabyte.data.sources import check_val_fraction, collect_files
from megabyte.errors import MegabyteError

#: File name endings treated as audio inside directories (explicit files are always tried).
AUDIO_SUFFIXES = (".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc",
                  ".au", ".snd", ".w64", ".caf", ".rf64")


def prepare_audio(
    sources: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    sample_rate: int = 16000,
    val_fraction: float = 0.05,
    seed: int = 0,
    skip_bad: bool = False,
) -> dict[str, Any]:
    """Turn audio files and directories into an audio dataset at ``out``; returns its meta."""
    check_val_fraction(val_fraction)
    if sample_rate < 1:
        raise MegabyteError(f"--sample-rate must be positive, got {sample_rate}")
    files = collect_files(sources, accept=lambda p: p.suffix.lower() in AUDIO_SUFFIXES, exclude=out)
    recipe = {
        "modality": "audio",
        "inputs": [str(Path(s).absolute()) for s in sources],
        "sample_rate": sample_rate,
        "val_fraction": val_fraction,
        "seed": seed,
    }

    def read_groups(index: int, path: Path, info: dict[str, Any]) -> Iterator[bytes]:
        samples, rate = read_audio(path)
        info.update(source_rate=rate, source_channels=int(samples.shape[1]),
                    seconds=round(samples.shape[0] / rate, 3))
        try:
            yield samples_to_pcm16(samples, rate, sample_rate)
        except MegabyteError as exc:
            raise MegabyteError(f"{path}: {exc}") from None

    return build_dataset(
        out,
        recipe=recipe,
        files=files,
        read_groups=read_groups,
        meta={"modality": "audio", "item_len": None, "sample_rate": sample_rate,
              "sample_width": SAMPLE_WIDTH, "channels": 1, "encoding": "pcm_s16le"},
        val_fraction=val_fraction,
        seed=seed,
        align=SAMPLE_WIDTH,
        skip_bad=skip_bad,
    )
