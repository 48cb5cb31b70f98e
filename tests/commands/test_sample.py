"""`megabyte sample` for text, image and audio checkpoints."""

import json
import wave

import numpy as np
import pytest
from PIL import Image

import megabyte
from megabyte.cli import main
from megabyte.data.codecs import bytes_to_wav, image_to_bytes


def make_run(tmp_path, data_meta=None, max_seq_len=96):
    cfg = megabyte.MegabyteConfig(patch_sizes=(4,), dims=(32, 16), depths=(1, 1), max_seq_len=max_seq_len)
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000001"
    megabyte.Megabyte(cfg).save_pretrained(ckpt)
    if data_meta is not None:
        (ckpt / "data_meta.json").write_text(json.dumps(data_meta))
    (tmp_path / "run" / "latest").write_text("checkpoints/step-00000001\n")
    return tmp_path / "run"


def test_text_streams_to_stdout_and_writes_raw_bytes(tmp_path, capsys):
    run = make_run(tmp_path)
    out = tmp_path / "sample.bin"
    assert main(["sample", str(run), "--prompt", "héllo", "--max-bytes", "40", "--seed", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    data = out.read_bytes()
    assert data.startswith("héllo".encode()) and len(data) == len("héllo".encode()) + 40
    assert printed.rstrip("\n") == data.decode("utf-8", errors="replace")
    # The same seed through the Python API gives the same continuation.
    model = megabyte.load(run)
    assert data[len("héllo".encode()):] == megabyte.generate(model, "héllo".encode(), 40, seed=1, temperature=0.8)


def test_compile_samples_what_eager_samples(tmp_path, capsys, monkeypatch):
    """--compile decodes through the fixed-shape step (run eagerly here: the compiler itself is
    tested once, in tests/model/test_decode_step.py)."""
    from megabyte.model import layers

    monkeypatch.setattr(layers, "compiled_step", lambda device: layers.static_step)
    run = make_run(tmp_path)
    outs = []
    for flags in ([], ["--compile"]):
        out = tmp_path / f"sample{len(flags)}.bin"
        assert main(["sample", str(run), "--prompt", "abc", "--max-bytes", "30", "--seed", "2", "--out", str(out),
                     *flags]) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    assert main(["sample", str(run), "--compile", "--no-cache"]) == 2
    assert "use_cache" in capsys.readouterr().err


def test_image_model_writes_a_png_of_the_right_size(tmp_path):
    size, channels = 4, 3
    meta = {"modality": "image", "size": size, "channels": channels, "order": "patch", "patch_pixels": 2,
            "item_len": size * size * channels}
    run = make_run(tmp_path, meta)
    out = tmp_path / "img.png"
    assert main(["sample", str(run), "--seed", "0", "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.size == (size, size) and im.mode == "RGB"
    # Completing a given image keeps its top rows exactly.
    prompt_img = tmp_path / "prompt.png"
    pixels = np.arange(size * size * 3, dtype=np.uint8).reshape(size, size, 3)
    Image.fromarray(pixels).save(prompt_img)
    out2 = tmp_path / "done.png"
    assert main(["sample", str(run), "--prompt-image", str(prompt_img), "--keep-rows", "2", "--out", str(out2)]) == 0
    done = np.asarray(Image.open(out2))
    assert np.array_equal(done[:2], pixels[:2])
    assert image_to_bytes(Image.open(out2), size)[: 2 * size * 3] == image_to_bytes(pixels, size)[: 2 * size * 3]
    assert main(["sample", str(run), "--prompt-image", str(prompt_img), "--keep-rows", "3"]) == 2


def test_audio_model_writes_a_wav_continuing_the_prompt(tmp_path):
    meta = {"modality": "audio", "sample_rate": 8000, "item_len": None}
    run = make_run(tmp_path, meta, max_seq_len=512)
    prompt = tmp_path / "p.wav"
    pcm = (np.sin(np.arange(100) / 5) * 8000).astype("<i2").tobytes()
    bytes_to_wav(pcm, prompt, sample_rate=8000)
    out = tmp_path / "more.wav"
    assert main(["sample", str(run), "--prompt-wav", str(prompt), "--max-bytes", "64", "--out", str(out)]) == 0
    with wave.open(str(out)) as w:
        assert w.getframerate() == 8000 and w.getnchannels() == 1 and w.getsampwidth() == 2
        frames = w.readframes(w.getnframes())
    assert frames[: len(pcm)] == pcm and len(frames) == len(pcm) + 64


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--prompt-image", "x.png"], "does not apply to a text model"),
        (["--top-p", "2"], "top_p"),
    ],
)
def test_bad_sample_arguments(tmp_path, capsys, argv, message):
    run = make_run(tmp_path)
    assert main(["sample", str(run), *argv]) == 2
    assert message in capsys.readouterr().err


def test_missing_run_is_a_clear_error(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "nothing")]) == 2
    assert "no such model directory" in capsys.readouterr().err
