"""Entropy patches (`patching="entropy"`): a small frozen byte model's entropies place the
boundaries. The rule by hand, calibration meeting its target, causality across boundaries, cached
decoding against the full pass, one checkpoint holding both models, hostile or mismatched entropy
models refused.

The entropy model is a tiny Transformer trained for a few seconds on the stdlib's json package, so
its entropies spread over several nats as a real one's do (an untrained model's sit within a
thousandth of ln 256 of each other, where rounding could decide a boundary).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import megabyte
from megabyte.cli import main as cli_main
from megabyte.data.dataset import load_dataset
from megabyte.errors import MegabyteError
from megabyte.model.entropy import calibrate, entropies, mean_patch, resolve
from megabyte.model.flops import training_flops
from megabyte.model.patching import patch_starts, starts_next
from megabyte.training import TrainConfig, get_preset, train

SEQ = 64


@pytest.fixture(scope="module")
def entropy_run(text_data, tmp_path_factory) -> Path:
    """`megabyte train --preset tiny --model transformer` for 60 steps: the entropy model."""
    preset = get_preset("tiny")
    run = tmp_path_factory.mktemp("entropy") / "run"
    cfg = TrainConfig(**{**preset.train, "max_steps": 60, "eval_every": 0, "save_every": 0})
    train(cfg, preset.model_config("transformer"), text_data, run, progress=False)
    return run


def rows(text_data, n: int = 3, length: int = SEQ) -> torch.Tensor:
    data = load_dataset(text_data).split("val")
    return torch.tensor(data[: n * length].astype("int64")).view(n, length)


def entropy_config(entropy_run, text_data, **fields):
    """A tiny MEGABYTE with entropy patches of at most 8 bytes, theta calibrated to 4 bytes."""
    cfg = megabyte.MegabyteConfig(**{"patch_sizes": (8,), "dims": (64, 32), "depths": (2, 2), "max_seq_len": SEQ,
                                     "patching": "entropy", "entropy_model": str(entropy_run), "patch_target": 4.0,
                                     **fields})
    return resolve(cfg, load_dataset(text_data))[0]


def entropy_model(entropy_run, text_data, **fields) -> megabyte.Megabyte:
    torch.manual_seed(0)
    model = megabyte.build_model(entropy_config(entropy_run, text_data, **fields))
    model.load_frozen()
    return model.eval()


def margin(model, x: torch.Tensor) -> float:
    """How far the nearest score of x is from theta: rounding cannot move a boundary closer than this."""
    H = entropies(model.entropy_model, x)
    score = H[:, 1:] - H[:, :-1] if model.config.patch_relative else H[:, 1:]
    return float((score - model.threshold).abs().min())


# ------------------------------------------------------------------------------------ the rule
def test_a_patch_begins_where_the_entropy_is_above_theta_and_every_p_max_bytes():
    H = torch.tensor([[9.0, 0.5, 2.5, 0.1, 0.2, 0.3, 0.1, 0.2, 0.1, 3.0, 2.0]])
    x = torch.zeros_like(H, dtype=torch.long)
    starts = patch_starts(x, "entropy", 4, entropy=H, threshold=1.0)[0]
    assert torch.nonzero(starts).flatten().tolist() == [0, 2, 6, 9, 10]  # 6: P_max = 4 after byte 2
    relative = patch_starts(x, "entropy", 4, entropy=H, threshold=1.0, relative=True)[0]
    assert torch.nonzero(relative).flatten().tolist() == [0, 2, 6, 9]  # rises of more than 1 nat only


def test_decoding_decides_each_boundary_as_the_full_pass_does():
    torch.manual_seed(0)
    H = torch.rand(3, 40) * 4
    x = torch.zeros(3, 40, dtype=torch.long)
    for relative in (False, True):
        full = patch_starts(x, "entropy", 5, entropy=H, threshold=1.3, relative=relative)
        start = torch.zeros(3, dtype=torch.long)
        for t in range(40):
            new = starts_next(x, t, start, "entropy", 5, entropy=H[:, t], previous=H[:, t - 1] if t else None,
                              threshold=1.3, relative=relative)
            assert torch.equal(new, full[:, t]), (relative, t)
            start = torch.where(new, torch.full_like(start, t), start)


@pytest.mark.parametrize("relative", [False, True])
def test_calibration_meets_its_target_on_the_data_it_was_calibrated_on(relative):
    torch.manual_seed(0)
    H = torch.rand(64, 128) ** 2 * 5  # skewed, like a model's entropies
    for target in (2.0, 4.5, 7.0):
        theta, mean = calibrate(H, target, max_len=12, relative=relative)
        assert mean == pytest.approx(mean_patch(H, theta, 12, relative))
        assert abs(mean - target) < 0.02, (target, mean)
        score = H[:, 1:] - H[:, :-1] if relative else H[:, 1:]
        assert float((score - theta).abs().min()) > 0  # theta sits between scores, never on one
    with pytest.raises(MegabyteError, match="patch_target"):
        calibrate(H, 13.0, max_len=12)


def test_training_calibrates_theta_on_the_training_split(entropy_run, text_data):
    cfg = entropy_config(entropy_run, text_data)
    assert cfg.entropy_model["model_type"] == "transformer" and cfg.entropy_source == str(entropy_run.resolve())
    assert cfg.patch_target == 4.0 and abs(cfg.patch_mean - 4.0) < 0.05 and cfg.patch_threshold > 0
    # the stored mean is what the model's own boundaries give on those windows
    from megabyte.data.dataset import even_windows

    model = entropy_model(entropy_run, text_data)
    windows = torch.from_numpy(even_windows(load_dataset(text_data).split("train"), SEQ, 256)).long()
    starts = model.patch_starts(windows)
    assert windows.numel() / int(starts.sum()) == pytest.approx(cfg.patch_mean)


# ------------------------------------------------------------------------------------ the model
@pytest.mark.parametrize("fields", [{}, {"cross_patch": 2, "conv_kernels": (3,)}, {"patch_relative": True},
                                    {"max_patches": 6}])
def test_changing_a_byte_changes_no_earlier_prediction_across_boundaries(entropy_run, text_data, fields):
    model = entropy_model(entropy_run, text_data, **fields)
    x = rows(text_data)
    with torch.no_grad():
        ref = model(x)
        before = model.patch_starts(x)
        moved = 0
        for t in (0, 5, 17, 30, 44, 63):
            for new in (ord(" "), ord("q"), 0xFF):
                y = x.clone()
                y[:, t] = new
                torch.testing.assert_close(model(y)[:, : t + 1], ref[:, : t + 1], atol=1e-5, rtol=0, msg=f"t={t}")
                moved += int((model.patch_starts(y) != before).sum())
    assert moved > 0  # the edits did move boundaries after them


@pytest.mark.parametrize("fields", [{}, {"cross_patch": 2, "conv_kernels": (3,)}, {"patch_relative": True},
                                    {"max_patches": 7}])
def test_cached_steps_equal_the_full_pass(entropy_run, text_data, fields):
    model = entropy_model(entropy_run, text_data, **fields)
    x = rows(text_data)  # three rows whose patches sit at different bytes
    assert margin(model, x) > 1e-4
    starts = torch.nonzero(model.patch_starts(x)[0]).flatten().tolist()
    s = [p for p in starts if p >= 12][0]
    with torch.no_grad():
        full = model(x)
        for L in (0, 1, s - 1, s, s + 2):
            logits, state = model.start_decoding(x[:, :L])
            for t in range(L, x.shape[1]):
                torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=1e-5, msg=f"prompt {L}, byte {t}")
                if t + 1 < x.shape[1]:
                    logits = model.continue_decoding(state, x[:, t])


def test_greedy_cached_equals_uncached_for_batched_prompts_and_past_max_seq_len(entropy_run, text_data):
    model = entropy_model(entropy_run, text_data)
    x = rows(text_data)
    prompts = [bytes(r[:13].tolist()) for r in x]
    with pytest.warns(UserWarning, match="max_seq_len"):
        cached = megabyte.generate(model, prompts, 90, temperature=0)  # past max_seq_len 64: slides
    with pytest.warns(UserWarning, match="max_seq_len"):
        uncached = megabyte.generate(model, prompts, 90, temperature=0, use_cache=False)
    assert cached == uncached and all(len(c) == 90 for c in cached)


def test_decoding_without_host_reads_equals_the_full_pass(entropy_run, text_data, monkeypatch):
    from tests.model.test_decode_step import decode_without_host_reads

    model = entropy_model(entropy_run, text_data)
    decode_without_host_reads(model, rows(text_data, 2)[:, : SEQ - 4], monkeypatch)


def test_flops_count_the_entropy_model_apart(entropy_run, text_data):
    model = entropy_model(entropy_run, text_data)
    cfg, x = model.config, rows(text_data)
    with pytest.raises(MegabyteError, match="entropy model"):
        training_flops(cfg, SEQ, data=x)
    count = training_flops(cfg, SEQ, data=x, starts=model.patch_starts(x))
    small = model.entropy_model.config
    assert count.frozen_flops == training_flops(small, SEQ).total // 3  # its forward pass, no backward
    assert count.total == count.trained + count.frozen_flops and count.trained > 0
    assert count.to_dict()["frozen_forward"] == count.frozen_flops


# ------------------------------------------------------------------------------------ one checkpoint
def test_the_checkpoint_holds_the_entropy_model(entropy_run, text_data, tmp_path, capsys):
    from safetensors import safe_open

    source = tmp_path / "entropy"
    shutil.copytree(entropy_run, source)
    preset = get_preset("tiny")
    model_cfg = entropy_config(source, text_data)
    run = tmp_path / "run"
    cfg = TrainConfig(**{**preset.train, "max_steps": 4, "eval_every": 0, "save_every": 0})
    train(cfg, model_cfg, text_data, run, progress=False)
    shutil.rmtree(source)  # the run needs nothing but its own directory from here on
    model = megabyte.load(run)
    assert model.config.patching == "entropy" and model.config.patch_threshold == model_cfg.patch_threshold
    small = megabyte.load(entropy_run)
    x = rows(text_data)
    torch.testing.assert_close(model.entropy_model(x), small(x))  # frozen: the weights it started with
    ckpt = next((run / "checkpoints").iterdir())
    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
        assert any(k.startswith("entropy_model.") for k in f.keys())
    assert not any(p.requires_grad for p in megabyte.build_model(model.config).entropy_model.parameters())
    # eval, sample and the patch viewer from the directory alone
    assert cli_main(["eval", str(run), "--data", str(text_data), "--max-bytes", "512"]) == 0
    assert cli_main(["sample", str(run), "--prompt", "def ", "--max-bytes", "40", "--seed", "0"]) == 0
    png = tmp_path / "entropy.png"
    assert cli_main(["patches", str(run), "--text", "import json\nprint(json.dumps([1, 2]))\n", "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli_main(["patches", str(run), "--data", str(text_data)]) == 0
    out = capsys.readouterr().out
    assert f"H_t > {model.config.patch_threshold:.3f} nats" in out and "bytes per patch" in out
    # resuming restores both models from the checkpoint (the entropy model's source is gone)
    more = dataclasses.replace(cfg, max_steps=6)
    train(more, model.config, text_data, run, resume=True, progress=False)


def test_hostile_or_mismatched_entropy_models_are_refused(entropy_run, text_data, tmp_path):
    data = load_dataset(text_data)
    base = {"patch_sizes": (8,), "dims": (64, 32), "depths": (2, 2), "max_seq_len": SEQ, "patching": "entropy",
            "patch_target": 4.0}
    with pytest.raises(megabyte.ConfigError, match="entropy_model"):
        megabyte.MegabyteConfig(**{**base})
    missing = tmp_path / "nothing"
    with pytest.raises(MegabyteError, match="entropy model .*nothing"):
        resolve(megabyte.MegabyteConfig(**base, entropy_model=str(missing)), data)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(entropy_run, corrupt)
    for ckpt in (corrupt / "checkpoints").iterdir():
        (ckpt / "config.json").write_text('{"model_type": "transformer", "dim": 64, "depth": 10000000}')
    with pytest.raises(MegabyteError, match="entropy model"):
        resolve(megabyte.MegabyteConfig(**base, entropy_model=str(corrupt)), data)
    short = megabyte.MegabyteConfig(**{**base, "max_seq_len": 128}, entropy_model=str(entropy_run))
    with pytest.raises(MegabyteError, match="reads 64 bytes"):
        resolve(short, data)
    small = megabyte.load(entropy_run).config.to_dict()
    with pytest.raises(megabyte.ConfigError, match="not bytes"):
        megabyte.MegabyteConfig(**base, entropy_model={**small, "vocab_size": 4096})
    nested = entropy_config(entropy_run, text_data).to_dict()
    with pytest.raises(megabyte.ConfigError, match="itself entropy-patched"):
        megabyte.MegabyteConfig(**base, entropy_model={**nested, "max_seq_len": SEQ})
    with pytest.raises(megabyte.ConfigError, match="entropy patching only"):
        megabyte.MegabyteConfig(patch_target=4.0)
    # a saved model whose entropy_model config does not match the weights it carries
    model = entropy_model(entropy_run, text_data)
    model.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    config["entropy_model"]["dim"] = 96
    (tmp_path / "saved" / "config.json").write_text(json.dumps(config))
    with pytest.raises(MegabyteError, match="do not match"):
        megabyte.load(tmp_path / "saved")


def test_compare_runs_entropy_patches_with_their_entropy_model(entropy_run, text_data, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--data", str(text_data), "--preset", "tiny", "--steps", "3", "--eval-bytes", "512",
            "--gen-bytes", "8", "--lr-sweep", "off", "--no-progress"]
    assert cli_main([*args, "--models", "megabyte-entropy", "--out", str(tmp_path / "none")]) == 2
    assert "--entropy-model RUN" in capsys.readouterr().err
    assert cli_main([*args, "--models", "megabyte,megabyte-entropy", "--entropy-model", str(entropy_run),
                     "--out", str(out)]) == 0
    report = json.loads((out / "compare.json").read_text())
    entry = {m["name"]: m for m in report["models"]}["megabyte-entropy"]
    count = entry["train"]["flop_count"]
    assert count["frozen_forward"] > 0 and count["total"] == count["trained"] + count["frozen_forward"]
    assert "entropy model (forward)" in entry["train"]["flop_split"]
    assert abs(entry["patches"]["mean_bytes"] - 4.0) < 0.2  # the windows it was calibrated on, as it trains
    assert any("theta =" in n for n in entry["notes"])


def test_the_patch_viewer_draws_entropy_over_the_pixels_of_images(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):  # smooth gradients with noise: some pixels are easy to predict, some are not
        base = rng.random((1, 1, 3)) * 200 + np.linspace(0, 55, 32)[None, :, None]
        pixels = (base + rng.normal(0, 4 * (i + 1), (32, 32, 3))).clip(0, 255).astype("uint8")
        Image.fromarray(pixels).save(photos / f"p{i}.png")
    data, small, run = tmp_path / "images", tmp_path / "entropy", tmp_path / "run"
    assert cli_main(["prepare", "image", str(photos), "--size", "8", "--crops", "6", "--out", str(data)]) == 0
    common = ["--preset", "tiny", "--no-progress", "--eval-every", "0"]
    assert cli_main(["train", "--data", str(data), "--out", str(small), "--model", "transformer",
                     "--max-steps", "6", *common]) == 0
    assert cli_main(["train", "--data", str(data), "--out", str(run), "--model", "megabyte-entropy",
                     f"model.entropy_model={small}", "--max-steps", "2", *common]) == 0
    png = tmp_path / "heat.png"
    assert cli_main(["patches", str(run), "--data", str(data), "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "entropy patches" in capsys.readouterr().out


def test_boundaries_are_the_same_under_bf16_autocast(entropy_run, text_data):
    """The entropy model runs outside autocast: a bf16 run cuts patches where the fp32 calibration did."""
    model = entropy_model(entropy_run, text_data)
    x = rows(text_data)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cut = model.patch_starts(x)
    assert torch.equal(cut, model.patch_starts(x))
