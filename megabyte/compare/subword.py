"""The subword baseline: a byte-level BPE vocabulary trained on the train split, the same
Transformer over its token ids, and its loss counted in bits per *byte* of the text.

    bpe = BPE.train(train_bytes, 4096)           # `tokenizers`, byte-level: no unknown tokens
    ids = bpe.encode(val_bytes)                  # any bytes, valid UTF-8 or not; lossless
    assert bpe.decode(ids) == val_bytes
    result = evaluate_tokens(model, ids, len(val_bytes), seq_len=256)
    result["bpb"] == summed nats over every token / (ln 2 * len(val_bytes))
    train(cfg, model_config, TokenObjective(tokens, meta, data_dir), "runs/subword")   # the one Trainer

Honest accounting: a token model predicts fewer, larger units, so its loss per token says nothing
by itself. Bits per byte divides the summed loss of the *whole* validation text (every token
scored exactly once) by the number of UTF-8 bytes of that text -- the same bytes the byte models
are scored on -- so the two are directly comparable. (The first token of each evaluation window
is predicted from nothing, as the first byte of a byte model's window is.)

Byte-level BPE works on the UTF-8 bytes of text: every byte is one of 256 base symbols, so every
byte string has an encoding. The `tokenizers` library takes Python strings, so bytes that are not
valid UTF-8 are encoded here as their single-byte base tokens; the encoding is verified to decode
back to exactly the input.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from megabyte.errors import MegabyteError
from megabyte.evaluation import plan_windows, rank_batches, sample_segments, score_windows, summed_nats

LN2 = math.log(2.0)
TOKENIZER = "tokenizer.json"
CHUNK_CHARS = 1 << 18  # texts are encoded in chunks of about this many characters


def byte_chars() -> list[str]:
    """The 256 printable characters byte-level BPE writes bytes as (the GPT-2 convention):
    bytes that are printable Latin-1 characters stand for themselves, the other 68 bytes take
    the characters from U+0100 up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    keep = set(printable)
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


_INVALID = re.compile("([\udc80-\udcff]+)")  # bytes that are not UTF-8, after surrogateescape
_SAFE_CUT = re.compile(r"(?<=\S)\n(?=\S)")  # a lone newline between non-spaces is a pre-token of its own


class BPE:
    """A trained byte-level BPE vocabulary: encode any bytes to token ids, and back."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        vocab = tokenizer.get_vocab()  # token string -> id
        chars = byte_chars()
        char_to_byte = {c: b for b, c in enumerate(chars)}
        missing = [c for c in chars if c not in vocab]
        if missing:
            raise MegabyteError(f"the BPE vocabulary lacks {len(missing)} of the 256 byte symbols: not byte-level")
        self.vocab_size = max(vocab.values()) + 1
        self.token_bytes: list[bytes] = [b""] * self.vocab_size
        for token, i in vocab.items():
            self.token_bytes[i] = bytes(char_to_byte[c] for c in token)
        self.byte_lengths = np.array([len(t) for t in self.token_bytes], dtype=np.int64)  # (V,)
        self.byte_token = np.array([vocab[c] for c in chars], dtype=np.int64)  # (256,) single-byte ids

    @classmethod
    def train(cls, data: bytes, vocab_size: int, *, min_frequency: int = 2) -> BPE:
        """Learn merges on `data` (the training split only) up to `vocab_size` tokens (fewer when the
        data runs out of pairs seen `min_frequency` times)."""
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        if vocab_size < 256:
            raise MegabyteError(f"a byte-level BPE vocabulary needs at least 256 tokens, got {vocab_size}")
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False, special_tokens=[],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        texts = (chunk for piece in _pieces(data) if isinstance(piece, str) for chunk in _chunks(piece))
        tokenizer.train_from_iterator(texts, trainer=trainer)
        return cls(tokenizer)

    def encode(self, data: bytes) -> np.ndarray:
        """Token ids (int32) of `data`; their bytes concatenate to exactly `data`."""
        data = bytes(data)
        parts: list[np.ndarray] = []
        for piece in _pieces(data):
            if isinstance(piece, bytes):  # not UTF-8: one base token per byte
                parts.append(self.byte_token[np.frombuffer(piece, dtype=np.uint8)])
                continue
            encodings = self.tokenizer.encode_batch(list(_chunks(piece)), add_special_tokens=False)
            parts.extend(np.asarray(e.ids, dtype=np.int64) for e in encodings)
        ids = np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, dtype=np.int32)
        if self.decode(ids) != data:
            raise MegabyteError("BPE encoding did not reproduce the input bytes (a tokenizers version problem?)")
        return ids

    def decode(self, ids) -> bytes:
        return b"".join(self.token_bytes[i] for i in np.asarray(ids).tolist())

    def save(self, path: str | Path) -> None:
        self.tokenizer.save(str(path))

    @classmethod
    def load(cls, path: str | Path) -> BPE:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))


def _pieces(data: bytes) -> list[str | bytes]:
    """`data` as alternating valid UTF-8 text (str) and runs of bytes that are not UTF-8 (bytes)."""
    text = data.decode("utf-8", errors="surrogateescape")
    out: list[str | bytes] = []
    for i, part in enumerate(_INVALID.split(text)):
        if not part:
            continue
        out.append(part.encode("utf-8", errors="surrogateescape") if i % 2 else part)
    return out


def _chunks(text: str, size: int | None = None):
    """Cut a long text after lone newlines between non-spaces (the byte-level pre-tokenizer makes
    such a newline a pre-token of its own), so encoding chunk by chunk gives the tokens of the whole."""
    size = size or CHUNK_CHARS
    start = 0
    while len(text) - start > size:
        cut = _SAFE_CUT.search(text, start + size)
        if cut is None:
            break
        yield text[start : cut.end()]
        start = cut.end()
    yield text[start:]


# ------------------------------------------------------------------------------------ token data
@dataclass
class TokenData:
    """A text dataset as token ids: the BPE and both splits."""

    bpe: BPE
    train: np.ndarray
    """(n_train,) int32 token ids of the train split."""
    val: np.ndarray
    """(n_val,) int32 token ids of the validation text."""
    train_bytes: int
    val_bytes: int
    """UTF-8 bytes of the validation text (the denominator of bits per byte)."""

    @property
    def bytes_per_token(self) -> float:
        return self.train_bytes / max(1, len(self.train))


def build_token_data(train: bytes, val: bytes, vocab_size: int) -> TokenData:
    """Train a BPE of `vocab_size` on `train` only and encode both splits."""
    bpe = BPE.train(train, vocab_size)
    return TokenData(bpe, bpe.encode(train), bpe.encode(val), len(train), len(val))


# ------------------------------------------------------------------------------------ scoring
def evaluate_tokens(model, ids: np.ndarray, n_bytes: int, *, seq_len: int | None = None,
                    sliding_window: bool = False, batch_size: int = 8, device=None, autocast_dtype=None,
                    sample_tokens: int | None = None, byte_lengths: np.ndarray | None = None) -> dict[str, Any]:
    """Bits per byte of a token model over a whole text: every token scored once, the summed nats
    divided by ln 2 times `n_bytes`, the text's UTF-8 byte count. Windows are planned as for byte
    models (`megabyte.evaluation.plan_windows`): basic, or a sliding window of stride seq_len // 2.
    `sample_tokens`: score an evenly spaced sample of about that many tokens instead (what
    validation during training does), its bytes counted from `byte_lengths` (V,)."""
    import torch

    seq_len = seq_len or model.config.max_seq_len
    if len(ids) == 0 or n_bytes <= 0:
        raise MegabyteError("nothing to evaluate: the validation text is empty")
    stride = max(1, seq_len // 2) if sliding_window else None
    segments = sample_segments(len(ids), seq_len, sample_tokens) if sample_tokens else None
    if segments is not None and byte_lengths is None:
        raise MegabyteError("scoring a sample of tokens needs their byte lengths")
    batches = rank_batches(plan_windows(len(ids), seq_len, stride=stride, segments=segments), batch_size, 0, 1)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    scores = score_windows(model, ids, batches, device=device, autocast_dtype=autocast_dtype,
                           byte_lengths=byte_lengths if segments is not None else None)
    if segments is None and scores.scored != len(ids):
        raise MegabyteError(f"internal error: scored {scores.scored} of {len(ids)} tokens")
    n_bytes = n_bytes if segments is None else scores.bytes
    return {
        "method": "sliding-window" if sliding_window else "basic", "bpb": float(scores.nats) / (LN2 * n_bytes),
        "nats": float(scores.nats), "bytes": n_bytes, "tokens": scores.scored, "forward_tokens": scores.forward,
        "cost": scores.forward / scores.scored, "seq_len": seq_len, "stride": stride,
    }


# ------------------------------------------------------------------------------------ training
class TokenObjective:
    """What `megabyte.training.Trainer` trains the subword baseline on (see
    `megabyte.training.objective`): batches of BPE token ids of the train split, each batch's
    loss counted over the UTF-8 bytes of its tokens, validation on the validation text's tokens.
    A run writes RUN/tokenizer.json beside its checkpoints. One process (no torchrun)."""

    unit = "tokens"
    modality = "text"
    item_len = None

    def __init__(self, tokens: TokenData, meta: dict[str, Any], directory: str,
                 scored_on: str = "the validation text") -> None:
        self.tokens = tokens
        self.scored_on = scored_on
        self.meta = {**meta, "tokenizer": {"kind": "byte-level BPE", "vocab_size": tokens.bpe.vocab_size,
                                           "bytes_per_token": tokens.bytes_per_token}}
        self.directory = directory
        self.train_positions = len(tokens.train)
        self.bytes_per_position = tokens.bytes_per_token

    def held_out(self) -> TokenObjective:
        """This objective with the end of the training tokens held back as its validation (see
        `ByteObjective.held_out`)."""
        from megabyte.training.objective import HOLD_MAX, hold_back

        train, bpe = self.tokens.train, self.tokens.bpe
        cut = hold_back(len(train), HOLD_MAX / self.tokens.bytes_per_token, 1, "tokens")
        rest, held = train[:cut], train[cut:]
        tokens = TokenData(bpe, rest, held, int(bpe.byte_lengths[rest].sum()), int(bpe.byte_lengths[held].sum()))
        return TokenObjective(tokens, self.meta, self.directory, scored_on=f"the last {len(held):,} tokens "
                              f"({tokens.val_bytes:,} bytes) of the train split")

    def unigram_bits(self) -> float:
        """The unigram entropy of the training tokens, per byte of text."""
        from megabyte.training.objective import unigram_entropy

        return unigram_entropy(self.tokens.train, self.tokens.bpe.vocab_size) / self.tokens.bytes_per_token

    def sampler(self, seq_len: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1):
        from megabyte.data.dataset import BatchSampler

        if world_size != 1:
            raise MegabyteError("the subword baseline trains in one process (run megabyte compare without torchrun)")
        return BatchSampler(self.tokens.train, seq_len, batch_size, seed=seed)

    def count(self, x) -> int:
        return int(self.tokens.bpe.byte_lengths[x.numpy()].sum())

    def loss(self, logits, x):
        return summed_nats(logits, x)

    def validate(self, model, *, seq_len: int, batch_size: int, max_bytes: int, rank: int, world_size: int,
                 device, autocast_dtype=None):
        """Basic inference over a sample of about `max_bytes` of the validation text, in tokens."""
        from megabyte.evaluation import EvalResult

        val = self.tokens.val
        if len(val) == 0:
            return None
        sample = max(1, round(max_bytes / self.tokens.bytes_per_token)) if max_bytes else None
        r = evaluate_tokens(model, val, self.tokens.val_bytes, seq_len=seq_len, batch_size=batch_size,
                            device=device, autocast_dtype=autocast_dtype, sample_tokens=sample,
                            byte_lengths=self.tokens.bpe.byte_lengths)
        return EvalResult(nats=r["nats"], bytes=r["bytes"], forward_bytes=r["forward_tokens"], method=r["method"],
                          seq_len=seq_len)

    def describe(self) -> str:
        from megabyte.training.metrics import human

        return (f"text as {self.tokens.bpe.vocab_size} BPE tokens ({self.tokens.bytes_per_token:.2f} bytes each): "
                f"{human(len(self.tokens.train))} train / {human(len(self.tokens.val))} val tokens")

    def write_files(self, run_dir: Path) -> None:
        from megabyte.atomic import atomic_path

        with atomic_path(Path(run_dir) / TOKENIZER) as tmp:
            self.tokens.bpe.save(tmp)


# ------------------------------------------------------------------------------------ generation
def generate_tokens(model, bpe: BPE, prompt: bytes, n_bytes: int, *, seed: int = 0, temperature: float = 1.0,
                    stops: Sequence[bytes] = ()) -> tuple[bytes, int]:
    """Sample tokens (cached; temperature 0 is greedy) until at least `n_bytes` bytes came out or
    a stop string has; returns the bytes and the tokens generated. At the model's context limit it
    continues from the last half."""
    import torch

    from megabyte.generation import sample_next

    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    limit = model.config.max_seq_len
    ids = [int(i) for i in bpe.encode(prompt)][-(limit // 2):] or [int(bpe.byte_token[ord("\n")])]
    out, produced, count = bytearray(), 0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logits, state = model.start_decoding(torch.tensor([ids], device=device))
            while produced < n_bytes:
                nxt = sample_next(logits, temperature=temperature, top_k=None, top_p=None, generator=generator)
                token = int(nxt[0])
                ids.append(token)
                out += bpe.token_bytes[token]
                produced, count = len(out), count + 1
                if any(s in out for s in stops):
                    break
                if len(ids) + 1 >= limit:  # slide: restart from the last half of the context
                    ids = ids[-(limit // 2):]
                    logits, state = model.start_decoding(torch.tensor([ids], device=device))
                else:
                    logits = model.continue_decoding(state, nxt)
    finally:
        model.train(was_training)
    return bytes(out), count
