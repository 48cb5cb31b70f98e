"""`compare()`: train MEGABYTE and the baselines on one dataset with a matched budget, score them
all on the same validation bytes, time their generation, and write the report.

    from megabyte.compare import compare
    result = compare("data/text", "runs/compare", budget="3m")       # same wall-clock per model
    result = compare("data/text", "runs/compare", flops=1e15)        # same training FLOPs per model

The budget is per model: every model trains for the same seconds on the same machine (evaluation
during training included, as in `megabyte train --max-time`), or for as many steps as fit in the
same analytic training FLOPs (`megabyte.model.flops`). Sizes come from one preset, which gives
each kind about the same parameter count, and every model sees the same bytes per update; the
budget then decides how many updates each gets, so a model that is cheaper per byte (MEGABYTE's
global stage runs once per patch) trains on more bytes. Warm-up and the evaluation cadence are
scaled to the steps that fit, so short budgets still decay the learning rate and draw a curve.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megabyte.compare.flops import human_flops, parse_flops, stage_summary
from megabyte.errors import MegabyteError
from megabyte.model.flops import FlopCount, training_flops
from megabyte.training.presets import fit_to_data

MODELS = ("megabyte", "transformer", "perceiver-ar", "subword")
"""What `--models` accepts; `subword` is text only."""
LABELS = {"megabyte": "MEGABYTE", "transformer": "Transformer", "perceiver-ar": "PerceiverAR",
          "subword": "Subword (BPE) Transformer"}
DEFAULT_BUDGET = 600.0
CURVE_POINTS = 8
"""Validation points per training curve (the evaluation cadence follows the steps that fit)."""
CURVE_EVAL_BYTES = 1 << 16
"""Validation bytes per curve point at most (the final scores use the whole split)."""
EVAL_SHARE = 0.1
"""About this share of a model's budget goes to the periodic validation behind its curve: a model
that is slow per byte evaluates fewer bytes per point, so validation never eats its training time."""
PROBE_STEPS = 3
"""Timed steps of the step-time probe (after two untimed ones)."""


@dataclass
class Entry:
    """One model of the comparison: how it is built and trained, and what that costs."""

    name: str
    model_config: Any
    train_config: Any
    flops: FlopCount
    """Training FLOPs of one sequence."""
    batch: int
    """Sequences per optimizer step (batch_size x grad_accum)."""
    bytes_per_step: float
    """Training bytes per optimizer step (expected, for the subword model)."""
    notes: list[str] = field(default_factory=list)
    step_seconds: float | None = None
    """Measured seconds per optimizer step before training (time budgets only)."""

    @property
    def flops_per_step(self) -> int:
        return self.flops.total * self.batch


# ------------------------------------------------------------------------------------ arguments
def parse_models(text: str | list[str] | None, modality: str) -> tuple[list[str], list[dict[str, str]]]:
    """The models to run and the ones skipped (with why). Subword on non-text data is an error
    when asked for by name, and skipped with a note when it comes from the default list."""
    explicit = text is not None
    names = MODELS if text is None else [m.strip() for m in (text.split(",") if isinstance(text, str) else text)]
    names = [m for m in names if m]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        raise MegabyteError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    if not names:
        raise MegabyteError(f"no models to compare; choose from {', '.join(MODELS)}")
    if len(set(names)) != len(names):
        raise MegabyteError(f"a model is listed twice in {', '.join(names)}")
    skipped = []
    if "subword" in names and modality != "text":
        if explicit:
            raise MegabyteError(f"the subword (BPE) baseline needs text, but this dataset holds {modality}: "
                                "drop subword from --models")
        names = [m for m in names if m != "subword"]
        skipped.append({"model": "subword", "reason": f"a BPE vocabulary is for text; this dataset is {modality}"})
    return list(names), skipped


def parse_budget(budget: str | float | None, flops: str | float | None) -> dict[str, float | None]:
    """{"seconds": S, "flops": None} or {"seconds": None, "flops": F}; the default is 10 minutes."""
    from megabyte.training.config import parse_duration

    if budget is not None and flops is not None:
        raise MegabyteError("give either a time budget (--budget) or a FLOP budget (--flops), not both")
    if flops is not None:
        try:
            return {"seconds": None, "flops": parse_flops(flops)}
        except ValueError as exc:
            raise MegabyteError(f"--flops: {exc}") from None
    seconds = DEFAULT_BUDGET if budget is None else parse_duration(budget, "--budget")
    if not seconds > 0:
        raise MegabyteError(f"--budget must be more than 0 seconds, got {budget!r}")
    return {"seconds": seconds, "flops": None}


# ------------------------------------------------------------------------------------ planning
def plan_entries(names: list[str], data, preset, *, tokens=None, seed: int = 0, device: str = "auto",
                 precision: str | None = None, batch_size: int | None = None) -> list[Entry]:
    """Model and training configs for every model, from `preset`, fitted to the data."""
    from megabyte.training.config import TrainConfig

    train_fields = {**preset.train, "seed": seed, "device": device, "max_steps": None, "max_time": 1.0,
                    "save_every": 0, "keep_last": 1, "eval_bytes": min(preset.train.get("eval_bytes", 1 << 20),
                                                                         CURVE_EVAL_BYTES)}
    if precision:
        train_fields["precision"] = precision
    if batch_size:
        train_fields["batch_size"] = batch_size
    entries = []
    for name in names:
        notes: list[str] = []
        if name == "subword":
            model_config, seq_len = _subword_config(preset, tokens, notes)
        else:
            model_config = preset.model_config(name)
            model_config, fitted = fit_to_data(model_config, data)
            notes += fitted
            seq_len = data.item_len or model_config.max_seq_len
        cfg = TrainConfig(**{**train_fields, "seq_len": seq_len})
        if cfg.dropout is not None:
            model_config = dataclasses.replace(model_config, dropout=cfg.dropout)
        batch = cfg.batch_size * cfg.grad_accum
        per_sequence = seq_len * (tokens.bytes_per_token if name == "subword" else 1)
        entries.append(Entry(name, model_config, cfg, training_flops(model_config, seq_len), batch,
                             batch * per_sequence, notes))
    return entries


def _subword_config(preset, tokens, notes: list[str]):
    """The preset's Transformer over BPE tokens, with a context of about as many bytes as the
    byte models' (so every model reads the same text per sequence and per update)."""
    from megabyte.model import TransformerConfig

    fields = preset.model_fields("transformer")
    byte_ctx = fields["max_seq_len"]
    ctx = max(8, int(round(byte_ctx / tokens.bytes_per_token / 8)) * 8)
    ctx = min(ctx, max(8, len(tokens.train) // 2))
    notes.append(f"BPE vocabulary of {tokens.bpe.vocab_size} tokens trained on the train split "
                 f"({tokens.bytes_per_token:.2f} bytes/token); context {ctx} tokens ~ {byte_ctx} bytes")
    return TransformerConfig(**{**fields, "max_seq_len": ctx, "vocab_size": tokens.bpe.vocab_size}), ctx


def fit_budget(entry: Entry, budget: dict[str, float | None], probe) -> None:
    """Set the budget, warm-up and evaluation cadence of `entry.train_config` so that the steps
    that fit (counted in FLOPs, or estimated from a measured step time) make a whole schedule."""
    cfg = entry.train_config
    if budget["flops"] is not None:
        steps = max(1, int(budget["flops"] // entry.flops_per_step))
        if steps * entry.flops_per_step > budget["flops"]:
            entry.notes.append("one step exceeds the FLOP budget")
        updates = {"max_steps": steps, "max_time": None}
        expected = steps
    else:
        entry.step_seconds = probe(entry)
        expected = max(1, int(budget["seconds"] / max(entry.step_seconds, 1e-9)))
        updates = {"max_steps": None, "max_time": budget["seconds"]}
    if expected < 20:
        entry.notes.append(f"only about {expected} steps fit in the budget: use a larger budget or a smaller preset")
    warmup = min(cfg.warmup, max(1, expected // 10))
    eval_every = max(1, expected // CURVE_POINTS)
    points = expected // eval_every + 1
    # Evaluating a byte costs about a third of training on it (a forward pass without the backward).
    share = int(3 * EVAL_SHARE * expected * entry.bytes_per_step / points)
    eval_bytes = max(1, min(cfg.eval_bytes or CURVE_EVAL_BYTES, CURVE_EVAL_BYTES, share))
    entry.train_config = dataclasses.replace(cfg, warmup=warmup, eval_every=eval_every, eval_bytes=eval_bytes,
                                             log_every=min(cfg.log_every, eval_every), **updates)


def probe_step_time(entry: Entry, data, tokens=None) -> float:
    """Seconds per optimizer step of `entry`, measured on real batches (one untimed step first)."""
    import torch

    from megabyte.data.dataset import BatchSampler
    from megabyte.evaluation import summed_nats
    from megabyte.model import build_model, byte_loss
    from megabyte.training.optim import build_optimizer
    from megabyte.training.runtime import init_runtime

    cfg = entry.train_config
    runtime = init_runtime(cfg.device, cfg.precision)
    torch.manual_seed(cfg.seed)
    model = build_model(entry.model_config).to(runtime.device).train()
    optimizer = build_optimizer(model, cfg, runtime.device)
    if entry.name == "subword":
        sampler = BatchSampler(tokens.train, cfg.seq_len, cfg.batch_size, seed=cfg.seed + 1)
        loss_of = lambda x: summed_nats(model(x), x)
    else:
        sampler = BatchSampler.for_split(data, "train", cfg.seq_len, cfg.batch_size, seed=cfg.seed + 1)
        loss_of = lambda x: byte_loss(model(x), x).nats

    def step() -> None:
        for _ in range(cfg.grad_accum):
            x = sampler.next_batch().to(runtime.device)
            with runtime.autocast():
                loss = loss_of(x)
            (loss / x.numel()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    step()  # the first steps are slower (allocation, kernel selection)
    _sync(runtime.device)
    start = time.perf_counter()
    for _ in range(PROBE_STEPS):
        step()
    _sync(runtime.device)
    return (time.perf_counter() - start) / PROBE_STEPS


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------ measuring
def evaluate_entry(entry: Entry, summary: dict, data, *, tokens=None, eval_bytes: int | None = None,
                   batch_size: int = 8) -> dict[str, dict]:
    """Validation bpb with every method the model supports, on the same validation bytes."""
    import torch

    from megabyte.compare.subword import evaluate_tokens
    from megabyte.evaluation import evaluate
    from megabyte.model import load

    device = torch.device(summary["device"])
    dtype = torch.bfloat16 if summary.get("precision") == "bf16" else None
    model = load(summary["checkpoint"], device=device)
    seq_len = entry.train_config.seq_len
    if entry.name == "subword":
        return {m: evaluate_tokens(model, tokens.val, tokens.val_bytes, seq_len=seq_len, sliding_window=s,
                                   batch_size=batch_size, device=device, autocast_dtype=dtype)
                for m, s in (("basic", False), ("sliding", True))}
    val = data.split("val")
    methods = [("basic", False, False), ("sliding", False, True)]
    if entry.name == "megabyte":
        methods += [("strided", True, False), ("strided+sliding", True, True)]
    results = {}
    for method, strided, sliding in methods:
        result = evaluate(model, val, seq_len=seq_len, batch_size=batch_size, strided=strided,
                          sliding_window=sliding, max_bytes=eval_bytes, item_len=data.item_len, align=data.align,
                          device=device, autocast_dtype=dtype)
        results[method] = result.to_dict()
    return results


def generation_speed(entry: Entry, summary: dict, prompt: bytes, n_bytes: int, *, tokens=None) -> dict:
    """Bytes per second of cached sampling (temperature 1) of `n_bytes` after `prompt`."""
    import torch

    import megabyte
    from megabyte.compare.subword import generate_tokens

    model = megabyte.load(summary["checkpoint"], device=torch.device(summary["device"]))
    if entry.name == "subword":
        run = lambda n: len(generate_tokens(model, tokens.bpe, prompt, n, seed=0)[0])
    else:
        def run(n: int) -> int:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # sliding past max_seq_len is expected for small contexts
                return len(megabyte.generate(model, prompt, n, temperature=1.0, seed=0))
    run(8)  # warm-up
    _sync(next(model.parameters()).device)
    start = time.perf_counter()
    produced = run(n_bytes)
    _sync(next(model.parameters()).device)
    seconds = time.perf_counter() - start
    return {"bytes": produced, "seconds": seconds, "bytes_per_s": produced / seconds if seconds else None,
            "prompt_bytes": len(prompt)}


def read_curve(run_dir: str | Path, flops_per_step: int) -> list[dict]:
    """Validation points of a run's metrics.jsonl, with the training FLOPs spent to reach each."""
    from megabyte.training.metrics import read_metrics

    return [{"step": r["step"], "bytes": r["bytes"], "flops": r["step"] * flops_per_step,
             "elapsed": r.get("elapsed"), "val_bpb": r["val_bpb"]}
            for r in read_metrics(Path(run_dir) / "metrics.jsonl") if r.get("val_bpb") is not None]


def _load() -> float | None:
    """The 1-minute load average: how busy the machine was (other jobs slow wall-clock budgets)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "load_average": _load()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ------------------------------------------------------------------------------------ the command
def compare(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    models: str | list[str] | None = None,
    budget: str | float | None = None,
    flops: str | float | None = None,
    preset: str = "small",
    vocab_size: int = 4096,
    eval_bytes: int | None = None,
    gen_bytes: int = 256,
    device: str = "auto",
    precision: str | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    command: str | None = None,
    say=print,
) -> dict[str, Any]:
    """Train, score and time every model; write OUT/compare.json, compare.md, compare.png and the
    runs under OUT/runs/NAME/. Returns what compare.json holds.

    `batch_size` replaces the preset's sequences per update for every model; `threads` sets
    PyTorch's CPU threads for the whole comparison (restored afterwards)."""
    import torch

    if threads is not None and threads < 1:
        raise MegabyteError(f"--threads must be at least 1, got {threads}")
    if batch_size is not None and batch_size < 1:
        raise MegabyteError(f"--batch-size must be at least 1, got {batch_size}")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _compare(data_dir, out_dir, models=models, budget=budget, flops=flops, preset=preset,
                        vocab_size=vocab_size, eval_bytes=eval_bytes, gen_bytes=gen_bytes, device=device,
                        precision=precision, seed=seed, batch_size=batch_size, progress=progress,
                        command=command, say=say)
    finally:
        torch.set_num_threads(before)


def _compare(data_dir, out_dir, *, models, budget, flops, preset, vocab_size, eval_bytes, gen_bytes, device,
             precision, seed, batch_size, progress, command, say) -> dict[str, Any]:
    from megabyte.compare.report import write_reports
    from megabyte.data.dataset import load_dataset
    from megabyte.training.loop import train
    from megabyte.training.presets import get_preset

    data = load_dataset(data_dir)
    names, skipped = parse_models(models, data.modality)
    limits = parse_budget(budget, flops)
    preset_obj = get_preset(preset)
    if eval_bytes is not None and eval_bytes < 1:
        raise MegabyteError(f"--eval-bytes must be at least 1, got {eval_bytes}")
    if gen_bytes < 1:
        raise MegabyteError(f"--gen-bytes must be at least 1, got {gen_bytes}")
    val = data.split("val")
    if len(val) == 0:
        raise MegabyteError(f"{data_dir} has an empty validation split: prepare it with --val-fraction > 0")
    if len(data.split("train")) == 0:
        raise MegabyteError(f"{data_dir} has an empty train split")
    out_dir = Path(out_dir)
    runs = out_dir / "runs"
    if runs.exists() and any(runs.iterdir()):
        raise MegabyteError(f"{out_dir} already holds a comparison ({runs} is not empty): choose another --out")
    try:
        runs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MegabyteError(f"cannot create {runs}: {exc}") from None

    tokens = None
    setup: dict[str, Any] = {}
    if "subword" in names:
        from megabyte.compare.subword import build_token_data

        start = time.perf_counter()
        scored = bytes(val[:eval_bytes] if eval_bytes else val)
        tokens = build_token_data(bytes(data.split("train")), scored, vocab_size)
        setup["bpe_seconds"] = time.perf_counter() - start
        say(f"subword: BPE of {tokens.bpe.vocab_size} tokens from {len(tokens.train):,} train tokens "
            f"({tokens.bytes_per_token:.2f} bytes/token) in {setup['bpe_seconds']:.1f} s (not counted in the budget)")

    entries = plan_entries(names, data, preset_obj, tokens=tokens, seed=seed, device=device, precision=precision,
                           batch_size=batch_size)
    for entry in entries:
        fit_budget(entry, limits, lambda e: probe_step_time(e, data, tokens))
        shown = f", {entry.step_seconds * 1e3:.0f} ms/step measured" if entry.step_seconds else ""
        say(f"{entry.name}: {human_flops(entry.flops_per_step)} per step ({stage_summary(entry.flops)}){shown}")

    results = []
    for entry in entries:
        run_dir = runs / entry.name
        say(f"== {LABELS[entry.name]}: training ({_describe_budget(limits)}) into {run_dir}")
        if entry.name == "subword":
            from megabyte.compare.subword import SubwordTrainer

            summary = SubwordTrainer(entry.train_config, entry.model_config, tokens, run_dir,
                                     progress=progress).fit()
        else:
            summary = train(entry.train_config, entry.model_config, data.directory, run_dir, preset=preset,
                            progress=progress)
        summary["load_average"] = _load()
        say(f"{entry.name}: scoring the validation split")
        scores = evaluate_entry(entry, summary, data, tokens=tokens, eval_bytes=eval_bytes)
        prompt = bytes(val[: min(64, max(1, preset_obj.models["transformer"]["max_seq_len"] // 4))])  # the same for all
        speed = generation_speed(entry, summary, prompt, gen_bytes, tokens=tokens)
        results.append(_result(entry, summary, scores, speed, tokens))
        say(f"{entry.name}: {scores['basic']['bpb']:.4f} bpb (basic), {speed['bytes_per_s']:.0f} bytes/s generating")

    report = {
        "format": "megabyte-compare", "version": 1,
        "command": command,
        "data": {"dir": str(data.directory.resolve()), "modality": data.modality, "bytes": data.meta["bytes"],
                 "item_len": data.item_len, "scored_bytes": results[0]["eval"]["basic"]["bytes"] if results else 0},
        "budget": {**limits, "per": "model",
                   "matched": "wall-clock seconds" if limits["seconds"] else "training FLOPs"},
        "preset": preset, "seed": seed, "batch_size": batch_size, "machine": machine(), "setup": setup,
        "sizing": SIZING,
        "models": results, "skipped": skipped,
    }
    write_reports(report, out_dir)
    say(f"wrote {out_dir / 'compare.md'}, {out_dir / 'compare.json'} and {out_dir / 'compare.png'}")
    return report


SIZING = ("One preset gives every model kind about the same parameter count; every model reads the same "
          "bytes per sequence and per update (batch x context; the subword model's context in tokens covers "
          "about as many bytes), and the preset's learning rate and schedule (not tuned per model). The budget, "
          "per model, then decides how many updates each gets. Warm-up is "
          "at most a tenth and the evaluation cadence an eighth of the steps expected to fit (from the FLOP "
          "count, or from a step time measured just before training), and each curve point validates on "
          "fewer bytes for a model that trains on fewer, so that validation takes about a tenth of every "
          "model's budget (a wall-clock budget includes it). Training FLOPs are counted "
          "analytically: 6 x weights x positions for every matmul, plus 12 x width x (query, key) pairs per "
          "attention layer; MEGABYTE's global stage counts once per patch, its local stage once per byte.")


def _describe_budget(limits: dict) -> str:
    if limits["seconds"] is not None:
        return f"{limits['seconds']:g} s of wall-clock"
    return human_flops(limits["flops"])


def _result(entry: Entry, summary: dict, scores: dict, speed: dict, tokens) -> dict[str, Any]:
    cfg = entry.train_config
    out = {
        "name": entry.name, "label": LABELS[entry.name], "model_kind": entry.model_config.model_type,
        "parameters": summary["parameters"], "config": entry.model_config.to_dict(),
        "train": {
            "steps": summary["step"], "bytes": summary["bytes"], "seconds": summary["elapsed"],
            "bytes_per_s": summary["bytes_per_s"], "flops_per_step": entry.flops_per_step,
            "flops": summary["step"] * entry.flops_per_step,
            "flops_per_byte": summary["step"] * entry.flops_per_step / max(1, summary["bytes"]),
            "flop_split": stage_summary(entry.flops), "flop_count": entry.flops.to_dict(),
            "seq_len": cfg.seq_len, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
            "lr": cfg.lr, "warmup": cfg.warmup, "eval_every": cfg.eval_every, "curve_eval_bytes": cfg.eval_bytes,
            "max_steps": cfg.max_steps,
            "max_time": cfg.max_time, "step_seconds_probe": entry.step_seconds,
            "stop_reason": summary["stop_reason"], "device": summary["device"], "precision": summary["precision"],
            "final_val_bpb": summary["val_bpb"], "load_average_after": summary.get("load_average"),
        },
        "eval": scores, "generation": speed, "curve": read_curve(summary["run_dir"], entry.flops_per_step),
        "run_dir": summary["run_dir"], "notes": entry.notes,
    }
    if tokens is not None and entry.name == "subword":
        out["train"]["tokens"] = summary.get("tokens")
        out["tokenizer"] = {"vocab_size": tokens.bpe.vocab_size, "bytes_per_token": tokens.bytes_per_token,
                            "library": "tokenizers (byte-level BPE)", "trained_on": "train split only"}
    return out


def dump(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=False, default=str) + "\n"
