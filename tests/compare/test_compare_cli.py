"""`megabyte compare` end to end on tiny data, and its errors."""

from __future__ import annotations

import json

import pytest

from megabyte.cli import main
from megabyte.compare import run as run_module
from megabyte.compare.run import parse_budget, parse_models
from megabyte.errors import MegabyteError


def compare(*args: str) -> int:
    return main(["compare", *args, "--no-progress"])


@pytest.fixture
def few_points(monkeypatch):
    """Two validation points per curve: each one also redraws the run's loss plot, which is slow."""
    monkeypatch.setattr(run_module, "CURVE_POINTS", 2)


def test_compare_end_to_end(text_data, tmp_path, capsys, few_points):
    out = tmp_path / "cmp"
    rc = compare("--data", str(text_data), "--preset", "tiny", "--flops", "8e8", "--vocab-size", "320",
                 "--eval-bytes", "2048", "--gen-bytes", "24", "--lr-sweep", "off", "--out", str(out))
    assert rc == 0
    report = json.loads((out / "compare.json").read_text())
    names = [m["name"] for m in report["models"]]
    assert names == ["megabyte", "megabyte-space", "transformer", "perceiver-ar", "subword"]
    assert report["budget"] == {"seconds": None, "flops": 8e8, "steps": None, "per": "model",
                                "matched": "training FLOPs"}
    for m in report["models"]:
        t = m["train"]
        assert t["stop_reason"] == "max_steps" and t["steps"] == max(1, int(8e8 // t["flops_per_step"]))
        assert t["flops"] == t["steps"] * t["flops_per_step"] <= 8e8
        assert m["eval"]["basic"]["bytes"] == 2048  # the same validation bytes for every model
        assert 0 < m["eval"]["basic"]["bpb"] < 12 and m["eval"]["sliding"]["bpb"] > 0
        assert m["generation"]["bytes"] >= 24 and m["generation"]["bytes_per_s"] > 0
        assert m["curve"] and m["curve"][-1]["step"] == t["steps"] and len(m["curve"]) <= 3
        assert (out / "runs" / m["name"] / "metrics.jsonl").is_file()
    by_name = {m["name"]: m for m in report["models"]}
    assert set(by_name["megabyte"]["eval"]) == {"basic", "strided", "sliding", "strided+sliding"}
    assert "strided" not in by_name["transformer"]["eval"]
    sub = by_name["subword"]
    assert sub["tokenizer"]["vocab_size"] <= 320 and sub["eval"]["basic"]["tokens"] < 2048
    # the subword model's bytes trained are the UTF-8 bytes of its tokens, about a byte model's per step
    assert sub["train"]["bytes"] > 0
    md = (out / "compare.md").read_text()
    for label in ("MEGABYTE", "Transformer", "PerceiverAR", "Subword (BPE) Transformer"):
        assert f"| {label} |" in md
    assert "--flops 8e8" in md and "How the budget is matched" in md
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| MEGABYTE |" in capsys.readouterr().out  # the table is printed too
    # a second comparison into the same directory is refused rather than mixed with the first
    assert compare("--data", str(text_data), "--preset", "tiny", "--flops", "1e9", "--out", str(out)) == 2
    assert "already holds a comparison" in capsys.readouterr().err


def test_time_budget_on_images_skips_subword(image_data, tmp_path, few_points):
    out = tmp_path / "img"
    rc = compare("--data", str(image_data), "--preset", "tiny", "--models", "megabyte,transformer",
                 "--budget", "1s", "--gen-bytes", "8", "--out", str(out))
    assert rc == 0
    report = json.loads((out / "compare.json").read_text())
    mb = report["models"][0]
    assert mb["config"]["patch_sizes"] == [12]  # one 2x2 RGB pixel block per patch, as in the paper
    assert mb["train"]["stop_reason"] == "max_time" and report["budget"]["seconds"] == 1.0
    assert mb["eval"]["basic"]["bytes"] == report["data"]["bytes"]["val"]  # whole images, whole split


@pytest.mark.parametrize("args, message", [
    (["--models", "megabyte,gpt"], "unknown model"),
    (["--models", "megabyte,megabyte"], "listed twice"),
    (["--budget", "soon"], "cannot read"),
    (["--flops", "lots"], "--flops"),
    (["--preset", "huge"], "unknown preset"),
    (["--vocab-size", "100"], "at least 256"),
])
def test_bad_arguments(text_data, tmp_path, capsys, args, message):
    assert compare("--data", str(text_data), "--out", str(tmp_path / "x"), *args) == 2
    assert message in capsys.readouterr().err


def test_subword_on_images_and_missing_data(image_data, tmp_path, capsys):
    assert compare("--data", str(image_data), "--models", "megabyte,subword", "--out", str(tmp_path / "a")) == 2
    assert "needs text" in capsys.readouterr().err
    assert compare("--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b")) == 2
    assert "does not exist" in capsys.readouterr().err


def test_budget_and_flops_exclude_each_other(text_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        compare("--data", str(text_data), "--budget", "1m", "--flops", "1e12", "--out", str(tmp_path))
    assert exc.value.code == 2
    with pytest.raises(MegabyteError, match="not both"):
        parse_budget("1m", "1e12")
    assert parse_budget(None, None) == {"seconds": 600.0, "flops": None, "steps": None}
    with pytest.raises(MegabyteError, match="not both"):
        parse_budget(None, "1e12", 10)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(MegabyteError, match="--steps"):
            parse_budget(None, None, bad)


def test_step_budget_gives_every_model_the_same_updates(text_data, tmp_path, few_points):
    out = tmp_path / "cmp"
    assert compare("--data", str(text_data), "--preset", "tiny", "--models", "megabyte,transformer", "--steps", "6",
                   "--eval-bytes", "512", "--gen-bytes", "8", "--lr-sweep", "off", "--out", str(out)) == 0
    report = json.loads((out / "compare.json").read_text())
    assert report["budget"]["steps"] == 6 and report["budget"]["matched"] == "optimizer steps"
    flops = set()
    for m in report["models"]:
        assert m["train"]["steps"] == 6 and m["train"]["stop_reason"] == "max_steps"
        flops.add(m["train"]["flops"])
    assert len(flops) == 2  # the same steps cost each model its own FLOPs
    md = (out / "compare.md").read_text()
    assert "6 optimizer steps per model" in md and "--steps 6" in md


def test_model_lists():
    assert parse_models(None, "text") == (["megabyte", "megabyte-space", "transformer", "perceiver-ar", "subword"], [])
    names, skipped = parse_models(None, "audio")
    assert names == ["megabyte", "transformer", "perceiver-ar"]
    assert [s["model"] for s in skipped] == ["subword", "megabyte-space"] and "made for text" in skipped[1]["reason"]
    assert parse_models("megabyte-space", "image")[0] == ["megabyte-space"]  # named: it runs
    assert parse_models("transformer, megabyte", "text")[0] == ["transformer", "megabyte"]
    with pytest.raises(MegabyteError, match="needs text"):
        parse_models("subword", "image")


def test_help():
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--help"])
    assert exc.value.code == 0
