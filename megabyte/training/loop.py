"""The training loop. A `Trainer` owns one run; its steps are separate methods:

    train_step()   one optimizer step over `grad_accum` micro-batches
    evaluate()     validation bits per byte (summed nats / (ln 2 * summed bytes))
    save()         an atomic checkpoint in RUN/checkpoints/, RUN/latest updated
    fit()          loop until the budget (max_steps / max_time) is spent, logging and saving

`train(train_config, model_config, data, out_dir, resume=False)` builds a Trainer from configs
(fresh, or from RUN's latest checkpoint) and runs it; it is what `megabyte train` calls. `data` is
a prepared dataset directory, or any objective (`megabyte.training.objective`: what batches are,
how their loss counts in bytes, how validation scores): the subword baseline trains here too.

Under torchrun every process runs the same loop on its own share of each step's global batch
(`TrainConfig.process_batches`): the same windows of the data stream, the same gradient (averaged
by DDP or FSDP2), the same step whatever the number of processes. Every decision that could
differ between processes (stop now? which learning rate, when the schedule follows the clock?)
is agreed on collectively, and only rank 0 writes files.
"""

from __future__ import annotations

import errno
import math
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from megabyte import __version__
from megabyte.errors import MegabyteError
from megabyte.model import build_model
from megabyte.model.base import LN2
from megabyte.model.io import WEIGHTS, load_weights
from megabyte.training import checkpoint as ckpt
from megabyte.training import faults
from megabyte.training.config import TrainConfig
from megabyte.training.lock import RunLock
from megabyte.training.metrics import MetricsLog, Progress, format_duration, human
from megabyte.training.notices import HINT_MIN_STEPS, SpikeWatch, spike_warning, unigram_hint
from megabyte.training.objective import as_objective
from megabyte.training.optim import build_optimizer, lr_at
from megabyte.training.parallel import compile_blocks
from megabyte.training.run import (
    check_resumable,
    plan_schedule,
    prepare_fresh_run,
    resolve_lengths,
    schedule_notice,
    write_run_config,
)
from megabyte.training.runtime import Runtime, float32_products, init_distributed, synchronize
from megabyte.training.signals import stop_on_signals

BUDGETS = ("max_steps", "max_time")
"""Stop reasons of a run that spent its budget; others (a signal: "SIGINT", "SIGTERM") interrupt it."""


@dataclass
class RunState:
    """Counters that survive a restart (weights, optimizer, sampler and RNG are saved beside them)."""

    step: int = 0
    """Optimizer steps taken."""
    bytes_seen: int = 0
    """Training bytes consumed (over all processes)."""
    elapsed: float = 0.0
    """Seconds of the run so far (training, evaluation and saving), summed over resumes."""
    val_bpb: float | None = None
    """The latest validation bpb, and the step it was measured at."""
    val_step: int | None = None


class Trainer:
    """One training run of `model_config` on `objective` (a `ByteObjective` of a dataset, or any
    other, see `megabyte.training.objective`), writing into `run_dir`."""

    def __init__(self, cfg: TrainConfig, model_config, objective, run_dir: Path, runtime: Runtime, *,
                 preset: str | None = None, progress: bool = True, hints: bool = True, fresh: bool = True) -> None:
        objective = as_objective(objective)
        self.cfg, self.model_config, self.objective, self.runtime = cfg, model_config, objective, runtime
        self.run_dir, self.preset, self.show_progress = Path(run_dir), preset, progress
        torch.manual_seed(cfg.seed)  # the same initial weights on every process
        self.model = build_model(model_config).train()  # on the CPU: `runtime.wrap` places it
        if fresh:
            self.model.load_frozen()  # an entropy model's weights; a resumed run restores its own
        torch.manual_seed(dropout_seed(cfg.seed, runtime.rank))  # dropout: a stream per process
        if cfg.compile:  # block by block, so that DDP's all-reduce overlaps the backward
            compile_blocks(self.model)
        # What training steps call: self.model on the device, DDP around it, or self.model itself
        # sharded in place (FSDP2, block by block, so that the device never holds the whole model);
        # self.model is what is evaluated and saved. The optimizer comes after the sharding.
        self.network = runtime.wrap(self.model)
        self.optimizer = build_optimizer(self.model, cfg, runtime.device)
        # This process's share of each step: micro_steps micro-batches of micro_batch sequences.
        self.micro_batch, self.micro_steps = cfg.process_batches(runtime.world_size)
        self.sampler = objective.sampler(cfg.seq_len, self.micro_batch, seed=cfg.seed, rank=runtime.rank,
                                         world_size=runtime.world_size)
        self.state = RunState()
        self.metrics = MetricsLog(self.run_dir, enabled=runtime.is_main)
        self.saved_step: int | None = None
        self.resumed_from: Path | None = None
        self.schedule_note: str | None = None  # what resuming did to the learning-rate schedule
        self.stop_requested: str | None = None  # set (e.g. by a signal handler) to stop after this step
        self.lr = lr_at(cfg, 0)
        self.last_train_bpb: float | None = None  # of the latest metrics record
        self.last_rate = 0.0  # training bytes/s of the latest metrics record
        self._clock_start = time.monotonic()
        self._elapsed_at_start = 0.0
        self._agreed_elapsed = 0.0  # elapsed() as all processes agreed at the last stop decision
        self._session = {"bytes": 0, "train_time": 0.0}
        self._reset_interval()
        self._unchecked = torch.zeros((), device=runtime.device)  # step losses not yet checked finite
        self._checked_step = 0
        self.spikes = SpikeWatch()
        self.notices: list[str] = []  # warnings and hints to say after the current step
        self._hint_checked = not hints  # a learning-rate trial is judged by its score, not hinted at

    # ------------------------------------------------------------------ bookkeeping
    @property
    def positions_per_step(self) -> int:
        """Training positions (bytes, or tokens) of one optimizer step over all processes (the global batch)."""
        cfg = self.cfg
        return cfg.batch_size * cfg.grad_accum * cfg.seq_len

    def elapsed(self) -> float:
        return self._elapsed_at_start + time.monotonic() - self._clock_start

    def _reset_interval(self) -> None:
        self._interval = {"bytes": 0, "steps": 0, "train_time": 0.0}
        self._steps: list[tuple[torch.Tensor, int]] = []  # (nats, bytes) of each step since the last record

    def stop_reason(self) -> str | None:
        """Why to stop now (None: go on). The same answer on every process: clocks and stop
        requests (signals) differ between processes, so they agree on the latest clock and on
        stopping if any of them was asked to."""
        cfg = self.cfg
        elapsed, requested = self.elapsed(), self.stop_requested
        if self.runtime.distributed:  # a collective: every process calls stop_reason equally often
            elapsed, code = self.runtime.max([elapsed, _request_code(requested)])
            requested = requested or _request_reason(int(code))
        self._agreed_elapsed = elapsed
        if requested:
            return requested
        if cfg.max_steps is not None and self.state.step >= cfg.max_steps:
            return "max_steps"
        if cfg.max_time is not None and elapsed >= cfg.max_time:
            return "max_time"
        return None

    def _schedule_clock(self) -> float:
        """Elapsed seconds for the learning-rate schedule: agreed on by all processes."""
        return self._agreed_elapsed if self.runtime.distributed else self.elapsed()

    # ------------------------------------------------------------------ the three parts
    def train_step(self) -> None:
        """One optimizer step: this process's micro-batches of the global batch, gradients
        averaged over processes, clipped, AdamW at the scheduled lr."""
        cfg, runtime = self.cfg, self.runtime
        # The step's time runs between two synchronised points (`synchronize`): from the end of
        # the work queued before it (evaluation, the last step) to the end of its own kernels,
        # not to the moment they were queued. The cost is one wait per step: the device idles
        # while the next step's first kernels are queued, little against a step's work.
        synchronize(runtime.device)
        start = time.monotonic()
        lr = lr_at(cfg, self.state.step, self._schedule_clock())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        positions = self.micro_batch * self.micro_steps * cfg.seq_len  # predictions in this process's step
        step_bytes = 0  # the bytes of data they stand for (= positions for a byte model)
        step_nats = torch.zeros((), device=runtime.device)
        for i in range(self.micro_steps):
            x = self.sampler.next_batch()  # (B, T)
            step_bytes += self.objective.count(x)
            x = x.to(runtime.device, non_blocking=True)
            # Gradients are averaged over processes once per step, after the last micro-batch.
            with runtime.gradient_sync(self.network, i == self.micro_steps - 1), runtime.autocast():
                nats = self.objective.loss(self.network(x), x)
            # The mean over this process's step; averaging over the (equal) processes gives the
            # mean over the global batch, as one process running all of it would compute.
            nats = _injected(nats, faults.inject("loss", self.state.step + 1))
            (nats / positions).backward()
            step_nats += nats.detach()
        self._unchecked += step_nats
        self._steps.append((step_nats, step_bytes))
        if cfg.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        # Every process's step covers as many bytes (bytes: equal shares; tokens: one process).
        self.state.bytes_seen += step_bytes * runtime.world_size
        self.lr = lr
        synchronize(runtime.device)
        seconds = time.monotonic() - start
        self._interval["bytes"] += step_bytes
        self._interval["steps"] += 1
        self._interval["train_time"] += seconds
        self._session["bytes"] += step_bytes * runtime.world_size
        self._session["train_time"] += seconds

    def time_steps(self, steps: int) -> float:
        """Mean seconds of the next `steps` training steps (for planning a budget; nothing logged)."""
        before = self._session["train_time"]
        for _ in range(steps):
            self.train_step()
        return (self._session["train_time"] - before) / steps

    def evaluate(self) -> float | None:
        """Validation bpb: the objective scores the first `eval_bytes` of the val split with
        `megabyte.evaluation` (basic inference, as `megabyte eval --method basic`), rank r of W
        taking every W-th window; nats and bytes are summed over ranks before dividing (None
        when the split is empty)."""
        cfg, runtime = self.cfg, self.runtime
        # Eager, even when train.compile compiled the model: evaluation runs in eval mode under
        # no_grad and ends on a shorter batch, each a new graph (a recompile per evaluation at
        # first, then dynamic shapes for the training graphs too). Nothing is compiled here.
        with torch.compiler.set_stance("force_eager"):
            result = self.objective.validate(self.model, seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                                             max_bytes=cfg.eval_bytes, rank=runtime.rank,
                                             world_size=runtime.world_size, device=runtime.device,
                                             autocast_dtype=runtime.autocast_dtype)
        if result is None:
            return None
        nats, count = runtime.sum([result.nats, result.bytes])
        bpb = nats / (LN2 * count)
        self.state.val_bpb, self.state.val_step = bpb, self.state.step
        return bpb

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (the main process writes; under FSDP2 every
        process writes its own shards first, so call it on every process)."""
        runtime = self.runtime
        sharded = runtime.sharded  # every rank: its shards of the weights and of the optimizer state
        if sharded:
            from megabyte.training.parallel import reshard

            reshard(self.model)
        if sharded or runtime.is_main:
            tensors, optimizer_meta = ckpt.optimizer_state(self.optimizer, self.model)
        self.check_finite(self.model)
        rng = runtime.gather_objects(ckpt.rng_state())  # dropout streams of every process
        path = None
        if sharded or runtime.is_main:
            main = runtime.is_main
            try:
                path = ckpt.save_checkpoint(
                    self.run_dir, self.state.step, model=self.model,
                    trainer_state=self._trainer_state(optimizer_meta, rng) if main else None,
                    optimizer_tensors=tensors, data_meta=self.objective.meta if main else None,
                    keep_last=self.cfg.keep_last, shards=runtime if sharded else None,
                )
            except OSError as exc:  # disk full, read-only, permissions: stop, keeping the last checkpoint
                raise MegabyteError(
                    f"cannot write the checkpoint of step {self.state.step} into {self.run_dir}: "
                    f"{exc.strerror or exc} [{errno.errorcode.get(exc.errno, exc.errno)}]; stopping. The last "
                    f"complete checkpoint ({ckpt.latest_checkpoint(self.run_dir) or 'none yet'}) is intact: "
                    "make room (or fix the permissions) and continue with --resume"
                ) from None
        self.saved_step = self.state.step
        return path

    def _trainer_state(self, optimizer_meta: dict, rng: list[dict] | None = None) -> dict[str, Any]:
        s = self.state
        return {
            "format": ckpt.STATE_FORMAT,
            "version": ckpt.STATE_VERSION,
            "megabyte_version": __version__,
            "step": s.step,
            "bytes_seen": s.bytes_seen,
            "elapsed": self.elapsed(),
            "val_bpb": s.val_bpb,
            "val_step": s.val_step,
            "schedule": {"lr": lr_at(self.cfg, s.step, self.elapsed()), "decay": self.cfg.decay,
                         "warmup": self.cfg.warmup, "decay_steps": self.cfg.decay_steps},
            "model_kind": self.model_config.model_type,
            "preset": self.preset,
            "data_dir": self.objective.directory,
            "train_config": self.cfg.to_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": rng[0] if rng else ckpt.rng_state(),
            **({"rng_ranks": rng} if rng and len(rng) > 1 else {}),  # every process's, by rank
            "world_size": self.runtime.world_size,
            "optimizer": optimizer_meta,
        }

    def restore(self, checkpoint: Path) -> None:
        """Continue from `checkpoint`: weights, optimizer, data position, RNG states, counters."""
        state = ckpt.read_trainer_state(checkpoint)
        self._load_weights_and_optimizer(checkpoint, state["optimizer"])
        try:
            self.sampler.load_state_dict(state["sampler"])  # the global stream: any world size continues it
            rank, saved = self.runtime.rank, state.get("rng_ranks") or [state["rng"]]
            if rank < len(saved):
                ckpt.set_rng_state(saved[rank])
            else:  # more processes than saved: a fresh dropout stream of its own
                torch.manual_seed(dropout_seed(self.cfg.seed, rank, int(state["step"])))
        except MegabyteError as exc:  # the data stream of another dataset or configuration
            raise MegabyteError(f"{checkpoint / ckpt.TRAINER_STATE}: {exc}") from None
        except (KeyError, IndexError, TypeError, ValueError, OverflowError, RuntimeError) as exc:
            source = checkpoint / ckpt.TRAINER_STATE
            raise MegabyteError(f"{source}: invalid data-stream or RNG state ({exc!r:.200})") from None
        self.state = RunState(step=int(state["step"]), bytes_seen=int(state["bytes_seen"]),
                              elapsed=float(state["elapsed"]), val_bpb=state.get("val_bpb"),
                              val_step=state.get("val_step"))
        self._elapsed_at_start = self.state.elapsed
        self._clock_start = time.monotonic()
        self.saved_step = self.state.step
        self.resumed_from = checkpoint
        self.schedule_note = schedule_notice(state["train_config"], self.cfg, self.state.step)

    def _load_weights_and_optimizer(self, checkpoint: Path, meta: dict) -> None:
        """The weights and optimizer state of `checkpoint` (single-file or sharded, written by any
        number of processes) into this run's model and optimizer, however they are spread."""
        source = str(checkpoint / (ckpt.OPTIMIZER_SHARDS if ckpt.is_sharded(checkpoint) else ckpt.OPTIMIZER))
        if ckpt.is_sharded(checkpoint) and self.runtime.sharded:  # every rank reads its slices (N -> M ranks)
            from megabyte.training.parallel import load_sharded_state

            load_sharded_state(self.model, self.optimizer, checkpoint, meta)
        elif ckpt.is_sharded(checkpoint):  # one process, or DDP: every process reads the whole state
            ckpt.load_shards(checkpoint, ckpt.MODEL_SHARDS, ckpt.model_tensors(self.model))
            ckpt.load_optimizer_state(self.optimizer, self.model,
                                      ckpt.read_sharded_tensors(checkpoint, ckpt.OPTIMIZER_SHARDS), meta, source)
        elif self.runtime.sharded:  # a single-file checkpoint: rank 0 reads it, every rank loads its shards
            from megabyte.training.parallel import scatter_state

            weights: dict[str, Any] = {}
            named: dict[str, Any] = {}
            if self.runtime.is_main:
                full = build_model(self.model_config)
                load_weights(full, checkpoint / WEIGHTS)
                weights = full.state_dict()
                named = ckpt.named_optimizer_state(self.optimizer, ckpt.read_optimizer_tensors(checkpoint), meta,
                                                   source)
            scatter_state(self.model, self.optimizer, weights, named)
        else:  # one process, or DDP: every replica loads the same file
            load_weights(self.model, checkpoint / WEIGHTS)
            ckpt.load_optimizer_state(self.optimizer, self.model, ckpt.read_optimizer_tensors(checkpoint), meta,
                                      source)

    # ------------------------------------------------------------------ logging
    def log(self, val_bpb: float | None) -> dict[str, Any] | None:
        """Write one metrics record: train bpb since the last record, throughput, and val bpb if given."""
        s, iv = self.state, self._interval
        if not iv["steps"] and val_bpb is None:
            return None
        record: dict[str, Any] = {"step": s.step, "bytes": s.bytes_seen}
        if iv["steps"]:
            self.check_finite()
            *steps, count = self.runtime.sum([*torch.stack([n for n, _ in self._steps]).tolist(), iv["bytes"]])
            record["train_bpb"] = sum(steps) / (LN2 * count)
            record["lr"] = self.lr
            record["bytes_per_s"] = iv["bytes"] * self.runtime.world_size / max(iv["train_time"], 1e-9)
            self.last_train_bpb, self.last_rate = record["train_bpb"], record["bytes_per_s"]
            spikes = self._watch_spikes(steps)
            if spikes:
                record["spikes"] = spikes
        if val_bpb is not None:
            record["val_bpb"] = val_bpb
        record["elapsed"] = round(self.elapsed(), 3)
        self.metrics.append(record)
        self._reset_interval()
        return record

    def _watch_spikes(self, nats: list[float]) -> list[dict[str, Any]]:
        """The loss spikes among the steps since the last record (`nats`: each step's, summed
        over processes), each also queued as a warning to print."""
        first = self.state.step - len(self._steps) + 1
        found = []
        for i, (total, (_, count)) in enumerate(zip(nats, self._steps)):
            spike = self.spikes.check(first + i, total / (LN2 * count * self.runtime.world_size))
            if spike is not None:
                found.append(spike)
                self.notices.append(spike_warning(spike))
        return found

    def _check_learning(self, val_bpb: float) -> None:
        """Once, at the first validation after a tenth of the run and at least `HINT_MIN_STEPS`
        steps: queue a hint if validation is no better than the unigram entropy of the training data."""
        cfg = self.cfg
        done = max(self.state.step / cfg.max_steps if cfg.max_steps else 0.0,
                   self.elapsed() / cfg.max_time if cfg.max_time else 0.0)
        if self._hint_checked or done < 0.1 or self.state.step < HINT_MIN_STEPS or not self.runtime.is_main:
            return
        self._hint_checked = True
        unigram = getattr(self.objective, "unigram_bits", None)
        hint = unigram_hint(val_bpb, unigram(), self.state.step, done) if unigram is not None else None
        if hint:
            self.notices.append(hint)

    def _say_notices(self, say) -> None:
        while self.notices:
            say(self.notices.pop(0))

    def check_finite(self, model: torch.nn.Module | None = None) -> None:
        """Stop (MegabyteError) if a training loss since the last check, or a weight of `model`
        (about to be saved), is not finite. Such a run never saves, so RUN/latest keeps naming the
        last good checkpoint. Call it on every process: the verdict is summed over them."""
        bad_weights = 0.0
        if model is not None and (self.runtime.is_main or self.runtime.sharded):  # FSDP2: each rank its shards
            local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
            bad_weights = float(not torch.stack([torch.isfinite(p).all() for p in local]).all())
        losses, bad_weights = self.runtime.sum([float(self._unchecked), bad_weights])
        first, last = self._checked_step + 1, self.state.step
        self._unchecked.zero_()
        self._checked_step = last
        if math.isfinite(losses) and not bad_weights:
            return
        what = "weights" if math.isfinite(losses) else "loss"
        when = f"at step {last}" if first >= last else f"between steps {first} and {last}"
        latest = ckpt.latest_checkpoint(self.run_dir)
        raise MegabyteError(
            f"the training {what} became non-finite (nan or inf) {when}; stopping without saving, so the last "
            f"good checkpoint ({latest or 'none yet'}) stays the one --resume continues from. "
            "Try a lower train.lr, or train.precision=fp32"
        )

    def _due(self, every: int) -> bool:
        """Whether a periodic action (every 0: never) falls on the current step."""
        return bool(every) and self.state.step % every == 0

    def _eta(self) -> float | None:
        cfg, rate = self.cfg, self.last_rate
        left = []
        if cfg.max_steps is not None and rate:
            per_step = self.positions_per_step * self.objective.bytes_per_position
            left.append((cfg.max_steps - self.state.step) * per_step / rate)
        if cfg.max_time is not None:
            left.append(cfg.max_time - self.elapsed())
        return min(left) if left else None

    def _announce(self, say) -> None:
        cfg, rt = self.cfg, self.runtime
        params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in self.model.parameters() if not p.requires_grad)
        budget = " or ".join(
            ([f"{cfg.max_steps} steps"] if cfg.max_steps else [])
            + ([format_duration(cfg.max_time)] if cfg.max_time else [])
        )
        say(f"{self.model_config.model_type}: {human(params)} parameters"
            + (f" (and a frozen {human(frozen)}-parameter entropy model)" if frozen else "") + f" on {rt.device} "
            f"({'bf16 autocast' if rt.precision == 'bf16' else 'fp32'}"
            f"{', tf32 products' if cfg.tf32 and rt.device.type == 'cuda' else ''}"
            f"{', compiled' if cfg.compile else ''}); {self.objective.describe()}")
        say(f"{cfg.batch_size} x {cfg.grad_accum} x {cfg.seq_len} {self.objective.unit} per step; budget {budget}; "
            f"run directory {self.run_dir}")
        if rt.distributed:
            say(f"{rt.world_size} processes ({rt.parallel}), each {self.micro_steps} x {self.micro_batch} "
                f"x {cfg.seq_len} bytes per step")
        if self.resumed_from is not None:
            say(f"resuming from step {self.state.step} ({self.resumed_from.relative_to(self.run_dir.resolve())})")
            if self.schedule_note:
                say(self.schedule_note)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        """Train until the budget is spent; evaluate, log and save along the way; return a summary."""
        cfg, s = self.cfg, self.state
        progress = Progress(total=cfg.max_steps, initial=s.step, enabled=self.show_progress and self.runtime.is_main)
        say = progress.write if self.runtime.is_main else (lambda message: None)
        self._announce(say)
        self.metrics.start(s.step if self.resumed_from is not None else None)
        self._clock_start = time.monotonic()  # the time budget starts here (or continues from the checkpoint)
        title = f"{self.run_dir.name}: {self.model_config.model_type}"
        try:
            while (reason := self.stop_reason()) is None:
                self.train_step()
                stop = self.stop_reason()
                last = stop is not None  # the last step always logs and saves, and evaluates unless interrupted
                val = self.evaluate() if (last and stop in BUDGETS) or self._due(cfg.eval_every) else None
                if val is not None or last or self._due(cfg.log_every):
                    self.log(val)
                    self.metrics.plot(title, force=val is not None)
                if val is not None:
                    say(f"step {s.step}: val {val:.4f} bpb, train {self.last_train_bpb:.4f} bpb, "
                        f"{human(self.last_rate)} bytes/s, {format_duration(self.elapsed())} elapsed")
                    self._check_learning(val)
                self._say_notices(say)
                if last or self._due(cfg.save_every):
                    self.save()
                progress.update(1, bpb=self.last_train_bpb, bytes_per_s=self.last_rate, eta=self._eta())
            # Stopped without a final step (resumed at the budget, or time ran out while evaluating).
            self.log(self.evaluate() if s.val_step != s.step and reason in BUDGETS else None)
            self._say_notices(say)
            if self.saved_step != s.step:
                self.save()
        finally:
            progress.close()
        self.metrics.plot(title, force=True)
        summary = self.summary(reason)
        if s.val_bpb is not None:
            say(f"done ({reason}) at step {s.step}: val {s.val_bpb:.4f} bpb; "
                f"{human(summary['bytes_per_s'])} bytes/s; checkpoint {summary['checkpoint']}")
        else:
            say(f"done ({reason}) at step {s.step}; checkpoint {summary['checkpoint']}")
        return summary

    def summary(self, reason: str | None) -> dict[str, Any]:
        s, session = self.state, self._session
        latest = ckpt.latest_checkpoint(self.run_dir)
        return {
            "run_dir": str(self.run_dir),
            "checkpoint": str(latest) if latest else None,
            "model_kind": self.model_config.model_type,
            "parameters": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            "step": s.step,
            "bytes": s.bytes_seen,
            "elapsed": self.elapsed(),
            "train_bpb": self.last_train_bpb,
            "val_bpb": s.val_bpb,
            "bytes_per_s": session["bytes"] / session["train_time"] if session["train_time"] else 0.0,
            "stop_reason": reason,
            "device": str(self.runtime.device),
            "precision": self.runtime.precision,
        }


def _injected(nats: torch.Tensor, action: str | None) -> torch.Tensor:
    """A step's loss as a fault-injection test asks for it ("nan"; "spike:F": F times larger)."""
    if action == "nan":
        return nats * float("nan")
    if action and action.startswith("spike:"):
        return nats * float(action[len("spike:"):])
    return nats


def _request_code(reason: str | None) -> int:
    """A stop request as a number that processes can agree on by maximum (a signal: 1000 + its number)."""
    if not reason:
        return 0
    try:
        return 1000 + int(signal.Signals[reason])
    except KeyError:
        return 1


def _request_reason(code: int) -> str | None:
    """The stop reason another process's `_request_code` stands for ("SIGTERM", ...)."""
    if code >= 1000:
        return signal.Signals(code - 1000).name
    return "stop requested by another process" if code else None


def dropout_seed(seed: int, rank: int, step: int = 0) -> int:
    """Seed of process `rank`'s dropout stream (a fresh one at `step` when resuming without a saved one)."""
    return (seed * 7919 + rank + 1) + step * 1_000_003


def train(
    train_config: TrainConfig,
    model_config,
    data,
    out_dir: str | Path,
    resume: bool = False,
    *,
    preset: str | None = None,
    progress: bool = True,
    hints: bool = True,
) -> dict[str, Any]:
    """Train `model_config` on `data` (a prepared dataset directory, or an objective such as
    `megabyte.compare.subword.TokenObjective`), writing the run into `out_dir`.

    With `resume=True`, continue from `out_dir`'s latest checkpoint: the configs must match the
    saved ones except for the fields in `config.RESUMABLE` (budget, evaluation and saving cadence,
    device). `hints=False` leaves out the no-learning hint (`megabyte.training.notices`), as a
    learning-rate trial does. Returns a summary: step, bytes, val_bpb, train_bpb, bytes_per_s, checkpoint, ...
    """
    objective = as_objective(data)
    train_config, model_config = resolve_lengths(train_config, model_config, objective)
    out_dir = Path(out_dir)
    checkpoint = check_resumable(out_dir, train_config, model_config, objective) if resume else None
    if not resume:
        train_config = plan_schedule(train_config)
    runtime = init_distributed(train_config.device, train_config.precision, parallel=train_config.parallel,
                               timeout=train_config.dist_timeout)
    try:
        with float32_products(runtime.device, tf32=train_config.tf32):
            return _run(runtime, train_config, model_config, objective, out_dir, checkpoint, preset=preset,
                        progress=progress, hints=hints)
    except BaseException as exc:
        # The failed run's frames hold the trainer, and through its DDP or FSDP model the process
        # group: let them go, so that `close` below can end the group's threads.
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        runtime.close()  # the trainer is gone by now: the group and its threads end here


def _run(runtime: Runtime, train_config: TrainConfig, model_config, objective, out_dir: Path,
         checkpoint: Path | None, *, preset: str | None, progress: bool, hints: bool) -> dict[str, Any]:
    """Build the Trainer in `runtime` and train; nothing of it outlives this call."""
    resume = checkpoint is not None
    train_config.process_batches(runtime.world_size)  # a clear error before any work
    if not resume and runtime.is_main:
        prepare_fresh_run(out_dir)
    # One training at a time in a run directory: rank 0 holds RUN/.lock to the end. Under the
    # lock, check again: another training may have saved here since the checks above.
    with RunLock(out_dir, enabled=runtime.is_main):
        if runtime.is_main and not resume:
            prepare_fresh_run(out_dir)
        if runtime.is_main and resume and ckpt.latest_checkpoint(out_dir) != checkpoint:
            raise MegabyteError(f"another training saved into {out_dir} while this one started; start again")
        trainer = Trainer(train_config, model_config, objective, out_dir, runtime, preset=preset, progress=progress,
                          hints=hints, fresh=not resume)
        if checkpoint is not None:
            trainer.restore(checkpoint)
        if runtime.is_main:
            ckpt.remove_stale_temporaries(out_dir)
            write_run_config(out_dir, model_config, train_config, objective, preset=preset, runtime=runtime)
            objective.write_files(out_dir)
        with stop_on_signals(trainer):  # Ctrl-C, SIGTERM: save at the end of the step and stop
            return trainer.fit()


def resolved_configs(train_config: TrainConfig, model_config, data_dir) -> tuple[TrainConfig, Any]:
    """The configs as a run on `data_dir` would use them (seq_len and dropout filled in)."""
    return resolve_lengths(train_config, model_config, as_objective(data_dir))
