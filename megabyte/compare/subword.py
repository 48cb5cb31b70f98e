"""The subword baseline: a byte-level BPE vocabulary trained on the train split, the same
Transformer over its token ids, and its loss counted in bits per *byte* of the text.

    bpe = BPE.train(train_bytes, 4096)           # `tokenizers`, byte-level: no unknown tokens
    ids = bpe.encode(val_bytes)                  # any bytes, valid UTF-8 or not; lossless
    assert bpe.decode(ids) == val_bytes
    result = evaluate_tokens(model, ids, len(val_bytes), seq_len=256)
    result["bpb"] == summed nats over every token / (ln 2 * len(val_bytes))

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

import json
import math
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from megabyte.errors import MegabyteError
from megabyte.evaluation import plan_windows, rank_batches, score_windows, summed_nats

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
                    sliding_window: bool = False, batch_size: int = 8, device=None,
                    autocast_dtype=None) -> dict[str, Any]:
    """Bits per byte of a token model over a whole text: every token scored once, the summed nats
    divided by ln 2 times `n_bytes`, the text's UTF-8 byte count. Windows are planned as for byte
    models (`megabyte.evaluation.plan_windows`): basic, or a sliding window of stride seq_len // 2."""
    import torch

    seq_len = seq_len or model.config.max_seq_len
    if len(ids) == 0 or n_bytes <= 0:
        raise MegabyteError("nothing to evaluate: the validation text is empty")
    stride = max(1, seq_len // 2) if sliding_window else None
    batches = rank_batches(plan_windows(len(ids), seq_len, stride=stride), batch_size, 0, 1)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    nats, scored, forward, _ = score_windows(model, ids, batches, device=device, autocast_dtype=autocast_dtype)
    if scored != len(ids):
        raise MegabyteError(f"internal error: scored {scored} of {len(ids)} tokens")
    return {
        "method": "sliding-window" if sliding_window else "basic", "bpb": float(nats) / (LN2 * n_bytes),
        "nats": float(nats), "bytes": n_bytes, "tokens": scored, "forward_tokens": forward,
        "cost": forward / scored, "seq_len": seq_len, "stride": stride,
    }


# ------------------------------------------------------------------------------------ training
class SubwordTrainer:
    """Trains the token Transformer the way `megabyte.training.Trainer` trains byte models: the
    same AdamW, schedule, precision, budget (max_steps / max_time, evaluation time included) and
    metrics.jsonl records, with `bytes` counting the UTF-8 bytes of the tokens trained on.
    It writes RUN/metrics.jsonl, RUN/loss.png, RUN/model/ and RUN/tokenizer.json (no resume)."""

    def __init__(self, cfg, model_config, tokens: TokenData, run_dir: str | Path, *, progress: bool = True) -> None:
        import torch

        from megabyte.data.dataset import BatchSampler
        from megabyte.model import build_model
        from megabyte.training.metrics import MetricsLog
        from megabyte.training.optim import build_optimizer
        from megabyte.training.runtime import init_runtime

        if cfg.seq_len is None or cfg.seq_len > model_config.max_seq_len:
            raise MegabyteError("the subword model needs train.seq_len <= model.max_seq_len (in tokens)")
        if len(tokens.train) < cfg.seq_len:
            raise MegabyteError(f"the train split has {len(tokens.train)} tokens, fewer than one sequence of "
                                f"{cfg.seq_len}: too little text for the subword baseline")
        self.cfg, self.model_config, self.tokens = cfg, model_config, tokens
        self.run_dir, self.show_progress = Path(run_dir), progress
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.runtime = init_runtime(cfg.device, cfg.precision)
        torch.manual_seed(cfg.seed)
        self.model = build_model(model_config).to(self.runtime.device).train()
        torch.manual_seed(cfg.seed * 7919 + 1)
        self.optimizer = build_optimizer(self.model, cfg, self.runtime.device)
        self.sampler = BatchSampler(tokens.train, cfg.seq_len, cfg.batch_size, seed=cfg.seed)
        self.metrics = MetricsLog(self.run_dir)
        self.step = self.bytes_seen = self.tokens_seen = 0
        self.val_bpb: float | None = None
        self.last_train_bpb: float | None = None
        self._interval = {"nats": 0.0, "bytes": 0, "time": 0.0, "steps": 0}
        self._session = {"bytes": 0, "time": 0.0}

    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def stop_reason(self) -> str | None:
        cfg = self.cfg
        if cfg.max_steps is not None and self.step >= cfg.max_steps:
            return "max_steps"
        if cfg.max_time is not None and self.elapsed() >= cfg.max_time:
            return "max_time"
        return None

    def train_step(self) -> None:
        from megabyte.training.optim import lr_at

        cfg, rt = self.cfg, self.runtime
        start = time.monotonic()
        self.lr = lr_at(cfg, self.step, self.elapsed())
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        positions = cfg.batch_size * cfg.grad_accum * cfg.seq_len
        nats, step_bytes = 0.0, 0
        for _ in range(cfg.grad_accum):
            x = self.sampler.next_batch()  # (B, T) token ids
            step_bytes += int(self.tokens.bpe.byte_lengths[x.numpy()].sum())
            x = x.to(rt.device)
            with rt.autocast():
                loss = summed_nats(self.model(x), x)
            (loss / positions).backward()  # mean over the step's tokens
            nats += float(loss.detach())
        if cfg.clip > 0:
            import torch

            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        seconds = time.monotonic() - start
        self.step += 1
        self.bytes_seen += step_bytes
        self.tokens_seen += positions
        for key, value in (("nats", nats), ("bytes", step_bytes), ("time", seconds), ("steps", 1)):
            self._interval[key] += value
        self._session["bytes"] += step_bytes
        self._session["time"] += seconds

    def evaluate(self) -> float | None:
        """Validation bpb over about `eval_bytes` of the validation text: evenly spaced token
        windows, their summed nats over the UTF-8 bytes of the tokens they score."""
        import torch

        from megabyte.training.loop import validation_windows

        cfg, val = self.cfg, self.tokens.val
        budget = round(cfg.eval_bytes / self.tokens.bytes_per_token) if cfg.eval_bytes else 0
        starts, length = validation_windows(len(val), cfg.seq_len, budget)
        if not len(starts):
            return None
        self.model.eval()
        nats, count = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(starts), cfg.batch_size):
                rows = np.stack([val[s : s + length] for s in starts[i : i + cfg.batch_size]]).astype(np.int64)
                count += int(self.tokens.bpe.byte_lengths[rows].sum())
                x = torch.from_numpy(rows).to(self.runtime.device)
                with self.runtime.autocast():
                    nats += float(summed_nats(self.model(x), x))
        self.model.train()
        self.val_bpb = nats / (LN2 * count)
        return self.val_bpb

    def log(self, val_bpb: float | None) -> None:
        iv = self._interval
        record: dict[str, Any] = {"step": self.step, "bytes": self.bytes_seen, "tokens": self.tokens_seen}
        if iv["steps"]:
            record["train_bpb"] = iv["nats"] / (LN2 * iv["bytes"])
            if not math.isfinite(record["train_bpb"]):
                raise MegabyteError(f"subword training loss became {record['train_bpb']} at step {self.step}")
            record["lr"] = self.lr
            record["bytes_per_s"] = iv["bytes"] / max(iv["time"], 1e-9)
            self.last_train_bpb = record["train_bpb"]
        if val_bpb is not None:
            record["val_bpb"] = val_bpb
        record["elapsed"] = round(self.elapsed(), 3)
        self.metrics.append(record)
        self._interval = {"nats": 0.0, "bytes": 0, "time": 0.0, "steps": 0}

    def fit(self) -> dict[str, Any]:
        from megabyte.training.metrics import Progress

        cfg = self.cfg
        progress = Progress(total=cfg.max_steps, initial=0, enabled=self.show_progress)
        self.metrics.start(None)
        self._start = time.monotonic()
        title = f"{self.run_dir.name}: subword transformer"
        try:
            while (reason := self.stop_reason()) is None:
                self.train_step()
                last = self.stop_reason() is not None
                due = lambda every: bool(every) and self.step % every == 0
                val = self.evaluate() if last or due(cfg.eval_every) else None
                if val is not None or last or due(cfg.log_every):
                    self.log(val)
                    self.metrics.plot(title, force=val is not None)
                progress.update(1, bpb=self.last_train_bpb, bytes_per_s=self._session["bytes"]
                                / max(self._session["time"], 1e-9), eta=None)
        finally:
            progress.close()
        elapsed = self.elapsed()
        self.model.save_pretrained(self.run_dir / "model")
        self.tokens.bpe.save(self.run_dir / TOKENIZER)
        (self.run_dir / "train_config.json").write_text(json.dumps({
            "model_kind": "subword", "model": self.model_config.to_dict(), "train": cfg.to_dict(),
            "vocab_size": self.tokens.bpe.vocab_size, "bytes_per_token": self.tokens.bytes_per_token,
            "device": str(self.runtime.device), "precision": self.runtime.precision,
        }, indent=2) + "\n")
        return {
            "run_dir": str(self.run_dir), "checkpoint": str(self.run_dir / "model"), "model_kind": "subword",
            "parameters": sum(p.numel() for p in self.model.parameters()), "step": self.step,
            "bytes": self.bytes_seen, "tokens": self.tokens_seen, "elapsed": elapsed,
            "train_bpb": self.last_train_bpb, "val_bpb": self.val_bpb,
            "bytes_per_s": self._session["bytes"] / self._session["time"] if self._session["time"] else 0.0,
            "stop_reason": reason, "device": str(self.runtime.device), "precision": self.runtime.precision,
        }


# ------------------------------------------------------------------------------------ generation
def generate_tokens(model, bpe: BPE, prompt: bytes, n_bytes: int, *, seed: int = 0) -> tuple[bytes, int]:
    """Sample tokens (temperature 1, cached) until at least `n_bytes` bytes came out; returns the
    bytes and the tokens generated. At the model's context limit it continues from the last half."""
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
                nxt = sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=generator)  # (1,)
                token = int(nxt[0])
                ids.append(token)
                out += bpe.token_bytes[token]
                produced, count = len(out), count + 1
                if len(ids) + 1 >= limit:  # slide: restart from the last half of the context
                    ids = ids[-(limit // 2):]
                    logits, state = model.start_decoding(torch.tensor([ids], device=device))
                else:
                    logits = model.continue_decoding(state, nxt)
    finally:
        model.train(was_training)
    return bytes(out), count
