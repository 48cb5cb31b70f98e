"""`megabyte sample`: generate bytes from a trained model (text to stdout, images to PNG, audio to WAV).

    megabyte sample runs/demo --prompt "def main(" --max-bytes 400 --temperature 0.8
    megabyte sample runs/img --out sample.png                      # an image model: one image
    megabyte sample runs/img --prompt-image cat.png --keep-rows 16 --out done.png
    megabyte sample runs/audio --prompt-wav hello.wav --seconds 2 --out more.wav
    megabyte sample runs/demo --compile --device cuda              # compiled decode steps

The modality comes from the `data_meta.json` that training stores beside each checkpoint
(text when there is none). `--out` always receives the whole sequence, prompt included.
"""

from __future__ import annotations

import argparse
import codecs
import json
import sys
from pathlib import Path

from megabyte.errors import MegabyteError

DATA_META = "data_meta.json"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sample",
        help="generate bytes from a trained model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="a training run directory (its latest checkpoint) or a checkpoint directory")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", help="prompt text (UTF-8)")
    prompt.add_argument("--prompt-file", type=Path, help="a file whose bytes are the prompt")
    prompt.add_argument("--prompt-image", type=Path, help="image models: complete this image")
    prompt.add_argument("--prompt-wav", type=Path, help="audio models: continue this recording")
    p.add_argument("--keep-rows", type=int, help="with --prompt-image: pixel rows of the prompt image to keep")
    p.add_argument("--max-bytes", type=int, help="bytes to generate (text default 512; image: the rest of it)")
    p.add_argument("--seconds", type=float, default=2.0, help="audio models: seconds to generate (default 2)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=int, help="sample among the k most likely bytes")
    p.add_argument("--top-p", type=float, help="sample from the smallest set of bytes with this much probability")
    p.add_argument("--seed", type=int, help="make the sample repeatable")
    p.add_argument("--stop", help="text models: stop once this text has been produced")
    p.add_argument("--out", type=Path, help="write the whole sequence here (raw bytes, or PNG/WAV)")
    p.add_argument("--no-cache", action="store_true", help="re-run the full model for every byte (slow)")
    p.add_argument("--compile", action="store_true",
                   help="decode through torch.compile'd fixed-shape steps (CUDA graphs on a GPU; the first "
                        "bytes wait for the compiler; fixed patches and the baselines)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.set_defaults(func=run)


def read_data_meta(checkpoint: Path) -> dict:
    path = checkpoint / DATA_META
    if not path.is_file():
        return {"modality": "text"}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise MegabyteError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("modality") not in ("text", "image", "audio"):
        raise MegabyteError(f"{path}: no valid 'modality' field")
    return meta


def pick_device(name: str) -> str:
    """--device resolved as training resolves it (`runtime.resolve_device`, CPU allocator tuning included)."""
    from megabyte.training.runtime import resolve_device

    return str(resolve_device(name))


def run(args: argparse.Namespace) -> int:
    import megabyte
    from megabyte.training.checkpoint import resolve_checkpoint

    checkpoint = resolve_checkpoint(args.run)
    meta = read_data_meta(checkpoint)
    model = megabyte.load(checkpoint, device=pick_device(args.device))
    options = dict(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        use_cache=not args.no_cache, compile=args.compile,
    )
    handler = {"text": _sample_text, "image": _sample_image, "audio": _sample_audio}[meta["modality"]]
    return handler(model, meta, args, options)


def _check_unused(args: argparse.Namespace, modality: str, *names: str) -> None:
    for name in names:
        if getattr(args, name.replace("-", "_")) is not None:
            raise MegabyteError(f"--{name} does not apply to a {modality} model")


def _write(path: Path, data: bytes) -> None:
    from megabyte.atomic import atomic_write_bytes

    atomic_write_bytes(path, data)
    print(f"wrote {len(data)} bytes to {path}", file=sys.stderr)


def _sample_text(model, meta: dict, args: argparse.Namespace, options: dict) -> int:

    _check_unused(args, "text", "prompt-image", "prompt-wav", "keep-rows")
    if args.prompt_file is not None:
        try:
            prompt = args.prompt_file.read_bytes()
        except OSError as exc:
            raise MegabyteError(f"{args.prompt_file}: cannot read ({exc.strerror})") from None
    else:
        prompt = (args.prompt or "").encode("utf-8")
    max_bytes = 512 if args.max_bytes is None else args.max_bytes
    stop = args.stop.encode("utf-8") if args.stop else None
    generated = stream_text(model, prompt, max_bytes, stop=stop, **options)
    if args.out is not None:
        _write(args.out, prompt + bytes(generated))
    return 0


def stream_text(model, prompt: bytes, max_bytes: int, *, out=None, **options) -> bytes:
    """Print the prompt, then each generated byte as it comes (invalid UTF-8 shown as U+FFFD,
    multi-byte characters printed once complete); return the generated bytes."""
    import megabyte

    out = out or sys.stdout
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out.write(decoder.decode(prompt))
    generated = bytearray()
    for chunk in megabyte.stream(model, prompt, max_bytes, **options):
        generated += chunk
        out.write(decoder.decode(chunk))
        out.flush()
    out.write(decoder.decode(b"", final=True) + "\n")
    return bytes(generated)


def _sample_image(model, meta: dict, args: argparse.Namespace, options: dict) -> int:
    import megabyte
    from megabyte.data.codecs import bytes_to_image, image_to_bytes

    _check_unused(args, "image", "prompt", "prompt-file", "prompt-wav", "stop")
    size, channels = int(meta["size"]), int(meta["channels"])
    params = dict(order=meta["order"], patch_pixels=int(meta["patch_pixels"]), channels=channels)
    item_len = int(meta["item_len"])
    prompt = b""
    if args.prompt_image is not None:
        rows = size // 2 if args.keep_rows is None else args.keep_rows
        block = params["patch_pixels"] if params["order"] == "patch" else 1
        if not 0 <= rows <= size or rows % block:
            raise MegabyteError(f"--keep-rows must be a multiple of {block} between 0 and {size}, got {rows}")
        # In both orders the top `rows` pixel rows are a prefix of the bytes (whole rows of blocks).
        prompt = image_to_bytes(args.prompt_image, size, **params)[: rows * size * channels]
    elif args.keep_rows is not None:
        raise MegabyteError("--keep-rows needs --prompt-image")
    if item_len > model.config.max_seq_len:
        raise MegabyteError(f"an image is {item_len} bytes, more than the model's max_seq_len")
    data = prompt + megabyte.generate(model, prompt, item_len - len(prompt), **options)
    out = args.out or Path("sample.png")
    image = bytes_to_image(data, size, **params)
    _save_png(image, out)
    print(f"wrote a {size}x{size} image to {out}", file=sys.stderr)
    return 0


def _save_png(image, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    from megabyte.atomic import atomic_write_bytes

    atomic_write_bytes(path, buffer.getvalue())


def _sample_audio(model, meta: dict, args: argparse.Namespace, options: dict) -> int:
    import megabyte
    from megabyte.data.codecs import audio_to_bytes, bytes_to_wav

    _check_unused(args, "audio", "prompt", "prompt-file", "prompt-image", "keep-rows", "stop")
    rate = int(meta["sample_rate"])
    prompt = audio_to_bytes(args.prompt_wav, sample_rate=rate) if args.prompt_wav is not None else b""
    max_bytes = args.max_bytes if args.max_bytes is not None else int(args.seconds * rate) * 2
    data = prompt + megabyte.generate(model, prompt, max_bytes, **options)
    data = data[: len(data) // 2 * 2]  # whole 16-bit samples
    out = args.out or Path("sample.wav")
    bytes_to_wav(data, out, sample_rate=rate)
    print(f"wrote {len(data) // 2 / rate:.2f} s of audio to {out}", file=sys.stderr)
    return 0
