"""Bad data into every `prepare` reader (text; Pillow images; .npy and .npz arrays; IDX, raw and
gzipped; audio through libsndfile): random and adversarial bytes, mutated and truncated files,
zero-length files and headers declaring huge sizes. Each gives a dataset or a clear MegabyteError
naming the file; never another exception, never a partial dataset directory, never memory in
proportion to a declared size."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from megabyte import MegabyteError
from megabyte.data.audio import prepare_audio
from megabyte.data.dataset import load_dataset
from megabyte.data.image import prepare_image
from megabyte.data.text import prepare_text

# A file name for every kind of input, and the reader it goes to.
NAMES = {
    "text": "notes.txt", "png": "a.png", "jpeg": "a.jpg", "gif": "a.gif", "bmp": "a.bmp", "tiff": "a.tif",
    "webp": "a.webp", "ppm": "a.ppm", "ico": "a.ico", "npy": "a.npy", "npz": "a.npz", "npz-deflated": "c.npz",
    "idx": "images-idx3-ubyte", "idx-gz": "images-idx3-ubyte.gz", "wav": "a.wav", "flac": "a.flac",
    "aiff": "a.aiff", "au": "a.au", "ogg": "a.ogg",
}
AUDIO = {"wav", "flac", "aiff", "au", "ogg"}


def modality(kind: str) -> str:
    return "text" if kind == "text" else "audio" if kind in AUDIO else "image"


def prepare(kind: str, path: Path, out: Path) -> dict:
    if kind == "text":
        return prepare_text([path], out, val_fraction=0.0)
    if kind in AUDIO:
        return prepare_audio([path], out, sample_rate=8000, val_fraction=0.0)
    return prepare_image([path], out, size=4, val_fraction=0.0)


def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def npy_bytes(shape: tuple[int, ...], data: bytes = b"") -> bytes:
    """A .npy file declaring `shape` (uint8), followed by `data`."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


def npz_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(f"{name}.npy", data)
    return buffer.getvalue()


def _valid_files() -> dict[str, bytes]:
    """A small valid file of every kind."""
    import soundfile
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    files = {"text": b"def f(x):\n    return x + 1\n" * 8}
    for kind, fmt in [("png", "PNG"), ("jpeg", "JPEG"), ("gif", "GIF"), ("bmp", "BMP"), ("tiff", "TIFF"),
                      ("webp", "WEBP"), ("ppm", "PPM"), ("ico", "ICO")]:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt)
        files[kind] = buffer.getvalue()
    stack = rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    np.save(buffer, stack)
    files["npy"] = buffer.getvalue()
    files["npz"] = npz_bytes({"data": files["npy"]})
    files["npz-deflated"] = npz_bytes({"data": files["npy"]}, zipfile.ZIP_DEFLATED)
    files["idx"] = idx_bytes(stack[..., 0])
    files["idx-gz"] = gzip.compress(files["idx"])
    samples = (np.sin(np.arange(400) / 5) * 8000).astype(np.int16)
    for kind, fmt in [("wav", "WAV"), ("flac", "FLAC"), ("aiff", "AIFF"), ("au", "AU"), ("ogg", "OGG")]:
        buffer = io.BytesIO()
        soundfile.write(buffer, samples, 8000, format=fmt)
        files[kind] = buffer.getvalue()
    return files


VALID = _valid_files()


def check_reader(kind: str, content: bytes, *, valid: bool = False) -> None:
    """`content` as a file of `kind` gives a consistent dataset or a clear error, and never a
    partial one. With `valid=True` it must give the dataset: an error, however clear, fails."""
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / NAMES[kind], Path(tmp) / "out"
        path.write_bytes(content)
        try:
            meta = prepare(kind, path, out)
        except MegabyteError as exc:
            assert not valid, f"a valid {kind} file was rejected: {exc}"
            assert str(path) in str(exc) or str(exc).startswith("empty corpus"), str(exc)
            assert not out.exists() and not [p for p in Path(tmp).iterdir() if p.name.startswith(".out.")]
            return
        data = load_dataset(out)
        train = bytes(data.split("train"))
        assert len(train) == meta["bytes"]["train"] > 0 and meta["modality"] == modality(kind)
        if kind == "text":
            assert train == content  # text is stored exactly as it is
        elif kind in AUDIO:
            assert len(train) % 2 == 0
        else:
            assert len(train) % (4 * 4 * 3) == 0


def test_the_valid_files_are_read():
    for kind, content in VALID.items():
        check_reader(kind, content, valid=True)


@pytest.mark.parametrize("kind", sorted(NAMES))
def test_zero_length_and_truncated_files_are_clear_errors(kind):
    for content in (b"", VALID[kind][:1], VALID[kind][:12], VALID[kind][: len(VALID[kind]) // 2]):
        if kind == "text":
            check_reader(kind, content)  # any prefix of a text is a text (the empty one is an error)
            continue
        with pytest.raises(MegabyteError):
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / NAMES[kind]).write_bytes(content)
                prepare(kind, Path(tmp) / NAMES[kind], Path(tmp) / "out")


@given(kind=st.sampled_from(sorted(NAMES)), head=st.integers(0, 32), tail=st.binary(max_size=600))
def test_random_bytes_after_a_real_header(kind, head, tail):
    """The first `head` bytes of a valid file (its magic number), then random bytes."""
    check_reader(kind, VALID[kind][:head] + tail)


@given(kind=st.sampled_from(sorted(NAMES)), data=st.data())
def test_mutated_valid_files(kind, data):
    """A valid file with bytes overwritten (headers above all), then possibly cut short."""
    content = bytearray(VALID[kind])
    for _ in range(data.draw(st.integers(1, 6), label="edits")):
        where = data.draw(st.integers(0, min(len(content) - 1, 96)) | st.integers(0, len(content) - 1), label="at")
        value = data.draw(st.binary(min_size=1, max_size=4) | st.sampled_from([b"\xff\xff\xff\xff", b"\x00"]))
        content[where : where + len(value)] = value
    if data.draw(st.booleans(), label="cut"):
        content = content[: data.draw(st.integers(0, len(content)), label="length")]
    check_reader(kind, bytes(content))


# --------------------------------------------------------------------- huge declared sizes
def png_declaring(width: int, height: int) -> bytes:
    data = bytearray(VALID["png"])
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def bmp_declaring(width: int, height: int) -> bytes:
    data = bytearray(VALID["bmp"])
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def flac_declaring_samples(total: int) -> bytes:
    """The valid FLAC with STREAMINFO's total-samples field (36 bits) set to `total`."""
    data = bytearray(VALID["flac"])
    (fields,) = struct.unpack(">Q", data[18:26])  # rate(20) channels(3) bits(5) total samples(36)
    data[18:26] = struct.pack(">Q", (fields & ~((1 << 36) - 1)) | total)
    return bytes(data)


def au_with(rate: int, data_size: int = 0xFFFFFFFF) -> bytes:
    """A Sun .au file: 16-bit PCM, mono, at `rate` Hz, declaring `data_size` bytes; 800 bytes follow."""
    return struct.pack(">4sIIIII", b".snd", 24, data_size, 3, rate, 1) + bytes(800)


def wav_declaring(data_size: int) -> bytes:
    data = bytearray(VALID["wav"])
    at = data.index(b"data")
    data[at + 4 : at + 8] = struct.pack("<I", data_size)
    return bytes(data)


HUGE = 100_000
HUGE_DECLARATIONS = {
    "png": (png_declaring(HUGE, HUGE), "exceeds the limit|too large"),
    "bmp": (bmp_declaring(HUGE, HUGE), "exceeds the limit|too large|corrupt"),
    "idx": (idx_bytes(np.zeros((2, 2, 2), np.uint8))[:4] + struct.pack(">III", HUGE, HUGE, HUGE) + bytes(64),
            r"declares shape \(100000, 100000, 100000\).*but 64 bytes follow"),
    "idx-gz": (gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">III", HUGE, HUGE, HUGE) + bytes(64)),
               r"declares shape \(100000, 100000, 100000\).*but 64 bytes follow"),
    "npy": (npy_bytes((HUGE, HUGE, HUGE), bytes(64)), "not a readable numpy array file"),
    "npz": (npz_bytes({"data": npy_bytes((HUGE, HUGE, HUGE), bytes(64))}), r"declares shape .* but holds 64"),
    "npz-deflated": (npz_bytes({"data": npy_bytes((HUGE, HUGE, 3), bytes(64))}, zipfile.ZIP_DEFLATED),
                     r"declares shape .* but holds 64"),
    "wav": (wav_declaring(0x7FFFFFFF), "truncated WAV file"),
    "flac": (flac_declaring_samples((1 << 36) - 1), "not a readable audio file|truncated"),
    "au": (au_with(8000), None),  # 400 samples, whatever the header says
    "au-1hz": (au_with(1), "cannot resample 1 Hz"),
    "au-prime-rate": (au_with(999_983), "cannot resample 999983 Hz"),
}

_CHILD = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    resource.setrlimit(resource.RLIMIT_AS, (__LIMIT__, __LIMIT__))
    from megabyte import MegabyteError
    from megabyte.data.audio import prepare_audio
    from megabyte.data.image import prepare_image
    results = {}
    for case, kind, path in json.loads(sys.argv[1]):
        out = Path(path).with_name(case + "-out")
        try:
            if kind in __AUDIO__:
                prepare_audio([path], out, sample_rate=8000, val_fraction=0.0)
            else:
                prepare_image([path], out, size=4, val_fraction=0.0)
            results[case] = None
        except MegabyteError as exc:
            results[case] = str(exc)
    results["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(results))
""")


def test_huge_declared_sizes_are_refused_in_bounded_memory(tmp_path):
    """Every file declares far more than it holds (10^15 pixels, 2^36 samples, 40 GB of data):
    read in a process whose address space is capped at 1.5 GB, where any allocation of the declared
    size would fail, each is a clear error or a dataset of what the file really holds."""
    cases = []
    for case, (content, _) in HUGE_DECLARATIONS.items():
        kind = case if case in NAMES else case.split("-")[0]
        path = tmp_path / f"{case}-{NAMES[kind]}"
        path.write_bytes(content)
        cases.append((case, kind, str(path)))
    child = _CHILD.replace("__LIMIT__", str(1536 << 20)).replace("__AUDIO__", repr(sorted(AUDIO)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", child, json.dumps(cases)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout.splitlines()[-1])
    for case, (_, expected) in HUGE_DECLARATIONS.items():
        if expected is None:
            assert results[case] is None, (case, results[case])
        else:
            assert results[case] and re.search(expected, results[case]), (case, results[case])
            assert f"{case}-{NAMES[case.split('-')[0] if case not in NAMES else case]}" in results[case]
    # Resident memory stayed far below the declared sizes (terabytes). The bound is loose because
    # decoding libraries' own buffers vary between runs (400 MB to 730 MB seen); the address-space
    # cap above is what proves no declared-size allocation was attempted.
    assert results["maxrss_kb"] < 1_200_000


def test_a_killed_prepare_leaves_no_dataset(tmp_path):
    """kill -9 while prepare is reading: the output directory never appears half-written."""
    good = tmp_path / "good.txt"
    good.write_bytes(b"some text\n" * 100)
    fifo = tmp_path / "slow.txt"
    os.mkfifo(fifo)  # reading it blocks: prepare stops there with its staging directory open
    out = tmp_path / "out"
    code = f"from megabyte.data.text import prepare_text; prepare_text([{str(good)!r}, {str(fifo)!r}], {str(out)!r})"
    child = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 60
    while not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]:
        assert child.poll() is None and time.monotonic() < deadline, "prepare did not start"
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    assert child.wait(30) == -signal.SIGKILL
    assert not out.exists()
    fifo.unlink()
    meta = prepare_text([good], out)  # a later prepare is not disturbed by the leftover
    assert meta["bytes"]["train"] + meta["bytes"]["val"] == 1000
