"""The subword baseline: a lossless byte-level BPE, a token Transformer, and honest bits per byte."""

from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import megabyte
from megabyte.compare import subword
from megabyte.compare.subword import BPE, build_token_data, byte_chars, evaluate_tokens, generate_tokens


def stdlib_text() -> bytes:
    folder = os.path.dirname(json.__file__)
    return b"".join(open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder)) if f.endswith(".py"))


@pytest.fixture(scope="module")
def bpe() -> BPE:
    return BPE.train(stdlib_text(), 600)


def test_byte_symbols_are_the_tokenizers_alphabet():
    from tokenizers import pre_tokenizers

    chars = byte_chars()
    assert len(set(chars)) == 256
    assert set(chars) == set(pre_tokenizers.ByteLevel.alphabet())


def test_encoding_is_lossless_for_any_bytes(bpe):
    text = stdlib_text()
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert len(ids) < len(text) / 2  # merges were learned and used
    assert int(bpe.byte_lengths[ids].sum()) == len(text)
    broken = b"\xff\xfe caf\xc3\xa9 \xe2\x82 half a euro sign, a lone \x80, then \x00 and \n\n  spaces \t"
    assert bpe.decode(bpe.encode(broken)) == broken
    every_byte = bytes(range(256)) * 2
    assert bpe.decode(bpe.encode(every_byte)) == every_byte


def test_chunked_encoding_equals_whole_text_encoding(bpe, monkeypatch):
    text = stdlib_text()
    whole = bpe.tokenizer.encode(text.decode("utf-8"), add_special_tokens=False).ids
    monkeypatch.setattr(subword, "CHUNK_CHARS", 200)
    assert len(list(subword._chunks(text.decode("utf-8")))) > 10
    assert bpe.encode(text).tolist() == whole


def test_vocabulary_comes_from_the_train_split_only():
    train = b"the cat sat on the mat. " * 200
    val = b"zyzzyva quokka " * 200
    data = build_token_data(train, val, 300)
    assert not any(b"zyz" in t or b"quok" in t for t in data.bpe.token_bytes)
    assert any(b"cat" in t for t in data.bpe.token_bytes)
    assert data.val_bytes == len(val) and data.bpe.decode(data.val) == val


def test_save_and_load(bpe, tmp_path):
    bpe.save(tmp_path / "tokenizer.json")
    again = BPE.load(tmp_path / "tokenizer.json")
    sample = stdlib_text()[:3000]
    assert again.encode(sample).tolist() == bpe.encode(sample).tolist()


class UniformTokens(nn.Module):
    """All-zero logits over V tokens: every token costs exactly ln V nats."""

    def __init__(self, vocab: int, max_seq_len: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.config = SimpleNamespace(max_seq_len=max_seq_len)
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.zeros(*x.shape, self.vocab)


@pytest.mark.parametrize("sliding", [False, True])
def test_uniform_model_bits_per_byte(sliding):
    text = "naïve café — Grüße, 東京 🙂\n".encode() * 7  # multi-byte UTF-8: bytes != characters
    vocab = 512
    ids = np.arange(41) % vocab  # any 41 tokens: the uniform model's loss does not depend on them
    result = evaluate_tokens(UniformTokens(vocab, 16), ids, len(text), seq_len=16, sliding_window=sliding)
    assert result["tokens"] == 41 and result["bytes"] == len(text) == len(text.decode()) + 7 * 13
    assert result["bpb"] == pytest.approx(41 * math.log2(vocab) / len(text), rel=1e-6)  # float32 per token


def test_token_transformer(bpe, tmp_path):
    cfg = megabyte.TransformerConfig(dim=32, depth=1, max_seq_len=24, vocab_size=bpe.vocab_size)
    model = megabyte.Transformer(cfg)
    ids = torch.from_numpy(bpe.encode(b"def main():\n    return 0\n")[None].astype(np.int64))
    assert model(ids).shape == (1, ids.shape[1], bpe.vocab_size)
    model.save_pretrained(tmp_path / "m")
    again = megabyte.load(tmp_path / "m")
    assert again.config.vocab_size == bpe.vocab_size
    torch.testing.assert_close(again(ids), model(ids))
    out, count = generate_tokens(model, bpe, b"import os\n", 40, seed=1)  # slides past max_seq_len
    assert len(out) >= 40 and count >= 1
    with pytest.raises(megabyte.MegabyteError, match="vocab_size"):
        megabyte.TransformerConfig(vocab_size=1)
