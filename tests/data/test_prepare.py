"""prepare_text / prepare_image / prepare_audio: splits, layouts, bad inputs, atomic output."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from data_helpers import write_idx, write_png, write_wav

from megabyte.data.audio import prepare_audio
from megabyte.data.codecs import audio_to_bytes, bytes_to_image, image_to_bytes
from megabyte.data.dataset import load_dataset
from megabyte.data.image import prepare_image
from megabyte.data.text import prepare_text
from megabyte.errors import MegabyteError

JSON_DIR = Path(json.__file__).parent  # a small real text corpus: the stdlib's json package


def _json_sources() -> list[Path]:
    return sorted(p for p in JSON_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def _nothing_left(parent: Path, name: str = "out") -> bool:
    """No output and no temporary directory beside it."""
    return not (parent / name).exists() and not [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


# ----------------------------------------------------------------------------------------
# Text


def test_text_split_is_by_whole_file_and_complete(tmp_path: Path) -> None:
    meta = prepare_text([JSON_DIR], tmp_path / "out", val_fraction=0.4, seed=3)
    ds = load_dataset(tmp_path / "out")
    train, val = bytes(ds.split("train")), bytes(ds.split("val"))
    sources = _json_sources()
    assert len(meta["files"]) == len(sources)
    assert sum(len(p.read_bytes()) for p in sources) == len(train) + len(val)
    assert 0 < len(val) <= 0.4 * (len(train) + len(val))  # val-fraction counts bytes
    for entry in meta["files"]:
        content = Path(entry["path"]).read_bytes()
        split, data = ("val", val) if entry["val_bytes"] else ("train", train)
        assert entry[f"{'train' if split == 'val' else 'val'}_bytes"] == 0  # never both
        start = entry[f"{split}_offset"]
        assert data[start : start + len(content)] == content
    assert meta["split"] == {"method": "whole", "unit": "file", "val_fraction": 0.4, "seed": 3}
    assert meta["modality"] == "text" and meta["bytes"] == {"train": len(train), "val": len(val)}


def _val_files(out: Path) -> list[str]:
    meta = json.loads((out / "meta.json").read_text())
    return [f["path"] for f in meta["files"] if f["val_bytes"]]


def test_text_split_is_deterministic_per_seed(tmp_path: Path) -> None:
    prepare_text([JSON_DIR], tmp_path / "a", val_fraction=0.4, seed=7)
    prepare_text([JSON_DIR], tmp_path / "b", val_fraction=0.4, seed=7)
    for name in ("train.bin", "val.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert _val_files(tmp_path / "a") == _val_files(tmp_path / "b")
    splits = set()
    for seed in range(6):
        prepare_text([JSON_DIR], tmp_path / f"s{seed}", val_fraction=0.4, seed=seed)
        splits.add(tuple(_val_files(tmp_path / f"s{seed}")))
    assert len(splits) > 1  # the seed matters


def test_single_text_file_gives_its_tail_to_val(tmp_path: Path) -> None:
    source = JSON_DIR / "decoder.py"
    meta = prepare_text([source], tmp_path / "out", val_fraction=0.1)
    ds = load_dataset(tmp_path / "out")
    data = source.read_bytes()
    n_val = len(ds.split("val"))
    assert n_val == -(-len(data) // 10)
    assert bytes(ds.split("train")) + bytes(ds.split("val")) == data
    assert meta["split"]["method"] == "tail"


def test_text_include_pattern_and_zero_val_fraction(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("print(1)\n")
    (tmp_path / "src" / "b.txt").write_text("skip me\n")
    (tmp_path / "src" / ".hidden.py").write_text("hidden\n")
    prepare_text([tmp_path / "src"], tmp_path / "out", include=["*.py"], val_fraction=0)
    ds = load_dataset(tmp_path / "out")
    assert bytes(ds.split("train")) == b"print(1)\n" and len(ds.split("val")) == 0


def test_missing_path_and_empty_corpus_are_errors(tmp_path: Path) -> None:
    with pytest.raises(MegabyteError, match=r"input path .*nope does not exist"):
        prepare_text([tmp_path / "nope"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MegabyteError, match="empty corpus: no input files"):
        prepare_text([tmp_path / "empty"], tmp_path / "out")
    (tmp_path / "empty" / "zero.txt").write_bytes(b"")
    with pytest.raises(MegabyteError, match="empty corpus"):
        prepare_text([tmp_path / "empty"], tmp_path / "out")
    assert _nothing_left(tmp_path)


def test_bad_val_fraction_and_too_little_data(tmp_path: Path) -> None:
    with pytest.raises(MegabyteError, match=r"val-fraction must be in \[0, 1\)"):
        prepare_text([JSON_DIR], tmp_path / "out", val_fraction=1.0)
    (tmp_path / "one.txt").write_bytes(b"x")
    with pytest.raises(MegabyteError, match="too little data"):
        prepare_text([tmp_path / "one.txt"], tmp_path / "out")
    assert _nothing_left(tmp_path)


def test_existing_output_directory_rules(tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_text([JSON_DIR], out, seed=1)
    first = (out / "train.bin").read_bytes()
    prepare_text([JSON_DIR], out, seed=1)  # same recipe: rebuilt in place
    assert (out / "train.bin").read_bytes() == first
    with pytest.raises(MegabyteError, match="already holds a different dataset.*seed"):
        prepare_text([JSON_DIR], out, seed=2)
    assert (out / "train.bin").read_bytes() == first  # untouched
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(MegabyteError, match="non-empty directory that is not a megabyte dataset"):
        prepare_text([JSON_DIR], other)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    (tmp_path / "emptydir").mkdir()
    prepare_text([JSON_DIR], tmp_path / "emptydir")  # an empty directory is fine
    assert (tmp_path / "emptydir" / "meta.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failure_midway_leaves_nothing_behind(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("fine\n")
    (src / "b.txt").write_text("unreadable\n")
    os.chmod(src / "b.txt", 0)
    if os.access(src / "b.txt", os.R_OK):  # root reads anything: make it a dangling link instead
        (src / "b.txt").unlink()
        (src / "b.txt").symlink_to(src / "gone")
    with pytest.raises(MegabyteError, match=r"b\.txt"):
        prepare_text([src / "a.txt", src / "b.txt"], tmp_path / "out")
    assert _nothing_left(tmp_path)


# ----------------------------------------------------------------------------------------
# Images


@pytest.mark.parametrize("order", ["patch", "raster"])
@pytest.mark.parametrize("channels", [3, 1])
def test_image_folder_becomes_one_sequence_per_image(photos: Path, tmp_path: Path, order: str, channels: int) -> None:
    meta = prepare_image([photos], tmp_path / "out", size=8, order=order, channels=channels, val_fraction=0.25)
    item = 8 * 8 * channels
    assert meta["item_len"] == item
    assert (meta["size"], meta["order"], meta["patch_pixels"], meta["channels"]) == (8, order, 2, channels)
    assert [Path(f["path"]).name for f in meta["files"]] == ["a.png", "b.png", "c.png", "d.jpg"]
    ds = load_dataset(tmp_path / "out")
    assert (len(ds.split("train")) // item, len(ds.split("val")) // item) == (3, 1)
    assert ds.item_len == item


def test_image_bytes_match_the_codec(tmp_path: Path, rng) -> None:
    pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    write_png(tmp_path / "x.png", pixels)
    prepare_image([tmp_path / "x.png"], tmp_path / "out", size=8, val_fraction=0)
    train = bytes(load_dataset(tmp_path / "out").split("train"))
    assert train == image_to_bytes(pixels, 8)
    assert np.array_equal(np.asarray(bytes_to_image(train, 8)), pixels)


def test_crops_are_deterministic_and_stay_with_their_photo(photos: Path, tmp_path: Path) -> None:
    meta = prepare_image([photos], tmp_path / "a", size=8, crops=5, seed=2, val_fraction=0.25)
    prepare_image([photos], tmp_path / "b", size=8, crops=5, seed=2, val_fraction=0.25)
    prepare_image([photos], tmp_path / "c", size=8, crops=5, seed=3, val_fraction=0.25)
    a, b, c = ((tmp_path / n / "train.bin").read_bytes() for n in "abc")
    assert a == b and a != c
    item = 8 * 8 * 3
    total = sum(f["train_bytes"] + f["val_bytes"] for f in meta["files"])
    assert total == 4 * 5 * item  # every photo is larger than 8 px: 5 crops each
    assert all(bool(f["train_bytes"]) != bool(f["val_bytes"]) for f in meta["files"])


def test_npy_npz_and_flat_arrays(tmp_path: Path, rng) -> None:
    nhwc = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "nhwc.npy", nhwc)
    np.savez(tmp_path / "flat.npz", data=nhwc.transpose(0, 3, 1, 2).reshape(6, -1), labels=np.arange(6))
    for name in ("nhwc.npy", "flat.npz"):
        out = tmp_path / f"out-{name}"
        meta = prepare_image([tmp_path / name], out, size=4, order="raster", val_fraction=0)
        assert meta["files"][0]["kind"] == "array" and meta["files"][0]["images"] == 6
        assert (out / "train.bin").read_bytes() == nhwc.tobytes()


def test_idx_files_gzipped_or_not(tmp_path: Path, rng) -> None:
    images = rng.integers(0, 256, (20, 6, 6), dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(20, dtype=np.uint8))  # ignored in a folder
    meta = prepare_image([tmp_path], tmp_path / "out", size=6, order="raster", channels=1, val_fraction=0.1)
    assert [f["kind"] for f in meta["files"]] == ["idx", "idx"]
    assert meta["bytes"] == {"train": 36 * 36, "val": 36 * 4}  # per-image split: 4 of 40 held out
    train = np.frombuffer((tmp_path / "out" / "train.bin").read_bytes(), np.uint8).reshape(-1, 36)
    known = {img.tobytes() for img in images}
    assert all(row.tobytes() in known for row in train)


def _png_with_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header is rewritten to declare width x height."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def _bad_image_inputs(tmp_path: Path, rng) -> dict[str, tuple[Path, str]]:
    good = write_png(tmp_path / "good.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).read_bytes()
    cases = {
        "corrupt.png": (b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, "not an image|corrupt"),
        "truncated.png": (good[: len(good) // 2], "corrupt or truncated"),
        "notes.xyz": (b"hello, not an image", "not an image in any format"),
        "bomb.png": (_png_with_size(40_000, 40_000), "too large"),  # above Pillow's hard limit
        "bomb2.png": (_png_with_size(10_000, 10_000), "too large"),  # above Pillow's warning limit
        "zero.png": (_png_with_size(0, 5), "zero-sized image"),
    }
    paths = {}
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        paths[name] = (tmp_path / name, message)
    arrays = {
        "empty.npy": (np.zeros((0, 4, 4), np.uint8), "contains no images"),
        "flat.npy": (np.zeros((3, 7), np.uint8), "cannot infer a square image shape"),
        "float.npy": (np.zeros((3, 4, 4), np.float32), "must be uint8"),
        "zerosize.npy": (np.zeros((2, 0, 4), np.uint8), "zero-sized images"),
        "fived.npy": (np.zeros((1, 2, 3, 4, 5), np.uint8), "wrong array shape"),
    }
    for name, (array, message) in arrays.items():
        np.save(tmp_path / name, array)
        paths[name] = (tmp_path / name, message)
    write_idx(tmp_path / "cut-idx3-ubyte", np.zeros((10, 4, 4), np.uint8), gz=False, cut=50)
    paths["cut-idx3-ubyte"] = (tmp_path / "cut-idx3-ubyte", "truncated or corrupt")
    write_idx(tmp_path / "labels-idx1-ubyte", np.zeros(10, np.uint8), gz=False)
    paths["labels-idx1-ubyte"] = (tmp_path / "labels-idx1-ubyte", "wrong IDX shape")
    return paths


def test_every_bad_image_input_names_the_file(tmp_path: Path, rng) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = write_png(inputs / "ok.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    for name, (path, message) in _bad_image_inputs(inputs, rng).items():
        with pytest.raises(MegabyteError, match=message) as info:
            prepare_image([good, path], tmp_path / "out", size=4, val_fraction=0)
        assert name in str(info.value)
        assert _nothing_left(tmp_path), name


def test_skip_bad_skips_and_reports(tmp_path: Path, rng) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    bad = _bad_image_inputs(inputs, rng)
    write_png(inputs / "ok2.png", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    files = sorted(inputs.iterdir())
    meta = prepare_image(files, tmp_path / "out", size=4, val_fraction=0.3, skip_bad=True)
    assert len(meta["skipped"]) == len(bad)
    assert {Path(s["path"]).name for s in meta["skipped"]} == set(bad)
    assert meta["bytes"]["train"] + meta["bytes"]["val"] == 2 * 4 * 4 * 3  # good.png and ok2.png


def test_all_bad_is_still_an_error(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"nope")
    with pytest.raises(MegabyteError, match="all 1 files were skipped"):
        prepare_image([tmp_path / "x.png"], tmp_path / "out", size=4, skip_bad=True)


def test_image_params_are_checked_before_work(tmp_path: Path, photos: Path) -> None:
    with pytest.raises(MegabyteError, match="must divide"):
        prepare_image([photos], tmp_path / "out", size=9, patch_pixels=2)
    with pytest.raises(MegabyteError, match="crops"):
        prepare_image([photos], tmp_path / "out", size=8, crops=-1)


# ----------------------------------------------------------------------------------------
# Audio


def test_audio_files_are_concatenated_as_pcm(tmp_path: Path, rng) -> None:
    a = rng.integers(-30000, 30000, 1600, dtype=np.int16)
    b = rng.integers(-30000, 30000, (800, 2), dtype=np.int16)
    c = rng.integers(-30000, 30000, 3000, dtype=np.int16)
    write_wav(tmp_path / "a.wav", a, 16000)
    write_wav(tmp_path / "b.wav", b, 16000)
    write_wav(tmp_path / "c.wav", c, 8000)
    meta = prepare_audio([tmp_path], tmp_path / "out", val_fraction=0)
    expected = b"".join(audio_to_bytes(tmp_path / n) for n in ("a.wav", "b.wav", "c.wav"))
    assert (tmp_path / "out" / "train.bin").read_bytes() == expected
    assert [f["train_bytes"] for f in meta["files"]] == [3200, 1600, 12000]
    assert [f["train_offset"] for f in meta["files"]] == [0, 3200, 4800]
    assert [(f["source_rate"], f["source_channels"]) for f in meta["files"]] == [(16000, 1), (16000, 2), (8000, 1)]
    assert (meta["sample_rate"], meta["sample_width"], meta["item_len"]) == (16000, 2, None)


def test_single_audio_file_tail_split_keeps_whole_samples(tmp_path: Path, rng) -> None:
    write_wav(tmp_path / "a.wav", rng.integers(-9999, 9999, 1001, dtype=np.int16), 16000)
    meta = prepare_audio([tmp_path / "a.wav"], tmp_path / "out", val_fraction=0.1)
    assert meta["bytes"]["train"] % 2 == 0 and meta["bytes"]["val"] % 2 == 0
    assert meta["bytes"]["train"] + meta["bytes"]["val"] == 2002 and meta["bytes"]["val"] > 0


def test_bad_audio_files(tmp_path: Path, rng) -> None:
    good = write_wav(tmp_path / "good.wav", rng.integers(-999, 999, 400, dtype=np.int16), 16000)
    cut = write_wav(tmp_path / "cut.wav", rng.integers(-999, 999, 400, dtype=np.int16), 16000)
    cut.write_bytes(cut.read_bytes()[:300])
    (tmp_path / "noise.wav").write_bytes(b"RIFF....WAVEjunk" * 4)
    (tmp_path / "empty.wav").write_bytes(b"")
    silent = write_wav(tmp_path / "silent.wav", np.zeros(0, np.int16), 16000)
    for path, message in [(cut, "truncated WAV"), (tmp_path / "noise.wav", "noise.wav"),
                          (tmp_path / "empty.wav", "empty.wav"), (silent, "no audio samples")]:
        with pytest.raises(MegabyteError, match=message) as info:
            prepare_audio([good, path], tmp_path / "out", val_fraction=0)
        assert path.name in str(info.value)
        assert _nothing_left(tmp_path)
    meta = prepare_audio([tmp_path], tmp_path / "out", val_fraction=0, skip_bad=True)
    assert len(meta["skipped"]) == 4 and meta["bytes"]["train"] == 800


def test_output_inside_a_source_directory_is_not_read_back(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("alpha\n")
    (tmp_path / "b.txt").write_text("beta\n")
    first = prepare_text([tmp_path], tmp_path / "ds", val_fraction=0.5)
    again = prepare_text([tmp_path], tmp_path / "ds", val_fraction=0.5)  # same recipe: rebuilt
    assert again["bytes"] == first["bytes"] and sum(first["bytes"].values()) == 11
    assert len(again["files"]) == 2


def test_val_groups_follow_the_byte_budget() -> None:
    from megabyte.data.sources import choose_val_groups

    assert choose_val_groups([100, 3000], 0.05, seed=0) == {0}  # none fits: the smallest file
    sizes = [10] * 100
    for seed in range(5):
        assert len(choose_val_groups(sizes, 0.05, seed)) == 5
    assert len({frozenset(choose_val_groups(sizes, 0.05, s)) for s in range(5)}) == 5
    assert choose_val_groups([5, 5], 0.99, seed=1) != {0, 1}  # never everything
    assert choose_val_groups([5, 5], 0.0, seed=1) == set() == choose_val_groups([5], 0.5, seed=1)
