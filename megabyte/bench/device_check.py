"""The prepared device check: one command that says, on the first GPU it meets, whether the
project computes, trains and runs as fast there as the CPU tests and tables say.

    python3 -m megabyte.bench.device_check --out $OUT                 # one GPU, about 7 minutes
    python3 -m megabyte.bench.device_check --device cpu --out /tmp/c   # the same stages, CI-sized
    benchmarks/device_check.sh                                        # the same, from a bare checkout

Stages, in order of importance (docs/device_check.md says what each proves):

1. correctness (`megabyte.bench.numerics`): causality, cached decoding, bf16 agreement, the
   attention path over SDPA's row limit, greedy cached == uncached, on every tiny configuration;
2. training (`megabyte.bench.training_check`): the CLI trains, resumes, runs under torchrun with
   DDP and FSDP2 (+ resume), evaluates and samples on the device;
3. speed (`megabyte.bench.speed_check`): the bf16 matmul peak, the paper's text model at the
   largest batch that fits (eager and compiled), the 25M rows against the other implementations.

Each stage writes `N-NAME.json` and `N-NAME.md` under `--out` after every check, so a run cut off
by a time limit still reports what it did; every check is guarded (an exception is a failed check,
the next one runs), and a check that would start past `--budget` is recorded as skipped. Datasets,
runs and checkpoints go to `--work` (default: a temporary directory), not to `--out`: the
results stay a handful of files (the device machine returns at most eight).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megabyte.atomic import atomic_write_bytes
from megabyte.errors import MegabyteError

STAGES = ("correctness", "training", "speed")
GRACE_S = 60.0
"""How long past the budget a check that started inside it may run: 420 + 60 s is 8 minutes."""


@dataclass
class CheckOptions:
    """What one device check runs, and where it writes."""

    device: str = "cuda"
    out: str = "device-check"
    work: str | None = None
    """Scratch directory for datasets, runs and checkpoints (default: a temporary one)."""
    stages: tuple[str, ...] = STAGES
    budget_s: float | None = None
    """Start no check after this many seconds (default: 420 on a GPU, to end inside 8 minutes;
    none on the CPU)."""
    inline: bool | None = None
    """Run CLI commands (not torchrun) and bench measurements in this process (default: on the
    CPU, where a process start costs more than the CI-sized check itself)."""
    table_batch: int | None = None
    """Sequences per step of the speed stage's table (default: 32 on a GPU, 2 on the CPU)."""
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise MegabyteError(f"device check: unknown stage {unknown[0]!r} (known: {', '.join(STAGES)})")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise MegabyteError(f"device check: --device must be cpu or cuda, got {self.device!r}")
        if self.budget_s is None:
            self.budget_s = None if self.cpu else 420.0
        if self.inline is None:
            self.inline = self.cpu

    @property
    def cpu(self) -> bool:
        return self.device == "cpu"

    def time_left(self) -> float:
        """Seconds left of the budget (infinite without one)."""
        if self.budget_s is None:
            return float("inf")
        return self.budget_s - (time.monotonic() - self.started)

    def timeout(self, most: float) -> float:
        """A subprocess's timeout: `most` seconds, or what is left of the budget and `GRACE_S`
        if less (at least 10): a check started inside the budget ends by budget + GRACE_S."""
        return max(10.0, min(most, self.time_left() + GRACE_S))


class Stage:
    """One stage's report, rewritten as JSON and markdown after every check."""

    def __init__(self, index: int, name: str, opts: CheckOptions) -> None:
        from megabyte.training.runtime import machine

        self.opts = opts
        self.json_path = Path(opts.out) / f"{index}-{name}.json"
        self.md_path = Path(opts.out) / f"{index}-{name}.md"
        self.data: dict[str, Any] = {"stage": name, "index": index, "device": opts.device, "status": "running",
                                     "machine": machine(), "checks": []}
        self.sections: list[str] = []
        self.write()

    @property
    def checks(self) -> list[dict[str, Any]]:
        return self.data["checks"]

    def run(self, name: str, fn: Callable[[], dict[str, Any]], needs_s: float = 0.0) -> dict[str, Any] | None:
        """Run one check, guarded: its result, or None when it failed or was skipped (when less
        than `needs_s`, its expected duration, is left of the budget)."""
        left = self.opts.time_left()
        if left <= 0 or left + GRACE_S < needs_s:
            self.skip(name, f"out of time (budget {self.opts.budget_s:.0f} s, {max(0, left):.0f} s left, "
                            f"needs about {needs_s:.0f} s)")
            return None
        log(f"[{self.data['stage']}] {name} ...")
        start = time.monotonic()
        entry: dict[str, Any] = {"name": name}
        try:
            result = fn()
            entry["status"] = "pass" if result.pop("pass", True) else "fail"
            markdown = result.pop("markdown", None)
            if markdown:
                self.sections.append(f"### {name}\n\n{markdown}")
            entry["result"] = result
        except Exception as exc:  # a failed check is a result: the next one still runs
            entry.update(failure(exc))
        entry["seconds"] = round(time.monotonic() - start, 2)
        self.checks.append(entry)
        log(f"[{self.data['stage']}] {name}: {entry['status']} ({entry['seconds']:.1f} s)"
            + (f": {entry['error']}" if "error" in entry else ""))
        self.write()
        return entry.get("result") if entry["status"] == "pass" else None

    def fail(self, name: str, exc: BaseException) -> None:
        """Record an error raised outside any check (a stage's own set-up)."""
        self.checks.append({"name": name, **failure(exc)})
        self.write()

    def skip(self, name: str, why: str) -> None:
        self.checks.append({"name": name, "status": "skipped", "why": why})
        log(f"[{self.data['stage']}] {name}: skipped ({why})")
        self.write()

    def finish(self) -> str:
        statuses = [c["status"] for c in self.checks]
        self.data["status"] = "fail" if "fail" in statuses or "pass" not in statuses else "pass"
        self.data["seconds"] = round(sum(c.get("seconds", 0.0) for c in self.checks), 1)
        self.write()
        return self.data["status"]

    def write(self) -> None:
        atomic_write_bytes(self.json_path, (json.dumps(self.data, indent=1, default=str) + "\n").encode())
        atomic_write_bytes(self.md_path, render_stage(self.data, self.sections).encode())


def failure(exc: BaseException) -> dict[str, Any]:
    """A failed check's entry: the error's first line and the end of its traceback."""
    return {"status": "fail", "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:500],
            "traceback": traceback.format_exc()[-4000:]}


def _brief(result: dict[str, Any] | None) -> str:
    """A check's numbers on one table line."""
    if not result:
        return ""
    def shown(key: str, value: Any) -> bool:  # numbers, words, bounds and short lists; not raw results
        if isinstance(value, list):
            return len(value) <= 8 and all(isinstance(v, (str, int, float)) for v in value)
        return not isinstance(value, dict) or key == "bounds"

    text = json.dumps({k: v for k, v in result.items() if shown(k, v)}, default=str)
    return text.replace("|", "/")[:300]


def render_stage(data: dict[str, Any], sections: list[str]) -> str:
    gpu = data["machine"].get("gpu")
    lines = [f"## Stage {data['index']}: {data['stage']} on {data['device']}"
             f"{f' ({gpu})' if gpu else ''}: **{data['status']}**", "",
             "| check | status | seconds | result |", "|---|---|---|---|"]
    for c in data["checks"]:
        detail = c.get("error") or c.get("why") or _brief(c.get("result"))
        lines.append(f"| {c['name']} | {c['status']} | {c.get('seconds', '-')} | {detail} |")
    return "\n".join(lines + [""] + [s + "\n" for s in sections])


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_checks(opts: CheckOptions) -> dict[str, str]:
    """Run the chosen stages in order; return each one's status ("pass" or "fail")."""
    from megabyte.bench import speed_check, training_check
    from megabyte.bench.numerics import stage_correctness

    Path(opts.out).mkdir(parents=True, exist_ok=True)
    runners = {"correctness": stage_correctness, "training": training_check.stage_training,
               "speed": speed_check.stage_speed}
    statuses: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="megabyte-device-check-") as scratch:
        work = Path(opts.work or scratch)
        for index, name in enumerate(STAGES, start=1):
            if name not in opts.stages:
                continue
            stage = Stage(index, name, opts)
            try:
                runners[name](stage, opts, work / name)
            except Exception as exc:  # a broken stage is recorded; the next stage still runs
                stage.fail("stage", exc)
            statuses[name] = stage.finish()
            log(f"== stage {index} ({name}): {statuses[name]}; {stage.md_path}")
    return statuses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m megabyte.bench.device_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (the check proper) or cpu (CI-sized; default cuda)")
    p.add_argument("--out", default="device-check", help="where each stage's JSON and markdown go")
    p.add_argument("--work", default=None, help="scratch for datasets and runs (default: a temporary directory)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, from {', '.join(STAGES)}")
    p.add_argument("--budget", type=float, default=None, metavar="S",
                   help="start no check after S seconds (default 420 on a GPU, none on the CPU)")
    p.add_argument("--table-batch", type=int, default=None, metavar="B",
                   help="speed stage: sequences per step of the reference table (default 32 on a GPU, 2 on the CPU)")
    args = p.parse_args(argv)
    try:
        opts = CheckOptions(device=args.device, out=args.out, work=args.work, budget_s=args.budget,
                            stages=tuple(s for s in args.stages.split(",") if s.strip()), table_batch=args.table_batch)
        statuses = run_checks(opts)
    except MegabyteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log("device check: " + ", ".join(f"{k} {v}" for k, v in statuses.items()))
    return 0 if all(v == "pass" for v in statuses.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
