"""megabyte.data.codecs: exact inverses, the patch-scan layout, audio decoding and resampling."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
from data_helpers import write_png, write_wav
from PIL import Image

from megabyte.data.codecs import audio_to_bytes, bytes_to_image, bytes_to_wav, image_to_bytes
from megabyte.errors import MegabyteError


@pytest.mark.parametrize("order", ["patch", "raster"])
@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("patch_pixels", [2, 4])
def test_bytes_image_bytes_is_exact(order: str, channels: int, patch_pixels: int, rng) -> None:
    size = 8
    data = rng.integers(0, 256, size * size * channels, dtype=np.uint8).tobytes()
    image = bytes_to_image(data, size, order=order, patch_pixels=patch_pixels, channels=channels)
    assert image.size == (size, size) and image.mode == ("RGB" if channels == 3 else "L")
    assert image_to_bytes(image, size, order=order, patch_pixels=patch_pixels, channels=channels) == data


@pytest.mark.parametrize("order", ["patch", "raster"])
@pytest.mark.parametrize("channels", [3, 1])
def test_round_trip_through_a_png_file(order: str, channels: int, tmp_path: Path, rng) -> None:
    data = rng.integers(0, 256, 12 * 12 * channels, dtype=np.uint8).tobytes()
    bytes_to_image(data, 12, order=order, channels=channels).save(tmp_path / "x.png")
    assert image_to_bytes(tmp_path / "x.png", 12, order=order, channels=channels) == data


def test_patch_scan_order_on_a_hand_made_grey_image() -> None:
    pixels = np.array([[10 * r + c for c in range(4)] for r in range(4)], dtype=np.uint8)  # v = 10*row + col
    raster = image_to_bytes(pixels, 4, order="raster", channels=1)
    patch = image_to_bytes(pixels, 4, order="patch", patch_pixels=2, channels=1)
    assert list(raster) == [0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23, 30, 31, 32, 33]
    assert list(patch) == [0, 1, 10, 11, 2, 3, 12, 13, 20, 21, 30, 31, 22, 23, 32, 33]


def test_patch_scan_interleaves_channels_per_pixel() -> None:
    # pixel (r, c) has channels (R, G, B) = (40r + 4c, 40r + 4c + 1, 40r + 4c + 2): all distinct
    pixels = np.array([[[40 * r + 4 * c + k for k in range(3)] for c in range(4)] for r in range(4)], np.uint8)
    patch = image_to_bytes(pixels, 4, order="patch", patch_pixels=2, channels=3)
    first_block = [pixels[r, c, k] for r in (0, 1) for c in (0, 1) for k in range(3)]
    assert list(patch[:12]) == first_block  # one block = P = 3*2*2 bytes
    second_block = [pixels[r, c, k] for r in (0, 1) for c in (2, 3) for k in range(3)]
    assert list(patch[12:24]) == second_block
    assert image_to_bytes(pixels, 4, order="raster") == pixels.tobytes()


def test_grey_input_becomes_rgb_and_rgb_becomes_grey() -> None:
    grey = np.full((4, 4), 77, dtype=np.uint8)
    assert image_to_bytes(grey, 4, channels=3) == bytes([77]) * 48
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    assert set(image_to_bytes(rgb, 4, channels=1)) == {76}  # ITU-R 601-2 luma of pure red


def test_resize_to_the_requested_size(tmp_path: Path, rng) -> None:
    path = write_png(tmp_path / "big.png", rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
    assert len(image_to_bytes(path, 16)) == 16 * 16 * 3
    assert len(image_to_bytes(Image.open(path), 10, order="raster", channels=1)) == 100


def test_bad_image_layouts_are_errors() -> None:
    with pytest.raises(MegabyteError, match="patch-pixels 3 must divide"):
        image_to_bytes(np.zeros((9, 9), np.uint8), 8, patch_pixels=3)
    with pytest.raises(MegabyteError, match="needs exactly 192 bytes"):
        bytes_to_image(b"\0" * 191, 8)
    with pytest.raises(MegabyteError, match="channels must be 1"):
        bytes_to_image(b"\0" * 128, 8, channels=2)


def test_bytes_wav_bytes_is_exact(tmp_path: Path, rng) -> None:
    data = rng.integers(0, 256, 2 * 1000, dtype=np.uint8).tobytes()
    path = tmp_path / "x.wav"
    bytes_to_wav(data, path, sample_rate=16000)
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 16000, 1000)
    assert audio_to_bytes(path, sample_rate=16000) == data
    assert [p.name for p in tmp_path.iterdir()] == ["x.wav"]  # no temporary file left


def test_odd_byte_count_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MegabyteError, match="even number"):
        bytes_to_wav(b"abc", tmp_path / "x.wav")
    assert not any(tmp_path.iterdir())


def test_flac_is_decoded_exactly(tmp_path: Path, rng) -> None:
    import soundfile

    samples = rng.integers(-32768, 32768, 800, dtype=np.int16)
    soundfile.write(tmp_path / "x.flac", samples, 16000, subtype="PCM_16")
    assert audio_to_bytes(tmp_path / "x.flac") == samples.astype("<i2").tobytes()


def _peak_hz(pcm: bytes, rate: int) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("source_rate", [8000, 44100])
def test_resampling_keeps_a_sines_frequency(source_rate: int, tmp_path: Path) -> None:
    t = np.arange(source_rate) / source_rate  # one second
    sine = (0.5 * 32767 * np.sin(2 * np.pi * 440.0 * t)).astype(np.int16)
    pcm = audio_to_bytes(write_wav(tmp_path / "sine.wav", sine, source_rate), sample_rate=16000)
    assert len(pcm) == 2 * 16000
    assert _peak_hz(pcm, 16000) == pytest.approx(440.0, abs=2.0)
    level = np.abs(np.frombuffer(pcm, "<i2")[1000:-1000]).max()
    assert 0.45 * 32767 < level < 0.55 * 32767  # amplitude kept, no clipping


def test_stereo_is_mixed_to_mono(tmp_path: Path) -> None:
    left = np.arange(-500, 500, dtype=np.int16) * 20
    stereo = np.stack([left, left], axis=1)
    assert audio_to_bytes(write_wav(tmp_path / "s.wav", stereo, 16000)) == left.astype("<i2").tobytes()
    cancel = np.stack([left, -left], axis=1)
    assert set(audio_to_bytes(write_wav(tmp_path / "c.wav", cancel, 16000))) == {0}


def test_arrays_are_int16_or_float_at_the_target_rate() -> None:
    ints = np.array([0, 1, -1, 32767, -32768], dtype=np.int16)
    assert audio_to_bytes(ints) == ints.astype("<i2").tobytes()
    floats = np.array([0.0, 0.5, -1.0, 2.0])
    assert np.frombuffer(audio_to_bytes(floats), "<i2").tolist() == [0, 16384, -32768, 32767]
    with pytest.raises(MegabyteError, match="int16 or float"):
        audio_to_bytes(np.zeros(4, dtype=np.int32))


def test_truncated_and_corrupt_audio_name_the_file(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "cut.wav", np.zeros(1000, np.int16), 8000)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(MegabyteError, match=r"cut\.wav: truncated WAV"):
        audio_to_bytes(path)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(MegabyteError, match=r"junk\.wav: not a readable audio file"):
        audio_to_bytes(junk)


def test_decoders_accept_sampled_tensors(tmp_path: Path, rng) -> None:
    import torch

    data = rng.integers(0, 256, 4 * 4 * 3, dtype=np.uint8)
    image = bytes_to_image(torch.from_numpy(data).long(), 4)
    assert image_to_bytes(image, 4) == data.tobytes()
    bytes_to_wav(torch.tensor([1, 2, 3, 4]), tmp_path / "t.wav")
    assert audio_to_bytes(tmp_path / "t.wav") == bytes([1, 2, 3, 4])
    with pytest.raises(MegabyteError, match="0..255"):
        bytes_to_image(torch.full((48,), 256), 4)
