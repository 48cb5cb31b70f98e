"""The one table of model kinds: every part of the library that needs to know a kind asks here.

    from megabyte.model.registry import ModelKind, get_kind, kind_of, register
    kind = get_kind("megabyte")
    kind.config_class, kind.model_class, kind.label       # MegabyteConfig, Megabyte, "MEGABYTE"
    kind.flops(config, seq_len, causal)                   # the parts of its training FLOPs
    kind.presets["small"]                                 # its config fields in preset `small`
    kind_of(config) is kind                               # by config.model_type

The built-in kinds (`megabyte.model.kinds`) are registered when `megabyte.model` is imported,
which happens before this module is used. A new kind is one `register(ModelKind(...))` call: its
config class (a dataclass with `model_type`, `max_seq_len`, `dropout` and `to_dict` / `from_dict`,
see `megabyte.model.base.ConfigMixin`) and its model class (a `ByteModel`: `model(x)` gives
logits (B, T, V) with `logits[:, t]` predicting `x[:, t]` from `x[:, :t]`) are then trained,
saved, loaded, evaluated, sampled and compared like the built-in ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from megabyte.errors import MegabyteError

UNITS = ("bytes", "tokens")


@dataclass(frozen=True)
class ModelKind:
    """What the library knows of one kind of model."""

    name: str
    """The kind's name: `--model` / `--models`, and the `model_type` of its configs (for
    `units="bytes"`; a token kind reuses the config class of a byte kind)."""
    label: str
    """Its name in tables and plots ("MEGABYTE")."""
    config_class: type
    model_class: type
    flops: Callable[[Any, int, bool], Sequence[Any]]
    """(config, seq_len, causal) -> the `megabyte.model.flops.Part`s of one training sequence."""
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Preset name -> the kind's config fields in that preset (the preset gives `max_seq_len`)."""
    units: str = "bytes"
    """What one position is: "bytes" (the dataset's bytes), or "tokens" (a BPE vocabulary of the
    text, trained by `megabyte compare` on the train split)."""
    strided: bool = False
    """Whether strided inference applies (a patch grid to shift: `config.sub_sizes`)."""
    colour: str = "tab:gray"
    """Its colour in plots."""
    describe: Callable[[dict[str, Any]], str] | None = None
    """A config (as a dict) -> a one-line description of its size; default `dim x depth`."""
    fit: Callable[[Any, Any, frozenset[str]], tuple[Any, list[str]]] | None = None
    """(config, dataset, fields the user set) -> the config adjusted to the data, and what changed;
    called after the context has grown to the data's sequences (`training.presets.fit_to_data`)."""
    modalities: tuple[str, ...] | None = None
    """The data it is made for ("text", "image", "audio"; None: any). `megabyte compare` leaves a
    kind out of its default model list on other data (it still runs when named)."""
    by_default: bool = True
    """Whether `megabyte compare` runs it when no models are named (False: a kind that needs more
    than a preset, such as entropy patches and their entropy model)."""
    sized: Callable[[Any, int], Any] | None = None
    """(`megabyte.bench.rows.Sizes`, max_seq_len) -> a config of `megabyte bench`'s shapes."""

    def __post_init__(self) -> None:
        if self.units not in UNITS:
            raise MegabyteError(f"model kind {self.name!r}: units must be one of {', '.join(UNITS)}")

    def shape(self, config: dict[str, Any]) -> str:
        """A one-line description of a model's size, from its config dict."""
        if self.describe is not None:
            return self.describe(config)
        return f"{config.get('dim', '?')} x {config.get('depth', '?')}"


_KINDS: dict[str, ModelKind] = {}


def register(kind: ModelKind, *, replace: bool = False) -> ModelKind:
    """Add `kind` to the table (MegabyteError if the name is taken, unless `replace`)."""
    if kind.name in _KINDS and not replace:
        raise MegabyteError(f"a model kind named {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Remove a kind (tests register toy kinds and remove them again)."""
    _KINDS.pop(name, None)


def kind_names(*, units: str | None = None) -> tuple[str, ...]:
    """Registered kinds in registration order (only those of `units`, when given)."""
    return tuple(k.name for k in _KINDS.values() if units is None or k.units == units)


def get_kind(name: str, *, units: str | None = None) -> ModelKind:
    """The kind named `name`; MegabyteError naming the choices otherwise."""
    kind = _KINDS.get(name)
    if kind is None or (units is not None and kind.units != units):
        raise MegabyteError(f"unknown model kind {name!r}; expected one of {', '.join(kind_names(units=units))}")
    return kind


def kind_of(config: Any) -> ModelKind:
    """The byte kind of a model config (or a `model_type` string), found by its `model_type`."""
    model_type = config if isinstance(config, str) else getattr(config, "model_type", None)
    kind = _KINDS.get(model_type) if isinstance(model_type, str) else None
    if kind is None or kind.units != "bytes":
        known = ", ".join(kind_names(units="bytes"))
        raise MegabyteError(f"unknown model_type {model_type!r} (expected one of {known})")
    return kind
