"""`megabyte train` on the command line: bad inputs are clear errors (exit 2), presets list,
config files, image data, bf16 autocast."""

from __future__ import annotations

import json

import numpy as np
import pytest

from megabyte.training.presets import PRESETS
from tests.training.helpers import cli, metrics


@pytest.mark.parametrize("args, message", [
    (["--data", "{tmp}/missing", "--out", "{tmp}/run"], "does not exist"),
    (["--data", "{data}", "--out", "{tmp}/run", "--preset", "huge"], "unknown preset 'huge'"),
    (["--data", "{data}", "--out", "{tmp}/run", "model.dimz=3"], "unknown field model.dimz"),
    (["--data", "{data}", "--out", "{tmp}/run", "train.batchsize=3"], "unknown field train.batchsize"),
    (["--data", "{data}", "--out", "{tmp}/run", "lr=3"], "expected model.FIELD=VALUE"),
    (["--data", "{data}", "--out", "{tmp}/run", "--preset", "tiny", "train.seq_len=65"], "model.max_seq_len is 64"),
    (["--data", "{data}", "--out", "{tmp}/run", "--preset", "tiny", "--max-time", "soon"], "--max-time"),
    (["--data", "{data}", "--out", "{tmp}/run", "--preset", "tiny", "--lr", "-1"], "train.lr"),
    (["--data", "{data}", "--out", "{tmp}/run", "--config", "{tmp}/none.toml"], "does not exist"),
    (["--out", "{tmp}/run"], "--data DIR is required"),
    (["--data", "{data}"], "--out RUN is required"),
])
def test_bad_inputs_are_clear_errors(args, message, text_data, tmp_path, capsys):
    args = [a.format(tmp=tmp_path, data=text_data) for a in args]
    assert cli("train", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("megabyte train: error:") and message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_list_presets(capsys):
    assert cli("train", "--list-presets") == 0
    out = capsys.readouterr().out
    for name in PRESETS:
        assert name in out
    assert "934M" in out  # the paper's text shape, MEGABYTE


def test_config_file_and_flags(text_data, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('preset = "tiny"\nmodel_kind = "transformer"\n[model]\ndim = 32\n'
                      '[train]\nmax_steps = 5\nbatch_size = 2\n')
    run = tmp_path / "run"
    assert cli("train", "--data", str(text_data), "--out", str(run), "--config", str(config),
               "--max-steps", "3", "train.log_every=3") == 0
    resolved = json.loads((run / "train_config.json").read_text())
    assert resolved["preset"] == "tiny" and resolved["model_kind"] == "transformer"
    assert resolved["model"]["dim"] == 32
    assert resolved["train"]["batch_size"] == 2 and resolved["train"]["max_steps"] == 3  # the flag wins
    assert [r["step"] for r in metrics(run)] == [3]


def test_bf16_autocast_trains(text_data, tmp_path):
    run = tmp_path / "run"
    assert cli("train", "--data", str(text_data), "--out", str(run), "--preset", "tiny", "--precision", "bf16",
               "--max-steps", "3") == 0
    assert json.loads((run / "train_config.json").read_text())["precision"] == "bf16"
    assert all(np.isfinite(r["train_bpb"]) for r in metrics(run))


def test_image_data_uses_whole_images(tmp_path):
    from PIL import Image

    from megabyte.data.image import prepare_image

    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    data = tmp_path / "images"
    prepare_image([photos], data, size=4, val_fraction=0.2)  # 4 x 4 x 3 = 48 bytes per image
    run = tmp_path / "run"
    assert cli("train", "--data", str(data), "--out", str(run), "--preset", "tiny", "--max-steps", "2") == 0
    resolved = json.loads((run / "train_config.json").read_text())
    assert resolved["train"]["seq_len"] == 48 and resolved["modality"] == "image"
    meta = json.loads((run / "checkpoints/step-00000002/data_meta.json").read_text())
    assert meta["modality"] == "image" and meta["item_len"] == 48
    assert cli("train", "--data", str(data), "--out", str(tmp_path / "bad"), "--preset", "tiny",
               "train.seq_len=50", "--max-steps", "1") == 2


def image_dataset(tmp_path, size: int):
    from PIL import Image

    from megabyte.data.image import prepare_image

    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    photos.mkdir(exist_ok=True)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    data = tmp_path / f"images{size}"
    prepare_image([photos], data, size=size, val_fraction=0.2)
    return data


def test_a_small_preset_meets_image_data(tmp_path, capsys):
    """tiny's 64-byte context grows to one 768-byte image and its patch becomes one 2x2-pixel
    block (12 bytes), and the run says so; what the user sets is kept, or is an error."""
    data = image_dataset(tmp_path, 16)  # 16 x 16 x 3 = 768 bytes per image
    run = tmp_path / "run"
    assert cli("train", "--data", str(data), "--out", str(run), "--preset", "tiny", "--max-steps", "2") == 0
    out = capsys.readouterr().out
    assert "preset tiny fitted to the image data: context 64 -> 768 bytes (one image); patch 4 -> 12 bytes" in out
    resolved = json.loads((run / "train_config.json").read_text())
    assert resolved["model"]["max_seq_len"] == 768 and resolved["model"]["patch_sizes"] == [12]
    assert resolved["train"]["seq_len"] == 768
    # Explicit settings win: the patch stays as set, the context still grows.
    kept = tmp_path / "kept"
    assert cli("train", "--data", str(data), "--out", str(kept), "--preset", "tiny", "model.patch_sizes=4",
               "--max-steps", "1") == 0
    resolved = json.loads((kept / "train_config.json").read_text())
    assert resolved["model"]["patch_sizes"] == [4] and resolved["model"]["max_seq_len"] == 768
    # Two images per sequence, asked for: the context holds both.
    two = tmp_path / "two"
    assert cli("train", "--data", str(data), "--out", str(two), "--preset", "tiny", "train.seq_len=1536",
               "--max-steps", "1") == 0
    assert "context 64 -> 1536 bytes (2 images)" in capsys.readouterr().out
    # An explicit context too short for one image is the user's to fix: an error naming it.
    assert cli("train", "--data", str(data), "--out", str(tmp_path / "short"), "--preset", "tiny",
               "model.max_seq_len=64", "--max-steps", "1") == 2
    assert "model.max_seq_len is 64" in capsys.readouterr().err
    for kind in ("transformer", "perceiver-ar"):  # the baselines meet the data too
        assert cli("train", "--data", str(data), "--out", str(tmp_path / kind), "--preset", "tiny", "--model", kind,
                   "--max-steps", "1") == 0
        assert json.loads((tmp_path / kind / "train_config.json").read_text())["model"]["max_seq_len"] == 768


def test_a_small_preset_trains_on_audio(tmp_path):
    import soundfile

    from megabyte.data.audio import prepare_audio

    rng = np.random.default_rng(0)
    wavs = tmp_path / "wavs"
    wavs.mkdir()
    for i in range(3):
        soundfile.write(wavs / f"{i}.wav", rng.uniform(-0.5, 0.5, 4000), 16000, subtype="PCM_16")
    data = tmp_path / "audio"
    prepare_audio([wavs], data, val_fraction=0.2)
    run = tmp_path / "run"
    assert cli("train", "--data", str(data), "--out", str(run), "--preset", "tiny", "--max-steps", "2") == 0
    assert all(np.isfinite(r["train_bpb"]) for r in metrics(run))


def test_a_time_budget_replaces_the_presets_step_budget(text_data, tmp_path):
    from megabyte.cli import build_parser
    from megabyte.commands.train import build_configs

    def configs(*args):
        parsed = build_parser().parse_args(["train", "--data", str(text_data), "--out", str(tmp_path), *args])
        return build_configs(parsed)[1]

    assert configs("--preset", "tiny").max_steps == 40
    timed = configs("--preset", "tiny", "--max-time", "10m")
    assert (timed.max_steps, timed.max_time) == (None, 600.0)
    both = configs("--preset", "tiny", "--max-time", "10m", "--max-steps", "7")
    assert (both.max_steps, both.max_time) == (7, 600.0)
