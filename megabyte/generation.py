"""Sampling bytes from any model, with key/value caches.

    text = megabyte.generate(model, b"Once upon", 200, temperature=0.8, top_p=0.95, seed=0)
    for chunk in megabyte.stream(model, b"def main():", 500):
        print(chunk.decode(errors="replace"), end="")

With the cache (the default), MEGABYTE runs its global stage once per patch and only its small
byte stage once per byte (see `Megabyte.continue_decoding`); the baselines keep their own caches.
`use_cache=False` re-runs the whole model over the whole prefix for every byte: the slow
reference the cached path is tested against.

On a GPU, decoding one byte is a few dozen small kernels, so what stalls their queue shows:
the caches hold the dtype attention computes in (the autocast dtype under `torch.autocast`),
sampling reads nothing back (`sample_next`), dynamic patches decide on the device where a patch
closes, and `generate` without stop sequences keeps the sampled bytes on the device and reads
them back once at the end (`stream`, and stop sequences, need each byte on the host as it
comes). `compile=True` goes further: static caches (`layers.StaticKVCache`: the whole capacity
under a length mask) give every decode step the same shapes, and `torch.compile` captures it
(CUDA graphs on a GPU: one launch per stage and byte).

When a sequence reaches the model's `max_seq_len`, generation either stops with a warning
(`on_max_len="stop"`) or slides (`on_max_len="slide"`, the default): decoding restarts from the
last `max_seq_len // 2` bytes, which then serve as the whole context.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from megabyte.errors import MegabyteError


class _LimitReached(Exception):
    """The sequence reached max_seq_len and `on_max_len="stop"`."""


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if temperature < 0:
        raise MegabyteError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and not 1 <= top_k <= 256:
        raise MegabyteError(f"top_k must be between 1 and 256, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise MegabyteError(f"top_p must be in (0, 1], got {top_p}")


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set to -inf every logit outside the top-k and outside the nucleus of mass top_p (B, 256)."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a value once the mass *before* it already reaches top_p: the top value always stays.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: Tensor, *, temperature: float, top_k: int | None, top_p: float | None,
    generator: torch.Generator | None,
) -> Tensor:
    """One byte per row (B,) from logits (B, 256); temperature 0 is greedy.

    The draw is `torch.multinomial(probs, 1)`'s own (argmax of probs / q, q ~ Exp(1), from the
    same generator: the same bytes for a seed), without its checks of the probabilities, which
    read values back to the host twice per byte (on a GPU each read stalls the queue)."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1)
    if temperature != 1.0:
        logits = logits / temperature
    probs = torch.softmax(filter_logits(logits, top_k, top_p), dim=-1)
    q = torch.empty_like(probs).exponential_(1, generator=generator)
    return (probs / q).argmax(dim=-1)


class _Decoder:
    """Next-byte logits for a batch of equal-length prompts, cached or not, sliding at the limit.

    The bytes so far live in one buffer of the model's length, written in place: a sequence
    grown by concatenation would copy all of it for every byte."""

    def __init__(self, model, prompt: Tensor, *, use_cache: bool, on_max_len: str, compile: bool = False) -> None:
        self.model, self.use_cache, self.on_max_len, self.compile = model, use_cache, on_max_len, compile
        self.limit = model.config.max_seq_len
        B, L = prompt.shape
        self.data = prompt.new_zeros(B, max(L, self.limit))  # (B, limit): decoded bytes, the first `length`
        self.data[:, :L] = prompt
        self.length = L
        if self.length >= self.limit:
            self._slide_or_stop()
        self.logits = self._restart()

    @property
    def seq(self) -> Tensor:
        """Everything decoded so far (B, length): the context, once sliding."""
        return self.data[:, : self.length]

    def _restart(self) -> Tensor:
        if self.use_cache:
            if self.compile:
                logits, self.state = self.model.start_decoding(self.seq, compile=True)
            else:
                logits, self.state = self.model.start_decoding(self.seq)
            return logits
        return self._full()

    def _full(self) -> Tensor:
        # The uncached reference: the full model over the full prefix, plus a placeholder byte.
        x = torch.cat([self.seq, self.seq.new_zeros(self.seq.shape[0], 1)], dim=1)
        return self.model(x)[:, -1]

    def _slide_or_stop(self) -> None:
        if self.on_max_len == "stop":
            raise _LimitReached
        keep = max(1, self.limit // 2)
        warnings.warn(
            f"reached the model's max_seq_len ({self.limit} bytes): continuing from the last {keep} bytes",
            stacklevel=4,
        )
        self.data[:, :keep] = self.data[:, self.length - keep : self.length].clone()
        self.length = keep

    def advance(self, next_bytes: Tensor) -> None:
        self.data.select(1, self.length).copy_(next_bytes)
        self.length += 1
        if self.length >= self.limit:
            self._slide_or_stop()
            self.logits = self._restart()
        elif self.use_cache:
            self.logits = self.model.continue_decoding(self.state, next_bytes)
        else:
            self.logits = self._full()


def _as_tensor(prompt: bytes, device) -> Tensor:
    if not isinstance(prompt, (bytes, bytearray, memoryview)):
        raise MegabyteError(f"a prompt must be bytes, got {type(prompt).__name__} (encode text first)")
    return torch.tensor(list(bytes(prompt)), dtype=torch.long, device=device).view(1, -1)


def _stops(stop: bytes | Sequence[bytes] | None) -> list[bytes]:
    if stop is None:
        return []
    stops = [bytes(stop)] if isinstance(stop, (bytes, bytearray)) else [bytes(s) for s in stop]
    if any(len(s) == 0 for s in stops):
        raise MegabyteError("a stop sequence must not be empty")
    return stops


def _generate_rows(
    model, prompts: Tensor, max_new_bytes: int, *, temperature, top_k, top_p, generator, stops,
    use_cache: bool, on_max_len: str, compile: bool = False,
) -> Iterator[Tensor]:
    """Yield (B,) bytes per step for prompts of one length, until max_new_bytes."""
    _check_sampling(temperature, top_k, top_p)
    if on_max_len not in ("slide", "stop"):
        raise MegabyteError(f"on_max_len must be 'slide' or 'stop', got {on_max_len!r}")
    if compile and not use_cache:
        raise MegabyteError("compile=True compiles the cached decode step: it needs use_cache=True")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            try:
                decoder = _Decoder(model, prompts, use_cache=use_cache, on_max_len=on_max_len, compile=compile)
                for i in range(max_new_bytes):
                    nxt = sample_next(
                        decoder.logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator
                    )
                    yield nxt
                    if i + 1 < max_new_bytes:
                        decoder.advance(nxt)
            except _LimitReached:
                warnings.warn(
                    f"reached the model's max_seq_len ({model.config.max_seq_len} bytes): generation ended",
                    stacklevel=3,
                )
                return
    finally:
        model.train(was_training)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _generator(seed: int | None, device) -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def stream(
    model, prompt: bytes, max_new_bytes: int, *, temperature: float = 1.0, top_k: int | None = None,
    top_p: float | None = None, seed: int | None = None, stop: bytes | Sequence[bytes] | None = None,
    use_cache: bool = True, on_max_len: str = "slide", compile: bool = False,
) -> Iterator[bytes]:
    """Yield the generated bytes one at a time (each a `bytes` of length 1) as they are produced.

    Generation ends after `max_new_bytes`, or once the output ends with a stop sequence (which is
    included in the output: streamed bytes cannot be taken back).
    """
    device = _device(model)
    stops = _stops(stop)
    out = bytearray()
    steps = _generate_rows(
        model, _as_tensor(prompt, device), max_new_bytes, temperature=temperature, top_k=top_k, top_p=top_p,
        generator=_generator(seed, device), stops=stops, use_cache=use_cache, on_max_len=on_max_len,
        compile=compile,
    )
    for nxt in steps:
        out.append(int(nxt[0]))
        yield bytes(out[-1:])
        if any(out.endswith(s) for s in stops):
            steps.close()
            return


def _until_stops(steps: Iterator[Tensor], rows: int, stops: list[bytes]) -> list[bytearray]:
    """Each row's bytes from `steps` ((B,) per byte) up to and with its first stop sequence;
    stops decoding once every row has stopped. Each byte is looked at as it comes (a host sync
    per byte: the price of stopping on time)."""
    outs = [bytearray() for _ in range(rows)]
    done = [False] * rows
    for nxt in steps:
        for r, value in enumerate(nxt.tolist()):
            if not done[r]:
                outs[r].append(value)
                done[r] = any(outs[r].endswith(s) for s in stops)
        if all(done):
            steps.close()
            break
    return outs


def generate(
    model, prompt: bytes | Sequence[bytes], max_new_bytes: int, *, temperature: float = 1.0,
    top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
    stop: bytes | Sequence[bytes] | None = None, use_cache: bool = True, on_max_len: str = "slide",
    compile: bool = False,
) -> bytes | list[bytes]:
    """Generate up to `max_new_bytes` after `prompt` and return them (without the prompt).

    `prompt` is one `bytes` (returns `bytes`) or a list of them, of any lengths (returns a list;
    prompts of equal length decode together as one batch). `temperature=0` is greedy; `top_k` and
    `top_p` restrict sampling; `seed` makes sampling repeatable; `stop` is a byte string (or
    several) that ends a row's generation once produced (kept in the output). `compile=True`
    decodes through fixed-shape steps compiled by `torch.compile` (CUDA graphs on a GPU; on the
    CPU it needs a C compiler): the first call compiles (seconds to minutes), later ones reuse it.
    Its static caches are the model's, reused by the next compiled session: one compiled session
    per model at a time (an older `stream(..., compile=True)` that goes on after a newer one
    started stops with an error instead of writing into the newer one's caches).
    """
    if max_new_bytes < 0:
        raise MegabyteError(f"max_new_bytes must be >= 0, got {max_new_bytes}")
    if isinstance(prompt, (bytes, bytearray, memoryview)):
        return generate(model, [bytes(prompt)], max_new_bytes, temperature=temperature, top_k=top_k, top_p=top_p,
                        seed=seed, stop=stop, use_cache=use_cache, on_max_len=on_max_len, compile=compile)[0]
    prompts = [bytes(p) if isinstance(p, (bytes, bytearray, memoryview)) else p for p in prompt]
    device = _device(model)
    stops = _stops(stop)
    results: list[bytes] = [b""] * len(prompts)
    generator = _generator(seed, device)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        _as_tensor(p, device)  # type check with a clear message
        by_length.setdefault(len(p), []).append(i)
    for length in sorted(by_length):
        rows = by_length[length]
        batch = torch.cat([_as_tensor(prompts[i], device) for i in rows])  # (B, L)
        steps = _generate_rows(
            model, batch, max_new_bytes, temperature=temperature, top_k=top_k, top_p=top_p,
            generator=generator, stops=stops, use_cache=use_cache, on_max_len=on_max_len, compile=compile,
        )
        if stops:
            outs = _until_stops(steps, len(rows), stops)
        else:  # nothing to watch for: the bytes stay on the device to the end, no host sync per byte
            produced = list(steps)
            outs = torch.stack(produced, dim=1).tolist() if produced else [[] for _ in rows]  # (B, new)
        for r, i in enumerate(rows):
            results[i] = bytes(outs[r])
    return results
