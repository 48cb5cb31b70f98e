"""Helpers shared by the training tests."""

from __future__ import annotations

import json
from pathlib import Path

from megabyte.cli import main


def cli(*args: str) -> int:
    """Run `megabyte ...` in-process (no progress bar) and return its exit status."""
    args = list(args)
    if args and args[0] == "train" and "--no-progress" not in args:
        args.append("--no-progress")
    return main(args)


def metrics(run: Path) -> list[dict]:
    """Every line of RUN/metrics.jsonl, parsed: a torn or corrupt line fails the test."""
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
