"""The `megabyte` command line.

Every sub-command lives in its own module under `megabyte/commands/` and exposes
`register(subparsers)`, which adds its parser and sets `func` (called with the parsed
arguments). Modules are discovered, so adding a command is adding a file.
"""

from __future__ import annotations

import argparse
import importlib
import os
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


def _is_override(word: str) -> bool:
    return not word.startswith("-") and "=" in word and "." in word.split("=", 1)[0]


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.showwarning = _show_warning
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `train`'s SECTION.FIELD=VALUE overrides may sit between flags, not only in one run of words
        if isinstance(getattr(args, "overrides", None), list) and all(_is_override(e) for e in extra):
            args.overrides.extend(extra)
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    from megabyte import allocator

    allocator.request()  # CPU runs: large tensors reuse the heap instead of fresh pages every step
    try:
        code = int(args.func(args) or 0)
    except MegabyteError as exc:
        print(f"megabyte {args.command}: error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print(f"megabyte {args.command}: interrupted", file=sys.stderr)
        code = 130
    except BrokenPipeError:  # the reader went away (`megabyte patches ... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    _exit_if_group_threads_survive(code)
    return code


def _exit_if_group_threads_survive(code: int) -> None:
    """Leave now, skipping the interpreter's teardown, if threads of a process group that this
    command created outlived it (FSDP2: see megabyte.training.runtime): that teardown is where
    such a thread can abort the process after a good run. Output is flushed; files are closed."""
    runtime = sys.modules.get("megabyte.training.runtime")  # not loaded: no group was ever made
    if runtime is not None and runtime.OUTLIVED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
