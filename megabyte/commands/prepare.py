"""`megabyte prepare text|image|audio`: turn raw files into a byte dataset directory.

Examples::

    megabyte prepare text ~/corpus/ --out data/text
    megabyte prepare image photos/ --out data/img32 --size 32 --crops 64
    megabyte prepare image t10k-images-idx3-ubyte.gz --out data/fmnist --size 28 --channels 1
    megabyte prepare audio recordings/ --out data/audio --sample-rate 16000

The output directory gets ``train.bin``, ``val.bin`` and ``meta.json`` (see
:mod:`megabyte.data.format`); it is written aside and renamed, so it is never half-written.
Running the same command again rebuilds it; a directory holding another dataset is an error.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``prepare`` and its ``text``/``image``/``audio`` sub-commands."""
    p = subparsers.add_parser(
        "prepare",
        help="turn text, image or audio files into a byte dataset directory",
        description="Turn raw files into DIR/train.bin, DIR/val.bin and DIR/meta.json.",
    )
    kinds = p.add_subparsers(dest="modality", metavar="MODALITY")
    _add_text(kinds)
    _add_image(kinds)
    _add_audio(kinds)
    p.set_defaults(func=run, _prepare_parser=p)


def _common(p: argparse.ArgumentParser, skip_bad: bool) -> None:
    p.add_argument("sources", nargs="+", metavar="SRC", help="input files and directories (recursive)")
    p.add_argument("--out", required=True, metavar="DIR", help="dataset directory to write")
    p.add_argument("--val-fraction", type=float, default=0.05, metavar="F",
                   help="share of bytes held out for validation, as whole files or images; "
                        "at least one when there are two or more (default 0.05)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of --crops (default 0)")
    if skip_bad:
        p.add_argument("--skip-bad", action="store_true",
                       help="skip unreadable or malformed files (and report them) instead of failing")


def _add_text(kinds: argparse._SubParsersAction) -> None:
    p = kinds.add_parser("text", help="text files as raw bytes, split by whole file",
                         description="Text files as raw bytes, concatenated; whole files go to "
                         "validation (a single file gives its tail).")
    _common(p, skip_bad=False)
    p.add_argument("--include", action="append", default=[], metavar="GLOB",
                   help="only files in directories whose name matches GLOB, e.g. '*.py' (repeatable)")


def _add_image(kinds: argparse._SubParsersAction) -> None:
    p = kinds.add_parser("image", help="images (Pillow formats, .npy/.npz, IDX) as one sequence each",
                         description="Each image becomes one sequence of SIZE*SIZE*CHANNELS bytes: "
                         "centre-cropped to a square and resized, or K random crops with --crops.")
    _common(p, skip_bad=True)
    p.add_argument("--size", type=int, required=True, metavar="N", help="images become N x N pixels")
    p.add_argument("--order", choices=("patch", "raster"), default="patch",
                   help="byte order: patch-scan p x p blocks (default) or row-major raster")
    p.add_argument("--patch-pixels", type=int, default=2, metavar="p",
                   help="block side for patch order; a MEGABYTE patch is channels*p*p bytes (default 2)")
    p.add_argument("--channels", type=int, choices=(3, 1), default=3, help="3 = RGB (default), 1 = grey")
    p.add_argument("--crops", type=int, default=0, metavar="K",
                   help="take K random square crops of each image larger than N (default 0: centre crop)")


def _add_audio(kinds: argparse._SubParsersAction) -> None:
    p = kinds.add_parser("audio", help="audio files as 16-bit mono PCM bytes",
                         description="Audio files decoded, mixed to mono, resampled and stored as "
                         "16-bit signed little-endian PCM.")
    _common(p, skip_bad=True)
    p.add_argument("--sample-rate", type=int, default=16000, metavar="HZ", help="target rate (default 16000)")


def run(args: argparse.Namespace) -> int:
    """Prepare the dataset the arguments describe and print a short summary."""
    if getattr(args, "modality", None) is None:
        args._prepare_parser.print_help()
        return 2
    meta = _prepare(args)
    print(summary(meta, args.out))
    return 0


def _prepare(args: argparse.Namespace) -> dict[str, Any]:
    common = {"val_fraction": args.val_fraction, "seed": args.seed}
    if args.modality == "text":
        from megabyte.data.text import prepare_text

        return prepare_text(args.sources, args.out, include=args.include, **common)
    if args.modality == "image":
        from megabyte.data.image import prepare_image

        return prepare_image(
            args.sources, args.out, size=args.size, order=args.order, patch_pixels=args.patch_pixels,
            channels=args.channels, crops=args.crops, skip_bad=args.skip_bad, **common,
        )
    from megabyte.data.audio import prepare_audio

    return prepare_audio(args.sources, args.out, sample_rate=args.sample_rate, skip_bad=args.skip_bad, **common)


def summary(meta: dict[str, Any], out: str) -> str:
    """A few lines on what was written: files, bytes per split, items, skipped files."""
    counts = meta["bytes"]
    lines = [f"prepared {meta['modality']} dataset in {out}",
             f"  files: {len(meta['files'])} used, {len(meta['skipped'])} skipped"]
    for split in ("train", "val"):
        line = f"  {split}: {counts[split]:,} bytes"
        if meta.get("item_len"):
            line += f" ({counts[split] // meta['item_len']:,} images of {meta['item_len']:,} bytes)"
        elif meta["modality"] == "audio":
            line += f" ({counts[split] / (2 * meta['sample_rate']):,.1f} s at {meta['sample_rate']} Hz)"
        lines.append(line)
    if meta["modality"] == "image":
        lines.append(f"  layout: {meta['size']}x{meta['size']}x{meta['channels']}, {meta['order']} order"
                     + (f", {meta['patch_pixels']}x{meta['patch_pixels']}-pixel blocks "
                        f"(P={meta['channels'] * meta['patch_pixels'] ** 2})" if meta["order"] == "patch" else ""))
    for bad in meta["skipped"]:
        lines.append(f"  skipped {bad['reason']}")
    return "\n".join(lines)
