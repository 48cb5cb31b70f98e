"""`megabyte ARGS` as torchrun runs it, then a report of the process group's native threads that
outlived the command (there must be none: one alive at interpreter exit can abort the process).

    torchrun ... tests/distributed/clean_exit.py train --data D --out R ...
"""

from __future__ import annotations

import os
import sys

from megabyte.cli import main
from megabyte.training.runtime import group_threads


def run_and_report(argv: list[str]) -> int:
    code = main(argv)
    left = group_threads()
    print(f"rank {os.environ.get('RANK', '0')}: group threads left: {', '.join(left) or 'none'}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(run_and_report(sys.argv[1:]))
