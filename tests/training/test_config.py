"""TrainConfig validation, overrides, TOML files, presets and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest

from megabyte import ConfigError, MegabyteConfig, MegabyteError, TransformerConfig
from megabyte.training.config import TrainConfig, parse_duration, read_toml, split_overrides
from megabyte.training.optim import lr_at
from megabyte.training.presets import PRESETS, describe_presets, get_preset, model_kinds, parameter_count


def test_defaults_are_the_papers_optimizer_settings():
    cfg = TrainConfig(max_steps=10)
    assert cfg.betas == (0.9, 0.98) and cfg.weight_decay == 0.1 and cfg.clip == 1.0 and cfg.decay == "cosine"


@pytest.mark.parametrize("fields, name", [
    ({"batch_size": 0}, "batch_size"),
    ({"lr": -1.0}, "lr"),
    ({"min_lr": 1.0}, "min_lr"),
    ({"betas": (0.9, 1.5)}, "betas"),
    ({"precision": "fp16"}, "precision"),
    ({"decay": "step"}, "decay"),
    ({"dropout": 1.0}, "dropout"),
    ({"max_steps": None, "max_time": None}, "max_steps"),
    ({"max_time": "ten minutes"}, "max_time"),
    ({"grad_accum": 1.5}, "grad_accum"),
])
def test_invalid_fields_are_named(fields, name):
    with pytest.raises(ConfigError, match=f"train.{name}"):
        TrainConfig(**{"max_steps": 10, **fields})


def test_unknown_train_field_is_an_error():
    with pytest.raises(ConfigError, match="unknown train field.*learning_rate"):
        TrainConfig.from_dict({"learning_rate": 1e-3, "max_steps": 1})


@pytest.mark.parametrize("text, seconds", [("600", 600), ("10m", 600), ("90s", 90), ("1h30m", 5400), (2.5, 2.5)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_overrides_are_typed_and_checked():
    model_kw, train_kw = split_overrides(
        ["model.dims=512,256", "model.heads=none", "train.batch_size=16", "train.lr=1e-3",
         "train.compile=true", "train.max_time=10m", "train.betas=0.9,0.95"],
        MegabyteConfig,
    )
    assert model_kw == {"dims": (512, 256), "heads": None}
    assert train_kw == {"batch_size": 16, "lr": 1e-3, "compile": True, "max_time": 600.0, "betas": (0.9, 0.95)}
    for bad, match in [("model.dimz=1", "unknown field model.dimz"), ("train.lr", "expected model.FIELD"),
                       ("optim.lr=1", "expected model.FIELD"), ("train.batch_size=big", "batch_size")]:
        with pytest.raises(ConfigError, match=match):
            split_overrides([bad], MegabyteConfig)
    with pytest.raises(ConfigError, match="unknown field model.dims"):  # Transformer has `dim`, not `dims`
        split_overrides(["model.dims=1,2"], TransformerConfig)


def test_toml_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('preset = "tiny"\nmodel_kind = "transformer"\n[model]\ndim = 32\n[train]\nmax_time = "2m"\n')
    data = read_toml(path)
    assert data["preset"] == "tiny" and data["model"] == {"dim": 32}
    assert TrainConfig(**data["train"]).max_time == 120.0
    path.write_text("[optimizer]\nlr = 1\n")
    with pytest.raises(MegabyteError, match="unknown key"):
        read_toml(path)
    with pytest.raises(MegabyteError, match="does not exist"):
        read_toml(tmp_path / "missing.toml")


def test_every_preset_builds_every_model_kind():
    from megabyte.model.registry import get_kind

    small = get_preset("entropy").model_config("transformer").to_dict()
    for preset in PRESETS.values():
        train = TrainConfig(**preset.train)
        for kind in model_kinds():
            if preset.name == "entropy" and kind != "transformer":
                assert preset.name not in get_kind(kind).presets  # the entropy model's preset is for it alone
                continue
            # entropy patches also take the user's entropy model (here a config, reading the whole context)
            extra = ({"entropy_model": {**small, "max_seq_len": preset.ctx}} if kind == "megabyte-entropy" else {})
            config = get_kind(kind).config_class(**{**preset.model_fields(kind), **extra})
            assert config.max_seq_len >= (train.seq_len or 1)
    assert get_preset("entropy").kind == "transformer"
    assert {"tiny", "small", "text", "imagenet64", "audio"} <= set(PRESETS)
    text = get_preset("text").model_config("megabyte")
    assert (text.patch_sizes, text.dims, text.depths, text.max_seq_len) == ((8,), (2048, 1024), (14, 18), 8192)
    assert get_preset("imagenet64").model_config("megabyte").patch_sizes == (12,)
    assert get_preset("audio").model_config("megabyte").patch_sizes == (32,)
    with pytest.raises(MegabyteError, match="unknown preset"):
        get_preset("huge")


def test_baselines_are_about_the_same_size():
    for name in ("tiny", "small", "medium", "text"):
        preset = get_preset(name)
        counts = {k: parameter_count(preset.model_config(k)) for k in ("megabyte", "megabyte-space", "transformer",
                                                                       "perceiver-ar")}
        assert 0.75 < counts["transformer"] / counts["megabyte"] < 1.33, (name, counts)
    table = describe_presets()
    assert "imagenet64" in table and "3.6M+E" in table  # entropy patches: their shape plus the user's model


def test_schedule_warmup_then_cosine():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup=10, max_steps=110)
    assert lr_at(cfg, 0) == pytest.approx(0.1)
    assert lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 10) == pytest.approx(1.0)
    assert lr_at(cfg, 60) == pytest.approx(0.55)
    assert lr_at(cfg, 110) == pytest.approx(0.1)
    assert lr_at(TrainConfig(lr=1.0, min_lr=0.0, warmup=0, max_steps=100, decay="linear"), 25) == pytest.approx(0.75)


def test_schedule_follows_time_unless_decay_steps_is_set():
    timed = TrainConfig(lr=1.0, min_lr=0.0, warmup=0, max_steps=1000, max_time=100.0)
    assert lr_at(timed, 10, elapsed=50.0) == pytest.approx(0.5)  # time is further along than steps
    assert lr_at(timed, 10, elapsed=100.0) == pytest.approx(0.0)
    fixed = TrainConfig(lr=1.0, min_lr=0.0, warmup=0, max_steps=1000, max_time=100.0, decay_steps=20)
    assert lr_at(fixed, 10, elapsed=99.0) == pytest.approx(0.5)
    assert math.isclose(lr_at(fixed, 30, elapsed=0.0), 0.0, abs_tol=1e-12)
