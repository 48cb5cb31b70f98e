"""`megabyte patches`: see where a model's patches end on your bytes.

    megabyte patches runs/space --text "Patches end where words do."      # a run's own rule and P_max
    megabyte patches --rule space --max-len 16 --file README.md --png patches.png
    megabyte patches --rule space --data data/text --window 1024           # statistics of a dataset

Prints the bytes with a bar before every patch (bytes that are not UTF-8 on their own, such as a
character cut by a boundary, show as \\xNN escapes), then bytes per patch and a histogram of
patch lengths. With --data, the statistics are those of the training split cut as in training
(each window of --window bytes on its own), including the share of bytes past the model's cap on
global positions. --png draws the text with alternating colours per patch. A fixed-patch model
cuts every P bytes; dynamic rules: `megabyte.model.patching`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from megabyte.errors import MegabyteError

BAR = "\u2502"


def register(subparsers) -> None:
    p = subparsers.add_parser("patches", help="show where patches end on some text, and their lengths",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", help="a MEGABYTE run or checkpoint directory: its rule and patch size")
    p.add_argument("--rule", choices=("fixed", "space"),
                   help="the rule, without a run (default space; entropy patches need their run's entropy model)")
    p.add_argument("--max-len", type=int, help="without a run: the longest patch P_max (default 16)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="text to cut (UTF-8)")
    what.add_argument("--file", type=Path, help="a file whose bytes to cut")
    what.add_argument("--data", type=Path, help="a prepared dataset: statistics of its train split")
    p.add_argument("--window", type=int, help="bytes per window, each cut on its own (default: the run's "
                   "context, else 1024)")
    p.add_argument("--show", type=int, default=2000, help="bytes of --text/--file to print (default 2000)")
    p.add_argument("--png", type=Path, help="also draw the first --show bytes, a colour per patch, here (with "
                   "--data: its first validation window, or for images its first images, with entropy heat maps)")
    p.set_defaults(func=run)


def patch_config(args):
    """The config whose rule is shown (the run's, or one made from --rule / --max-len), and for
    entropy patches the run's model (its entropy model decides)."""
    import megabyte

    if args.run:
        if args.rule or args.max_len:
            raise MegabyteError("give a run or --rule/--max-len, not both")
        from megabyte.model.io import read_config
        from megabyte.training.checkpoint import resolve_checkpoint

        config = read_config(resolve_checkpoint(Path(args.run)))
        if not hasattr(config, "patching"):
            raise MegabyteError(f"{args.run}: a {config.model_type} model has no patches")
        return config, (megabyte.load(args.run) if config.patching == "entropy" else None)
    size = args.max_len or 16
    if size < 1:
        raise MegabyteError(f"--max-len must be >= 1, got {size}")
    return megabyte.MegabyteConfig(patch_sizes=(size,), dims=(size, size), depths=(1, 1), heads=(1, 1),
                                   patching=args.rule or "space", max_seq_len=max(size, args.window or 1024)), None


def starts_of(config, data: bytes, model=None):
    """(T,) bool: the patch starts of `data`, windows of the config's context each on their own
    (as the model `model` cuts them, when given), and for entropy patches every byte's H_t."""
    import torch

    from megabyte.model.dynamic import layout_of

    x = torch.tensor(list(data), dtype=torch.long)
    if not config.dynamic:
        S = config.sub_sizes[0]
        return torch.arange(len(data)) % S == 0, None
    window = config.max_seq_len
    pieces = [x[i : i + window][None] for i in range(0, len(data), window)]
    if config.patching == "entropy":  # the entropy model runs once per window: for the cut and the plot
        from megabyte.model.entropy import entropies

        scores = [entropies(model.entropy_model, w) for w in pieces]
        out = [model.patch_starts(w, entropy=H)[0] for w, H in zip(pieces, scores)]
        entropy = torch.cat([H[0] for H in scores])
    else:
        out, entropy = [layout_of(model or config, w).offset[0] == 0 for w in pieces], None
    return (torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)), entropy


def marked(data: bytes, starts) -> str:
    """The bytes with a bar before every patch but the first."""
    cuts = [int(i) for i in starts.nonzero().flatten()] + [len(data)]
    pieces = [data[a:b].decode("utf-8", "backslashreplace") for a, b in zip(cuts, cuts[1:])]
    return BAR.join(pieces)


def histogram(counts: list[int], width: int = 40) -> list[str]:
    """One bar per patch length 1, 2, ...: how many patches have it."""
    top = max(counts, default=0) or 1
    return [f"{n:>4} bytes {c:>9,}  {'#' * round(width * c / top)}" for n, c in enumerate(counts, 1)]


def run(args) -> int:
    config, model = patch_config(args)
    if args.window:
        import dataclasses

        if args.window < 1:
            raise MegabyteError(f"--window must be >= 1, got {args.window}")
        if model is not None and args.window > config.max_seq_len:
            raise MegabyteError(f"--window {args.window} is longer than the run's context ({config.max_seq_len})")
        config = dataclasses.replace(config, max_seq_len=args.window)
    if args.data is not None:
        rc = _dataset_stats(config, args.data, model)
        if args.png:
            _draw_dataset(config, model, args.data, args.png)
        return rc
    if args.file is not None:
        try:
            data = args.file.read_bytes()
        except OSError as exc:
            raise MegabyteError(f"{args.file}: {exc.strerror or exc}") from None
    else:
        data = args.text.encode("utf-8")
    if not data:
        raise MegabyteError("no bytes to cut")
    starts, entropy = starts_of(config, data, model)
    shown = data[: args.show]
    print(marked(shown, starts[: len(shown)]))
    if len(data) > len(shown):
        print(f"... ({len(data) - len(shown):,} more bytes not shown)")
    _print_summary(config, data, starts)
    if args.png:
        from megabyte.atomic import atomic_write_bytes

        atomic_write_bytes(args.png, draw_png(
            shown, starts[: len(shown)], title=describe_rule(config),
            entropy=None if entropy is None else entropy[: len(shown)],
            threshold=config.patch_threshold if entropy is not None else None,
            relative=config.patch_relative))
        print(f"wrote {args.png}")
    return 0


def describe_rule(config) -> str:
    if not config.dynamic:
        return f"fixed patches of {config.sub_sizes[0]} bytes"
    rule = f"{config.patching} patches of at most {config.patch_sizes[0]} bytes"
    if config.patching == "entropy":
        score = "H_t - H_t-1" if config.patch_relative else "H_t"
        rule += f" ({score} > {config.patch_threshold:.3f} nats)"
    return rule


def _print_summary(config, data: bytes, starts) -> None:
    import torch

    from megabyte.model.patching import PatchLayout

    lengths = PatchLayout.of(starts[None]).lengths()
    print(f"\n{describe_rule(config)}: {len(data):,} bytes in {len(lengths):,} patches, "
          f"{len(data) / max(1, len(lengths)):.2f} bytes per patch")
    print("\n".join(histogram(torch.bincount(lengths)[1:].tolist())))


def _dataset_stats(config, directory: Path, model=None) -> int:
    import torch

    from megabyte.data.dataset import even_windows, load_dataset
    from megabyte.model.dynamic import patch_stats

    if not config.dynamic:
        raise MegabyteError(f"fixed patches are {config.sub_sizes[0]} bytes everywhere; --data is for dynamic rules")
    T = config.max_seq_len
    windows = torch.from_numpy(even_windows(load_dataset(directory).split("train"), T, 1024))
    if not len(windows):
        raise MegabyteError(f"{directory}: the train split is shorter than one window of {T} bytes")
    s = patch_stats(model or config, windows)
    print(f"{describe_rule(config)} on {s['rows']:,} windows of {T:,} bytes of {directory} (train split):")
    print(f"  {s['mean_bytes']:.2f} bytes per patch; {s['patches_per_row_mean']:.1f} patches per window "
          f"(at most {s['patches_per_row_max']}); cap {s['cap']} global positions per window: "
          f"{100 * s['share_past_cap']:.3f}% of bytes past it (predicted without a global slice)")
    print("\n".join(histogram(s["histogram"])))
    return 0


def _draw_dataset(config, model, directory: Path, png: Path) -> None:
    """--data with --png: an image dataset's first validation images as pixels, each pixel's
    entropy as a heat map (entropy patches) and the pixels where patches start; text: the first
    validation window as for --text."""
    from megabyte.atomic import atomic_write_bytes
    from megabyte.data.dataset import load_dataset

    data = load_dataset(directory)
    val = data.split("val")
    if data.modality != "image":
        window = bytes(val[: min(len(val), config.max_seq_len, 2000)])
        starts, entropy = starts_of(config, window, model)
        atomic_write_bytes(png, draw_png(window, starts, title=describe_rule(config), entropy=entropy,
                                         threshold=config.patch_threshold if entropy is not None else None,
                                         relative=config.patch_relative))
    else:
        meta, n = data.meta, min(4, len(val) // data.item_len)
        if n < 1:
            raise MegabyteError(f"{directory}: the validation split holds no whole image")
        images = [bytes(val[i * data.item_len : (i + 1) * data.item_len]) for i in range(n)]
        cut = [starts_of(config, image, model) for image in images]
        atomic_write_bytes(png, draw_image_png(images, cut, meta, title=describe_rule(config)))
    print(f"wrote {png}")


def draw_image_png(images: list[bytes], cut: list, meta: dict, *, title: str) -> bytes:
    """Per image: the pixels; each pixel's entropy (the mean over its channels' bytes) as a heat
    map, when there are entropies; and the pixels where a patch starts, over a grey image."""
    import io

    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from megabyte.data.codecs import _patch_to_raster

    size, channels = int(meta["size"]), int(meta.get("channels", 3))
    order, p = meta.get("order", "patch"), int(meta.get("patch_pixels", 2))

    def grid(values) -> np.ndarray:  # bytes in storage order -> (H, W, C), any dtype
        flat = np.asarray(values).reshape(-1)
        return _patch_to_raster(flat, size, p, channels) if order == "patch" else flat.reshape(size, size, channels)

    with_entropy = cut[0][1] is not None
    cols = 3 if with_entropy else 2
    fig, axes = plt.subplots(len(images), cols, figsize=(2.2 * cols, 2.2 * len(images)), squeeze=False)
    for row, (image, (starts, entropy)) in enumerate(zip(images, cut)):
        pixels = grid(np.frombuffer(image, dtype=np.uint8))
        shown = pixels[:, :, 0] if channels == 1 else pixels
        axes[row][0].imshow(shown, cmap="gray" if channels == 1 else None, interpolation="nearest")
        if with_entropy:
            heat = grid(entropy.numpy()).mean(axis=2)
            im = axes[row][1].imshow(heat, cmap="magma", interpolation="nearest")
            fig.colorbar(im, ax=axes[row][1], fraction=0.046, pad=0.04).ax.tick_params(labelsize=5)
        begins = grid(starts.numpy()).any(axis=2)
        grey = pixels.mean(axis=2) / 255.0
        overlay = np.stack([grey * 0.6 + 0.4 * begins, grey * 0.6, grey * 0.6], axis=2)
        axes[row][cols - 1].imshow(np.clip(overlay, 0, 1), interpolation="nearest")
    names = ["image", "entropy per pixel (nats)"] if with_entropy else ["image"]
    names.append("patch starts (red)")
    for ax, name in zip(axes[0], names):
        ax.set_title(name, fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def draw_png(data: bytes, starts, *, title: str, columns: int = 80, entropy=None, threshold: float | None = None,
             relative: bool = False) -> bytes:
    """The text in a monospaced grid, each patch on its own colour (alternating), as PNG bytes;
    with `entropy` (every byte's H_t) a second panel above it: H_t (or its rise, `relative`)
    byte by byte, the threshold line and a mark at every patch start."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    colours = ("#cfe2f3", "#fde9c9", "#d9ead3", "#f4cccc")
    patch = starts.long().cumsum(0) - 1
    cells, row, col = [], 0, 0
    for i, b in enumerate(data):
        if b == 0x0A:
            cells.append((row, col, "\u23ce", int(patch[i])))
            row, col = row + 1, 0
            continue
        ch = chr(b) if 0x20 <= b < 0x7F else "\u00b7"
        cells.append((row, col, ch, int(patch[i])))
        col += 1
        if col >= columns:
            row, col = row + 1, 0
    rows = row + 1
    size = (columns * 0.11 + 0.4, rows * 0.22 + 0.7)
    if entropy is None:
        fig, ax = plt.subplots(figsize=size)
    else:
        fig, (top, ax) = plt.subplots(2, 1, figsize=(size[0], size[1] + 2.2),
                                      gridspec_kw={"height_ratios": [2.2, size[1]], "hspace": 0.45})
        _draw_entropy(top, data, starts, entropy, threshold, relative)
    for r, c, ch, k in cells:
        ax.add_patch(Rectangle((c, -r - 1), 1, 1, facecolor=colours[k % len(colours)], edgecolor="none"))
        ax.text(c + 0.5, -r - 0.5, ch, ha="center", va="center", family="monospace", fontsize=7)
    ax.set_xlim(0, columns)
    ax.set_ylim(-rows, 0)
    ax.axis("off")
    ax.set_title(title + " (a colour per patch; \u00b7 a non-ASCII byte, \u23ce a newline)", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _draw_entropy(ax, data: bytes, starts, entropy, threshold: float | None, relative: bool) -> None:
    """Each byte's entropy (nats) as a line, the threshold, and a dot at each patch start."""
    import numpy as np

    H = np.asarray(entropy, dtype=float)
    score = np.concatenate([[0.0], H[1:] - H[:-1]]) if relative else H
    t = np.arange(len(H))
    ax.plot(t, score, color="#3d6fb6", linewidth=0.8, label="H_t - H_t-1" if relative else "H_t (nats)")
    begins = np.asarray(starts, dtype=bool)
    ax.scatter(t[begins], score[begins], s=8, color="#c0392b", zorder=3, label="a patch starts")
    if threshold is not None:
        ax.axhline(threshold, color="#555555", linestyle="--", linewidth=0.8, label=f"theta = {threshold:.3f}")
    ax.set_xlim(-0.5, len(H) - 0.5)
    ax.set_xlabel("byte", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6, loc="upper right", ncol=3)
