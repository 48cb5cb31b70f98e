"""Any byte-level checkpoint of this project as an lm-evaluation-harness model (`lm-eval` 0.4.x).

    import megabyte.integrations.lmeval               # registers the model name "megabyte"
    import lm_eval
    results = lm_eval.simple_evaluate(model="megabyte", model_args="pretrained=runs/mb", tasks=["wikitext"])

Exact bytes, no tokenizer: a request's text is scored as its UTF-8 bytes.

- `loglikelihood(context, continuation)`: the summed log-probability (nats) of the continuation's
  bytes after the context's, and whether greedy decoding would produce exactly those bytes. The
  pair runs as one sequence; when it is longer than the context limit, the continuation is
  scored in chunks, each with the most context that fits (at least half the limit).
- `loglikelihood_rolling(text)`: every byte of the document scored exactly once with the window
  plan of `megabyte eval --sliding-window` (windows of the limit, stepping by half of it), never
  truncated; a document within the limit is one forward pass.
- `generate_until(context, {until, max_gen_toks, temperature, do_sample})`: cached generation
  (`megabyte.generate`), `max_gen_toks` counted in bytes, the stop strings matched on bytes and
  cut from the result (the bytes decode as UTF-8, undecodable ones replaced).

model_args: `pretrained` (a run or checkpoint directory), `device` (auto, cpu, cuda, cuda:N),
`batch_size`, `dtype` (float32 or bfloat16: the forward under autocast; the weights stay as
saved), `max_length` (the context limit in bytes; default the model's max_seq_len).

One process, one device: the harness's data-parallel mode (several ranks through accelerate) is
not supported; `rank` is 0 and `world_size` 1.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

import megabyte
from megabyte.errors import MegabyteError
from megabyte.evaluation import evaluate
from megabyte.training.runtime import resolve_device

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as exc:  # the optional extra is missing
    raise MegabyteError('lm-evaluation-harness is not installed: pip install -e ".[eval]"') from exc

DTYPES = {"float32": None, "fp32": None, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


@register_model("megabyte")
class MegabyteLM(LM):
    """An lm-eval `LM` over a byte model of this project (module doc)."""

    def __init__(self, pretrained: str, device: str = "auto", batch_size: int | str = 8, dtype: str = "float32",
                 max_length: int | str | None = None, **_ignored: Any) -> None:
        super().__init__()
        self._device = resolve_device(str(device or "auto"))  # the project's one device resolution
        self.model = megabyte.load(pretrained, device=self._device)
        self.bpe = None  # a byte model reads UTF-8 bytes; the subword baseline its BPE tokens
        if getattr(self.model.config, "vocab_size", 256) != 256:
            self.bpe = load_tokenizer(pretrained)
        self.batch_size = int(batch_size) if str(batch_size) != "auto" else 8
        if str(dtype) not in DTYPES:
            raise MegabyteError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.autocast = DTYPES[str(dtype)]
        limit = self.model.config.max_seq_len
        self.max_length = int(max_length) if max_length not in (None, "") else limit
        if not 2 <= self.max_length <= limit:
            raise MegabyteError(f"max_length must be between 2 and the model's max_seq_len {limit}, got {max_length}")

    # ------------------------------------------------------------------------------ scoring
    def encode(self, text: str) -> list[int]:
        """The model's positions for `text`: its UTF-8 bytes, or the subword model's tokens."""
        data = text.encode("utf-8")
        return list(data) if self.bpe is None else [int(i) for i in self.bpe.encode(data)] if data else []

    def _forward(self, rows: list[list[int]]) -> torch.Tensor:
        """Log-probabilities (B, T, V) of rows of ids (right-padded; causality hides the pad)."""
        T = max(len(r) for r in rows)
        x = torch.zeros(len(rows), T, dtype=torch.long)
        for i, r in enumerate(rows):
            x[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        x = x.to(self._device)
        ctx = torch.autocast(self._device.type, dtype=self.autocast) if self.autocast else nullcontext()
        with torch.no_grad(), ctx:
            return torch.log_softmax(self.model(x).float(), dim=-1)

    def _chunks(self, context: list[int], continuation: list[int]) -> list[tuple[list[int], int]]:
        """(window, first scored position) pairs covering every continuation position once, each
        window ending at its last scored position and as long as the limit allows."""
        seq, L = context + continuation, self.max_length
        out, done = [], len(context)
        while done < len(seq):
            end = min(len(seq), max(L, done + L // 2))
            start = max(0, end - L)
            out.append((seq[start:end], done - start))
            done = end
        return out

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [(self.encode(r.args[0]), self.encode(r.args[1])) for r in requests]
        jobs = [(i, window, first) for i, (c, x) in enumerate(pairs) for window, first in self._chunks(c, x)]
        logp, greedy = [0.0] * len(pairs), [True] * len(pairs)
        jobs.sort(key=lambda j: -len(j[1]))  # similar lengths batch together
        for lo in range(0, len(jobs), self.batch_size):
            batch = jobs[lo : lo + self.batch_size]
            out = self._forward([w for _, w, _ in batch])
            for row, (i, window, first) in enumerate(batch):
                target = torch.tensor(window[first:], dtype=torch.long, device=out.device)
                scores = out[row, first : len(window)]  # (n, V): predictions of the scored positions
                logp[i] += float(scores.gather(1, target[:, None]).double().sum())
                greedy[i] = greedy[i] and bool((scores.argmax(-1) == target).all())
        results = list(zip(logp, greedy))
        for r, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", r.args, res)
        return results

    def loglikelihood_rolling(self, requests) -> list[float]:
        results = []
        for r in requests:
            results.append(-self._document_nats(r.args[0].encode("utf-8")))
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, results[-1])
        return results

    def _document_nats(self, data: bytes) -> float:
        """Summed loss of a whole document, every position scored once (`megabyte eval`'s plan)."""
        if not data:
            return 0.0
        if self.bpe is not None:
            from megabyte.compare.subword import evaluate_tokens

            ids = self.bpe.encode(data)
            seq_len = min(self.max_length, len(ids))
            return evaluate_tokens(self.model, ids, len(data), seq_len=seq_len, sliding_window=len(ids) > seq_len,
                                   batch_size=self.batch_size, device=self._device,
                                   autocast_dtype=self.autocast)["nats"]
        doc = np.frombuffer(data, dtype=np.uint8)
        seq_len = min(self.max_length, len(doc))
        scored = evaluate(self.model, doc, seq_len=seq_len, batch_size=self.batch_size,
                          sliding_window=len(doc) > seq_len, device=self._device, autocast_dtype=self.autocast)
        if scored.bytes != len(doc):
            raise MegabyteError(f"scored {scored.bytes} of the document's {len(doc)} bytes")
        return scored.nats

    # ------------------------------------------------------------------------------ generation
    def generate_until(self, requests) -> list[str]:
        """Requests with the same generation settings decode together (`megabyte.generate`
        batches the prompts of equal length)."""
        groups: dict[tuple, list[int]] = {}
        settings = [self._settings(dict(r.args[1] or {})) for r in requests]
        for i, s in enumerate(settings):
            groups.setdefault(s, []).append(i)
        out = [""] * len(requests)
        for (stops, n, temperature, seed), rows in groups.items():
            prompts = [self._prompt(requests[i].args[0]) for i in rows]
            if self.bpe is None:
                new = megabyte.generate(self.model, prompts, n, temperature=temperature, stop=list(stops) or None,
                                        seed=seed)
            else:
                from megabyte.compare.subword import generate_tokens

                new = [generate_tokens(self.model, self.bpe, p, n, seed=seed or 0, temperature=temperature,
                                       stops=stops)[0] for p in prompts]
            for i, data in zip(rows, new):
                out[i] = cut_at_stops(data[:n], stops).decode("utf-8", errors="replace")
                self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
        return out

    def _settings(self, kwargs: dict[str, Any]) -> tuple:
        until = kwargs.pop("until", None) or []
        stops = tuple(s.encode("utf-8") for s in ([until] if isinstance(until, str) else until) if s)
        n = int(kwargs.pop("max_gen_toks", 256))
        sample = bool(kwargs.pop("do_sample", False))
        temperature = float(kwargs.pop("temperature", 0.0)) if sample else 0.0
        return stops, n, temperature, kwargs.pop("seed", None)

    def _prompt(self, context: str) -> bytes:
        """The context's bytes, the oldest dropped when they leave no room to generate."""
        data = context.encode("utf-8")
        room = self.model.config.max_seq_len - 1
        return data[len(data) - room :] if len(data) > room else data


def load_tokenizer(pretrained: str):
    """The subword baseline's BPE vocabulary: `tokenizer.json` in its run directory."""
    from pathlib import Path

    from megabyte.compare.subword import BPE, TOKENIZER
    from megabyte.training.checkpoint import resolve_checkpoint

    path = Path(pretrained)
    checkpoint = resolve_checkpoint(path)
    for candidate in (path / TOKENIZER, checkpoint / TOKENIZER, checkpoint.parent.parent / TOKENIZER):
        if candidate.is_file():
            return BPE.load(candidate)
    raise MegabyteError(f"{pretrained}: a token model without its {TOKENIZER} (the run directory holds it)")


def cut_at_stops(data: bytes, stops: Iterable[bytes]) -> bytes:
    """`data` up to the first occurrence of any stop string (excluded)."""
    cut = len(data)
    for s in stops:
        at = data.find(s)
        if at != -1:
            cut = min(cut, at)
    return data[:cut]
