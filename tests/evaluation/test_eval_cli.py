"""`megabyte eval`: JSON and text reports on a hand-built run and dataset, and clear errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import megabyte
from megabyte.cli import main
from megabyte.evaluation import evaluate
from tests.evaluation.helpers import real_text, tiny_megabyte


def write_dataset(directory, val: np.ndarray, train: np.ndarray | None = None, item_len=None):
    """A dataset directory in the format `megabyte prepare` writes (megabyte.data.format)."""
    train = real_text(300) if train is None else train
    directory.mkdir()
    (directory / "train.bin").write_bytes(train.tobytes())
    (directory / "val.bin").write_bytes(val.tobytes())
    meta = {"format": "megabyte-dataset", "format_version": 1, "modality": "image" if item_len else "text",
            "bytes": {"train": len(train), "val": len(val)}, "item_len": item_len}
    (directory / "meta.json").write_text(json.dumps(meta))
    return directory


def write_run(directory, model):
    """A training run directory: one checkpoint and the `latest` pointer to it."""
    model.save_pretrained(directory / "checkpoints" / "step-00000001")
    (directory / "latest").write_text("checkpoints/step-00000001\n")
    return directory


@pytest.fixture
def setup(tmp_path):
    model = tiny_megabyte()
    val = real_text(150, skip=2000)
    return model, val, write_run(tmp_path / "run", model), write_dataset(tmp_path / "data", val)


def run_json(capsys, *args) -> dict:
    assert main(["eval", *map(str, args), "--json"]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1
    return json.loads(out)


def test_json_report_matches_the_library(setup, capsys):
    model, val, run, data = setup
    report = run_json(capsys, run, "--data", data)
    assert report["bytes"] == len(val)
    assert report["bpb"] == pytest.approx(evaluate(model, val).bpb, rel=1e-6)
    assert report["method"] == "basic" and report["cost"] == 1.0
    assert report["split"] == "val" and report["checkpoint"].endswith("step-00000001")


def test_json_report_of_the_combined_method(setup, capsys):
    model, val, run, data = setup
    report = run_json(capsys, run, "--data", data, "--strided", "--sliding-window", "--stride", "8",
                      "--seq-len", "24", "--batch-size", "3", "--device", "cpu")
    expected = evaluate(model, val, seq_len=24, strided=True, sliding_window=True, window_stride=8)
    assert report["method"] == "strided+sliding-window" and report["stride"] == 8 and report["offset"] == 2
    assert report["bytes"] == len(val)
    assert report["bpb"] == pytest.approx(expected.bpb, rel=1e-6)
    assert report["cost"] == pytest.approx(expected.cost) and report["cost"] > 5


def test_text_report_and_a_checkpoint_directory(setup, capsys):
    _, val, run, data = setup
    assert main(["eval", str(run / "checkpoints" / "step-00000001"), "--data", str(data), "--split", "train",
                 "--max-bytes", "100"]) == 0
    out = capsys.readouterr().out
    assert "bpb " in out and "100 scored" in out and "1.00x" in out and "train split" in out


def test_image_dataset_scores_whole_images(tmp_path, capsys):
    model = tiny_megabyte()
    images = real_text(16 * 6, skip=300)
    run = write_run(tmp_path / "run", model)
    data = write_dataset(tmp_path / "data", images, train=images, item_len=16)
    report = run_json(capsys, run, "--data", data, "--strided")
    assert report["bytes"] == len(images)
    assert report["bpb"] == pytest.approx(evaluate(model, images, item_len=16, strided=True).bpb, rel=1e-6)


def errors(capsys, *args) -> str:
    assert main(["eval", *map(str, args)]) == 2
    return capsys.readouterr().err


def test_clear_errors(setup, tmp_path, capsys):
    _, _, run, data = setup
    assert "no such run" in errors(capsys, tmp_path / "nowhere", "--data", data)
    (tmp_path / "empty-run").mkdir()
    assert "holds no checkpoint" in errors(capsys, tmp_path / "empty-run", "--data", data)
    assert "does not exist" in errors(capsys, run, "--data", tmp_path / "no-data")
    assert "fewer than one window" in errors(capsys, run, "--data", data, "--max-bytes", "20")
    assert "--stride needs --sliding-window" in errors(capsys, run, "--data", data, "--stride", "4")
    assert "max_seq_len" in errors(capsys, run, "--data", data, "--seq-len", "64")
    (data / "val.bin").unlink()
    assert "val.bin is missing" in errors(capsys, run, "--data", data)


def test_a_short_split_is_an_error_that_suggests_seq_len(tmp_path, capsys):
    run = write_run(tmp_path / "run", tiny_megabyte())
    data = write_dataset(tmp_path / "data", real_text(20))
    message = errors(capsys, run, "--data", data)
    assert "fewer than one window of seq_len=32" in message and "--seq-len" in message
    assert run_json(capsys, run, "--data", data, "--seq-len", "20")["bytes"] == 20


def test_strided_on_a_model_without_patches_is_an_error(tmp_path, capsys):
    model = megabyte.build_model(megabyte.TransformerConfig(dim=32, depth=1, max_seq_len=32))
    run = write_run(tmp_path / "run", model)
    data = write_dataset(tmp_path / "data", real_text(100))
    assert "needs a MEGABYTE model" in errors(capsys, run, "--data", data, "--strided")


@pytest.mark.slow
def test_torchrun_over_two_processes_gives_the_single_process_numbers(setup, capsys):
    _, val, run, data = setup
    single = run_json(capsys, run, "--data", data, "--strided", "--sliding-window", "--batch-size", "2")
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "megabyte", "eval", str(run), "--data", str(data), "--strided", "--sliding-window",
         "--batch-size", "2", "--device", "cpu", "--json"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # rank 0 alone reports
    both = json.loads(lines[0])
    assert both["world_size"] == 2 and both["bytes"] == single["bytes"] == len(val)
    assert both["bpb"] == pytest.approx(single["bpb"], rel=1e-6)


def test_audio_windows_start_on_whole_samples(setup, tmp_path, capsys):
    """On 16-bit audio every window starts on a sample: a window length, stride or strided
    offset that would start one on a high byte is an error naming it; whole ones evaluate."""
    _, val, run, _ = setup
    data = write_dataset(tmp_path / "audio", val[: len(val) // 2 * 2])
    meta = json.loads((data / "meta.json").read_text())
    (data / "meta.json").write_text(json.dumps({**meta, "modality": "audio", "sample_width": 2}))
    for bad, what in ((["--seq-len", "31"], "seq_len is 31"),
                      (["--sliding-window", "--stride", "7"], "stride is 7")):
        assert main(["eval", str(run), "--data", str(data), *bad]) == 2
        err = capsys.readouterr().err
        assert what in err and "not a multiple of 2" in err, err
    report = run_json(capsys, run, "--data", data, "--sliding-window", "--stride", "8", "--max-bytes", "101")
    assert report["bytes"] == 100  # rounded down to whole samples
