"""The training configuration: a typed dataclass, validated on construction, plus the
`key=value` overrides and TOML files the command line accepts.

    cfg = TrainConfig(batch_size=8, max_steps=1000)
    model_cfg, cfg = apply_overrides(model_cfg, cfg, ["model.dims=512,256", "train.lr=1e-3"])
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megabyte.errors import MegabyteError
from megabyte.model.base import ConfigError

PRECISIONS = ("auto", "bf16", "fp32")
DECAYS = ("cosine", "linear", "constant")
PARALLELS = ("ddp", "fsdp")
DURATIONS = ("max_time", "dist_timeout")
"""Fields read as durations: seconds, or "90s", "10m", "1h30m"."""

RESUMABLE = frozenset({
    "max_steps", "max_time", "eval_every", "eval_bytes", "log_every", "save_every", "keep_last",
    "compile", "device", "precision", "tf32", "parallel", "dist_timeout", "decay_steps",
})
"""Fields that may change when a run is resumed: they say how long to run, how often to
evaluate and save, and where, plus `decay_steps`, to re-plan the schedule on purpose; the others
define the trajectory and must stay as saved."""


@dataclass
class TrainConfig:
    """How to train: data windows, optimizer, schedule, budget, evaluation and checkpoints.

    `batch_size * grad_accum` sequences of `seq_len` bytes make one optimizer step: the global
    batch, the same whatever the number of processes (see `process_batches`).
    """

    seq_len: int | None = None
    """Bytes per training sequence. Default: the model's max_seq_len, or one image (the
    dataset's item_len) for image data. Must not exceed the model's max_seq_len."""
    batch_size: int = 8
    """Sequences per micro-batch: at most this many go through one forward pass of one process.
    The global batch of an optimizer step is batch_size * grad_accum sequences over all processes,
    whatever their number: each of W processes takes 1/W of it (see `process_batches`)."""
    grad_accum: int = 1
    """Micro-batches whose gradients are summed into one optimizer step (with one process; with
    W processes each runs batch_size * grad_accum / W sequences, in as few micro-batches as fit)."""
    lr: float = 3e-4
    """Peak learning rate (AdamW), reached at the end of the warm-up."""
    min_lr: float = 3e-5
    """Learning rate at the end of the decay."""
    warmup: int = 100
    """Optimizer steps of linear warm-up from lr/warmup to lr."""
    decay: str = "cosine"
    """Shape of the decay from lr to min_lr after the warm-up: cosine, linear or constant."""
    decay_steps: int | None = None
    """Step at which the decay reaches min_lr. Default: follow the budget. A step budget alone fixes
    it at the first start (`megabyte train` sets it to max_steps and saves it with the run), so a
    resumed run keeps its schedule whatever its new max_steps; with max_time it stays unset and the
    decay follows the elapsed share of max_time (or of max_steps, if further along), ending when the
    time runs out. Setting it on --resume re-plans the rest of the schedule."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas (the paper's values)."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.1
    """Decoupled weight decay on matrices and embeddings (not on norms, biases and pads)."""
    clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables clipping)."""
    dropout: float | None = None
    """Dropout during training; replaces the model config's value when set (the paper uses 0.1)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (counted over the whole run, across resumes)."""
    max_time: float | None = None
    """Stop after this much training time in seconds ("90s", "10m", "2h" are accepted), counted
    over the whole run, across resumes. At least one of max_steps and max_time must be set."""
    eval_every: int = 200
    """Validate every this many steps (0: only at the end)."""
    eval_bytes: int = 1 << 20
    """Validation bytes per evaluation, in evenly spaced windows of the val split (0: all of it)."""
    log_every: int = 10
    """Write a metrics line (and refresh the loss curve) every this many steps."""
    save_every: int = 1000
    """Write a checkpoint every this many steps (0: only at the end)."""
    keep_last: int = 3
    """Checkpoints to keep; older ones are deleted (0 keeps all)."""
    seed: int = 0
    """Seed of the model initialisation, the data order and dropout."""
    precision: str = "auto"
    """auto (bf16 autocast where the hardware supports it: CUDA, CPUs with AMX or AVX512-BF16),
    bf16 or fp32. Master weights and optimizer state are always fp32."""
    tf32: bool = False
    """On CUDA, run fp32 matrix products and cuDNN convolutions on TF32 tensor cores (inputs
    rounded to 10 mantissa bits, as fp16's; sums in fp32): for precision=fp32 on Ampere and later
    GPUs, products several times faster (A100 peak: 156 against 19.5 TFLOP/s). Off, they stay full
    fp32 (cuDNN included, although PyTorch's default lets it use TF32): fp32 then means fp32.
    Under bf16 autocast it touches only the few products autocast keeps in fp32. Nothing changes
    on the CPU or MPS. It may change on --resume: it rounds differently, it trains the same run."""
    compile: bool = False
    """Compile every transformer block with torch.compile (faster steps after a slow first one;
    block by block, so that DDP and FSDP2 communicate while the backward runs). Validation runs
    eager: its eval-mode, no_grad forwards would each be new graphs."""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda, cuda:N, mps. Under torchrun, auto and cuda
    mean cuda:LOCAL_RANK."""
    parallel: str = "ddp"
    """How processes started by torchrun share the model: ddp (a replica on each, gradients
    averaged) or fsdp (FSDP2: every transformer block, then the rest, sharded over the processes,
    for models that do not fit one device). Ignored by a single process."""
    dist_timeout: float = 600.0
    """Seconds a process waits for the others in a collective operation before the job fails
    (a rank that died or hangs then ends the run instead of stalling it)."""

    def __post_init__(self) -> None:
        for name in DURATIONS:
            if isinstance(getattr(self, name), str):
                setattr(self, name, parse_duration(getattr(self, name), f"train.{name}"))
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        for name in ("batch_size", "grad_accum", "log_every"):
            _check_int(self, name, minimum=1)
        for name in ("warmup", "eval_every", "eval_bytes", "save_every", "keep_last", "seed"):
            _check_int(self, name, minimum=0)
        for name in ("seq_len", "decay_steps", "max_steps"):
            if getattr(self, name) is not None:
                _check_int(self, name, minimum=1)
        _require(_is_number(self.lr) and self.lr > 0, "lr", f"must be > 0, got {self.lr!r}")
        _require(_is_number(self.min_lr) and 0 <= self.min_lr <= self.lr, "min_lr",
                 f"must be between 0 and lr ({self.lr}), got {self.min_lr!r}")
        _require(self.decay in DECAYS, "decay", f"must be one of {', '.join(DECAYS)}, got {self.decay!r}")
        _require(isinstance(self.betas, tuple) and len(self.betas) == 2
                 and all(_is_number(b) and 0 <= b < 1 for b in self.betas),
                 "betas", f"must be two numbers in [0, 1), got {self.betas!r}")
        _require(_is_number(self.eps) and self.eps > 0, "eps", f"must be > 0, got {self.eps!r}")
        _require(_is_number(self.weight_decay) and self.weight_decay >= 0, "weight_decay",
                 f"must be >= 0, got {self.weight_decay!r}")
        _require(_is_number(self.clip) and self.clip >= 0, "clip", f"must be >= 0, got {self.clip!r}")
        if self.dropout is not None:
            _require(_is_number(self.dropout) and 0 <= self.dropout < 1, "dropout",
                     f"must be in [0, 1), got {self.dropout!r}")
        if self.max_time is not None:
            _require(_is_number(self.max_time) and self.max_time > 0, "max_time",
                     f"must be > 0 seconds, got {self.max_time!r}")
        _require(self.max_steps is not None or self.max_time is not None, "max_steps",
                 "set max_steps or max_time (or both): the run needs a budget")
        _require(self.precision in PRECISIONS, "precision",
                 f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        _require(isinstance(self.compile, bool), "compile", f"must be true or false, got {self.compile!r}")
        _require(isinstance(self.tf32, bool), "tf32", f"must be true or false, got {self.tf32!r}")
        _require(isinstance(self.device, str) and bool(self.device), "device", "must be a device name")
        _require(self.parallel in PARALLELS, "parallel",
                 f"must be one of {', '.join(PARALLELS)}, got {self.parallel!r}")
        _require(_is_number(self.dist_timeout) and self.dist_timeout > 0, "dist_timeout",
                 f"must be > 0 seconds, got {self.dist_timeout!r}")

    def process_batches(self, world_size: int) -> tuple[int, int]:
        """(micro_batch, micro_steps) of one of `world_size` processes in one optimizer step.

        The world runs the global batch of batch_size * grad_accum sequences: each process its
        1/world_size share, in micro_steps micro-batches of micro_batch <= batch_size sequences,
        the fewest that fit. With batch_size=8: grad_accum=1 on 2 processes -> (4, 1); grad_accum=4
        on 2 -> (8, 2); grad_accum=3 on 2 -> (6, 2); grad_accum=1 on 8 -> (1, 1).
        """
        total = self.batch_size * self.grad_accum
        if world_size < 1 or total % world_size:
            raise ConfigError(
                f"train.batch_size x train.grad_accum = {total} sequences per step cannot be shared evenly by "
                f"{world_size} processes: make it a multiple of {world_size} (e.g. train.grad_accum="
                f"{world_size // math.gcd(world_size, self.batch_size)})")
        share = total // world_size
        micro = max(d for d in range(1, min(self.batch_size, share) + 1) if share % d == 0)
        return micro, share // micro

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        if not isinstance(data, dict):
            raise ConfigError("train config: expected a table of fields")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown train field(s): {', '.join(unknown)} (known: {', '.join(field_names(cls))})")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"TrainConfig: {exc}") from None


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"train.{field}: {message}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(cfg: TrainConfig, name: str, minimum: int) -> None:
    value = getattr(cfg, name)
    _require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum, name,
             f"must be an integer >= {minimum}, got {value!r}")


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(h|m|s|ms)?", re.IGNORECASE)
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, None: 1.0}


def parse_duration(text: str | float, field: str = "duration") -> float:
    """Seconds in `text`: a number of seconds, or units such as "90s", "10m", "1h30m"."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    compact = str(text).strip().replace(" ", "")
    pos, total = 0, 0.0
    while pos < len(compact):
        match = _DURATION.match(compact, pos)
        if not match:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[(match.group(2) or "").lower() or None]
        pos = match.end()
    if not compact or pos != len(compact):
        raise ConfigError(f"{field}: cannot read {text!r} as a duration (examples: 600, 90s, 10m, 1h30m)")
    return total


# ---------------------------------------------------------------------------------- overrides
def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name != "model_type"]


def parse_value(cls: type, name: str, text: str) -> Any:
    """Convert the string `text` to the type of dataclass field `cls.name` (e.g. "512,256" -> (512, 256))."""
    if name in DURATIONS:
        return None if text.strip().lower() in ("none", "null") else parse_duration(text, f"train.{name}")
    hint = typing.get_type_hints(cls)[name]
    try:
        return _convert(hint, text.strip())
    except ValueError:
        raise ConfigError(f"{name}: cannot read {text!r} as {_type_name(hint)}") from None


def _convert(hint: Any, text: str) -> Any:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if type(None) in args and text.lower() in ("none", "null", ""):
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) > 1:  # e.g. a config dict or a path: from the command line, the path
            if str in inner:
                return text
            raise ValueError(text)
        return _convert(inner[0], text)
    if typing.get_origin(hint) is tuple:
        parts = [p for p in text.strip("()[]").split(",") if p.strip()]
        element = args[0]
        values = tuple(_convert(element, p.strip()) for p in parts)
        if args[-1] is not Ellipsis and len(values) != len(args):
            raise ValueError(text)
        return values
    if hint is bool:
        lowered = text.lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        raise ValueError(text)
    if hint is int:
        return int(text.replace("_", ""))
    if hint is float:
        return float(text)
    return text


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def split_overrides(overrides: list[str], model_cls: type) -> tuple[dict[str, Any], dict[str, Any]]:
    """`["model.dims=512,256", "train.lr=1e-3"]` -> ({"dims": (512, 256)}, {"lr": 0.001}), typed.

    Unknown sections or fields are a ConfigError that lists what is valid.
    """
    model_kw: dict[str, Any] = {}
    train_kw: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or section not in ("model", "train"):
            raise ConfigError(f"override {item!r}: expected model.FIELD=VALUE or train.FIELD=VALUE")
        cls, target = (model_cls, model_kw) if section == "model" else (TrainConfig, train_kw)
        known = field_names(cls)
        if name not in known:
            raise ConfigError(f"override {item!r}: unknown field {section}.{name} (known: {', '.join(known)})")
        target[name] = parse_value(cls, name, value)
    return model_kw, train_kw


def read_toml(path: str | Path) -> dict[str, Any]:
    """A config file: optional top-level `preset` and `model_kind`, then [model] and [train] tables.

        preset = "small"
        model_kind = "megabyte"
        [model]
        dims = [512, 256]
        [train]
        batch_size = 16
        max_time = "10m"
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef]

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MegabyteError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise MegabyteError(f"config file {path}: {exc}") from None
    unknown = sorted(set(data) - {"preset", "model_kind", "model", "train"})
    if unknown:
        raise MegabyteError(f"config file {path}: unknown key(s) {', '.join(unknown)} "
                            "(expected preset, model_kind, [model], [train])")
    for table in ("model", "train"):
        if not isinstance(data.get(table, {}), dict):
            raise MegabyteError(f"config file {path}: {table} must be a table ([{table}])")
    return data
