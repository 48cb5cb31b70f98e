"""save_pretrained -> load gives identical logits; broken directories give clear errors."""

import json
import pickle

import pytest
import torch

import megabyte
from megabyte.errors import MegabyteError
from tests.model.configs import MODEL_CONFIGS, make


@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
def test_save_then_load_gives_identical_logits(name, tmp_path):
    model = make(name)
    model.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    same = megabyte.load(tmp_path / "ckpt")
    assert type(same) is type(model) and same.config == model.config
    x = torch.randint(0, 256, (2, 33))
    with torch.no_grad():
        assert torch.equal(model(x), same(x))


@pytest.fixture
def saved(tmp_path):
    make("megabyte-2stage").save_pretrained(tmp_path)
    return tmp_path


def test_missing_directory(tmp_path):
    with pytest.raises(MegabyteError, match="no such model directory"):
        megabyte.load(tmp_path / "nope")


def test_missing_weights(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(MegabyteError, match="model.safetensors: missing"):
        megabyte.load(saved)


def test_missing_config(saved):
    (saved / "config.json").unlink()
    with pytest.raises(MegabyteError, match="config.json: missing"):
        megabyte.load(saved)


def test_truncated_weights(saved):
    path = saved / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(MegabyteError, match="model.safetensors: not a readable safetensors file"):
        megabyte.load(saved)


def test_pickle_in_place_of_weights_is_never_unpickled(saved, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (saved / "model.safetensors").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(MegabyteError, match="model.safetensors"):
        megabyte.load(saved)
    assert not marker.exists()


def test_corrupt_config(saved):
    (saved / "config.json").write_text("{not json")
    with pytest.raises(MegabyteError, match="config.json: not valid JSON"):
        megabyte.load(saved)


def test_config_of_another_shape(saved):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["dims"] = [128, 32]
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MegabyteError, match="weights do not match the config"):
        megabyte.load(saved)


def test_config_of_another_model_kind(saved):
    (saved / "config.json").write_text(json.dumps(megabyte.TransformerConfig(dim=32, depth=2).to_dict()))
    with pytest.raises(MegabyteError, match="holds the weights of a megabyte model, but config.json describes a "
                                            "transformer model"):
        megabyte.load(saved)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "os.system"}, "unknown model_type 'os.system'"),
        ({"dims_typo": [1]}, "unknown field.*dims_typo"),
        ({"patch_sizes": [0]}, "patch_sizes"),
    ],
)
def test_bad_config_fields_are_named(saved, change, message):
    cfg = json.loads((saved / "config.json").read_text())
    cfg.update(change)
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MegabyteError, match=message):
        megabyte.load(saved)


def test_saved_files_get_ordinary_permissions(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        make("transformer").save_pretrained(tmp_path)
    finally:
        os.umask(old)
    for name in ("model.safetensors", "config.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644


@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
def test_a_meta_model_has_the_real_shapes_and_draws_nothing_at_random(name, monkeypatch):
    """`meta_model` (counting parameters, checking files against a config): the real model's
    parameter shapes, on the meta device, with no initialiser run (each costs milliseconds there,
    and the first `normal_` imports torch._dynamo)."""
    from megabyte.model.io import meta_model

    config = make(name).config
    real = {k: v.shape for k, v in make(name).state_dict().items()}

    def drawn(*args, **kwargs):
        raise AssertionError("an initialiser ran on the meta device")

    for fn in ("_no_grad_normal_", "_no_grad_uniform_"):  # the random draws (fills are cheap)
        monkeypatch.setattr(torch.nn.init, fn, drawn)
    model = meta_model(config)
    assert {k: v.shape for k, v in model.state_dict().items()} == real
    assert all(p.is_meta for p in model.parameters())
