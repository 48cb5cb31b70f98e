"""What a run reports: `RUN/metrics.jsonl` (one JSON object per log step), the loss curve
`RUN/loss.png`, and the progress bar."""

from __future__ import annotations

import io
import json
import math
import time
from pathlib import Path
from typing import Any

from megabyte.atomic import atomic_write_bytes
from megabyte.errors import MegabyteError

METRICS = "metrics.jsonl"
PLOT = "loss.png"


class MetricsLog:
    """Appends records to RUN/metrics.jsonl and redraws RUN/loss.png from them."""

    def __init__(self, run_dir: Path, *, enabled: bool = True) -> None:
        self.path = Path(run_dir) / METRICS
        self.plot_path = Path(run_dir) / PLOT
        self.enabled = enabled
        self.records: list[dict[str, Any]] = []
        self._last_plot = 0.0

    def start(self, resume_step: int | None) -> None:
        """Begin a fresh log, or continue one from `resume_step` (dropping any later lines:
        they were written after the checkpoint we resume from, and will be written again)."""
        if not self.enabled:
            return
        if resume_step is None:
            self.records = []
        else:
            self.records = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
        text = "".join(json.dumps(r) + "\n" for r in self.records)
        try:
            atomic_write_bytes(self.path, text.encode())
        except OSError as exc:
            raise MegabyteError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def append(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")  # one write: a killed run never leaves half a line
        except OSError as exc:
            raise MegabyteError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def plot(self, title: str, *, force: bool = False, min_interval: float = 15.0) -> None:
        """Redraw the loss curve (at most every `min_interval` seconds unless forced)."""
        now = time.monotonic()
        if not self.enabled or not self.records or (not force and now - self._last_plot < min_interval):
            return
        self._last_plot = now
        write_plot(self.records, self.plot_path, title)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (a torn last line from a killed run is skipped)."""
    if not Path(path).is_file():
        return []
    records = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def write_plot(records: list[dict[str, Any]], path: Path, title: str) -> None:
    """Train and validation bpb against bytes seen, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=110)
    ax = fig.add_subplot()
    for key, style, label in (("train_bpb", "-", "train"), ("val_bpb", "o-", "validation")):
        points = [(r["bytes"], r[key]) for r in records if r.get(key) is not None and math.isfinite(r[key])]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, style, label=label, markersize=3)
    ax.set_xlabel("training bytes")
    ax.set_ylabel("bits per byte")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as exc:
        raise MegabyteError(f"cannot write {path}: {exc}") from exc


class Progress:
    """A tqdm bar over optimizer steps, with loss, bytes/s and an ETA that also respects max_time."""

    def __init__(self, *, total: int | None, initial: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            # disable=None: a bar on a terminal, nothing when output goes to a file or pipe
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=None)

    def update(self, steps: int, *, bpb: float | None, bytes_per_s: float, eta: float | None) -> None:
        if self.bar is None:
            return
        post = {}
        if bpb is not None:
            post["bpb"] = f"{bpb:.3f}"
        post["bytes/s"] = human(bytes_per_s)
        if eta is not None:
            post["eta"] = format_duration(eta)
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(steps)

    def write(self, message: str) -> None:
        if self.bar is not None and not self.bar.disable:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def human(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.3g}"


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
