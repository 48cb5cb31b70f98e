"""The `megabyte` command line.

Every sub-command lives in its own module under `megabyte/commands/` and exposes
`register(subparsers)`, which adds its parser and sets `func` (called with the parsed
arguments). Modules are discovered, so adding a command is adding a file.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from megabyte import __version__
from megabyte.errors import MegabyteError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megabyte",
        description="Tokenizer-free byte-level language modelling with the MEGABYTE multiscale transformer.",
    )
    parser.add_argument("--version", action="version", version=f"megabyte-lm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    import megabyte.commands as commands_pkg

    for info in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"megabyte.commands.{info.name}")
        module.register(subparsers)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings reach command-line users as one line, without the source line behind them."""
    print(f"megabyte: warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.showwarning = _show_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    from megabyte import allocator

    allocator.tune()  # large CPU tensors reuse the heap instead of fresh pages every step
    try:
        result = args.func(args)
    except MegabyteError as exc:
        print(f"megabyte {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"megabyte {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
