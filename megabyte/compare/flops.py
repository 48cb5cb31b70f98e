"""FLOP budgets for `megabyte compare`: reading them, printing them, and where they go.

The counting itself is `megabyte.model.flops.training_flops`.
"""

from __future__ import annotations

from megabyte.model.flops import FlopCount


def stage_summary(count: FlopCount) -> str:
    """`global 31% + local 52% + head 17%`: where a model's training FLOPs go (with entropy
    patches, `+ entropy model (forward) 20%` too)."""
    total = count.total or 1
    parts = [f"{p.name} {100 * p.flops / total:.0f}%" for p in count.parts]
    if count.frozen:
        parts.append(f"entropy model (forward) {100 * count.frozen_flops / total:.0f}%")
    return " + ".join(parts)


def human_flops(n: float) -> str:
    """1.2e15 -> '1.20 PFLOP'."""
    for unit, size in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}FLOP"
    return f"{n:.3g} FLOP"


def parse_flops(text: str | float) -> float:
    """'1e15', '2.5e12', '3P', '800T', '5G' -> FLOPs."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        s = str(text).strip().upper().removesuffix("FLOPS").removesuffix("FLOP").strip()
        scale = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
        factor = scale.get(s[-1:], 1.0)
        if s[-1:] in scale:
            s = s[:-1]
        try:
            value = float(s) * factor
        except ValueError:
            raise ValueError(f"cannot read {text!r} as a FLOP count (examples: 1e15, 3P, 800T)") from None
    if not value > 0:
        raise ValueError(f"a FLOP budget must be > 0, got {text!r}")
    return value
