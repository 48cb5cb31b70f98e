"""The comparison's outputs: compare.json (everything), compare.md (the tables and what they say),
compare.png (validation bpb against training compute, and against wall-clock time).

`write_reports(report, out_dir)` takes the dict that `megabyte.compare.compare` builds; the
markdown and the plot are drawn from it alone, so they can be redrawn from a saved compare.json.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from megabyte.compare.flops import human_flops
from megabyte.errors import MegabyteError

METHODS = ("basic", "strided", "sliding", "strided+sliding")


def write_reports(report: dict[str, Any], out_dir: str | Path) -> None:
    from megabyte.atomic import atomic_write_bytes

    out_dir = Path(out_dir)
    report["crossings"] = curve_crossings(report["models"])
    try:
        atomic_write_bytes(out_dir / "compare.json", (json.dumps(report, indent=2, default=str) + "\n").encode())
        atomic_write_bytes(out_dir / "compare.md", markdown(report).encode())
        atomic_write_bytes(out_dir / "compare.png", plot_png(report))
    except OSError as exc:
        raise MegabyteError(f"cannot write the comparison into {out_dir}: {exc}") from None


# ------------------------------------------------------------------------------------ numbers
def _count(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.3g}"


def _bpb(scores: dict, method: str) -> str:
    result = scores.get(method)
    return f"{result['bpb']:.4f}" if result else "-"


def describe_budget(report: dict) -> str:
    budget = report["budget"]
    if budget.get("seconds") is not None:
        return f"{budget['seconds']:g} s of wall-clock training per model"
    if budget.get("steps") is not None:
        return f"{budget['steps']} optimizer steps per model"
    return f"{human_flops(budget['flops'])} of training compute per model"


def describe_machine(report: dict) -> str:
    m = report["machine"]
    devices = sorted({r["train"]["device"] for r in report["models"]})
    precisions = sorted({r["train"]["precision"] for r in report["models"]})
    where = m.get("gpu") if any(d.startswith("cuda") for d in devices) and m.get("gpu") else \
        f"{m['cpu']}, {m['torch_threads']} PyTorch threads"
    text = f"{', '.join(devices)} ({where}); {'/'.join(precisions)}; PyTorch {m['torch']}"
    loads = [m.get("load_average")] + [r["train"].get("load_average_after") for r in report["models"]]
    loads = [x for x in loads if x is not None]
    if loads and m.get("cpu_count"):
        text += (f"; load average {min(loads):.1f} to {max(loads):.1f} on {m['cpu_count']} CPUs during the runs"
                 + (" (shared with other jobs: wall-clock numbers are noisy)" if max(loads) > m["cpu_count"] else ""))
    return text


# ------------------------------------------------------------------------------------ curves
def curve_crossings(models: list[dict]) -> list[dict[str, Any]]:
    """For the first model (the reference: MEGABYTE by default) against each other model: over
    the compute range where both validation curves have points, which is lower at the start and
    end, and where they cross."""
    if not models:
        return []
    ref, out = models[0], []
    for other in models[1:]:
        entry: dict[str, Any] = {"reference": ref["name"], "model": other["name"], "range": None, "crossings": []}
        a, b = _points(ref["curve"]), _points(other["curve"])
        if len(a) >= 2 and len(b) >= 2:
            lo, hi = max(a[0][0], b[0][0]), min(a[-1][0], b[-1][0])
            if lo < hi:
                grid = np.geomspace(lo, hi, 256)
                diff = _interp(a, grid) - _interp(b, grid)  # < 0: the reference is lower
                entry.update(range=[float(lo), float(hi)], reference_lower_at_start=bool(diff[0] < 0),
                             reference_lower_at_end=bool(diff[-1] < 0))
                for i in np.nonzero(np.sign(diff[:-1]) * np.sign(diff[1:]) < 0)[0]:
                    f = diff[i] / (diff[i] - diff[i + 1])
                    x = math.exp(math.log(grid[i]) + f * (math.log(grid[i + 1]) - math.log(grid[i])))
                    entry["crossings"].append({"flops": x, "reference_lower_after": bool(diff[i + 1] < 0)})
        out.append(entry)
    return out


def _points(curve: list[dict]) -> list[tuple[float, float]]:
    pts = sorted((float(p["flops"]), float(p["val_bpb"])) for p in curve
                 if p.get("flops") and p.get("val_bpb") is not None and math.isfinite(p["val_bpb"]))
    return pts


def _interp(points: list[tuple[float, float]], grid: np.ndarray) -> np.ndarray:
    xs, ys = zip(*points)
    return np.interp(np.log(grid), np.log(np.array(xs)), np.array(ys))


def crossing_sentences(report: dict) -> list[str]:
    labels = {m["name"]: m["label"] for m in report["models"]}
    lines = []
    for c in report.get("crossings", []):
        ref, other = labels.get(c["reference"], c["reference"]), labels.get(c["model"], c["model"])
        if not c["range"]:
            lines.append(f"{ref} vs {other}: too few validation points in a shared compute range to compare curves.")
            continue
        lo, hi = (human_flops(x) for x in c["range"])
        where = f"between {lo} and {hi} of training compute"
        first = ref if c["reference_lower_at_start"] else other
        if not c["crossings"]:
            lines.append(f"{ref} vs {other}: {first} is lower throughout {where} (no crossing).")
            continue
        parts = [f"{human_flops(x['flops'])} ({ref if x['reference_lower_after'] else other} lower after)"
                 for x in c["crossings"]]
        lines.append(f"{ref} vs {other}: {first} is lower at first; the curves cross at {', '.join(parts)}, "
                     f"{where}.")
    return lines


def verdict(report: dict) -> list[str]:
    """Where the first model (the reference) wins or loses against each other at the final,
    budget-matched scores."""
    if not report["models"]:
        return []
    ref, *others = report["models"]
    best_ref = min((r["bpb"], method) for method, r in ref["eval"].items())
    lines = []
    for m in others:
        best = min((r["bpb"], method) for method, r in m["eval"].items())
        basic_gap = ref["eval"]["basic"]["bpb"] - m["eval"]["basic"]["bpb"]
        best_gap = best_ref[0] - best[0]
        who = f"{ref['label']} beats {m['label']}" if best_gap < 0 else f"{m['label']} beats {ref['label']}"
        lines.append(f"{who}: best {best_ref[0]:.4f} ({best_ref[1]}) vs {best[0]:.4f} ({best[1]}), "
                     f"{ref['label']} {best_gap:+.4f} bpb; with basic inference for both, {basic_gap:+.4f} bpb.")
    return lines


def _plot_sweeps(ax, models: list[dict]) -> None:
    """Each model's learning-rate trials: score on the held-back training bytes against the rate."""
    for m in models:
        sw = m["lr_sweep"]
        tried = [(t["lr"], t["score"]) for t in sw["trials"]
                 if t.get("score") is not None and math.isfinite(t["score"])]
        if not tried:
            continue
        xs, ys = zip(*tried)
        ax.plot(xs, ys, "o-", color=m.get("colour"), label=m["label"], markersize=3)
        chosen = [y for x, y in tried if x == sw["chosen"]]
        if chosen:
            ax.plot([sw["chosen"]], chosen, "o", markersize=10, markerfacecolor="none", color=m.get("colour"))
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate (ringed: chosen)")
    ax.set_ylabel("bpb on held-back training bytes (sweep trials)")
    ax.grid(alpha=0.3)


# ------------------------------------------------------------------------------------ markdown
def markdown(report: dict) -> str:
    data = report["data"]
    name = Path(data["dir"]).name
    lines = [
        f"# {' vs '.join(m['label'] for m in report['models']) or 'Comparison'}: {name} ({data['modality']})",
        "",
        f"- Budget: {describe_budget(report)}, matched on {report['budget']['matched']}; preset "
        f"`{report['preset']}`, seed {report['seed']}.",
        f"- Machine: {describe_machine(report)}.",
        f"- Data: {data['bytes']['train']:,} train bytes; every model scored on the same "
        f"{data['scored_bytes']:,} validation bytes (bits per byte; lower is better).",
    ]
    if report.get("command"):
        lines.append(f"- Command: `{report['command']}`")
    lines += ["", "| model | parameters | bytes trained | train FLOPs | steps | bpb basic | bpb strided | "
              "bpb sliding | bpb strided+sliding | generation bytes/s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in report["models"]:
        t, e = m["train"], m["eval"]
        gen = m["generation"].get("bytes_per_s")
        lines.append(f"| {m['label']} | {_count(m['parameters'])} | {_count(t['bytes'])} | {human_flops(t['flops'])} | "
                     f"{t['steps']:,} | " + " | ".join(_bpb(e, k) for k in METHODS) + f" | {gen:,.0f} |")
    lines += ["", "Strided inference applies to models with patches only (MEGABYTE: a second pass shifted by half "
              "a patch). Sliding windows step by half the context. Generation: cached sampling of "
              f"{report['models'][0]['generation']['bytes'] if report['models'] else 0} bytes at temperature 1 "
              "after a short prompt, batch 1."]
    lines += lr_lines(report)
    said = verdict(report) + crossing_sentences(report)
    if said:
        lines += ["", "## What the numbers say", ""] + [f"- {s}" for s in said]
    lines += ["", "![validation bpb against training compute and time](compare.png)", "",
              "## Sizes and cost", "",
              "| model | shape | context | bytes / patch | bytes / step | FLOPs / step | where the FLOPs go "
              "| ms / step | bytes/s training |", "|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for m in report["models"]:
        t = m["train"]
        per_step = t["bytes"] / max(1, t["steps"])
        ms = 1e3 * per_step / t["bytes_per_s"] if t["bytes_per_s"] else float("nan")
        context = f"{t['seq_len']} {m['units']}"
        lines.append(f"| {m['label']} | {m['shape']} | {context} | {bytes_per_patch(m)} | {_count(per_step)} | "
                     f"{human_flops(t['flops_per_step'])} | {t['flop_split']} | {ms:.0f} | "
                     f"{_count(t['bytes_per_s'])} |")
    lines += ["", "ms / step and bytes/s count training steps only (the budget also covers the periodic "
              "validation behind the curves).", "", "## How the budget is matched", "", report["sizing"]]
    notes = [f"{m['label']}: {n}" for m in report["models"] for n in m["notes"]]
    notes += [f"{s['model']} skipped: {s['reason']}" for s in report.get("skipped", [])]
    if report.get("setup", {}).get("bpe_seconds") is not None:
        notes.append(f"Training the BPE vocabulary took {report['setup']['bpe_seconds']:.1f} s, outside the budget.")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def bytes_per_patch(model: dict) -> str:
    """A model's bytes per global position: the measured mean for dynamic patches, P for fixed."""
    if model.get("patches"):
        return f"{model['patches']['mean_bytes']:.2f} (measured)"
    sizes = model.get("config", {}).get("patch_sizes")
    return str(math.prod(sizes)) if sizes else "-"


def lr_lines(report: dict) -> list[str]:
    """The learning-rate sweep of every model: each value's score on the held-back training
    bytes, the choice and the cost (none without a sweep)."""
    sweeps = [(m, m["lr_sweep"]) for m in report["models"] if m.get("lr_sweep")]
    if not sweeps:
        return []
    lines = ["", "## Learning rates", "",
             f"Each model's peak learning rate was chosen by a sweep: every value trained the first "
             f"{sweeps[0][1]['slice']:.0%} of the model's run, scored on the held-back end of the training "
             "split (never the validation split); among the trials without a loss spike, the lowest rate within "
             f"{sweeps[0][1]['tolerance']} bpb of the best. The sweep's cost is beside the budget, not in it.", "",
             "| model | tried: bpb on held-back training bytes | chosen | sweep FLOPs | sweep time |",
             "|---|---|---:|---:|---:|"]
    for m, sw in sweeps:
        tried = ", ".join(f"{t['lr']:.3g}: " + (f"{t['score']:.3f}" + (" (spikes)" if t.get("spikes") else "")
                                                if t["score"] is not None else "diverged") for t in sw["trials"])
        lines.append(f"| {m['label']} | {tried} | {sw['chosen']:.3g} | {human_flops(sw['flops'])} | "
                     f"{sw['seconds']:.0f} s |")
    return lines


# ------------------------------------------------------------------------------------ plot
def plot_png(report: dict) -> bytes:
    """Two panels: validation bpb against training FLOPs (log scale) and against seconds; a star
    marks each model's final score on the scored validation bytes (basic inference). With a
    learning-rate sweep, a third: each model's trials (held-back training bpb against the rate),
    the chosen rate ringed."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

    sweeps = [m for m in report["models"] if m.get("lr_sweep")]
    fig = Figure(figsize=(16 if sweeps else 11, 4.4), dpi=110)
    ax_flops, ax_time, *rest = fig.subplots(1, 3 if sweeps else 2)
    for m in report["models"]:
        colour = m.get("colour")
        points = [p for p in m["curve"] if p.get("val_bpb") is not None and math.isfinite(p["val_bpb"])]
        final = m["eval"]["basic"]["bpb"]
        for ax, key in ((ax_flops, "flops"), (ax_time, "elapsed")):
            xs = [p[key] for p in points if p.get(key)]
            ys = [p["val_bpb"] for p in points if p.get(key)]
            ax.plot(xs, ys, "o-", color=colour, label=m["label"], markersize=3)
            if xs:  # the final score sits where training ended
                ax.plot([xs[-1]], [final], "*", color=colour, markersize=11)
    ax_flops.set_xscale("log")
    ax_flops.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # 1, 2, 5 x 10^k
    ax_flops.xaxis.set_major_formatter(EngFormatter(unit="FLOP", places=0))
    ax_flops.xaxis.set_minor_formatter(NullFormatter())
    ax_flops.set_xlabel("training FLOPs (analytic)")
    ax_time.set_xlabel("training wall-clock (s)")
    for ax in (ax_flops, ax_time):
        ax.set_ylabel("validation bits per byte")
        ax.grid(alpha=0.3)
    ax_flops.legend(fontsize=8)
    if sweeps:
        _plot_sweeps(rest[0], sweeps)
    scored = report["data"].get("scored_bytes")
    fig.suptitle(f"{Path(report['data']['dir']).name}: {describe_budget(report)} (lines: periodic validation; "
                 f"stars: final score on {f'{scored:,} validation bytes' if scored else 'the validation split'})",
                 fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
