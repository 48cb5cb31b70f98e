"""What every byte model shares: config validation helpers, the loss in bits per byte, and
the decoding interface the sampler relies on.

Convention for every model: `model(x)` with `x` a LongTensor (B, T) of byte values 0..255
returns logits (B, T, 256), where `logits[:, t]` predicts `x[:, t]` from `x[:, :t]` alone
(position 0 from nothing). Byte value 0 is an ordinary byte; padding never reaches the loss.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from megabyte.errors import MegabyteError

VOCAB = 256  # byte values
LN2 = math.log(2.0)


class ConfigError(MegabyteError, ValueError):
    """An invalid model or training configuration; the message names the field."""


def require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{field}: {message}")


MAX_DEPTH = 1024  # a sanity bound: a config.json must not make construction run for hours


def check_stack_fields(cfg: Any, model_type: str) -> None:
    """Validate the fields the single-stack models share (dim, depth, heads, ...); fill in heads."""
    require(cfg.model_type == model_type, "model_type", f"expected {model_type!r}, got {cfg.model_type!r}")
    require(isinstance(cfg.dim, int) and cfg.dim >= 1, "dim", f"must be >= 1, got {cfg.dim}")
    require(isinstance(cfg.depth, int) and 1 <= cfg.depth <= MAX_DEPTH, "depth",
            f"must be between 1 and {MAX_DEPTH}, got {cfg.depth}")
    if cfg.heads is None:
        cfg.heads = max(1, cfg.dim // 64)
    require(isinstance(cfg.heads, int) and cfg.heads >= 1 and cfg.dim % cfg.heads == 0, "heads",
            f"{cfg.heads} heads do not divide width {cfg.dim}")
    require(isinstance(cfg.max_seq_len, int) and cfg.max_seq_len >= 1, "max_seq_len", "must be >= 1")
    require(0.0 <= cfg.dropout < 1.0, "dropout", f"must be in [0, 1), got {cfg.dropout}")
    require(isinstance(cfg.mlp_ratio, int) and cfg.mlp_ratio >= 1, "mlp_ratio", f"must be >= 1, got {cfg.mlp_ratio}")


def as_tuple(value: Any) -> Any:
    """JSON gives lists where configs hold tuples; accept both (and a bare int for one entry)."""
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    return value


class ConfigMixin:
    """Dataclass configs: to/from plain dicts, unknown fields rejected by name."""

    model_type: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown field(s) for {cls.__name__}: {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:  # a wrong type that the dataclass itself rejected
            raise ConfigError(f"{cls.__name__}: {exc}") from None


@dataclass
class LossResult:
    """Summed next-byte loss: `nats` over `bytes` predictions; `bpb` = nats / (ln 2 * bytes)."""

    nats: Tensor
    bytes: int

    @property
    def bpb(self) -> float:
        return float(self.nats) / (LN2 * max(1, self.bytes))

    @property
    def mean(self) -> Tensor:
        """Mean nats per byte: the quantity to back-propagate."""
        return self.nats / max(1, self.bytes)


def byte_loss(logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> LossResult:
    """Summed cross-entropy in nats of `logits` (B, T, 256) against `targets` (B, T).

    `mask` (B, T) of bools selects the positions that count (all of them by default).
    """
    nats = F.cross_entropy(logits.float().reshape(-1, VOCAB), targets.reshape(-1), reduction="none")
    if mask is None:
        return LossResult(nats.sum(), targets.numel())
    mask = mask.reshape(-1)
    return LossResult((nats * mask).sum(), int(mask.sum()))


class ByteModel(nn.Module):
    """Base class of every model kind (`Megabyte`, `Transformer`, `PerceiverAR`, any registered one)."""

    config: Any

    def check_input(self, x: Tensor) -> None:
        if x.dim() != 2:
            raise MegabyteError(f"expected bytes of shape (batch, length), got shape {tuple(x.shape)}")
        if x.dtype not in (torch.long, torch.int64, torch.int32, torch.uint8):
            raise MegabyteError(f"expected integer byte values, got dtype {x.dtype}")
        T = x.shape[1]
        if T > self.config.max_seq_len:
            raise MegabyteError(
                f"sequence of {T} bytes is longer than the model's max_seq_len ({self.config.max_seq_len})"
            )

    def loss(self, x: Tensor, mask: Tensor | None = None) -> LossResult:
        """Next-byte loss of the whole sequence `x` (B, T): every byte is predicted from its prefix."""
        return byte_loss(self(x), x.long(), mask)

    def num_parameters(self) -> dict[str, int]:
        return {"total": sum(p.numel() for p in self.parameters())}

    def load_frozen(self) -> None:
        """A fresh training run: load the parts that are not trained from where the config says
        (the entropy model of an entropy-patched MEGABYTE); nothing for most models."""

    def save_pretrained(self, directory) -> None:
        """Write `model.safetensors` and `config.json` into `directory` (atomically, file by file)."""
        from megabyte.model.weights import save_pretrained

        save_pretrained(self, directory)

    # Decoding interface (used by `megabyte.generate`): see each model for the state it keeps.
    def start_decoding(self, prompt: Tensor) -> tuple[Tensor, Any]:
        """Consume `prompt` (B, L) and return (logits (B, 256) of the next byte, decoding state).

        A model that can decode through compiled steps also takes `compile=True` (the built-in
        ones: static caches and `torch.compile`d steps, `layers.TransformerStack.step`)."""
        raise NotImplementedError

    def continue_decoding(self, state: Any, next_bytes: Tensor) -> Tensor:
        """Append `next_bytes` (B,) to the state and return the logits (B, 256) of the byte after."""
        raise NotImplementedError


class ByteBuffer:
    """The bytes decoded so far, preallocated to the model's maximum length."""

    def __init__(self, prompt: Tensor, capacity: int) -> None:
        B, L = prompt.shape
        self.data = torch.zeros(B, max(capacity, L + 1), dtype=torch.long, device=prompt.device)
        self.data[:, :L] = prompt
        self.length = L

    def append(self, next_bytes: Tensor) -> None:
        self.data.select(1, self.length).copy_(next_bytes)
        self.length += 1

    def window(self, start: int, end: int) -> Tensor:
        return self.data[:, start:end]
