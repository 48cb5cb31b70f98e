"""Byte codecs for images and audio: the exact layouts MEGABYTE models (paper section 4).

Every modality becomes a flat sequence of bytes 0..255, and every encoder here has an exact
inverse, so sampled bytes turn back into a PNG or a WAV.

Images (one image = one sequence of ``size * size * channels`` bytes):

* ``channels=3`` stores R, G, B per pixel; ``channels=1`` stores one grey byte per pixel.
* ``order="raster"`` is plain row-major ``(H, W, C)`` bytes.
* ``order="patch"`` (the paper's default, "patch scan") cuts the image into ``p x p`` pixel
  blocks (``p = patch_pixels``), visits the blocks in raster order, and inside a block visits
  its pixels in raster order, channels interleaved per pixel. One block is then
  ``P = channels * p * p`` consecutive bytes, so a MEGABYTE patch of size P is one block.

  Worked example, a 4x4 grey image with pixel values ``v[row][col] = 10*row + col`` and p=2::

      raster: 0 1 2 3  10 11 12 13  20 21 22 23  30 31 32 33
      patch:  0 1 10 11  2 3 12 13  20 21 30 31  22 23 32 33

Audio: 16-bit signed little-endian PCM, mono, at ``sample_rate`` (16 kHz in the paper), the raw
sample bytes with no header and no mu-law. Decoding uses soundfile (libsndfile: WAV, FLAC,
OGG/Vorbis, AIFF, MP3 and more); resampling is band-limited polyphase filtering
(``scipy.signal.resample_poly``); several channels are averaged to mono.
"""

from __future__ import annotations

import os
import struct
import warnings
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np

from megabyte.atomic import atomic_open
from megabyte.errors import MegabyteError

IMAGE_ORDERS = ("patch", "raster")
IMAGE_CHANNELS = (1, 3)
#: Largest image (in pixels) we agree to decode: 100 megapixels, 300 MB as RGB bytes.
#: Larger declared sizes are refused before decoding (decompression-bomb guard). Image files
#: are also held to Pillow's own, slightly lower limit (about 89 megapixels), as an error.
MAX_IMAGE_PIXELS = 100_000_000
#: Bytes per audio sample: 16-bit signed PCM.
SAMPLE_WIDTH = 2
#: Resampling limits: factors of the reduced ratio up/down (44.1 kHz -> 16 kHz is 160/441), and
#: the most upsampling (16x, e.g. 1 kHz -> 16 kHz).
_MAX_RESAMPLE_FACTOR = 50_000
_MAX_UPSAMPLING = 16
#: libsndfile formats whose frame count is an estimate, not a declared length.
_ESTIMATED_LENGTH = ("MPEG", "OGG")

_PIL_MODE = {1: "L", 3: "RGB"}


# ----------------------------------------------------------------------------------------
# Images


def check_image_params(size: int, order: str, patch_pixels: int, channels: int) -> None:
    """Reject an impossible image layout with a MegabyteError that says why."""
    if size < 1:
        raise MegabyteError(f"image size must be at least 1, got {size}")
    if order not in IMAGE_ORDERS:
        raise MegabyteError(f"image order must be one of {IMAGE_ORDERS}, got {order!r}")
    if channels not in IMAGE_CHANNELS:
        raise MegabyteError(f"image channels must be 1 (grey) or 3 (RGB), got {channels}")
    if order == "patch":
        if patch_pixels < 1 or size % patch_pixels:
            raise MegabyteError(
                f"--patch-pixels {patch_pixels} must divide the image size {size} for patch-scan order"
            )


def image_item_len(size: int, channels: int = 3) -> int:
    """Bytes per encoded image: ``size * size * channels``."""
    return size * size * channels


def open_image(path: str | os.PathLike[str]) -> Any:
    """Open and fully decode an image file with Pillow, refusing bombs and broken files.

    Returns a loaded ``PIL.Image.Image``. Any failure (unknown format, truncated or corrupt
    data, zero or huge declared size) is a MegabyteError naming the file.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit and raises above twice that: make both errors.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _check_image_size(image.size, path)
                image.load()
                return image.copy()
    except MegabyteError:
        raise
    except UnidentifiedImageError as exc:
        raise MegabyteError(_unidentified_message(path)) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MegabyteError(f"{path}: declared image size is too large to decode safely ({exc})") from exc
    except (OSError, ValueError, SyntaxError, struct.error, EOFError) as exc:
        raise MegabyteError(f"{path}: corrupt or truncated image ({exc})") from exc
    except Exception as exc:  # a decoder's own failure on hostile bytes (IndexError, ...): still the file's fault
        raise MegabyteError(f"{path}: corrupt image ({type(exc).__name__}: {exc})") from exc


def _unidentified_message(path: Path) -> str:
    """Why Pillow could not identify a file, as far as we can tell (it does not say)."""
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        head = b""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        if width == 0 or height == 0:
            return f"{path}: zero-sized image ({width}x{height})"
        return f"{path}: corrupt PNG image (Pillow cannot read its header)"
    return f"{path}: not an image in any format Pillow can read (unsupported format or corrupt file)"


def _check_image_size(size: tuple[int, int], name: object) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise MegabyteError(f"{name}: zero-sized image ({width}x{height})")
    if width * height > MAX_IMAGE_PIXELS:
        raise MegabyteError(
            f"{name}: declared image size {width}x{height} exceeds the limit of "
            f"{MAX_IMAGE_PIXELS:,} pixels (possible decompression bomb)"
        )


def to_pil(image: Any, channels: int = 3) -> Any:
    """Turn a PIL image, an image path, or a uint8 array (HxW or HxWxC) into a PIL image in
    mode ``"RGB"`` (channels=3) or ``"L"`` (channels=1).

    Grey becomes RGB by repeating the value; RGB becomes grey with Pillow's ITU-R 601-2 luma.
    An alpha channel is dropped; 16-bit and float greyscale are scaled to 8 bits.
    """
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        image = open_image(image)
    elif isinstance(image, np.ndarray):
        image = _array_to_pil(image)
    elif not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, a path or a uint8 array, got {type(image).__name__}")
    _check_image_size(image.size, "image")
    image = _to_8bit(image)
    target = _PIL_MODE[channels]
    if image.mode == target:
        return image
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGBA" if "A" in image.mode or image.mode == "P" else "RGB")
        image = image.convert("RGB")
    return image.convert(target)


def _array_to_pil(array: np.ndarray) -> Any:
    from PIL import Image

    if array.dtype != np.uint8:
        raise MegabyteError(f"image arrays must be uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(array), mode="L")
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(array), mode="RGB" if array.shape[2] == 3 else "RGBA")
    raise MegabyteError(f"an image array must be HxW or HxWxC with C in 1, 3, 4; got shape {array.shape}")


def _to_8bit(image: Any) -> Any:
    """Scale 16-bit integer and float greyscale images to 8 bits (Pillow would clip them)."""
    from PIL import Image

    if image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64) / 257.0
    elif image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        if values.max(initial=0) > 255:
            values = values / 257.0
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if values.max(initial=0) <= 1.0:
            values = values * 255.0
    else:
        return image
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def image_to_bytes(
    image: Any, size: int, order: str = "patch", patch_pixels: int = 2, channels: int = 3
) -> bytes:
    """Encode one image as ``size * size * channels`` bytes in patch-scan or raster order.

    ``image`` is a PIL image, a path, or a uint8 array HxW / HxWxC. It is resized to
    ``size x size`` (Lanczos, aspect ratio not kept: crop first if that matters) unless it
    already has that size, so an image decoded by :func:`bytes_to_image` re-encodes to the
    very same bytes.
    """
    from PIL import Image

    check_image_params(size, order, patch_pixels, channels)
    pil = to_pil(image, channels)
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.Resampling.LANCZOS)
    pixels = np.asarray(pil, dtype=np.uint8).reshape(size, size, channels)  # (H, W, C)
    if order == "patch":
        pixels = _raster_to_patch(pixels, patch_pixels)
    return pixels.tobytes()


def bytes_to_image(
    data: Any,
    size: int,
    order: str = "patch",
    patch_pixels: int = 2,
    channels: int = 3,
) -> Any:
    """Decode ``size * size * channels`` bytes (see :func:`image_to_bytes`) into a PIL image.

    ``data`` is bytes-like or an array of values 0..255 (e.g. a sampled LongTensor).
    Returns mode ``"RGB"`` for 3 channels and ``"L"`` for 1.
    """
    from PIL import Image

    check_image_params(size, order, patch_pixels, channels)
    flat = as_byte_array(data)
    expected = image_item_len(size, channels)
    if flat.size != expected:
        raise MegabyteError(
            f"a {size}x{size}x{channels} image needs exactly {expected} bytes, got {flat.size}"
        )
    if order == "patch":
        pixels = _patch_to_raster(flat, size, patch_pixels, channels)
    else:
        pixels = flat.reshape(size, size, channels)
    if channels == 1:
        return Image.fromarray(np.ascontiguousarray(pixels[:, :, 0]), mode="L")
    return Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")


def as_byte_array(data: Any) -> np.ndarray:
    """Bytes-like data, or any array of integers 0..255 (a list, a tensor), as flat uint8."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    values = np.asarray(data).reshape(-1)
    if values.dtype != np.uint8:
        if values.size and (values.min() < 0 or values.max() > 255):
            raise MegabyteError("byte values must lie in 0..255")
        values = values.astype(np.uint8)
    return values


def _raster_to_patch(pixels: np.ndarray, p: int) -> np.ndarray:
    """(H, W, C) pixels -> flat patch-scan bytes."""
    h, w, c = pixels.shape
    blocks = pixels.reshape(h // p, p, w // p, p, c)  # (rows of blocks, row in block, cols of blocks, col, C)
    return blocks.transpose(0, 2, 1, 3, 4).reshape(-1)  # block-major, then pixel raster, then C


def _patch_to_raster(flat: np.ndarray, size: int, p: int, c: int) -> np.ndarray:
    """Flat patch-scan bytes -> (H, W, C) pixels; the inverse of :func:`_raster_to_patch`."""
    blocks = flat.reshape(size // p, size // p, p, p, c)  # (block row, block col, row, col, C)
    return blocks.transpose(0, 2, 1, 3, 4).reshape(size, size, c)


# ----------------------------------------------------------------------------------------
# Audio


def audio_to_bytes(path_or_array: Any, sample_rate: int = 16000) -> bytes:
    """Encode audio as mono 16-bit signed little-endian PCM bytes at ``sample_rate``.

    A path is decoded with soundfile (any format libsndfile reads), averaged to mono and
    resampled with a polyphase band-limited filter when its rate differs. A numpy array is
    taken to be sampled at ``sample_rate`` already: shape ``(n,)`` or ``(n, channels)``,
    either int16 samples or floats in [-1, 1] (clipped). A mono 16-bit file at the target
    rate passes through bit-exactly, so ``bytes -> WAV -> bytes`` is the identity.
    """
    if sample_rate < 1:
        raise MegabyteError(f"sample rate must be positive, got {sample_rate}")
    if isinstance(path_or_array, np.ndarray):
        samples, rate = _array_samples(path_or_array), sample_rate
    else:
        samples, rate = read_audio(path_or_array)
    return samples_to_pcm16(samples, rate, sample_rate)


def samples_to_pcm16(samples: np.ndarray, rate: int, sample_rate: int = 16000) -> bytes:
    """Float samples ``(n, channels)`` at ``rate`` -> mono 16-bit LE PCM bytes at ``sample_rate``."""
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]  # (n,)
    if rate != sample_rate:
        mono = resample(mono, rate, sample_rate)
    return float_to_pcm16(mono).tobytes()


def _array_samples(array: np.ndarray) -> np.ndarray:
    """An int16 or float array (n,) or (n, ch) -> float64 (n, ch) in [-1, 1]."""
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise MegabyteError(f"audio arrays must be (samples,) or (samples, channels); got {array.shape}")
    if array.dtype == np.int16:
        return array.astype(np.float64) / 32768.0
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float64)
    raise MegabyteError(f"audio arrays must be int16 or float, got {array.dtype}")


def read_audio(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Decode an audio file to float64 samples ``(n, channels)`` in [-1, 1] and its rate.

    Truncated WAV files (a data chunk shorter than its header says), unreadable formats and
    files with no samples are MegabyteErrors naming the file.
    """
    import soundfile

    path = Path(path)
    _check_complete(path)
    try:
        with soundfile.SoundFile(str(path)) as f:
            rate, channels = f.samplerate, f.channels
            if rate < 1 or channels < 1:
                raise MegabyteError(f"{path}: declares {rate} Hz and {channels} channels (corrupt header)")
            # Block by block, not all at once: a header may declare far more frames than follow,
            # and soundfile would allocate them all up front.
            block = max(1, (1 << 20) // channels)
            blocks = []
            while len(data := f.read(block, dtype="float64", always_2d=True)):
                blocks.append(data)
            got = sum(len(b) for b in blocks)
            if got < f.frames and f.format not in _ESTIMATED_LENGTH:  # libsndfile stops short silently
                raise MegabyteError(f"{path}: truncated audio file (the header declares {f.frames:,} frames, "
                                    f"{got:,} are present)")
    except MegabyteError:
        raise
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError, OSError, MemoryError) as exc:
        raise MegabyteError(f"{path}: not a readable audio file ({exc})") from exc
    if not blocks:
        raise MegabyteError(f"{path}: contains no audio samples")
    return np.concatenate(blocks), int(rate)


def _check_complete(path: Path) -> None:
    """Refuse a WAV, AIFF or AU file whose sample data is cut short: libsndfile reads what is
    there without a word."""
    try:
        with open(path, "rb") as f:
            header = f.read(12)
            size = os.fstat(f.fileno()).st_size
            if header[:4] == b"RIFF" and header[8:12] == b"WAVE":
                _check_chunks(f, path, size, "<I", b"data", "WAV")
            elif header[:4] == b"FORM" and header[8:12] in (b"AIFF", b"AIFC"):
                _check_chunks(f, path, size, ">I", b"SSND", "AIFF")
            elif header[:4] == b".snd" and len(header) == 12:
                offset, length = struct.unpack(">II", header[4:12])
                if length != 0xFFFFFFFF and offset + length > size:  # all ones: "unknown length"
                    raise MegabyteError(f"{path}: truncated AU file (declares {length} data bytes, "
                                        f"{max(size - offset, 0)} present)")
    except OSError as exc:
        raise MegabyteError(f"{path}: cannot read ({exc})") from exc


def _check_chunks(f: Any, path: Path, size: int, order: str, data_id: bytes, kind: str) -> None:
    """Walk the chunks after a RIFF/FORM header up to the sample data; it must fit in the file."""
    while True:
        chunk = f.read(8)
        if len(chunk) < 8:
            raise MegabyteError(f"{path}: truncated {kind} file (no complete {data_id.decode()} chunk)")
        name, length = chunk[:4], struct.unpack(order, chunk[4:])[0]
        if name == data_id:
            # 0 and 0xFFFFFFFF mean "unknown length" (a streamed file): accept them.
            if length not in (0, 0xFFFFFFFF) and f.tell() + length > size:
                raise MegabyteError(f"{path}: truncated {kind} file ({data_id.decode()} chunk declares "
                                    f"{length} bytes, {size - f.tell()} present)")
            return
        f.seek(length + (length & 1), os.SEEK_CUR)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited polyphase resampling of a 1-D float signal (scipy's Kaiser-windowed FIR)."""
    from scipy.signal import resample_poly

    if from_rate == to_rate:
        return samples
    g = gcd(from_rate, to_rate)
    up, down = to_rate // g, from_rate // g
    # The filter has about 20 * max(up, down) taps and the output up/down times the input's length:
    # refuse the ratios no real recording needs (a corrupt header's 1 Hz or 999,983 Hz).
    if max(up, down) > _MAX_RESAMPLE_FACTOR or up > _MAX_UPSAMPLING * down:
        raise MegabyteError(f"cannot resample {from_rate} Hz to {to_rate} Hz (ratio {up}/{down} is too extreme)")
    return resample_poly(samples, up, down)


def float_to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Floats in [-1, 1] -> little-endian int16 (scale 32768, rounded, clipped).

    The scale matches libsndfile's int16 -> float conversion, so 16-bit input is exact.
    """
    scaled = np.clip(np.rint(samples * 32768.0), -32768, 32767)
    return scaled.astype("<i2")


def bytes_to_wav(data: Any, path: str | os.PathLike[str], sample_rate: int = 16000) -> None:
    """Write 16-bit little-endian mono PCM bytes as a WAV file, atomically.

    ``data`` is bytes-like or an array of values 0..255. The file is written beside ``path``
    under a temporary name and renamed into place, so a reader never sees half a file.
    An odd number of bytes (half a sample at the end) is an error.
    """
    import wave

    raw = as_byte_array(data).tobytes()
    if len(raw) % SAMPLE_WIDTH:
        raise MegabyteError(f"16-bit PCM needs an even number of bytes, got {len(raw)}")
    with atomic_open(path) as f, wave.open(f, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(SAMPLE_WIDTH)
        w.setframerate(sample_rate)
        w.writeframes(raw)
