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
