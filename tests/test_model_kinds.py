"""A new model kind is one `register` call: a toy kind defined in this file alone (a bigram model:
each byte predicted from the one before) is trained, saved, loaded, evaluated, sampled and
compared through the command line, without any other module knowing of it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

import megabyte
from megabyte.cli import main
from megabyte.errors import MegabyteError
from megabyte.model.base import VOCAB, ByteModel, ConfigMixin, require
from megabyte.model.flops import Part
from megabyte.model.registry import ModelKind, get_kind, kind_of, register, unregister

KIND = "toy-bigram"


@dataclass
class BigramConfig(ConfigMixin):
    dim: int = 16
    max_seq_len: int = 64
    dropout: float = 0.0
    model_type: str = field(default=KIND, repr=False)

    def __post_init__(self) -> None:
        require(self.model_type == KIND, "model_type", f"expected {KIND!r}")
        require(self.dim >= 1, "dim", "must be >= 1")


class Bigram(ByteModel):
    """logits[:, t] from byte t-1 alone (a learned start vector at t = 0): causal by construction."""

    def __init__(self, config: BigramConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(VOCAB, config.dim)
        self.start = nn.Parameter(torch.zeros(config.dim))
        self.head = nn.Linear(config.dim, VOCAB)

    def forward(self, x):
        self.check_input(x)
        h = self.embed(x.long())  # (B, T, D)
        h = torch.cat([self.start.expand(x.shape[0], 1, -1), h[:, :-1]], dim=1)
        return self.head(h)

    def start_decoding(self, prompt):
        return self(prompt)[:, -1], None

    def continue_decoding(self, state, next_bytes):
        return self.head(self.embed(next_bytes.long()))


def bigram_flops(config: BigramConfig, seq_len: int, causal: bool):
    return [Part("head", seq_len, config.dim * VOCAB)]


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    """The stdlib's json package (about 48 kB of Python) as a text dataset."""
    out = tmp_path_factory.mktemp("data") / "text"
    assert main(["prepare", "text", os.path.dirname(json.__file__), "--out", str(out), "--val-fraction", "0.2"]) == 0
    return out


@pytest.fixture
def toy_kind():
    kind = register(ModelKind(KIND, "Toy bigram", BigramConfig, Bigram, bigram_flops, {"tiny": {"dim": 16}},
                              colour="tab:orange", describe=lambda c: f"bigram, width {c['dim']}"))
    yield kind
    unregister(KIND)


def test_the_registry_names_every_kind_and_refuses_strangers(toy_kind):
    assert get_kind(KIND) is toy_kind and kind_of(BigramConfig()) is toy_kind
    assert get_kind("megabyte").label == "MEGABYTE" and get_kind("subword").units == "tokens"
    with pytest.raises(MegabyteError, match="already registered"):
        register(toy_kind)
    with pytest.raises(MegabyteError, match="unknown model kind 'nonesuch'"):
        get_kind("nonesuch")
    with pytest.raises(MegabyteError, match="unknown model_type"):
        kind_of("subword")  # a token kind is found by name, never as a config's model_type


def test_a_registered_kind_trains_saves_loads_evaluates_samples_and_compares(toy_kind, text_data, tmp_path,
                                                                            capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(text_data), "--out", str(run), "--model", KIND, "--preset", "tiny",
                 "--max-steps", "30", "--lr", "0.03", "--no-progress"]) == 0
    model = megabyte.load(run)
    assert isinstance(model, Bigram) and model.config == BigramConfig(dim=16, max_seq_len=64)
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["model_kind"] == KIND and saved["model"]["dim"] == 16

    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(text_data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["model_type"] == KIND and 0 < report["bpb"] < 6.0  # learned: about 8 untrained, 4.5 here

    assert len(megabyte.generate(model, b"def ", 20, seed=0)) == 20  # through its own decoding methods

    out = tmp_path / "cmp"
    assert main(["compare", "--data", str(text_data), "--models", f"{KIND},transformer", "--preset", "tiny",
                 "--flops", "3e8", "--eval-bytes", "1024", "--gen-bytes", "16", "--lr-sweep", "off", "--out", str(out),
                 "--no-progress"]) == 0
    cmp = json.loads((out / "compare.json").read_text())
    toy = cmp["models"][0]
    assert toy["label"] == "Toy bigram" and toy["shape"] == "bigram, width 16"
    assert toy["train"]["flops_per_step"] == 4 * 6 * 64 * 16 * VOCAB  # its own FLOP count, batch 4
    assert toy["eval"]["basic"]["bytes"] == 1024 and "strided" not in toy["eval"]
    assert "| Toy bigram |" in (out / "compare.md").read_text()
