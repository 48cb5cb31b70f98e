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
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megabyte.compare.flops import human_flops, parse_flops, stage_summary
from megabyte.errors import MegabyteError
from megabyte.model.flops import FlopCount, training_flops
from megabyte.model.registry import ModelKind, get_kind, kind_names
from megabyte.training.presets import fit_to_data
from megabyte.training.runtime import load_average, machine

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
GRID = (0.25, 0.5, 1.0, 2.0)
"""The default learning-rate grid, as multiples of the preset's peak learning rate."""
SWEEP_SLICE = 0.2
"""Each learning-rate trial trains the first this share of the model's run."""
SWEEP_TOLERANCE = 0.02
"""bpb: the lowest rate whose trial scores within this of the best is chosen."""
SWEEP_EVAL_BYTES = 1 << 15
"""Held-back bytes a trial is scored on, at least (all of them when fewer are held back)."""
SWEEP_FEW_STEPS = 20
"""Trials shorter than this many steps are said to be a weak judge of the rate (a note)."""


@dataclass
class CompareConfig:
    """Everything a comparison is asked to do, checked before any work (`megabyte compare`'s flags)."""

    data_dir: str | Path
    out_dir: str | Path
    models: str | list[str] | None = None
    """Comma-separated kinds (default: every registered kind that fits the data)."""
    budget: str | float | None = None
    """Wall-clock per model ("90s", "10m", seconds); or `flops`, not both (default 10 minutes)."""
    flops: str | float | None = None
    """Training FLOPs per model ("1e15", "300T")."""
    steps: int | None = None
    """Optimizer steps per model (the same updates for every model, whatever they cost)."""
    preset: str = "small"
    vocab_size: int = 4096
    eval_bytes: int | None = None
    """Score only the first N validation bytes (default: the whole split)."""
    gen_bytes: int = 256
    device: str = "auto"
    precision: str | None = None
    seed: int = 0
    batch_size: int | None = None
    """Sequences per update for every model (default: the preset's)."""
    threads: int | None = None
    """PyTorch CPU threads for the whole comparison (restored afterwards)."""
    progress: bool = True
    command: str | None = None
    """The command line, recorded in the report."""
    lr_sweep: bool = True
    """Tune each model's peak learning rate (a sweep on held-back training bytes) before training it."""
    lr_grid: tuple[float, ...] | None = None
    """The learning rates the sweep tries (default: `GRID` times the preset's)."""
    entropy_model: str | None = None
    """The entropy model of `megabyte-entropy` (a run or model directory, `megabyte train --preset
    entropy`); its threshold is calibrated on the training split to the preset's patch target."""

    def __post_init__(self) -> None:
        if self.lr_grid is not None:
            self.lr_grid = tuple(float(v) for v in self.lr_grid)
            if not self.lr_grid or not all(0 < v < 1e3 for v in self.lr_grid):
                raise MegabyteError(f"--lr-grid needs learning rates above 0, got {self.lr_grid}")
        for name, low in (("threads", 1), ("batch_size", 1), ("eval_bytes", 1), ("gen_bytes", 1),
                          ("vocab_size", 256)):
            value = getattr(self, name)
            if value is not None and value < low:
                why = " (the byte symbols)" if name == "vocab_size" else ""
                raise MegabyteError(f"--{name.replace('_', '-')} must be at least {low}{why}, got {value}")
        self.limits = parse_budget(self.budget, self.flops, self.steps)
        self.out_dir = Path(self.out_dir)


@dataclass
class Entry:
    """One model of the comparison: how it is built and trained, and what that costs."""

    kind: ModelKind
    model_config: Any
    train_config: Any
    objective: Any
    """What it trains on (`megabyte.training.objective`): the dataset's bytes, or BPE tokens."""
    flops: FlopCount
    """Training FLOPs of one sequence."""
    batch: int
    """Sequences per optimizer step (batch_size x grad_accum)."""
    bytes_per_step: float
    """Training bytes per optimizer step (expected, for the subword model)."""
    notes: list[str] = field(default_factory=list)
    step_seconds: float | None = None
    """Measured seconds per optimizer step before training (time budgets only)."""
    expected_steps: int | None = None
    """The steps expected to fit in the budget (`fit_budget`)."""
    patches: dict | None = None
    """Dynamic patching: how the training windows are cut (`megabyte.model.dynamic.patch_stats`)."""

    @property
    def name(self) -> str:
        return self.kind.name

    @property
    def flops_per_step(self) -> int:
        return self.flops.total * self.batch


# ------------------------------------------------------------------------------------ arguments
def parse_models(text: str | list[str] | None, modality: str,
                 also: tuple[str, ...] = ()) -> tuple[list[str], list[dict[str, str]]]:
    """The models to run and the ones skipped (with why). A token kind (the subword baseline) on
    non-text data is an error when asked for by name, and skipped with a note when it comes from
    the default list (every registered kind `by_default`, and the kinds in `also`)."""
    known = kind_names()
    explicit = text is not None
    names = ([k for k in known if get_kind(k).by_default or k in also] if text is None
             else [m.strip() for m in (text.split(",") if isinstance(text, str) else text)])
    names = [m for m in names if m]
    unknown = [m for m in names if m not in known]
    if unknown:
        raise MegabyteError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    if not names:
        raise MegabyteError(f"no models to compare; choose from {', '.join(known)}")
    if len(set(names)) != len(names):
        raise MegabyteError(f"a model is listed twice in {', '.join(names)}")
    skipped = []
    if modality != "text":
        for name in [m for m in names if get_kind(m).units == "tokens"]:
            if explicit:
                raise MegabyteError(f"the {get_kind(name).label} baseline needs text (a BPE vocabulary), but this "
                                    f"dataset holds {modality}: drop {name} from --models")
            names = [m for m in names if m != name]
            skipped.append({"model": name, "reason": f"a BPE vocabulary is for text; this dataset is {modality}"})
    for name in [m for m in names if get_kind(m).modalities and modality not in get_kind(m).modalities]:
        if not explicit:
            names = [m for m in names if m != name]
            skipped.append({"model": name, "reason": f"made for {', '.join(get_kind(name).modalities)}; this "
                                                     f"dataset is {modality} (name it in --models to run it anyway)"})
    return list(names), skipped


def parse_budget(budget: str | float | None, flops: str | float | None,
                 steps: int | None = None) -> dict[str, float | None]:
    """{"seconds": S, "flops": None, "steps": None}, or the FLOPs, or the steps given (one of the
    three, never two); the default is 10 minutes."""
    from megabyte.training.config import parse_duration

    if sum(v is not None for v in (budget, flops, steps)) > 1:
        raise MegabyteError("give one budget: a time (--budget), FLOPs (--flops) or steps (--steps), not both")
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise MegabyteError(f"--steps must be a whole number of at least 1, got {steps!r}")
        return {"seconds": None, "flops": None, "steps": steps}
    if flops is not None:
        try:
            return {"seconds": None, "flops": parse_flops(flops), "steps": None}
        except ValueError as exc:
            raise MegabyteError(f"--flops: {exc}") from None
    seconds = DEFAULT_BUDGET if budget is None else parse_duration(budget, "--budget")
    if not seconds > 0:
        raise MegabyteError(f"--budget must be more than 0 seconds, got {budget!r}")
    return {"seconds": seconds, "flops": None, "steps": None}


# ------------------------------------------------------------------------------------ planning
def plan_entries(names: list[str], data, preset, *, tokens=None, seed: int = 0, device: str = "auto",
                 precision: str | None = None, batch_size: int | None = None,
                 entropy_model: str | None = None) -> list[Entry]:
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
        kind, notes = get_kind(name), []
        model_config, objective = _model_and_objective(kind, preset, data, tokens, notes, entropy_model)
        seq_len = data.item_len if kind.units == "bytes" and data.item_len else model_config.max_seq_len
        cfg = TrainConfig(**{**train_fields, "seq_len": seq_len})
        if cfg.dropout is not None:
            model_config = dataclasses.replace(model_config, dropout=cfg.dropout)
        batch = cfg.batch_size * cfg.grad_accum
        flops, patches = entry_flops(model_config, seq_len, data, batch, notes)
        entries.append(Entry(kind, model_config, cfg, objective, flops, batch,
                             batch * seq_len * objective.bytes_per_position, notes, patches=patches))
    return entries


PATCH_SAMPLE_ROWS = 256
"""Training windows a dynamically patched model's FLOPs and patch lengths are measured on."""


def entry_flops(model_config, seq_len: int, data, batch: int, notes: list[str]) -> tuple[FlopCount, dict | None]:
    """FLOPs of one training sequence, and for dynamic patches what they were measured on: the
    mean over training steps of `batch` windows, evenly spaced over the train split (entropy
    patches: cut by the entropy model, whose forward pass is counted as a frozen part)."""
    if not getattr(model_config, "dynamic", False):
        return training_flops(model_config, seq_len), None
    import torch

    from megabyte.data.dataset import even_windows
    from megabyte.model.dynamic import patch_stats
    from megabyte.model.flops import mean_flops

    windows = torch.from_numpy(even_windows(data.split("train"), seq_len, PATCH_SAMPLE_ROWS))
    if not len(windows):
        raise MegabyteError(f"the train split is shorter than one {seq_len}-byte window")
    source, starts = model_config, None
    if model_config.patching == "entropy":
        from megabyte.model import build_model

        source = build_model(model_config)
        source.load_frozen()
        starts = source.patch_starts(windows.long())
    stats = patch_stats(source, windows, starts)
    notes.append(f"{stats['rule']} patches on {len(windows)} training windows: {stats['mean_bytes']:.2f} bytes per "
                 f"patch, {stats['patches_per_row_mean']:.0f} (at most {stats['patches_per_row_max']}) per "
                 f"{seq_len}-byte window, {100 * stats['share_past_cap']:.2f}% of bytes past the "
                 f"{stats['cap']}-patch cap; FLOPs per step are the mean measured on them")
    flops = mean_flops(model_config, windows, batch, starts=starts)
    if flops.frozen:
        notes.append(f"the entropy model's forward pass is {100 * flops.frozen_flops / flops.total:.1f}% of the FLOPs "
                     "per step (counted in the budget: training reads every byte through it)")
    return flops, stats


def _model_and_objective(kind: ModelKind, preset, data, tokens, notes: list[str], entropy_model: str | None = None):
    """The kind's model config in `preset`, met to the data, and what it trains on."""
    from megabyte.training.objective import ByteObjective

    if kind.units == "tokens":
        from megabyte.compare.subword import TokenObjective

        return _token_config(kind, preset, tokens, notes), TokenObjective(tokens, data.meta, str(data.directory))
    fields = preset.model_fields(kind.name)
    if fields.get("patching") == "entropy":
        if entropy_model is None:
            raise MegabyteError(f"{kind.name} needs its entropy model: --entropy-model RUN "
                                "(train one with: megabyte train --preset entropy --data DIR --out RUN)")
        fields["entropy_model"] = entropy_model
    model_config, fitted = fit_to_data(kind.config_class(**fields), data)
    notes += fitted
    return model_config, ByteObjective(data)


def _token_config(kind: ModelKind, preset, tokens, notes: list[str]):
    """The kind's preset model over BPE tokens, with a context of about as many bytes as the
    byte models' (so every model reads the same text per sequence and per update)."""
    fields = preset.model_fields(kind.name)
    byte_ctx = fields["max_seq_len"]
    ctx = max(8, int(round(byte_ctx / tokens.bytes_per_token / 8)) * 8)
    ctx = min(ctx, max(8, len(tokens.train) // 2))
    notes.append(f"BPE vocabulary of {tokens.bpe.vocab_size} tokens trained on the train split "
                 f"({tokens.bytes_per_token:.2f} bytes/token); context {ctx} tokens ~ {byte_ctx} bytes")
    return kind.config_class(**{**fields, "max_seq_len": ctx, "vocab_size": tokens.bpe.vocab_size})


def fit_budget(entry: Entry, budget: dict[str, float | None], probe) -> None:
    """Set the budget, warm-up and evaluation cadence of `entry.train_config` so that the steps
    that fit (counted in FLOPs, or estimated from a measured step time) make a whole schedule."""
    cfg = entry.train_config
    if budget.get("steps") is not None:
        updates = {"max_steps": budget["steps"], "max_time": None}
        expected = budget["steps"]
    elif budget["flops"] is not None:
        steps = max(1, int(budget["flops"] // entry.flops_per_step))
        if steps * entry.flops_per_step > budget["flops"]:
            entry.notes.append("one step exceeds the FLOP budget")
        updates = {"max_steps": steps, "max_time": None}
        expected = steps
    else:
        entry.step_seconds = probe(entry)
        expected = max(1, int(budget["seconds"] / max(entry.step_seconds, 1e-9)))
        updates = {"max_steps": None, "max_time": budget["seconds"]}
    entry.expected_steps = expected
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


def probe_step_time(entry: Entry) -> float:
    """Seconds per optimizer step of `entry`: the training loop's own step (`Trainer.train_step`,
    so clipping, the schedule and the entropy model are in it), on real batches, in a scratch
    directory, after two untimed steps (allocation, kernel selection)."""
    import tempfile

    from megabyte.training.loop import Trainer
    from megabyte.training.runtime import float32_products, init_runtime

    cfg = entry.train_config
    runtime = init_runtime(cfg.device, cfg.precision)
    with tempfile.TemporaryDirectory(prefix="megabyte-probe-") as scratch, \
            float32_products(runtime.device, tf32=cfg.tf32):  # the products the run's steps will use
        trainer = Trainer(cfg, entry.model_config, entry.objective, Path(scratch), runtime, progress=False, hints=False)
        trainer.time_steps(2)
        return trainer.time_steps(PROBE_STEPS)  # each step timed between synchronised points


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
    if entry.kind.units == "tokens":
        return {m: evaluate_tokens(model, tokens.val, tokens.val_bytes, seq_len=seq_len, sliding_window=s,
                                   batch_size=batch_size, device=device, autocast_dtype=dtype)
                for m, s in (("basic", False), ("sliding", True))}
    val = data.split("val")
    methods = [("basic", False, False), ("sliding", False, True)]
    if entry.kind.strided:
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
    from megabyte.training.runtime import synchronize

    model = megabyte.load(summary["checkpoint"], device=torch.device(summary["device"]))
    if entry.kind.units == "tokens":
        run = lambda n: len(generate_tokens(model, tokens.bpe, prompt, n, seed=0)[0])
    else:
        def run(n: int) -> int:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # sliding past max_seq_len is expected for small contexts
                return len(megabyte.generate(model, prompt, n, temperature=1.0, seed=0))
    run(8)  # warm-up
    synchronize(next(model.parameters()).device)
    start = time.perf_counter()
    produced = run(n_bytes)
    synchronize(next(model.parameters()).device)
    seconds = time.perf_counter() - start
    return {"bytes": produced, "seconds": seconds, "bytes_per_s": produced / seconds if seconds else None,
            "prompt_bytes": len(prompt)}


def read_curve(run_dir: str | Path, flops_per_step: int) -> list[dict]:
    """Validation points of a run's metrics.jsonl, with the training FLOPs spent to reach each."""
    from megabyte.training.metrics import read_metrics

    return [{"step": r["step"], "bytes": r["bytes"], "flops": r["step"] * flops_per_step,
             "elapsed": r.get("elapsed"), "val_bpb": r["val_bpb"]}
            for r in read_metrics(Path(run_dir) / "metrics.jsonl") if r.get("val_bpb") is not None]


# ------------------------------------------------------------------------------------ the command
def compare(data_dir: str | Path, out_dir: str | Path, *, say=print, **options: Any) -> dict[str, Any]:
    """Train, score and time every model; write OUT/compare.json, compare.md, compare.png and the
    runs under OUT/runs/NAME/. Returns what compare.json holds. `options` are the fields of
    `CompareConfig` (models, budget or flops, preset, vocab_size, eval_bytes, gen_bytes, device,
    precision, seed, batch_size, threads, progress, command)."""
    import torch

    config = CompareConfig(data_dir, out_dir, **options)
    before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return run_comparison(config, say)
    finally:
        torch.set_num_threads(before)


def run_comparison(config: CompareConfig, say=print) -> dict[str, Any]:
    """The comparison `config` asks for: plan, train, score, report."""
    from megabyte.compare.report import write_reports
    from megabyte.training.presets import get_preset

    data = open_data(config.data_dir)
    names, skipped = parse_models(config.models, data.modality,
                                  also=("megabyte-entropy",) if config.entropy_model else ())
    preset = get_preset(config.preset)
    make_runs_dir(config.out_dir)
    setup: dict[str, Any] = {}
    tokens = token_data(data, config, setup, say) if any(get_kind(n).units == "tokens" for n in names) else None
    entries = plan_entries(names, data, preset, tokens=tokens, seed=config.seed, device=config.device,
                           precision=config.precision, batch_size=config.batch_size,
                           entropy_model=config.entropy_model)
    for entry in entries:
        fit_budget(entry, config.limits, probe_step_time)
        shown = f", {entry.step_seconds * 1e3:.0f} ms/step measured" if entry.step_seconds else ""
        say(f"{entry.name}: {human_flops(entry.flops_per_step)} per step ({stage_summary(entry.flops)}){shown}")
    # The same prompt for every model, within the smallest context.
    prompt = bytes(data.split("val")[: min(64, max(1, preset.ctx // 4))])
    results = [run_entry(entry, data, config, tokens, prompt, say) for entry in entries]
    report = {
        "format": "megabyte-compare", "version": 2,
        "command": config.command,
        "data": {"dir": str(data.directory.resolve()), "modality": data.modality, "bytes": data.meta["bytes"],
                 "item_len": data.item_len, "scored_bytes": results[0]["eval"]["basic"]["bytes"] if results else 0},
        "budget": {**config.limits, "per": "model",
                   "matched": _matched(config.limits)},
        "preset": config.preset, "seed": config.seed, "batch_size": config.batch_size, "machine": machine(),
        "setup": setup, "sizing": SIZING.format(lr=LR_TUNED if config.lr_sweep else LR_SHARED), "models": results,
        "skipped": skipped, "lr_sweep": config.lr_sweep,
    }
    write_reports(report, config.out_dir)
    say(f"wrote {config.out_dir / 'compare.md'}, {config.out_dir / 'compare.json'} and "
        f"{config.out_dir / 'compare.png'}")
    return report


def open_data(data_dir):
    """The prepared dataset, with both splits non-empty."""
    from megabyte.data.dataset import load_dataset

    data = load_dataset(data_dir)
    if len(data.split("val")) == 0:
        raise MegabyteError(f"{data_dir} has an empty validation split: prepare it with --val-fraction > 0")
    if len(data.split("train")) == 0:
        raise MegabyteError(f"{data_dir} has an empty train split")
    return data


def make_runs_dir(out_dir: Path) -> Path:
    """OUT/runs, which must not hold an earlier comparison (nor OUT/sweep its sweeps)."""
    runs = out_dir / "runs"
    for earlier in (runs, out_dir / "sweep"):
        if earlier.exists() and any(earlier.iterdir()):
            raise MegabyteError(f"{out_dir} already holds a comparison ({earlier} is not empty): "
                                "choose another --out")
    try:
        runs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MegabyteError(f"cannot create {runs}: {exc}") from None
    return runs


def token_data(data, config: CompareConfig, setup: dict[str, Any], say):
    """The BPE vocabulary of the train split and both splits as tokens (outside the budget)."""
    from megabyte.compare.subword import build_token_data

    start = time.perf_counter()
    val = data.split("val")
    scored = bytes(val[: config.eval_bytes] if config.eval_bytes else val)
    tokens = build_token_data(bytes(data.split("train")), scored, config.vocab_size)
    setup["bpe_seconds"] = time.perf_counter() - start
    say(f"subword: BPE of {tokens.bpe.vocab_size} tokens from {len(tokens.train):,} train tokens "
        f"({tokens.bytes_per_token:.2f} bytes/token) in {setup['bpe_seconds']:.1f} s (not counted in the budget)")
    return tokens


def run_entry(entry: Entry, data, config: CompareConfig, tokens, prompt: bytes, say) -> dict[str, Any]:
    """Tune its learning rate, train one model on its budget, score it on the validation bytes,
    time its generation."""
    from megabyte.training.loop import train

    sweep = sweep_lr(entry, config, say) if config.lr_sweep else None
    run_dir = config.out_dir / "runs" / entry.name
    say(f"== {entry.kind.label}: training ({_describe_budget(config.limits)}) into {run_dir}")
    summary = train(entry.train_config, entry.model_config, entry.objective, run_dir, preset=config.preset,
                    progress=config.progress)
    summary["load_average"] = load_average()
    say(f"{entry.name}: scoring the validation split")
    scores = evaluate_entry(entry, summary, data, tokens=tokens, eval_bytes=config.eval_bytes)
    speed = generation_speed(entry, summary, prompt, config.gen_bytes, tokens=tokens)
    say(f"{entry.name}: {scores['basic']['bpb']:.4f} bpb (basic), {speed['bytes_per_s']:.0f} bytes/s generating")
    return {**_result(entry, summary, scores, speed, tokens), "lr_sweep": sweep}


def sweep_lr(entry: Entry, config: CompareConfig, say) -> dict[str, Any]:
    """Train the first `SWEEP_SLICE` of the model's run at every learning rate of the grid, on
    the training split less its held-back end, and score each there (never on the validation
    split); set the choice (`choose_lr`) as the model's peak learning rate (min_lr keeps its
    ratio). Returns the grid, each trial's score, the choice and what the sweep cost (reported
    beside the budget)."""
    from megabyte.training.loop import train
    from megabyte.training.metrics import read_metrics

    cfg, held = entry.train_config, entry.objective.held_out()
    grid = config.lr_grid or tuple(cfg.lr * m for m in GRID)
    base = trial_config(entry)
    say(f"{entry.name}: learning-rate sweep over {', '.join(f'{lr:.3g}' for lr in grid)} (the first "
        f"{base.max_steps} of about {base.decay_steps} steps each, scored on {held.scored_on})")
    if base.max_steps < SWEEP_FEW_STEPS:
        entry.notes.append(f"the learning-rate trials had {base.max_steps} steps each (a fifth of a short run): "
                           "too few to judge a rate by, so read the choice as noise; a larger budget fixes it")
    trials, start = [], time.perf_counter()
    for lr in grid:
        run_dir = config.out_dir / "sweep" / entry.name / f"lr-{lr:.3g}"
        try:
            summary = train(dataclasses.replace(base, lr=lr, min_lr=lr * cfg.min_lr / cfg.lr), entry.model_config,
                            held, run_dir, preset=config.preset, progress=False, hints=False)
            spikes = sum(len(r.get("spikes", [])) for r in read_metrics(run_dir / "metrics.jsonl"))
            trials.append({"lr": lr, "score": summary["val_bpb"], "steps": summary["step"], "spikes": spikes,
                           "seconds": summary["elapsed"]})
        except MegabyteError as exc:
            if "non-finite" not in str(exc):
                raise
            trials.append({"lr": lr, "score": None, "steps": None, "diverged": True})
        _drop_checkpoints(run_dir)
        t = trials[-1]
        say(f"{entry.name}: lr {lr:.3g}: " + (f"{t['score']:.4f} bpb on the held-back bytes, {t['spikes']} loss spikes"
                                              if t["score"] is not None else "diverged"))
    chosen = choose_lr(trials)
    if chosen is None:
        entry.notes.append(f"every learning rate of the sweep diverged: trained at the preset's {cfg.lr:g}")
        chosen = cfg.lr
    entry.train_config = dataclasses.replace(cfg, lr=chosen, min_lr=chosen * cfg.min_lr / cfg.lr)
    steps = sum(t["steps"] or 0 for t in trials)
    return {"grid": list(grid), "trials": trials, "chosen": chosen, "preset_lr": cfg.lr, "slice": SWEEP_SLICE,
            "tolerance": SWEEP_TOLERANCE, "scored_on": held.scored_on, "flops": steps * entry.flops_per_step,
            "seconds": time.perf_counter() - start, "charged": False}


def trial_config(entry: Entry):
    """A learning-rate trial: the first `SWEEP_SLICE` of the model's run, in steps, with the run's
    own warm-up and decay horizon (so every trial sees the learning rates the run would), scored
    once at its end on about a tenth of its cost in held-back bytes (at least SWEEP_EVAL_BYTES)."""
    cfg, full = entry.train_config, entry.expected_steps
    steps = max(1, round(full * SWEEP_SLICE))
    share = int(3 * EVAL_SHARE * steps * entry.bytes_per_step)
    return dataclasses.replace(cfg, max_steps=steps, max_time=None, decay_steps=full, eval_every=0,
                               eval_bytes=max(SWEEP_EVAL_BYTES, share), save_every=0)


def choose_lr(trials: list[dict[str, Any]], tolerance: float | None = None) -> float | None:
    """The learning rate to train at: among the trials without a loss spike (all of them if every
    one spiked), the lowest rate whose score is within `tolerance` bpb of the best (a short trial
    favours large rates, whose trouble comes later); None if every trial diverged."""
    tolerance = SWEEP_TOLERANCE if tolerance is None else tolerance
    scored = [t for t in trials if t.get("score") is not None and math.isfinite(t["score"])]
    calm = [t for t in scored if not t.get("spikes")] or scored
    if not calm:
        return None
    best = min(t["score"] for t in calm)
    return min(t["lr"] for t in calm if t["score"] <= best + tolerance)


def _drop_checkpoints(run_dir: Path) -> None:
    """A finished trial keeps its metrics and loss curve, not its weights."""
    import shutil

    from megabyte.training.checkpoint import CHECKPOINTS, LATEST

    shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)
    (run_dir / LATEST).unlink(missing_ok=True)


SIZING = ("One preset gives every model kind about the same parameter count; every model reads the same "
          "bytes per sequence and per update (batch x context; the subword model's context in tokens covers "
          "about as many bytes), and the preset's schedule; {lr}. The budget, "
          "per model, then decides how many updates each gets. Warm-up is "
          "at most a tenth and the evaluation cadence an eighth of the steps expected to fit (from the FLOP "
          "count, or from a step time measured just before training), and each curve point validates on "
          "fewer bytes for a model that trains on fewer, so that validation takes about a tenth of every "
          "model's budget (a wall-clock budget includes it). Training FLOPs are counted "
          "analytically: 6 x weights x positions for every matmul, plus 12 x width x (query, key) pairs per "
          "attention layer; MEGABYTE's global stage counts once per patch, its local stage once per byte; with "
          "data-dependent patches, what the model computes on 256 training windows, per step of the batch.")


LR_TUNED = ("each model's peak learning rate chosen by a sweep: every value of the grid trains the first "
            f"{SWEEP_SLICE:.0%} of that model's run (its warm-up and decay horizon) on the training split less its "
            "held-back end and is scored on that end (never on the validation split); among the trials without "
            f"a loss spike, the lowest rate within {SWEEP_TOLERANCE} bpb of the best is taken. The sweep's cost is "
            "stated beside the budget, not charged to it")
LR_SHARED = "the preset's peak learning rate for every model (--lr-sweep off: not tuned per model)"


def _describe_budget(limits: dict) -> str:
    if limits["seconds"] is not None:
        return f"{limits['seconds']:g} s of wall-clock"
    if limits.get("steps") is not None:
        return f"{limits['steps']} steps"
    return human_flops(limits["flops"])


def _matched(limits: dict) -> str:
    if limits["seconds"] is not None:
        return "wall-clock seconds"
    return "optimizer steps" if limits.get("steps") is not None else "training FLOPs"


def _result(entry: Entry, summary: dict, scores: dict, speed: dict, tokens) -> dict[str, Any]:
    cfg, kind = entry.train_config, entry.kind
    out = {
        "name": entry.name, "label": kind.label, "model_kind": entry.model_config.model_type,
        "shape": kind.shape(entry.model_config.to_dict()), "colour": kind.colour, "units": kind.units,
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
    if entry.patches is not None:
        out["patches"] = entry.patches
    if kind.units == "tokens":
        out["train"]["tokens"] = summary["step"] * entry.batch * cfg.seq_len
        out["tokenizer"] = {"vocab_size": tokens.bpe.vocab_size, "bytes_per_token": tokens.bytes_per_token,
                            "library": "tokenizers (byte-level BPE)", "trained_on": "train split only"}
    return out


def dump(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=False, default=str) + "\n"
