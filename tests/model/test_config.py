"""Invalid configurations are rejected at construction, with the field named."""

import pytest
import torch

import megabyte
from megabyte import ConfigError, MegabyteError


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(patch_sizes=(0,)), "patch_sizes"),
        (dict(patch_sizes=()), "patch_sizes"),
        (dict(dims=(512,)), "dims"),
        (dict(depths=(6, 4, 2)), "depths"),
        (dict(depths=(6, 0)), "depths"),
        (dict(depths=(6, 10**9)), "depths"),  # a hostile config must not make construction take hours
        (dict(dims=(100, 256)), "dims"),  # 8 does not divide the global width 100
        (dict(heads=(7, 4)), "heads"),  # 7 heads do not divide 512
        (dict(max_seq_len=0), "max_seq_len"),
        (dict(dropout=1.5), "dropout"),
        (dict(cross_patch=9), "cross_patch"),
        (dict(conv_kernels=(0,)), "conv_kernels"),
        (dict(embed_dims=(8,)), "embed_dims"),
        (dict(patch_sizes=(16, 8), dims=(512, 100, 64), depths=(1, 1, 1)), "dims"),  # 16 does not divide 100
        (dict(patch_sizes=(2,), dims=(64, 32), embed_dims=(8, 16)), "tie_embeddings"),
    ],
)
def test_megabyte_config_rejections_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"^{field}: "):
        megabyte.MegabyteConfig(**kwargs)


@pytest.mark.parametrize(
    "cls, kwargs, field",
    [
        (megabyte.TransformerConfig, dict(dim=100, heads=3), "heads"),
        (megabyte.TransformerConfig, dict(depth=0), "depth"),
        (megabyte.TransformerConfig, dict(depth=10**9), "depth"),
        (megabyte.PerceiverARConfig, dict(dropout=-0.1), "dropout"),
        (megabyte.TransformerConfig, dict(max_seq_len=-1), "max_seq_len"),
        (megabyte.PerceiverARConfig, dict(num_latents=0), "num_latents"),
        (megabyte.PerceiverARConfig, dict(max_seq_len=64, num_latents=128), "num_latents"),
        (megabyte.PerceiverARConfig, dict(dim=48, heads=5), "heads"),
    ],
)
def test_baseline_config_rejections_name_the_field(cls, kwargs, field):
    with pytest.raises(ConfigError, match=f"^{field}: "):
        cls(**kwargs)


def test_sequence_longer_than_the_maximum_is_rejected():
    model = megabyte.Megabyte(megabyte.MegabyteConfig(patch_sizes=(4,), dims=(32, 16), depths=(1, 1), max_seq_len=16))
    with pytest.raises(MegabyteError, match="longer than the model's max_seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))
    assert model(torch.zeros(1, 16, dtype=torch.long)).shape == (1, 16, 256)


def test_unknown_field_from_dict():
    with pytest.raises(ConfigError, match="unknown field"):
        megabyte.MegabyteConfig.from_dict({"patch_size": 8})


def test_config_round_trips_through_a_dict():
    cfg = megabyte.MegabyteConfig(patch_sizes=(4, 2), dims=(64, 32, 16), depths=(1, 1, 1), cross_patch=1)
    assert megabyte.MegabyteConfig.from_dict(cfg.to_dict()) == cfg


def test_paper_interface_as_written():
    cfg = megabyte.MegabyteConfig(patch_sizes=(8,), dims=(512, 256), depths=(6, 4), max_seq_len=8192)
    counts = megabyte.Megabyte(cfg).num_parameters()
    assert counts["total"] == counts["global"] + counts["local"]
    assert 20e6 < counts["total"] < 30e6  # "about 25M parameters"
    t = megabyte.Transformer(megabyte.TransformerConfig(dim=512, depth=8, max_seq_len=8192))
    p = megabyte.PerceiverAR(megabyte.PerceiverARConfig(dim=512, depth=8, max_seq_len=8192, num_latents=1024))
    assert t.num_parameters()["total"] > 20e6 and p.num_parameters()["total"] > 20e6
