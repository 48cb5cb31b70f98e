"""Reproduce the paper's comparison at any scale: MEGABYTE against a byte-level Transformer,
PerceiverAR and a subword (BPE) Transformer, with a matched budget, scored in bits per byte.

    from megabyte.compare import compare
    report = compare("data/text", "runs/compare", budget="3m", preset="small")
    report["models"][0]["eval"]["basic"]["bpb"]

Modules: `flops` (FLOP budgets; the count is `megabyte.model.flops`), `subword` (BPE, token data, the
objective `megabyte.training.Trainer` trains the subword model on, scoring in bits per byte), `run`
(`CompareConfig`; planning, budgets, training, evaluation, generation speed), `report` (compare.json,
compare.md, compare.png). `megabyte compare` is the command line; the models come from
`megabyte.model.registry`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["compare", "training_flops"]


def __getattr__(name: str) -> Any:
    if name == "compare":
        from megabyte.compare.run import compare

        return compare
    if name == "training_flops":
        from megabyte.model.flops import training_flops

        return training_flops
    raise AttributeError(f"module 'megabyte.compare' has no attribute {name!r}")
