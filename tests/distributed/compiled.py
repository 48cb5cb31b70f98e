"""`megabyte ARGS` as torchrun runs it, with every `Module.compile` (train.compile) compiling
through AOTAutograd without Inductor ("aot_eager"): the forward and backward graphs the real
compiler gets, with the hooks of DDP and FSDP2 around them, in seconds on a CPU. A rank says when
each compiled graph first runs (FSDP2 runs leave through os._exit: nothing is said at the end),
then gives clean_exit.py's report.

    torchrun ... tests/distributed/compiled.py train --data D --out R --compile ...
"""

from __future__ import annotations

import os
import sys

import torch
from torch._dynamo.backends.registry import lookup_backend

from tests.distributed.clean_exit import run_and_report

GRAPHS = [0]


def announcing_aot_eager(graph: torch.fx.GraphModule, example_inputs):
    GRAPHS[0] += 1
    number, compiled, ran = GRAPHS[0], lookup_backend("aot_eager")(graph, example_inputs), []

    def run(*args):
        if not ran:
            ran.append(True)
            print(f"rank {os.environ.get('RANK', '0')}: compiled graph {number} ran", flush=True)
        return compiled(*args)

    return run


if __name__ == "__main__":
    compile = torch.nn.Module.compile
    torch.nn.Module.compile = lambda self, **kw: compile(self, **{**kw, "backend": announcing_aot_eager})
    sys.exit(run_and_report(sys.argv[1:]))
