"""`megabyte demo` end to end, shortened: stdlib text, two models trained, a sample printed."""

import re

import megabyte
from megabyte.cli import main


def test_demo_runs_end_to_end_on_the_standard_library(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--minutes", "0.05", "--preset", "tiny", "--out", str(out), "--sample-bytes", "60",
                 "--prompt", "import "])
    assert code == 0
    printed = capsys.readouterr().out
    rows = dict(re.findall(r"^\| (megabyte|transformer) \|.*\| ([0-9.]+) \|$", printed, flags=re.M))
    assert set(rows) == {"megabyte", "transformer"}
    assert all(0 < float(bpb) < 8.5 for bpb in rows.values())
    assert "4/4 sampling 60 bytes" in printed and "\nimport " in printed
    assert isinstance(megabyte.load(out / "megabyte"), megabyte.Megabyte)
    assert isinstance(megabyte.load(out / "transformer"), megabyte.Transformer)
    # A second demo into the same place starts afresh instead of failing.
    assert main(["demo", "--minutes", "0.02", "--preset", "tiny", "--out", str(out), "--sample-bytes", "5"]) == 0


def test_demo_refuses_a_directory_that_is_not_a_demo(tmp_path, capsys):
    (tmp_path / "megabyte").mkdir()
    (tmp_path / "megabyte" / "precious.txt").write_text("keep me")
    assert main(["demo", "--minutes", "0.02", "--preset", "tiny", "--out", str(tmp_path)]) == 2
    assert "not a run of an earlier demo" in capsys.readouterr().err
    assert (tmp_path / "megabyte" / "precious.txt").exists()
