"""Trouble a user should see while a run trains, said in one line each:

    loss spikes    a step whose training loss is far above the recent median (`SpikeWatch`):
                   a warning line with its step, and a `spikes` entry in that metrics record
    no learning    validation no better than the unigram entropy of the training bytes (what
                   knowing byte frequencies alone scores) after a tenth of the run and at least
                   HINT_MIN_STEPS steps (`unigram_hint`)

Both usually mean the learning rate is too high for the model and batch (`megabyte compare`
tunes it per model; `--lr` sets it for `megabyte train`).
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import Any

SPIKE_WINDOW = 50
"""Steps the median is taken over."""
SPIKE_MIN_HISTORY = 10
"""Steps of history before any step is judged."""
SPIKE_RATIO = 1.4
SPIKE_BITS = 1.0
"""A spike: a step's training bpb above SPIKE_RATIO x the median and SPIKE_BITS above it."""
HINT_MIN_STEPS = 200
"""Steps before a run is judged to learn nothing: a good run can still be above the unigram
entropy at step 100 (MEGABYTE small, batch 2, on English prose: above it at step 100 and 0.57
bits below it at step 200), and a smoke run of a few dozen steps is too short to judge."""


class SpikeWatch:
    """The recent steps' training bpb, and the steps far above their median."""

    def __init__(self, window: int = SPIKE_WINDOW, ratio: float = SPIKE_RATIO, bits: float = SPIKE_BITS,
                 min_history: int = SPIKE_MIN_HISTORY) -> None:
        self.recent: deque[float] = deque(maxlen=window)
        self.ratio, self.bits, self.min_history = ratio, bits, min_history

    def check(self, step: int, bpb: float) -> dict[str, Any] | None:
        """Record step `step`'s bpb; a description of it if it is a spike, else None."""
        spike = None
        if len(self.recent) >= self.min_history:
            median = statistics.median(self.recent)
            if bpb > self.ratio * median and bpb - median > self.bits:
                spike = {"step": step, "train_bpb": bpb, "median": median, "over": len(self.recent)}
        self.recent.append(bpb)
        return spike


def spike_warning(spike: dict[str, Any]) -> str:
    return (f"warning: loss spike at step {spike['step']}: train {spike['train_bpb']:.2f} bpb, "
            f"{spike['train_bpb'] / spike['median']:.1f}x the median {spike['median']:.2f} of the last "
            f"{spike['over']} steps (a lower train.lr may help)")


def unigram_hint(val_bpb: float, unigram_bits: float, step: int, done: float = 0.1) -> str | None:
    """The hint to print when validation is no better than byte frequencies alone (at step
    `step`, `done` of the run), else None."""
    if not val_bpb < unigram_bits:
        return (f"hint: validation {val_bpb:.3f} bpb at step {step} ({done:.0%} of the run) is no better than the "
                f"unigram entropy of the training data ({unigram_bits:.3f} bits): the model has learned little "
                "beyond byte frequencies; try a lower train.lr (megabyte compare tunes it per model)")
    return None
