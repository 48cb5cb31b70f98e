"""The device check's second stage: the command line trains, resumes, runs under torchrun (DDP,
FSDP2 and its resume), evaluates and samples on the device, as a user would run it.

Everything goes through the command line: training as `python3 -m megabyte` processes (in this
process through `megabyte.cli.main` for the CPU form, where a process start costs more than the
command), prepare, eval and sample always in this process; on a dataset prepared from the
Python standard library's `json` package (~48 kB of source, on every Python). torchrun is always
a real `torch.distributed.run` with one process: NCCL on a GPU, gloo over the loopback on the CPU.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megabyte.errors import MegabyteError


@dataclass(frozen=True)
class Plan:
    """The training stage's sizes on one kind of device."""

    preset: str
    first: int
    """Steps of the first run (then `--resume` to `total`)."""
    total: int
    overrides: tuple[str, ...]

    @classmethod
    def for_device(cls, device: str) -> Plan:
        if device == "cpu":  # the tiny preset: 64-byte context, a step in milliseconds
            return cls("tiny", 10, 14, ("train.decay_steps=14",))
        # The small preset (3.6M, 1,024 bytes): 60 steps are seconds on a GPU; a short warm-up so
        # that the loss falls inside them, and a small validation.
        return cls("small", 60, 80, ("train.decay_steps=80", "train.warmup=10", "train.log_every=1",
                                     "train.eval_bytes=65536"))


def repo_root() -> Path:
    import megabyte

    return Path(megabyte.__file__).resolve().parents[1]


def command_env() -> dict[str, str]:
    """The environment of every command: this checkout importable (no install needed), the
    loopback for gloo, unbuffered output (a cut-off command still shows its last lines)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(repo_root()), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Commands:
    """Runs `megabyte` commands and torchrun; a non-zero exit is a MegabyteError with its last lines."""

    def __init__(self, opts, log_dir: Path) -> None:
        self.opts, self.log_dir = opts, log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def megabyte(self, *args: str, timeout: float = 300, inline: bool | None = None) -> str:
        """`python3 -m megabyte ARGS`, or `megabyte.cli.main(ARGS)` here when `inline` (default:
        the options'; prepare, eval and sample always: their process start proves nothing new)."""
        if self.opts.inline if inline is None else inline:
            return self._inline(list(args))
        return self._process([sys.executable, "-m", "megabyte", *args], timeout)

    def torchrun(self, *args: str, timeout: float = 300) -> str:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "megabyte", *args]
        return self._process(cmd, timeout)

    def _inline(self, args: list[str]) -> str:
        from megabyte.cli import main

        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            rc = main(args)
        return self._checked(f"megabyte {args[0]}", rc, out.getvalue())

    def _process(self, cmd: list[str], timeout: float) -> str:
        try:
            done = subprocess.run(cmd, env=command_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=self.opts.timeout(timeout), cwd=repo_root())
        except subprocess.TimeoutExpired as exc:
            raise MegabyteError(f"{' '.join(cmd[2:5])} timed out after {exc.timeout:.0f} s") from None
        name = "torchrun" if "torch.distributed.run" in cmd else f"megabyte {cmd[3]}"
        return self._checked(name, done.returncode, done.stdout)

    def _checked(self, name: str, rc: int, output: str) -> str:
        self.count += 1
        (self.log_dir / f"{self.count:02d}-{name.replace(' ', '-')}.log").write_text(output)
        if rc != 0:
            tail = " | ".join(output.strip().splitlines()[-3:])[-400:]
            raise MegabyteError(f"{name} exited with {rc}: {tail}")
        return output


def steps_and_losses(run: Path) -> list[tuple[int, float]]:
    """(step, train bpb) of every metrics line of `run` that has a training loss."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r["train_bpb"]) for r in records if r.get("train_bpb") is not None]


def assert_steps(run: Path, last: int) -> list[float]:
    """`run` logged steps 1..`last` once each, with finite losses; return the losses."""
    logged = steps_and_losses(run)
    steps = [s for s, _ in logged]
    if steps != list(range(1, last + 1)):
        raise MegabyteError(f"{run.name}: logged steps {steps[:3]}...{steps[-3:]}, not 1..{last} once each")
    losses = [b for _, b in logged]
    if not all(math.isfinite(b) for b in losses):
        raise MegabyteError(f"{run.name}: a non-finite loss")
    return losses


def _fell(losses: list[float], n: int = 3) -> dict[str, Any]:
    first, last = sum(losses[:n]) / n, sum(losses[-n:]) / n
    return {"pass": last < first - 0.1, "first_bpb": round(first, 4), "last_bpb": round(last, 4),
            "bound": "mean of the last 3 steps < mean of the first 3 - 0.1 bpb"}


def _train_args(plan: Plan, opts, out: Path, steps: int, data: Path | None, *extra: str) -> list[str]:
    """`megabyte train` on the plan's preset: from `data`, or (None) `--resume` of `out`."""
    source = ["--data", str(data)] if data is not None else ["--resume"]
    return ["train", *plan.overrides, "--out", str(out), *source, "--preset", plan.preset, "--max-steps", str(steps),
            "--eval-every", str(plan.first), "--save-every", str(plan.first), "--no-progress",
            "--device", opts.device, *extra]


def _resumed(run: Path, plan: Plan, first: list[float]) -> dict[str, Any]:
    """`run` went on from its checkpoint: every step once, and the loss after the resume near
    the loss before it (a restart from scratch would begin at the first steps' loss)."""
    losses = assert_steps(run, plan.total)
    before, after = first[-1], losses[plan.first]
    start = sum(losses[:3]) / 3
    return {"pass": abs(after - before) < abs(start - before) / 2, "bpb_before": round(before, 4),
            "bpb_after": round(after, 4), "bpb_at_start": round(start, 4), "steps": plan.total,
            "bound": "|after - before| < |start - before| / 2"}


def stage_training(stage, opts, work: Path) -> None:
    """Stage 2: prepare, train (loss falls), resume, torchrun DDP, torchrun FSDP2 + resume, eval, sample."""
    plan, cmd = Plan.for_device(opts.device), Commands(opts, work / "logs")
    data, run, ddp, fsdp = work / "data", work / "run", work / "ddp", work / "fsdp"
    first: list[float] = []

    def prepare() -> dict[str, Any]:
        cmd.megabyte("prepare", "text", os.path.dirname(json.__file__), "--out", str(data), inline=True)
        return {"bytes": json.loads((data / "meta.json").read_text())["bytes"]}

    def train() -> dict[str, Any]:
        cmd.megabyte(*_train_args(plan, opts, run, plan.first, data), timeout=300)
        first.extend(assert_steps(run, plan.first))
        return {**_fell(first), "preset": plan.preset, "steps": plan.first}

    def resume() -> dict[str, Any]:
        cmd.megabyte(*_train_args(plan, opts, run, plan.total, None), timeout=300)
        return _resumed(run, plan, first)

    def torchrun_ddp() -> dict[str, Any]:
        out = cmd.torchrun(*_train_args(plan, opts, ddp, plan.first, data), timeout=300)
        return {**_fell(assert_steps(ddp, plan.first)), "said_ddp": "(ddp)" in out}

    def torchrun_fsdp() -> dict[str, Any]:
        cmd.torchrun(*_train_args(plan, opts, fsdp, plan.first, data, "--parallel", "fsdp"), timeout=300)
        fsdp_first = assert_steps(fsdp, plan.first)
        cmd.torchrun(*_train_args(plan, opts, fsdp, plan.total, None, "--parallel", "fsdp"), timeout=300)
        return {**_resumed(fsdp, plan, fsdp_first), "fell": _fell(fsdp_first)["pass"]}

    stage.run("prepare text (the stdlib json package)", prepare)
    stage.run(f"train ({plan.preset}, {plan.first} steps): the loss falls", train)
    stage.run(f"--resume to {plan.total} steps continues the run", resume)
    stage.run("torchrun --nproc_per_node 1, DDP", torchrun_ddp)
    stage.run("torchrun --nproc_per_node 1, FSDP2, then --resume", torchrun_fsdp)
    stage.run("megabyte eval", lambda: _evaluate(cmd, opts, run, data))
    stage.run("megabyte sample: greedy cached == --no-cache", lambda: _sample(cmd, opts, run, work))


def _evaluate(cmd: Commands, opts, run: Path, data: Path) -> dict[str, Any]:
    out = cmd.megabyte("eval", str(run), "--data", str(data), "--device", opts.device, "--json", inline=True)
    report = json.loads(out.strip().splitlines()[-1])
    bpb = float(report["bpb"])
    return {"pass": math.isfinite(bpb) and bpb < 8.0, "bpb": round(bpb, 4), "bytes": report.get("bytes"),
            "bound": "finite, < 8 bpb (a uniform guess)"}


def _sample(cmd: Commands, opts, run: Path, work: Path) -> dict[str, Any]:
    prompt, new = "def ", 40
    texts = []
    for extra in ([], ["--no-cache"]):
        path = work / f"sample{len(texts)}.txt"
        cmd.megabyte("sample", str(run), "--prompt", prompt, "--max-bytes", str(new), "--temperature", "0",
                     "--seed", "0", "--device", opts.device, "--out", str(path), *extra, inline=True)
        texts.append(path.read_bytes())
    return {"pass": texts[0] == texts[1] and len(texts[0]) == len(prompt) + new, "bytes": len(texts[0]),
            "text": texts[0][:80].decode("utf-8", errors="replace")}
