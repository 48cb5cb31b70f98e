"""Image datasets: every image becomes exactly one sequence of ``size * size * channels`` bytes.

Inputs, by content (not only by name):

* any image file Pillow reads (PNG, JPEG, GIF, BMP, TIFF, WebP, ...); grey, RGB, palette,
  alpha and 16-bit images are converted to ``channels``;
* numpy ``.npy`` / ``.npz`` uint8 arrays: ``(N, H, W, C)``, ``(N, C, H, W)`` (C in 1, 3, 4),
  ``(N, H, W)``, a single ``(H, W, C)`` image, or flat rows ``(N, C*H*W)`` stored channel-planar
  as ImageNet64 and CIFAR distribute them (C=3 when ``D/3`` is a square, else C=1). In an
  ``.npz`` the array named ``data``, ``images`` or ``x`` is used, else the only uint8 array;
* IDX files (MNIST, Fashion-MNIST, EMNIST), gzipped or not: unsigned-byte arrays of shape
  ``(N, H, W)``. In a directory, only IDX files named ``*idx3*``/``*idx4*`` count as images,
  so the labels files next to them are ignored.

Each image is cut to a centred square, then resized to ``size x size`` (Lanczos). With
``crops=K``, an image larger than ``size`` instead gives K random square crops, of side drawn
log-uniformly between ``size`` and its short side, at a uniform position, then resized;
crops are seeded by (seed, file index, image index), so a run is reproducible.
For the split, a Pillow file with all its crops is one group; each image of an array file is
its own group. Of an animated or multi-page file only the first frame is used.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from megabyte.data.build import build_dataset
from megabyte.data.codecs import (
    MAX_IMAGE_PIXELS,
    check_image_params,
    image_item_len,
    image_to_bytes,
    open_image,
    to_pil,
)
from megabyte.data.sources import check_val_fraction, collect_files
from megabyte.errors import MegabyteError

_ARRAY_SUFFIXES = (".npy", ".npz")
_IDX_IMAGE_NAME = re.compile(r"idx[34]", re.IGNORECASE)
_NPZ_KEYS = ("data", "images", "x")


def prepare_image(
    sources: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    size: int,
    order: str = "patch",
    patch_pixels: int = 2,
    channels: int = 3,
    crops: int = 0,
    val_fraction: float = 0.05,
    seed: int = 0,
    skip_bad: bool = False,
) -> dict[str, Any]:
    """Turn image files, arrays and IDX files into an image dataset at ``out``; returns its meta."""
    check_image_params(size, order, patch_pixels, channels)
    check_val_fraction(val_fraction)
    if crops < 0:
        raise MegabyteError(f"--crops must be 0 or more, got {crops}")
    files = collect_files(sources, accept=_looks_like_image_input, exclude=out)
    params = {"size": size, "order": order, "patch_pixels": patch_pixels, "channels": channels}
    recipe = {
        "modality": "image",
        "inputs": [str(Path(s).absolute()) for s in sources],
        **params,
        "crops": crops,
        "val_fraction": val_fraction,
        "seed": seed,
    }
    item_len = image_item_len(size, channels)

    def read_groups(index: int, path: Path, info: dict[str, Any]) -> Iterator[bytes]:
        yield from _read_image_file(index, path, info, params, crops, seed)

    meta = build_dataset(
        out,
        recipe=recipe,
        files=files,
        read_groups=read_groups,
        meta={"modality": "image", "item_len": item_len, **params, "crops": crops},
        val_fraction=val_fraction,
        seed=seed,
        align=item_len,
        unit="image",
        skip_bad=skip_bad,
    )
    return meta


def _looks_like_image_input(path: Path) -> bool:
    """Which files inside a directory are image inputs (explicit files are always tried)."""
    from PIL import Image

    name = path.name.lower()
    if path.suffix.lower() in _ARRAY_SUFFIXES:
        return True
    if _IDX_IMAGE_NAME.search(name):
        return True
    Image.init()
    return Image.registered_extensions().get(path.suffix.lower()) in Image.OPEN  # readable, not save-only


# ----------------------------------------------------------------------------------------
# One file -> split groups of encoded bytes


def _read_image_file(
    index: int, path: Path, info: dict[str, Any], params: dict[str, Any], crops: int, seed: int
) -> Iterator[bytes]:
    """Yield one bytes group per photo (with its crops) or per image of an array file."""
    kind, images = _open_images(path)
    info["kind"] = kind
    info["images"] = 0
    for image_index, image in enumerate(images):
        rng = np.random.default_rng([seed, index, image_index])
        try:
            squares = _squares(to_pil(image, params["channels"]), params["size"], crops, rng)
            group = b"".join(image_to_bytes(sq, **params) for sq in squares)
        except MegabyteError as exc:
            where = f"{path}: image {image_index}" if kind != "pillow" else str(path)
            raise MegabyteError(f"{where}: {exc}") from exc
        info["images"] += 1
        yield group


def _open_images(path: Path) -> tuple[str, Iterator[Any]]:
    """Recognise a file by its content and return (kind, iterator over its images)."""
    if path.suffix.lower() in _ARRAY_SUFFIXES:
        return "array", _iter_stack(_load_array(path), path)
    if _is_idx(_read_head(path), path):
        return "idx", _iter_stack(read_idx(path), path)
    return "pillow", iter([open_image(path)])


def _read_head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(16)
    except OSError as exc:
        raise MegabyteError(f"{path}: cannot read ({exc})") from exc


def _iter_stack(stack: np.ndarray, path: Path) -> Iterator[np.ndarray]:
    """Iterate images of an (N, H, W[, C]) array after checking its shape."""
    stack = _as_image_stack(stack, path)
    for i in range(stack.shape[0]):
        yield np.asarray(stack[i])


def _squares(image: Any, size: int, crops: int, rng: np.random.Generator) -> list[Any]:
    """The square views of one image: K random crops of a large image, else its centre."""
    width, height = image.size
    short = min(width, height)
    if crops > 0 and short > size:
        return [_random_crop(image, size, short, rng) for _ in range(crops)]
    left, top = (width - short) // 2, (height - short) // 2
    return [image.crop((left, top, left + short, top + short))]


def _random_crop(image: Any, size: int, short: int, rng: np.random.Generator) -> Any:
    side = int(round(math.exp(rng.uniform(math.log(size), math.log(short)))))
    side = min(max(side, size), short)
    left = int(rng.integers(0, image.size[0] - side + 1))
    top = int(rng.integers(0, image.size[1] - side + 1))
    return image.crop((left, top, left + side, top + side))


# ----------------------------------------------------------------------------------------
# Arrays


def _load_array(path: Path) -> np.ndarray:
    """Load the image array of a .npy (memory-mapped) or .npz file; never unpickles.

    An .npz array is read whole, after checking that its header's shape fits the data the
    archive holds, so a forged header cannot make us allocate more than the file can contain."""
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False)
        with open(path, "rb") as file, np.load(file, allow_pickle=False) as archive:
            key = _pick_npz_key(archive, path)
            _check_npz_member(archive.zip, key, path)
            return archive[key]
    except MegabyteError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise MegabyteError(f"{path}: not a readable numpy array file ({exc})") from exc
    except MemoryError as exc:
        raise MegabyteError(f"{path}: the array is too large to load into memory") from exc
    except Exception as exc:  # numpy's header parser on hostile bytes (SyntaxError, tokenize errors, ...)
        raise MegabyteError(f"{path}: not a readable numpy array file ({type(exc).__name__}: {exc})") from exc


_DEFLATE_MAX_RATIO = 1100  # zlib's deflate never expands data more than ~1032 times


def _check_npz_member(archive: zipfile.ZipFile, key: str, path: Path) -> None:
    """Read the .npy header of `key` in the archive: uint8, and no more bytes than it holds."""
    info = archive.getinfo(f"{key}.npy")
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = reader(f)
        available = info.file_size - f.tell()
    if dtype != np.uint8:
        raise MegabyteError(f"{path}: image arrays must be uint8, got {dtype}")
    declared = math.prod(shape)
    if declared > available:
        raise MegabyteError(f"{path}: array {key!r} declares shape {shape} ({declared:,} bytes) but holds "
                            f"{max(available, 0):,} (truncated or corrupt)")
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > _DEFLATE_MAX_RATIO * info.compress_size + 4096:
        raise MegabyteError(f"{path}: array {key!r} declares {info.file_size:,} bytes, more than its "
                            f"{info.compress_size:,} compressed bytes can hold (corrupt, or a zip bomb)")


def _pick_npz_key(archive: Any, path: Path) -> str:
    keys = list(archive.keys())
    for key in _NPZ_KEYS:
        if key in keys:
            return key
    if len(keys) == 1:
        return keys[0]
    raise MegabyteError(
        f"{path}: holds several arrays ({', '.join(keys)}) and none is named {' / '.join(_NPZ_KEYS)}"
    )


def _as_image_stack(array: np.ndarray, path: Path) -> np.ndarray:
    """Bring a uint8 array to (N, H, W) or (N, H, W, C); wrong shapes are MegabyteErrors."""
    if array.dtype != np.uint8:
        raise MegabyteError(f"{path}: image arrays must be uint8, got {array.dtype}")
    shape = array.shape
    if array.ndim == 2:
        array = _unflatten(array, path)
    elif array.ndim == 3 and shape[2] in (3, 4) and shape[0] > 4:
        array = array[None]  # a single H x W x C image
    elif array.ndim == 4 and shape[3] not in (1, 3, 4) and shape[1] in (1, 3, 4):
        array = array.transpose(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
    elif not (array.ndim == 3 or (array.ndim == 4 and shape[3] in (1, 3, 4))):
        raise MegabyteError(f"{path}: wrong array shape {shape} for images")
    if array.shape[0] == 0:
        raise MegabyteError(f"{path}: contains no images (shape {shape})")
    if array.shape[1] == 0 or array.shape[2] == 0:
        raise MegabyteError(f"{path}: zero-sized images (shape {shape})")
    if array.shape[1] * array.shape[2] > MAX_IMAGE_PIXELS:
        raise MegabyteError(f"{path}: images of {array.shape[1]}x{array.shape[2]} pixels are too large")
    return array


def _unflatten(rows: np.ndarray, path: Path) -> np.ndarray:
    """(N, C*H*W) channel-planar rows -> (N, H, W, C), inferring a square H = W."""
    n, d = rows.shape
    for c in (3, 1):
        side = math.isqrt(d // c)
        if d % c == 0 and side > 0 and side * side * c == d:
            planes = rows.reshape(n, c, side, side)  # (N, C, H, W)
            return planes.transpose(0, 2, 3, 1) if c == 3 else planes[:, 0]
    raise MegabyteError(f"{path}: cannot infer a square image shape from rows of {d} bytes (shape {rows.shape})")


# ----------------------------------------------------------------------------------------
# IDX (the MNIST file format): 2 zero bytes, a type code, ndim, ndim big-endian uint32 sizes, data

_IDX_UBYTE = 0x08


def _is_idx(head: bytes, path: Path) -> bool:
    if head[:2] == b"\x1f\x8b":  # gzip: look inside
        try:
            with gzip.open(path, "rb") as f:
                head = f.read(4)
        except (OSError, EOFError, zlib.error):
            return "idx" in path.name.lower()  # a broken gzip named like IDX: let read_idx explain
    return len(head) >= 4 and head[:2] == b"\x00\x00" and head[2] in (0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an unsigned-byte IDX file (gzipped or not) into an array of its declared shape.

    The data is read in chunks up to the declared size (plus one byte, to detect extra data),
    so a header that declares more than the file holds costs no more memory than the file."""
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
        opener = gzip.open if gz else open
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\x00\x00":
                raise MegabyteError(f"{path}: not an IDX file")
            dtype, ndim = head[2], head[3]
            if dtype != _IDX_UBYTE:
                raise MegabyteError(f"{path}: IDX data type 0x{dtype:02x} is not unsigned bytes")
            dims = f.read(4 * ndim)
            if ndim == 0 or len(dims) < 4 * ndim:
                raise MegabyteError(f"{path}: truncated IDX header")
            shape = struct.unpack(f">{ndim}I", dims)
            data = _read_at_most(f, math.prod(shape) + 1)
    except MegabyteError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise MegabyteError(f"{path}: corrupt or truncated IDX file ({exc})") from exc
    if len(data) != math.prod(shape):
        follow = f"more than {len(data) - 1}" if len(data) > math.prod(shape) else str(len(data))
        raise MegabyteError(
            f"{path}: IDX header declares shape {shape} ({math.prod(shape)} bytes) "
            f"but {follow} bytes follow (truncated or corrupt)"
        )
    if ndim not in (3, 4):
        raise MegabyteError(f"{path}: wrong IDX shape {shape} for images (a labels file?)")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def _read_at_most(f: Any, limit: int, chunk: int = 1 << 24) -> bytearray:
    """Up to `limit` bytes of `f`, read in chunks (never one allocation of `limit` bytes)."""
    data = bytearray()
    while len(data) < limit and (part := f.read(min(chunk, limit - len(data)))):
        data += part
    return data
