"""`megabyte prepare ...` through megabyte.cli.main: summaries, clean errors (exit 2), help."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from data_helpers import write_wav

from megabyte.cli import main

JSON_DIR = Path(json.__file__).parent


def test_prepare_text_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", "text", str(JSON_DIR), "--out", str(tmp_path / "ds"), "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "prepared text dataset" in out and "train:" in out and "val:" in out
    assert json.loads((tmp_path / "ds" / "meta.json").read_text())["split"]["seed"] == 1


def test_prepare_image_and_audio(tmp_path: Path, photos: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["prepare", "image", str(photos), "--out", str(tmp_path / "img"), "--size", "8", "--crops", "2"]
    assert main(args + ["--channels", "1", "--order", "raster"]) == 0
    assert "images of 64 bytes" in capsys.readouterr().out
    write_wav(tmp_path / "a.wav", np.zeros(800, np.int16), 8000)
    write_wav(tmp_path / "b.wav", np.zeros(800, np.int16), 8000)
    assert main(["prepare", "audio", str(tmp_path / "a.wav"), str(tmp_path / "b.wav"),
                 "--out", str(tmp_path / "aud")]) == 0
    assert "s at 16000 Hz" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["prepare", "text", "{tmp}/missing", "--out", "{tmp}/ds"], "missing does not exist"),
        (["prepare", "text", "{tmp}/empty", "--out", "{tmp}/ds"], "empty corpus"),
        (["prepare", "text", "{json}", "--out", "{tmp}/ds", "--val-fraction", "1.5"], "val-fraction"),
        (["prepare", "image", "{tmp}/bad.png", "--out", "{tmp}/ds", "--size", "8"], "bad.png"),
        (["prepare", "image", "{json}", "--out", "{tmp}/ds", "--size", "7"], "must divide"),
        (["prepare", "audio", "{tmp}/bad.png", "--out", "{tmp}/ds"], "bad.png: not a readable audio"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.png").write_bytes(b"not a png")
    argv = [a.format(tmp=tmp_path, json=JSON_DIR) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("megabyte prepare: error:") and message in err
    assert "Traceback" not in err
    assert not (tmp_path / "ds").exists()


def test_skip_bad_reports_skipped_files(tmp_path: Path, photos: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    assert main(["prepare", "image", str(photos), "--out", str(tmp_path / "ds"), "--size", "8"]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert main(["prepare", "image", str(photos), "--out", str(tmp_path / "ds"), "--size", "8", "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "4 used, 1 skipped" in out and "broken.png" in out


@pytest.mark.parametrize("argv", [["prepare", "--help"], ["prepare", "text", "--help"],
                                  ["prepare", "image", "--help"], ["prepare", "audio", "--help"]])
def test_help_works(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: megabyte prepare") and ("--out" in out or "MODALITY" in out)
