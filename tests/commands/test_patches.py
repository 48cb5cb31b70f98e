"""A space-patched MEGABYTE through the command line (train, eval, sample, load), and
`megabyte patches`, which shows how bytes are cut."""

import json
import os

import pytest
from PIL import Image

import megabyte
from megabyte.cli import main

TEXT = "Patches end where words do: def main(argv): return 0"


@pytest.fixture(scope="module")
def space_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("space")
    assert main(["prepare", "text", os.path.dirname(json.__file__), "--out", str(root / "data")]) == 0
    assert main(["train", "--data", str(root / "data"), "--out", str(root / "run"), "--preset", "tiny",
                 "--model", "megabyte-space", "--max-steps", "6", "--eval-every", "6", "--no-progress",
                 "train.eval_bytes=2048"]) == 0
    return root


def test_a_space_run_trains_evaluates_samples_and_loads(space_run, capsys):
    model = megabyte.load(space_run / "run")
    assert model.config.patching == "space" and model.config.patch_sizes == (8,)
    capsys.readouterr()
    assert main(["eval", str(space_run / "run"), "--data", str(space_run / "data"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bpb"] > 0
    assert main(["eval", str(space_run / "run"), "--data", str(space_run / "data"), "--strided"]) == 2
    assert "fixed patch grid" in capsys.readouterr().err
    assert main(["sample", str(space_run / "run"), "--prompt", "def ", "--max-bytes", "20", "--seed", "1"]) == 0
    assert len(capsys.readouterr().out.encode()) >= 20


def test_patches_marks_the_boundaries_of_a_run_s_rule(space_run, capsys, tmp_path):
    png = tmp_path / "p.png"
    assert main(["patches", str(space_run / "run"), "--text", TEXT, "--png", str(png)]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.split("\u2502") == ["Patches ", "end ", "where ", "words ", "do:", " def ", "main(", "argv)",
                                     ": return", " ", "0"]  # ": return" reached P_max = 8
    assert "space patches of at most 8 bytes: 52 bytes in 11 patches, 4.73 bytes per patch" in out
    assert Image.open(png).size[0] > 100


def test_patches_of_a_fixed_rule_and_dataset_statistics(space_run, capsys):
    assert main(["patches", "--rule", "fixed", "--max-len", "4", "--text", "abcdefghij"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "abcd\u2502efgh\u2502ij"
    assert main(["patches", "--rule", "space", "--max-len", "16", "--data", str(space_run / "data"),
                 "--window", "256"]) == 0
    out = capsys.readouterr().out
    assert "windows of 256 bytes" in out and "bytes per patch" in out and "past it" in out


def test_patches_errors_are_one_line(tmp_path, capsys):
    assert main(["patches", "--file", str(tmp_path / "missing"), "--rule", "space"]) == 2
    assert main(["patches", str(tmp_path), "--text", "x"]) == 2
    assert main(["patches", "--text", ""]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("megabyte patches: error:") for line in err)
