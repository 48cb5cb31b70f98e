"""Every CLI command answers --help; --version works; a bad command line exits cleanly."""

import subprocess
import sys

import pytest

from megabyte import __version__
from megabyte.cli import build_parser, main


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert __version__ in capsys.readouterr().out


def subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_every_command_has_help(capsys):
    for name in [None, *subcommands()]:
        with pytest.raises(SystemExit) as exit_info:
            main(["--help"] if name is None else [name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: megabyte" in capsys.readouterr().out


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "megabyte", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and __version__ in out.stdout


def test_train_overrides_may_sit_between_flags(tmp_path, capsys):
    # an override after a flag reaches the config parser (it names the bad field), not argparse
    args = ["train", "--data", str(tmp_path), "model.dims=64,32", "--out", str(tmp_path / "run"),
            "train.no_such_field=1"]
    assert main(args) == 2
    assert "no_such_field" in capsys.readouterr().err
    # a stray word that is no override is still argparse's error
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--no-such-flag"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", "--help-me", "x.y=1"])
